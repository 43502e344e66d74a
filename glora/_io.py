"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.

A crash at any moment leaves either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "read_text_file",
    "weights_format",
    "DiskFullError",
    "is_out_of_space",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_writer",
    "atomic_save",
    "default_mode",
    "publish_tree",
]


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write ran out of space (or quota): says so in one line, naming the file and the free space."""

    def __init__(self, target: Path) -> None:
        free = "unknown"
        with contextlib.suppress(OSError):
            free = human_size(shutil.disk_usage(target.parent).free)
        super().__init__(
            errno.ENOSPC,
            f"disk full: could not write {target} ({free} free there); nothing was "
            "replaced; free some space or write elsewhere",
            str(target),
        )

    def __str__(self) -> str:
        return str(self.strerror)


def human_size(n: float) -> str:
    """Bytes as a short human-readable size (``1.5 GB``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT/EFBIG anywhere in the chain (torch.save wraps the OSError in a RuntimeError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, _mode_for(target))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_out_of_space(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(target) from e
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_save(path: str | os.PathLike, save: Callable[[IO], None]) -> None:
    """Call ``save(fileobj)`` (e.g. ``lambda f: torch.save(obj, f)``) into a temp file, then rename."""
    with atomic_writer(path, "wb") as f:
        save(f)


def default_mode(directory: bool = False) -> int:
    """What ``open``/``mkdir`` would give: 0o666 / 0o777 minus the umask (mkstemp and mkdtemp use 0o600 / 0o700)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish_tree(folder: str | os.PathLike) -> None:
    """Give a folder built in a private temp dir (and its files) the usual permissions before it is renamed."""
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, default_mode(path.is_dir()))


def _mode_for(target: Path) -> int:
    """Keep an existing file's permissions; new files get the usual ones."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return default_mode()


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """A small text file the user wrote (a list, mask or annotation file): UTF-8 with an optional byte-order mark,
    any line ending. ``FileNotFoundError`` / ``ValueError`` name ``what``, the file and, for bytes that are not
    UTF-8, the line they are on."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {str(p)!r} is a folder, not a text file") from None
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a byte-order mark is not content
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{what} {str(p)!r}, line {line}: byte 0x{body[e.start]:02x} is not UTF-8 text (save the file as UTF-8)"
        ) from None


def weights_format(path: str | os.PathLike) -> str | None:
    """``"torch"`` (a torch.save zip or legacy pickle), ``"safetensors"`` or None (anything else: a text file, an
    image, a truncated download), read from the first bytes, so a wrong file is named as such before a loader's
    own message (``weights_only``, ``invalid load key``) could mislead."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        return "safetensors"
    return None
