"""Host gathers equal numpy fancy indexing bit for bit; index streams; the host sweep verifies what it times."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from engram_cli.errors import VerificationError
from engram_cli.offload import host, indices
from engram_cli.offload.hostbench import HostPlan, measure_gather, run_host
from engram_cli.offload.stats import dist, mean_ci, paired_ratio_ci


@pytest.fixture(scope="module")
def table():
    t = host.make_table(3 << 20, seed=5)
    yield t
    t.close()


@pytest.mark.parametrize("rb", [64, 264, 2048])
@pytest.mark.parametrize("n", [1, 24, 700, 5000])
def test_every_gather_equals_numpy_reference(table, rb, n):
    tab = table.view(rb)
    idx = np.random.default_rng(n + rb).integers(0, tab.shape[0], size=n)
    ref = tab[idx]
    with ThreadPoolExecutor(2) as pool:
        fns = {"numpy": host.gather_numpy(tab), "torch": host.gather_torch(tab),
               "threads": host.gather_threads(tab, pool, 2, min_rows=64)}
        if host.numba_available():
            fns["numba"] = host.gather_numba(tab, 2, min_rows=64)
        for name, fn in fns.items():
            out = np.zeros((n, rb), dtype=np.uint8)
            fn(idx, out)
            assert np.array_equal(out, ref), name


def test_contiguous_copy_equals_source(table):
    with ThreadPoolExecutor(2) as pool:
        copy = host.copy_contiguous(table.buf, pool, 2)
        out = np.zeros((5000, 264), dtype=np.uint8)  # 1.3 MB: split over both threads
        copy(4096, out)
    assert np.array_equal(out.reshape(-1), table.buf[4096:4096 + out.size])


def test_table_is_seeded_and_views_share_bytes():
    a, b = host.make_table(1 << 20, seed=1), host.make_table(1 << 20, seed=1)
    assert np.array_equal(a.buf, b.buf)
    assert a.view(264)[3].tobytes() == a.buf[3 * 264:4 * 264].tobytes()
    a.close()
    b.close()


def test_a_wrong_gather_is_caught(table):
    tab = table.view(264)
    idx = [np.random.default_rng(i).integers(0, tab.shape[0], size=50) for i in range(3)]

    def wrong(ix, out):
        np.take(tab, (ix + 1) % tab.shape[0], axis=0, out=out)

    with pytest.raises(VerificationError):
        measure_gather(wrong, tab, np.zeros((50, 264), np.uint8), idx, HostPlan(), "wrong")


def test_index_streams_are_fresh_and_in_range():
    arrays = indices.index_stream("uniform", 1000, 64, 5, seed=0)
    assert len({a.tobytes() for a in arrays}) == 5
    z = indices.index_stream("zipf", 1000, 5000, 2, seed=0, zipf_s=1.1)
    assert all(a.min() >= 0 and a.max() < 1000 for a in z)
    ranks = indices.zipf_ranks(np.random.default_rng(0), 1000, 20000, 1.0)
    assert (ranks == 1).mean() > (ranks == 10).mean() > 0  # rank 1 is the most frequent
    assert sorted(indices.scatter(np.arange(1, 1001), 1000)) == list(range(1000))  # a bijection
    tr = indices.TraceReplay(np.arange(10) * 7)
    assert list(tr.take(5, 4)) == [0, 2, 4, 1] and list(tr.take(5, 8)) == [3, 0, 2, 4, 1, 3, 0, 2]


def test_run_host_small_sweep_verifies_every_cell():
    plan = HostPlan(row_bytes=(64, 264), rows=(24, 600), dist_rows=(600,), budget_rows=2000, max_iters=6, thp=True)
    res = run_host(plan, table_bytes=4 << 20, threads=2, trace=np.arange(5000) * 13, zipf_s=1.0)
    assert res.cells and all(c.verified_calls >= 1 and c.latency_us.n >= plan.min_iters for c in res.cells)
    assert {c.dist for c in res.cells} == {"uniform", "zipf", "trace"}
    assert all(c.ratio is not None and c.ceiling_gbps > 0 for c in res.cells)
    assert {(c.row_bytes, c.rows) for c in res.ceilings} >= {(64, 24), (264, 600)}
    if res.thp_mode in ("always", "madvise"):
        assert {c.huge_pages for c in res.thp} == {True, False}


def test_stats_helpers():
    d = dist([1.0, 2.0, 3.0, float("nan")])
    assert d.n == 3 and d.p50 == 2.0 and d.min == 1.0
    assert dist([]).p50 is None
    lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert lo < 2.5 < hi
    lo, hi = paired_ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_thp_and_smaps_parsing(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert host.thp_mode(f) == "madvise"
    smaps = tmp_path / "smaps"
    smaps.write_text("7f00-7f10 rw-p 00000000 00:00 0\nSize: 64 kB\nAnonHugePages:      2048 kB\n"
                     "8000-9000 r-xp 00000000 00:00 0\nAnonHugePages:      0 kB\n")
    assert host.anon_huge_bytes(0x7F05, smaps) == 2048 * 1024
    assert host.anon_huge_bytes(0x8001, smaps) == 0
