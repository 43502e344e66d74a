"""Guards around a command's output folder: one writer at a time, outputs that never clobber inputs.

Every command that writes (train, search, export) holds an :class:`OutputLock` on its ``--out`` for the whole run and
calls :func:`check_no_overlap` before writing anything, so two runs cannot interleave their files in one folder and
``--force`` can never replace or delete what the command is reading.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "absolute",
    "same_input",
    "writes_files",
    "OutputLock",
    "OutputBusyError",
    "OverlapError",
    "check_no_overlap",
    "run_folder",
    "lock_path",
    "output_lock",
]

_logger = logging.getLogger(__name__)

try:  # POSIX; elsewhere the lock falls back to the pid/host record alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class OutputBusyError(RuntimeError):
    """Another run is writing into the same output folder."""

    user_facing = True


class OverlapError(ValueError):
    """An output folder is, contains, or lies inside something the command reads."""


# A model name that is a folder behind a scheme (timm's ``local-dir:<folder>``): the folder is made absolute.
_FOLDER_SCHEMES = ("local-dir:",)


def absolute(path: str | os.PathLike | None) -> str | None:
    """A path that names something here, made absolute (what records store, so a run's files are found from any
    folder); ``local-dir:<folder>`` keeps its scheme; anything else (a hub id, a missing file) as it is."""
    if path is None or not str(path):
        return None if path is None else str(path)
    text = str(path)
    scheme = next((s for s in _FOLDER_SCHEMES if text.startswith(s)), "")
    p = Path(text[len(scheme) :]).expanduser()
    return scheme + str(p.resolve()) if p.exists() else text


def same_input(given: Any, recorded: Any) -> bool:
    """Whether an option's value on this command line names what a run recorded: equal values, or paths that name
    the same file or folder (a relative path resolved from the folder the command runs in; records hold them
    absolute), element by element for a list."""
    if given == recorded:
        return True
    if isinstance(given, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return len(given) == len(recorded) and all(same_input(g, r) for g, r in zip(given, recorded))
    if not isinstance(given, (str, os.PathLike)) or not isinstance(recorded, (str, os.PathLike)):
        return False
    a, b = str(given), str(recorded)
    scheme = next((s for s in _FOLDER_SCHEMES if a.startswith(s)), "")
    if scheme and not b.startswith(scheme):
        return False
    pa, pb = Path(a[len(scheme) :]).expanduser(), Path(b[len(scheme) :]).expanduser()
    if pa.exists() and pb.exists():
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            return False
    if not pb.is_absolute():  # a record from before inputs were recorded absolute: the two as written
        return False
    return str(pa.resolve()) == str(pb.resolve())


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock of ``folder``: a hidden file beside it (``.<name>.lock``), so replacing the folder keeps the lock."""
    real = Path(folder).expanduser().resolve()
    return real.parent / f".{real.name or 'root'}.lock"


def _describe(holder: dict[str, Any]) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    what = holder.get("command", "a glora command")
    since = holder.get("started")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, float) else ""
    return f"{what} (pid {pid} on {host}{when})"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder for one run, recorded in a lock file with the owner's pid and host.

    The kernel's ``flock`` decides who holds it (released even when the holder is SIGKILLed); the record names the
    holder in the refusal and marks a stale lock (one whose holder died) so it can be reported and taken over. Where
    the file system has no ``flock``, a record whose pid is no longer running on this host counts as stale.
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.path = lock_path(self.folder)
        self.command = command or Path(sys.argv[0]).name or "glora"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._try_flock(fd):
                    holder = self._read(fd)
                    raise OutputBusyError(
                        f"output folder {str(self.folder)!r} is in use by {_describe(holder)}; wait for it to "
                        f"finish or choose another --out (lock: {self.path})"
                    )
                try:  # the file locked must still be the one at the path (a releasing holder unlinks it)
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous:
            _logger.warning(
                "taking over a stale lock on %s left by %s, no longer running", self.folder, _describe(previous)
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _try_flock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
        holder = self._read(fd)  # no flock here: trust the record
        if not holder:
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell whether it still runs
        return holder.get("pid") == os.getpid() or not _pid_alive(holder.get("pid"))

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, enabled: bool = True, command: str | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (``enabled=False``: a data-parallel rank that does not write)."""
    if not enabled:
        yield
        return
    with OutputLock(folder, command):
        yield


def writes_files() -> bool:
    """Whether this process writes a command's outputs: a single process, or rank 0 under torchrun."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def run_folder(path: str | os.PathLike, *markers: str) -> str | None:
    """The folder of ``path`` when a command wrote it as a run (it holds one of ``markers`` beside the file, e.g.
    ``log.jsonl`` of a training run): an input as a whole for :func:`check_no_overlap`. A loose file's folder (a
    checkpoint copied to /tmp) is not."""
    folder = Path(path).expanduser().parent
    return str(folder) if any((folder / m).is_file() for m in markers) else None


def check_no_overlap(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse an output folder that is, contains or lies inside an input (files and folders; symlinks resolved).

    ``inputs``: (option name, path) pairs; ``None`` paths are skipped. Called before anything is written, so
    ``--force`` never replaces or deletes what the command reads.
    """
    target = Path(out).expanduser().resolve()
    for parent in (target, *target.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == target else f"lies under {str(parent)!r}, which is a file"
            raise OverlapError(f"--out {str(out)!r} {what}; an output must be a folder: choose another --out")
    for option, value in inputs:
        if value is None or str(value) == "":
            continue
        src = Path(value).expanduser().resolve()
        if src.is_dir() or (not src.exists() and not src.suffix):
            clash = _inside(target, src) or _inside(src, target)
        else:  # a file: the output folder must not hold it (writing there could replace it)
            clash = _inside(src, target)
        if clash:
            raise OverlapError(
                f"--out {str(out)!r} overlaps {option} {str(value)!r} (resolved: {target} and {src}); "
                "outputs must not be, contain or lie inside an input: choose another --out"
            )
