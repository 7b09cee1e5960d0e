"""The writer side of a conversion: ordered, checksummed, atomic output files.

Each output is written to a temporary name beside its target and renamed into place
(:func:`write_atomic`). Inside, a :class:`Sink` takes blocks in output order: pooled block
buffers (:class:`~engram_cli.tables.rows.BufferPool`) filled by the caller are hashed
(xxh3-128 or sha256) and handed to one background writer thread through a queue of at most
two blocks, so reading, converting and hashing the next block overlap the (disk-bound) write
of the previous one; memory stays four block buffers. Bytes copied unchanged go source ->
output with ``copy_file_range`` and are hashed through a read-only mapping of a 16 MiB window.
Writeback of the output is started every 32 MiB (``sync_file_range``), so the disk writes while
the next blocks are made rather than all at the end (``ENGRAM_NO_WRITEBACK=1`` turns it off).
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.fsutil import atomic_path, start_writeback
from engram_cli.tables.checksums import new_hasher
from engram_cli.tables.rows import DEFAULT_BLOCK_BYTES, BufferPool, Lease

T = TypeVar("T")

# ------------------------------------------------------------------ streaming
_copy_file_range = getattr(os, "copy_file_range", None)  # module attribute: tests replace it
# errors after which copy_file_range is given up for a read + write of the same bytes
_CFR_FALLBACK_ERRNOS = {errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EPERM,
                        errno.EBADF}
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class Sink:
    """Ordered writer of one output file, computing its checksum on the way.

    The producer (the caller) reads or converts a block into a :class:`BufferPool` buffer,
    hashes it and hands it over (``put_lease``); with ``threaded`` a background thread does
    the ``write`` calls and gives the buffer back to the pool, while the caller produces the
    next block (``write``, ``copy_file_range`` and the hashers release the GIL). Byte ranges
    copied unchanged from the source (``copy``) never pass through user space: the caller
    hashes them through a short-lived read-only ``mmap`` window and the writer thread moves
    them with ``copy_file_range`` (what ``cp`` does), falling back to ``pread`` + ``write``
    where the kernel or filesystem does not support it. Hashing stays in output order because
    only the caller hashes. ``close()`` must be called (it joins the thread and re-raises its
    error)."""

    QUEUE_BLOCKS = 2
    POOL_BLOCKS = QUEUE_BLOCKS + 2  # one being filled, two queued, one being written
    WRITE_SLICE = 512 * 1024  # write(2) in cache-sized slices: kernel copy cost was 1.5-5x lower than 32 MiB writes
    COPY_WINDOW = 16 * 2**20  # bytes per mmap hashing window
    COPY_REQUEST = 256 * 2**20  # copy_file_range request: near cp's 2 GiB in system time, and writeback starts between
    WRITEBACK_BYTES = 32 * 2**20  # start writeback every this many written bytes (0.6 GB/s disk: ~50 ms)

    def __init__(self, fh, progress: Callable[[int], None], checksum: str = "xxh3-128", threaded: bool = True,
                 pool: BufferPool | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.fh = fh
        self.hash = new_hasher(checksum)
        self.pos = 0
        self._progress = progress
        self.pool = pool if pool is not None else BufferPool(block_bytes, self.POOL_BLOCKS)
        # test hook: slow writes down so a test can kill a conversion mid-file
        self._delay = float(os.environ.get("ENGRAM_TEST_WRITE_DELAY", "0") or 0)
        self._err: BaseException | None = None
        self._out_fd = self._fileno(fh)
        self.use_copy_file_range = (_copy_file_range is not None and self._out_fd is not None
                                    and not os.environ.get("ENGRAM_NO_COPY_FILE_RANGE"))
        self._fallback: memoryview | None = None
        self._flushed = 0  # file offset up to which writeback was started (writer thread only)
        self.stream_to_disk = not os.environ.get("ENGRAM_NO_WRITEBACK")
        self._hash_scratch: np.ndarray | None = None
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._q = queue.Queue(maxsize=self.QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._run, name="engram-shard-writer", daemon=True)
            self._thread.start()

    @staticmethod
    def _fileno(fh) -> int | None:
        """The fd behind an unbuffered file (whose position ``copy_file_range`` may move), else None."""
        if not isinstance(fh, io.FileIO):
            return None
        try:
            return fh.fileno()
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- writer side
    def _write(self, mv: memoryview) -> None:
        n = mv.nbytes
        for a in range(0, n, self.WRITE_SLICE):
            piece = mv[a:a + self.WRITE_SLICE]
            done = 0
            while done < piece.nbytes:
                k = self.fh.write(piece[done:])
                if not k:
                    raise OSError("short write")
                done += k
        self._stream_out()

    def _stream_out(self) -> None:
        """Start writeback of what was written since the last call, once it reaches
        ``WRITEBACK_BYTES`` (asynchronous: the disk works while the next blocks are made)."""
        if self._out_fd is None or not self.stream_to_disk:
            return
        pos = os.lseek(self._out_fd, 0, os.SEEK_CUR)
        if pos - self._flushed >= self.WRITEBACK_BYTES:
            self.stream_to_disk = start_writeback(self._out_fd, self._flushed, pos - self._flushed)
            self._flushed = pos

    def _copy(self, fd: int, offset: int, n: int) -> None:
        """``n`` source bytes at ``offset`` appended to the output, in the kernel where possible."""
        done = 0
        while done < n:
            if self.use_copy_file_range:
                if done == 0:  # the source is read once, front to back (what cp tells the kernel too)
                    with contextlib.suppress(OSError, AttributeError):
                        os.posix_fadvise(fd, offset, n, os.POSIX_FADV_SEQUENTIAL)
                try:
                    k = _copy_file_range(fd, self._out_fd, min(n - done, self.COPY_REQUEST), offset + done)
                except OSError as exc:
                    if exc.errno not in _CFR_FALLBACK_ERRNOS:
                        raise
                    self.use_copy_file_range = False  # this and every later range: read + write
                    continue
            else:
                if self._fallback is None:
                    self._fallback = memoryview(bytearray(4 * 2**20))
                buf = self._fallback[: min(n - done, self._fallback.nbytes)]
                k = os.preadv(fd, [buf], offset + done)
                if k > 0:
                    self._write(buf[:k])
            if k <= 0:
                raise BadInputError(f"source ended at byte {offset + done} while copying it", hint="the file is truncated")
            done += k
            self._stream_out()

    def _do(self, op: tuple) -> None:
        if op[0] == "w":
            _, mv, lease = op
            try:
                if self._err is None:
                    self._write(mv)
            finally:
                if lease is not None:
                    lease.release()
        elif self._err is None:
            self._copy(*op[1:])

    def _run(self) -> None:
        while True:
            op = self._q.get()
            if op is None:
                return
            try:
                self._do(op)  # after an error: only gives buffers back, so the producer never waits forever
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                if self._err is None:
                    self._err = exc

    # ---------------------------------------------------------------- producer side
    def _submit(self, op: tuple, nbytes: int) -> None:
        if self._q is not None:
            self._q.put(op)
        else:
            self._do(op)
        self.pos += nbytes
        self._progress(nbytes)

    def _check(self) -> None:
        if self._delay:
            time.sleep(self._delay)
        if self._err is not None:
            raise self._err

    def lease(self, nbytes: int) -> Lease:
        """A block buffer of at least ``nbytes`` from the pool (waits while the writer holds them all)."""
        self._check()
        return self.pool.acquire(nbytes)

    def put_lease(self, lease: Lease, nbytes: int) -> None:
        """Hash and queue the first ``nbytes`` of a leased buffer; the writer gives it back."""
        try:
            self._check()
            mv = memoryview(lease.array[:nbytes]).cast("B")
            self.hash.update(mv)
        except BaseException:
            lease.release()
            raise
        self._submit(("w", mv, lease), nbytes)

    def put(self, data) -> None:
        """Hash and queue bytes the caller will not modify again (headers, small tensors, zeros)."""
        self._check()
        mv = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        self.hash.update(mv)
        self._submit(("w", mv, None), mv.nbytes)

    def copy(self, fd: int, offset: int, n: int) -> None:
        """Append ``n`` bytes of the (read-only) source ``fd`` at ``offset``, unchanged."""
        if not self.use_copy_file_range:
            for a in range(0, n, self.pool.size):
                k = min(self.pool.size, n - a)
                lease = self.lease(k)
                try:
                    pread_exact(fd, memoryview(lease.array[:k]), offset + a)
                except BaseException:
                    lease.release()
                    raise
                self.put_lease(lease, k)
            return
        # one queued op for the whole range, moved in COPY_REQUEST pieces (16 MiB requests cost ~30%
        # more system time than cp's 2 GiB ones); hashing runs meanwhile, window by window
        self._check()
        self._submit(("c", fd, offset, n), 0)
        for a in range(0, n, self.COPY_WINDOW):
            k = min(self.COPY_WINDOW, n - a)
            self._check()
            self._hash_source(fd, offset + a, k)
            self.pos += k
            self._progress(k)

    def _hash_source(self, fd: int, off: int, n: int) -> None:
        """Hash source bytes through a read-only mapping of just this window (no copy into user
        space; the mapping is dropped at once, so resident memory stays one window)."""
        if os.fstat(fd).st_size < off + n:  # a mapping past the end would fault (SIGBUS) on access
            raise BadInputError(f"source ends before byte {off + n}", hint="the file is truncated")
        start = off - off % mmap.ALLOCATIONGRANULARITY
        try:
            m = mmap.mmap(fd, off + n - start, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError):  # a file that cannot be mapped: read it into a scratch buffer instead
            if self._hash_scratch is None or self._hash_scratch.nbytes < n:
                self._hash_scratch = np.empty(max(n, self.COPY_WINDOW), np.uint8)
            mv = memoryview(self._hash_scratch[:n])
            pread_exact(fd, mv, off)
            self.hash.update(mv)
            return
        try:
            with memoryview(m) as whole:
                with whole[off - start:] as mv:
                    self.hash.update(mv)
        finally:
            m.close()

    def zeros(self, n: int, block: int) -> None:
        z = _zeros(min(n, block)) if n > 0 else None
        while n > 0:
            k = min(n, block)
            self.put(z[:k])
            n -= k

    def close(self, raise_error: bool = True) -> None:
        """Wait until every block is written; re-raise a write error (unless another is propagating)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self._err is not None and raise_error:
            raise self._err

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


