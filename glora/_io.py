"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.

A crash at any moment leaves either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_writer", "atomic_save", "default_mode", "publish_tree"]


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
