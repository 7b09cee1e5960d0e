"""Atomic output helpers: write to a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(directory: bool) -> int:
    return (0o777 if directory else 0o666) & ~_umask()


def umask_file_mode() -> int:
    """The mode a plain new file gets under the current umask (``0o644`` under ``022``)."""
    return _default_mode(False)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode(False))  # after the body: writers may re-create the file (mkstemp makes 0600)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json_atomic(target: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``target`` atomically."""
    from engram_cli.jsonio import to_json_text

    with atomic_path(target) as tmp:
        tmp.write_text(to_json_text(payload, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; move it onto ``target`` on success.

    An existing non-empty ``target`` is refused unless ``force``; with ``force`` it is
    replaced only after the new contents are complete. On failure nothing is left behind.
    """
    from engram_cli.errors import UsageError

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"output path {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(f"output directory {target} is not empty", hint="pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, _default_mode(True))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait


@functools.cache
def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (loaded once), or None where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import ctypes.util

        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        fn.restype = ctypes.c_int
        return fn
    return None


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing ``[offset, offset + nbytes)`` of ``fd`` to disk now
    (``sync_file_range(..., SYNC_FILE_RANGE_WRITE)``, asynchronous), so a long sequential write
    streams to the disk while the producer works instead of piling up dirty pages that a final
    ``fsync`` must then wait for. False where the call is unavailable (not Linux) or refused."""
    fn = _sync_file_range()
    return fn is not None and fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0
