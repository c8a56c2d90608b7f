"""Atomic file writes: the one way this package writes a file a reader (or a resumed run) may depend on.

A file is made under a hidden temporary name in its own folder, flushed to disk (``fsync``), renamed over its
final name, and the folder is synced, so that a killed process or a lost machine leaves either the old file or
the complete new one, never a partial one, and never a temporary file under a final name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def temporary_name(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A hidden, unique name beside ``path`` ending in ``suffix`` (default: ``path``'s own; exporters and runtimes
    choose a format by suffix)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix if suffix is None else suffix}")


def sync_folder(folder: str | os.PathLike) -> None:
    """Flushes a folder's entries (a rename inside it) to disk; a file system that cannot is left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (ending in ``suffix``, default ``path``'s) for the caller to create; when
    the block succeeds it is synced (``sync``: a file whose data is new; a link has none) and renamed over
    ``path``, and the folder synced. When the block fails, the temporary entry is removed and ``path`` is
    untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        if sync and tmp.is_file() and not tmp.is_symlink():
            _sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Renaming a hard link onto another link of the same file leaves both names: drop the temporary one.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sync_folder(path.parent)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Calls ``write`` on a new file that becomes ``path`` atomically (see the module). The file is created with
    mode 0666 less the process umask, as any new file is."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` as the content of ``path``, written atomically."""
    write_atomic(path, lambda f: f.write(data))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path``, written atomically."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def link_or_copy_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Points ``target`` at ``source``'s content atomically: a hard link when the file system allows, else a copy."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)
