"""The shard I/O path: the recycled block-buffer pool, the writer thread's ordering, and the
``copy_file_range`` copy of unchanged bytes with its read + write fallbacks (same bytes, same
checksum either way)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tables_helpers import make_v41_checkpoint  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402
from engram_cli.errors import BadInputError  # noqa: E402
from engram_cli.tables import writer as ex  # noqa: E402
from engram_cli.tables.rows import BufferPool  # noqa: E402


# ---------------------------------------------------------------- pool
def test_pool_is_bounded_and_recycles():
    pool = BufferPool(1024, 2)
    a, b = pool.acquire(100), pool.acquire(1024)
    assert pool.created == 2 and pool.in_use == 2
    with pytest.raises(TimeoutError):
        pool.acquire(10, timeout=0.05)  # all out: waits, never makes a third
    arr = a.array
    a.release()
    c = pool.acquire(512)
    assert c.array is arr and pool.created == 2  # the same buffer, not a new one
    with pytest.raises(RuntimeError):
        a.release()  # released twice
    big = pool.acquire(4096)  # larger than the pool's buffers: a one-off, outside the bound
    assert big.array.nbytes == 4096 and pool.in_use == 2
    big.release()
    b.release()
    c.release()
    assert pool.in_use == 0


def test_pool_acquire_waits_for_release():
    pool = BufferPool(64, 1)
    held = pool.acquire(64)
    got = []
    th = threading.Thread(target=lambda: got.append(pool.acquire(64)))
    th.start()
    time.sleep(0.05)
    assert not got  # still waiting
    held.release()
    th.join(5)
    assert got and got[0].array is held.array


class SlowFile(io.RawIOBase):
    """A writable that copies what it is given slowly (so buffers stay queued for a while)."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        time.sleep(0.001)
        self.data += bytes(b)
        return len(b)


def test_leased_buffer_is_never_reused_before_it_is_written():
    pool = BufferPool(4096, 2)  # fewer buffers than the queue can hold: the producer must wait
    f = SlowFile()
    sink = ex.Sink(f, lambda n: None, "xxh3-128", True, pool)
    sink.WRITE_SLICE = 512  # several slow writes per block
    want = bytearray()
    for i in range(40):
        n = 1000 + 61 * i
        lease = sink.lease(n)
        lease.array[:n] = i  # overwriting a buffer still being written would corrupt the output
        want += bytes([i]) * n
        sink.put_lease(lease, n)
    sink.close()
    assert bytes(f.data) == bytes(want)
    assert sink.hexdigest() == xxhash.xxh3_128(bytes(want)).hexdigest()
    assert pool.created == 2 and pool.in_use == 0


def test_writer_error_gives_buffers_back():
    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(28, "No space left on device")

    pool = BufferPool(1024, 2)
    sink = ex.Sink(Broken(), lambda n: None, "xxh3-128", True, pool)
    with pytest.raises(OSError, match="No space"):
        for _ in range(20):  # would block forever if the failed writer kept the buffers
            lease = sink.lease(1024)
            sink.put_lease(lease, 1024)
        sink.close()
    sink.close(raise_error=False)
    assert pool.in_use == 0


# ---------------------------------------------------------------- copy_file_range and its fallbacks
def _copy_through_sink(tmp_path, data: bytes, threaded: bool = True):
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    out = tmp_path / "out.bin"
    import os

    fd = os.open(src, os.O_RDONLY)
    try:
        with open(out, "wb", buffering=0) as fh:
            sink = ex.Sink(fh, lambda n: None, "sha256", threaded, BufferPool(1 << 16, 3))
            sink.put(b"HEAD")
            sink.copy(fd, 5, len(data) - 5)
            sink.put(b"TAIL")
            sink.copy(fd, 0, 3)
            sink.close()
    finally:
        os.close(fd)
    want = b"HEAD" + data[5:] + b"TAIL" + data[:3]
    assert out.read_bytes() == want
    assert sink.hexdigest() == hashlib.sha256(want).hexdigest()
    return sink


@pytest.mark.parametrize("threaded", [True, False])
def test_copy_uses_copy_file_range(tmp_path, monkeypatch, threaded):
    if ex._copy_file_range is None:
        pytest.skip("no os.copy_file_range here")
    calls = []
    real = ex._copy_file_range

    def spy(*a):
        calls.append(a[2])
        return real(*a)

    monkeypatch.setattr(ex, "_copy_file_range", spy)
    monkeypatch.setattr(ex.Sink, "COPY_WINDOW", 1 << 16)
    data = np.random.default_rng(1).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    sink = _copy_through_sink(tmp_path, data, threaded)
    assert calls and sink.use_copy_file_range


def test_copy_without_copy_file_range(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "_copy_file_range", None)
    data = np.random.default_rng(2).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    sink = _copy_through_sink(tmp_path, data)
    assert not sink.use_copy_file_range


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_copy_file_range_failure_falls_back(tmp_path, monkeypatch, code):
    def refuse(*a):
        raise OSError(code, "not here")

    monkeypatch.setattr(ex, "_copy_file_range", refuse)
    data = np.random.default_rng(3).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    sink = _copy_through_sink(tmp_path, data)
    assert not sink.use_copy_file_range


