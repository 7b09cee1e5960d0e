"""The file tier: every reader returns the numpy reference rows bit for bit; tmpfs is detected."""

import os
from pathlib import Path

import numpy as np
import pytest

from engram_cli.offload import files
from engram_cli.offload.filebench import FilePlan, run_files


@pytest.fixture()
def table_file(tmp_path):
    path = tmp_path / "t.bin"
    files.write_table_file(path, 2 << 20, seed=3)
    return path


def test_pattern_is_the_file_content(table_file):
    data = np.fromfile(table_file, dtype=np.uint8)
    assert data.size == 2 << 20
    idx = np.array([0, 5, 7000, data.size // 264 - 1])
    assert np.array_equal(files.expected_rows(idx, 264, seed=3), data[: data.size // 264 * 264].reshape(-1, 264)[idx])
    assert not np.array_equal(files.expected_rows(idx, 264, seed=4), files.expected_rows(idx, 264, seed=3))


@pytest.mark.parametrize("random_advice", [True, False])
def test_mmap_rows_equal_reference(table_file, random_advice):
    idx = np.random.default_rng(0).integers(0, (2 << 20) // 264, size=100)
    out = np.zeros((100, 264), dtype=np.uint8)
    fd = os.open(table_file, os.O_RDONLY)
    try:
        files.drop_cache(fd)
        lat = files.mmap_rows(fd, 2 << 20, 264, idx, out, random_advice=random_advice)
    finally:
        os.close(fd)
    assert len(lat) == 100 and np.array_equal(out, files.expected_rows(idx, 264, seed=3))


@pytest.mark.parametrize("rb", [64, 264, 2048])
def test_pread_and_direct_rows_equal_reference(table_file, rb):
    idx = np.random.default_rng(rb).integers(0, (2 << 20) // rb, size=64)
    ref = files.expected_rows(idx, rb, seed=3)
    fd = os.open(table_file, os.O_RDONLY)
    out, times = np.zeros((64, rb), dtype=np.uint8), np.zeros(64)
    try:
        files.pread_rows(fd, rb, idx, out, 0, 64, times)
    finally:
        os.close(fd)
    assert np.array_equal(out, ref) and (times > 0).all()
    dfd = files.open_direct(table_file)
    if dfd is None:
        pytest.skip("O_DIRECT is not supported here")
    out2 = np.zeros((64, rb), dtype=np.uint8)
    try:
        read = files.direct_rows(dfd, rb, idx, out2, 0, 64, times)
    finally:
        os.close(dfd)
    assert np.array_equal(out2, ref)
    assert read >= 64 * files.BLOCK  # at least one 4 KiB block per row


def test_run_files_small(tmp_path):
    plan = FilePlan(rows=32, warm_rows=800, batch=100, qds=(1, 4), seq_bytes=1 << 20)
    res = run_files(plan, tmp_path, 4 << 20, seed=1)
    assert not Path(res.path).exists()  # the table file is removed
    kinds = {(c.method, c.cache, c.qd) for c in res.cells}
    assert ("mmap", "cold", 1) in kinds and ("pread", "cold", 4) in kinds and ("mmap", "warm", 1) in kinds
    assert all(c.verified_rows == c.rows for c in res.cells)
    assert all(c.latency_us.n > 0 and c.rows_per_s > 0 for c in res.cells)
    assert res.seq_gbps is not None and res.seq_gbps.p50 > 0


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_tmpfs_is_detected():
    fstype, mount = files.filesystem_of(Path("/dev/shm"))
    if fstype not in files.TMPFS_TYPES:
        pytest.skip(f"/dev/shm is {fstype} here")
    res = run_files(FilePlan(rows=8, warm_rows=100, batch=50, qds=(1,), seq_bytes=1 << 20, direct=False),
                    Path("/dev/shm"), 1 << 20)
    assert res.on_tmpfs and any("tmpfs" in w for w in res.warnings)