_ZEROS: list[memoryview] = []


def _zeros(n: int) -> memoryview:
    """A shared read-only block of zero bytes (padding), at least ``n`` long."""
    if not _ZEROS or _ZEROS[0].nbytes < n:
        _ZEROS[:] = [memoryview(bytes(n))]
    return _ZEROS[0][:n]


def pread_exact(fd: int, mv: memoryview, offset: int, what: str = "source") -> None:
    """Fill ``mv`` from ``fd`` at ``offset``; a file that ends first is bad input naming ``what``."""
    got = 0
    while got < mv.nbytes:
        k = os.preadv(fd, [mv[got:]], offset + got)
        if k <= 0:
            raise BadInputError(f"{what} ends at byte {offset + got}", hint="the file is truncated")
        got += k


def write_atomic(path: Path, fill: Callable[[Sink], T], *, progress: Callable[[int], None], checksum: str = "xxh3-128",
                 pool: BufferPool | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 threaded: bool = True) -> tuple[int, str, T]:
    """Write ``path`` through a :class:`Sink` under a temporary name, renamed into place once
    ``fill(sink)`` returned and every block is on disk: ``(bytes, hex digest, fill's result)``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb", buffering=0) as fh:
            sink = Sink(fh, progress, checksum, threaded, pool, block_bytes)
            try:
                result = fill(sink)
            except BaseException:
                sink.close(raise_error=False)  # join the writer before the temporary file is closed and removed
                raise
            sink.close()
            if os.environ.get("ENGRAM_FSYNC"):
                os.fsync(fh.fileno())
    return sink.pos, sink.hexdigest(), result


def write_small(path: Path, content: bytes, checksum: str = "xxh3-128") -> tuple[int, str]:
    """A small side file (index, JSON, a copied config) written atomically: ``(bytes, digest)``."""
    h = new_hasher(checksum)
    h.update(content)
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return len(content), h.hexdigest()
