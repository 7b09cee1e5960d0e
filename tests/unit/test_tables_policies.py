"""Shard policies: exact cover of every row, and the worked P=4 example of formats.md §3.4."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engram_cli.errors import UsageError
from engram_cli.tables.model import Geometry
from engram_cli.tables.policies import PADDING, POLICIES, ranks_for, valid_head_shards


def _covered(ranges, rows):
    seen = []
    for r in ranges:
        for p in r.pieces:
            assert 0 <= p.start <= p.stop <= rows
            seen.append((p.start, p.stop))
    seen.sort()
    pos = 0
    for a, b in seen:
        assert a == pos, f"gap or overlap at {pos}"
        pos = b
    assert pos == rows


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=30), pad=st.integers(0, 50),
       world=st.integers(1, 40), policy=st.sampled_from(POLICIES))
def test_every_policy_covers_all_rows_exactly_once(sizes, pad, world, policy):
    geo = Geometry(1, tuple(sizes), sum(sizes) + pad)
    try:
        ranges = ranks_for(policy, geo, world)
    except UsageError:
        assert policy == "vllm-head" and world not in valid_head_shards(len(sizes))
        return
    assert len(ranges) == world
    _covered(ranges, sum(sizes) if PADDING[policy] == "dropped" else geo.rows)
    if policy == "ref-ceil":
        part = -(-geo.rows // world)
        assert all(r.rows + r.pad_rows == part for r in ranges)


@pytest.fixture(scope="module")
def flash():
    from engram_cli.layout import layout_from_preset

    lay = layout_from_preset("deepseek-v4.1-flash")
    return {lid: Geometry(lid, tuple(lay.primes[i]), lay.num_embeddings[i]) for i, lid in enumerate(lay.layer_ids)}


def test_worked_example_formats_3_4(flash):
    assert flash[1].rows == 384_006_168 and flash[14].rows == 384_016_682
    expect = {
        ("vllm-head", 1): (96000564, 192001740), ("vllm-head", 14): (96003054, 192007016),
        ("sglang-floor", 1): (96001542, 192003084), ("sglang-floor", 14): (96004170, 192008341),
        ("ref-ceil", 1): (96001542, 192003084), ("ref-ceil", 14): (96004171, 192008342),
    }
    for (policy, layer), (a, b) in expect.items():
        r1 = ranks_for(policy, flash[layer], 4)[1]
        assert (r1.start, r1.stop) == (a, b), (policy, layer)
    assert ranks_for("vllm-head", flash[1], 4)[1].heads == (6, 12)
    # reference: the last rank of layer 14 is padded (384016682 mod 4 == 2)
    assert ranks_for("ref-ceil", flash[14], 4)[3].pad_rows == 2


def test_vllm_head_rejects_and_lists_valid_counts(flash):
    assert valid_head_shards(24) == [1, 2, 3, 4, 5, 6, 8, 12, 24]
    with pytest.raises(UsageError) as e:
        ranks_for("vllm-head", flash[1], 7)
    assert "1, 2, 3, 4, 5, 6, 8, 12, 24" in e.value.hint


def test_vllm_edp_rank_order(flash):
    rr = ranks_for("vllm-head", flash[1], 2, edp=3)
    assert [(r.rank, r.tp_rank, r.edp_rank) for r in rr][:4] == [(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0)]
    assert rr[3].heads == (12, 16)


def test_megatron_base_plus_remainder():
    geo = Geometry(1, (7, 5), 12)
    rr = ranks_for("megatron-ep", geo, 3)
    assert [(p.start, p.stop) for p in rr[0].pieces] == [(0, 3), (7, 9)]
    assert [(p.start, p.stop) for p in rr[2].pieces] == [(5, 7), (11, 12)]
