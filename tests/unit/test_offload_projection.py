"""The projection is a pure function: fixed inputs give the slack, stall and overhead computed by hand."""

import dataclasses

import pytest

from engram_cli.offload import projection as P

G = P.Geometry("hand", layer_ids=(1, 3), rows_per_token=10, row_bytes=100, n_layers=4)
CURVE = P.FetchCurve(alpha_us=10.0, gbps=1.0)  # t_f(n) = 10 + 0.1 n µs
SLOW = P.FetchCurve(alpha_us=20.0, gbps=0.5)  # t_f(n) = 20 + 0.2 n µs


def test_fetch_curve_by_hand():
    assert CURVE.time_us(50, 100) == pytest.approx(15.0)
    assert CURVE.time_us(0, 100) == 0.0


def test_decode_timeline_by_hand():
    # 10 tokens x 10 rows x unique 0.5 = 50 rows per layer -> fetch 15 µs; prefetch starts after hashing at 3 µs.
    # layer 1: needed at 2 + 1*10 = 12, done at 18 -> stall 6.  layer 3: needed at 2 + 30 + 6 = 38, done at 33 -> slack 5.
    s = P.Scenario("d", "decode", tokens=10, unique=0.5)
    t = P.Timing(layer_us=10.0, embed_us=2.0, hash_us=3.0)
    p = P.project(G, s, t, CURVE, SLOW)
    l1, l3 = p.layers
    assert (l1.rows, l1.fetch_p50_us, l1.window_us, l1.slack_us, l1.stall_us) == pytest.approx((50, 15, 9, -6, 6))
    assert (l3.window_us, l3.slack_us, l3.stall_us) == pytest.approx((29, 5, 0))
    assert p.base_step_us == pytest.approx(42.0)
    assert p.stall_us == pytest.approx(6.0) and p.overhead_pct == pytest.approx(100 * 6 / 42)
    # p99 curve: 30 µs per fetch -> layer 1 done at 33 (need 12): stall 21; layer 3 done at 63, need 32 + 21 = 53: stall 10
    assert (l1.fetch_p99_us, l1.stall_p99_us, l3.stall_p99_us) == pytest.approx((30, 21, 10))
    assert p.overhead_p99_pct == pytest.approx(100 * 31 / 42)
    # break-evens: layer 1 has 12 - 3 - 10 = -1 µs for bytes -> no hit rate short of 100 % and no bandwidth helps
    assert l1.breakeven_hit == 1.0 and l1.breakeven_gbps is None
    # layer 3: 38 - 3 - 15 - 10 = 10 µs for 50 rows x 100 B -> 0.5 GB/s; hits not needed
    assert l3.breakeven_hit == 0.0 and l3.breakeven_gbps == pytest.approx(0.5)


def test_breakeven_hit_rate_by_hand():
    # 100 tokens -> 500 rows -> fetch 60 µs; layer 1 needed at 2 + 20 = 22, start 3: 9 µs left after alpha.
    # (1 - h) * 500 rows * 100 B / 1 GB/s = 9 µs -> h = 1 - 9000 / 50000 = 0.82; R* = 50000 B / 9 µs = 5.56 GB/s
    s = P.Scenario("p", "prefill", tokens=100, unique=0.5)
    t = P.Timing(layer_us=20.0, embed_us=2.0, hash_us=3.0)
    l1 = P.project(G, s, t, CURVE).layers[0]
    assert l1.stall_us == pytest.approx(63 - 22)
    assert l1.breakeven_hit == pytest.approx(0.82)
    assert l1.breakeven_gbps == pytest.approx(50000 / 9000)
    at_h = P.project(G, dataclasses.replace(s, hit=0.82), t, CURVE).layers[0]
    assert at_h.slack_us == pytest.approx(0.0, abs=1e-9)  # exactly on time
    at_r = P.project(G, s, t, P.FetchCurve(10.0, 50000 / 9000)).layers[0]
    assert at_r.slack_us == pytest.approx(0.0, abs=1e-9)


def test_interference_plumbing_and_prefetch_ahead():
    s = P.Scenario("d", "decode", tokens=10, unique=0.5)
    t = P.Timing(layer_us=10.0, embed_us=2.0, hash_us=3.0, kappa=0.1, plumbing_us=1.0)
    p = P.project(G, s, t, CURVE)
    assert p.interference_us == pytest.approx(0.1 * 30)
    assert p.overhead_pct == pytest.approx(100 * (6 + 3 + 1) / 42)
    ahead = P.project(G, dataclasses.replace(s, prefetch_ahead_us=6.0), P.Timing(10.0, 2.0, 3.0), CURVE)
    assert ahead.stall_us == 0.0 and ahead.layers[0].slack_us == pytest.approx(0.0)


def test_pure_same_inputs_same_outputs():
    s = P.Scenario("d", "decode", tokens=64, unique=0.9, hit=0.3, cache_gb=1.0)
    t = P.Timing(5.0, 1.0, 2.0, 4.0, 0.05)
    assert P.project(G, s, t, CURVE, SLOW) == P.project(G, s, t, CURVE, SLOW)


def test_fit_and_series():
    rows = [24, 384, 6144, 98304]
    fit = P.fit_fetch_curve(rows, [7 + n * 264 / 20e3 for n in rows], 264)
    assert fit.alpha_us == pytest.approx(7.0) and fit.gbps == pytest.approx(20.0)
    assert P.fit_fetch_curve([10, 10], [1, 2], 264) is None
    s = P.series(P.FetchCurve(2.0, 10.0), P.FetchCurve(5.0, 40.0), "x")
    assert s.alpha_us == 7.0 and s.gbps == pytest.approx(8.0)


def test_verdicts_and_scenarios():
    scen = P.build_scenarios((1, 256), (8192,), (0.0, 2.0), lambda n, k: 0.5, lambda gb: 0.25)
    assert [s.name for s in scen] == ["decode B=1", "decode B=256", "prefill 8k", "decode B=1, cache 2 GB",
                                      "decode B=256, cache 2 GB", "prefill 8k, cache 2 GB"]
    assert scen[3].hit == 0.25 and scen[0].hit == 0.0
    t = P.Timing(layer_us=1000.0)
    out = [P.project(G, s, t, CURVE) for s in scen]
    lines = P.verdicts(out, G)
    # slack is smallest at B=256: 1280 rows -> 10 + 128 = 138 µs of a 1000 µs window
    assert lines[0] == "layer 1 hidden at decode B <= 256 (min slack 862 µs)"
    assert lines[1].startswith("layer 1 exposed at 8k prefill: +") and "needs >=" in lines[1]
    assert len(lines) == 4


def test_presets():
    v4 = P.GEOMETRIES["v4.1-flash"]
    assert (v4.layer_ids, v4.rows_per_token, v4.row_bytes) == ((1, 14), 24, 264)
    assert P.GEOMETRIES["paper-27b"].layer_ids == (2, 15)