def test_copy_file_range_real_error_is_raised(tmp_path, monkeypatch):
    def broken(*a):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(ex, "_copy_file_range", broken)
    with pytest.raises(OSError, match="I/O error"):
        _copy_through_sink(tmp_path, b"x" * 1000)


def test_unmappable_source_is_hashed_by_reading(tmp_path, monkeypatch):
    import mmap as mmap_mod

    class NoMap:
        ALLOCATIONGRANULARITY = mmap_mod.ALLOCATIONGRANULARITY
        MAP_SHARED = mmap_mod.MAP_SHARED
        PROT_READ = mmap_mod.PROT_READ

        @staticmethod
        def mmap(*a, **k):
            raise OSError(errno.ENODEV, "no mmap")

    monkeypatch.setattr(ex, "mmap", NoMap)
    _copy_through_sink(tmp_path, np.random.default_rng(4).integers(0, 256, 70_000, dtype=np.uint8).tobytes())


def test_copy_past_end_of_source_is_bad_input(tmp_path):
    import os

    src = tmp_path / "s.bin"
    src.write_bytes(b"y" * 1000)
    fd = os.open(src, os.O_RDONLY)
    try:
        with open(tmp_path / "o.bin", "wb", buffering=0) as fh:
            sink = ex.Sink(fh, lambda n: None)
            with pytest.raises(BadInputError):
                sink.copy(fd, 500, 1000)
            sink.close(raise_error=False)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- whole conversions: same output either way
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root, _ = make_v41_checkpoint(tmp_path_factory.mktemp("io") / "src")
    return root


def _convert(root, out, *args):
    r = CliRunner().invoke(app, ["shard", "convert", str(root), "-o", str(out), *map(str, args), "--json"])
    assert r.exit_code == 0, r.output
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".safetensors", ".bin", ".gguf")}
    doc = json.loads((out / "engram-shards.json").read_text())
    return files, {f["name"]: f["xxh3_128"] for f in doc["files"]}


@pytest.mark.parametrize("args", [
    ["--to", "hf", "--max-shard-size", "2MB"],
    ["--to", "ranks", "--policy", "vllm-head", "--ranks", 3],
    ["--to", "packed"],
    ["--to", "hf", "--dtype", "bf16", "--block-size", "64KB"],
])
def test_copy_file_range_and_fallback_give_identical_outputs(ckpt, tmp_path, monkeypatch, args):
    fast = _convert(ckpt, tmp_path / "fast", *args, "--verify", "full")
    monkeypatch.setattr(ex, "_copy_file_range", None)
    slow = _convert(ckpt, tmp_path / "slow", *args, "--verify", "full")
    monkeypatch.setenv("ENGRAM_NO_COPY_FILE_RANGE", "1")
    monkeypatch.setattr(ex.Sink, "POOL_BLOCKS", 1)  # one buffer: producer and writer strictly alternate
    one = _convert(ckpt, tmp_path / "one", *args, "--block-size", "64KB")
    assert fast == slow == one
    assert fast[1]
    for name, digest in fast[1].items():  # the recorded checksum is the one of the bytes on disk
        assert digest == xxhash.xxh3_128(fast[0][name]).hexdigest()
    r = CliRunner().invoke(app, ["shard", "verify", str(tmp_path / "fast"), "--source", str(ckpt)])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- early writeback
@pytest.mark.parametrize("threaded", [True, False])
def test_writeback_is_started_in_order_over_written_and_copied_bytes(tmp_path, monkeypatch, threaded):
    """Writes and copies alike start writeback of consecutive, non-overlapping ranges that end at
    the file position, and the output bytes are unchanged."""
    ranges = []
    monkeypatch.setattr(ex, "start_writeback", lambda fd, off, n: ranges.append((off, n)) or True)
    monkeypatch.setattr(ex.Sink, "WRITEBACK_BYTES", 1 << 15)
    monkeypatch.setattr(ex.Sink, "COPY_REQUEST", 1 << 16)
    data = np.random.default_rng(3).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    _copy_through_sink(tmp_path, data, threaded)
    assert len(ranges) >= 4
    assert ranges[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))
    assert all(n >= 1 << 15 for _, n in ranges)
    assert ranges[-1][0] + ranges[-1][1] <= 4 + len(data) - 5 + 4 + 3


def test_writeback_call_is_real_and_can_be_turned_off(tmp_path, monkeypatch):
    from engram_cli.fsutil import start_writeback

    p = tmp_path / "f.bin"
    with open(p, "wb", buffering=0) as fh:
        fh.write(b"x" * 100_000)
        ok = start_writeback(fh.fileno(), 0, 100_000)
    assert ok is (sys.platform == "linux")
    monkeypatch.setenv("ENGRAM_NO_WRITEBACK", "1")
    calls = []
    monkeypatch.setattr(ex, "start_writeback", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(ex.Sink, "WRITEBACK_BYTES", 1 << 10)
    _copy_through_sink(tmp_path, bytes(50_000))
    assert not calls
