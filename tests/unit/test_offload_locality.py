"""Locality numbers on a hand-made trace equal a straightforward count; LRU kernel vs an OrderedDict cache."""

from collections import Counter

import numpy as np
import pytest

from engram_cli.errors import BadInputError
from engram_cli.offload import corpus, locality, lru
from engram_cli.offload.locality import HashedTrace, LocalityPlan


def _trace() -> HashedTrace:
    """1 layer, 2 orders x 1 head: column 0 (2-grams) and column 1 (3-grams), 12 tokens, split at 6."""
    col0 = [1, 2, 1, 3, 1, 2, 1, 1, 4, 2, 5, 1]
    col1 = [10, 11, 12, 10, 13, 14, 10, 15, 16, 11, 17, 18]
    ids = np.asarray([col0, col1], dtype=np.int64).T[:, None, :]
    return HashedTrace(ids, np.array([0, 6]), 6, (3,), (2, 3), 1)


def test_unique_fraction_counts_distinct_rows():
    block = np.array([[1, 10], [2, 11], [1, 12], [3, 10]])
    assert locality.unique_fraction(block) == len({1, 10, 2, 11, 12, 3}) / 8


def test_static_cache_and_compulsory_misses_by_hand():
    tr = _trace()
    build, score = tr.ids[:6, 0, 0], tr.ids[6:, 0, 0]  # [1,2,1,3,1,2] / [1,1,4,2,5,1]
    curve, miss = locality.static_hit_curve(build, score, np.array([1, 2, 3, 10]))
    counts = Counter(build.tolist())
    ranked = sorted(counts, key=lambda r: (-counts[r], r))  # 1 (3x), 2 (2x), 3 (1x)
    expect = [sum(x in ranked[:k] for x in score.tolist()) / len(score) for k in (1, 2, 3, 10)]
    assert list(curve) == pytest.approx(expect)  # [3/6, 4/6, 4/6, 4/6]
    assert miss == pytest.approx(sum(x not in counts for x in score.tolist()) / len(score))  # 4 and 5: 2/6


def test_lru_curve_by_hand():
    tr = _trace()
    col = tr.ids[:, 0, 0]
    d = lru.stack_distances(col)
    rates = lru.lru_hit_rates(d, [1, 2, 3], start=6)
    assert list(rates) == pytest.approx([lru.lru_hits_reference(col.tolist(), k, 6) for k in (1, 2, 3)])
    # by hand: score accesses 1,1,4,2,5,1 after 1,2,1,3,1,2 -> capacity 1 hits only the repeated 1 at t=7
    assert rates[0] == pytest.approx(1 / 6)


@pytest.mark.parametrize("fast", [True, False])
def test_stack_distances_match_a_simulated_cache(fast):
    rng = np.random.default_rng(1)
    seq = rng.zipf(1.3, 4000) % 300
    d = lru.stack_distances(seq, fast=fast)
    caps = [1, 3, 10, 50, 299]
    assert list(lru.lru_hit_rates(d, caps, 1500)) == pytest.approx([lru.lru_hits_reference(seq.tolist(), c, 1500) for c in caps])


def test_zipf_slope_recovers_a_power_law():
    counts = np.round(1e6 * np.arange(1, 5001) ** -1.2).astype(np.int64)
    slope, (lo, hi) = locality.zipf_slope(counts, 100_000)
    assert slope == pytest.approx(-1.2, abs=0.02) and lo == 1 and hi == np.count_nonzero(counts >= 2)


def test_analyze_on_the_hand_trace():
    tr = _trace()
    c = corpus.Corpus("hand", [np.zeros(6), np.zeros(6)], "test")
    plan = LocalityPlan(decode_batches=(1, 4), prefill_chunks=(4,), cache_rows=(1, 2, 100), samples=4)
    res = locality.analyze(tr, c, plan, row_bytes=8, export_hot_rows=2)
    s2 = res.get(3, 2)
    curve, miss = locality.static_hit_curve(tr.ids[:6, 0, 0], tr.ids[6:, 0, 0], np.array([1, 2, 100]))
    assert s2.static_hit == pytest.approx(list(curve)) and s2.compulsory_miss == pytest.approx(miss)
    assert s2.unique_decode[1] == 1.0
    chunks = [tr.ids[i:i + 4, 0, 0] for i in (0, 4, 8)]
    assert min(len(set(ch.tolist())) / 4 for ch in chunks) <= s2.unique_prefill[4] <= 1.0
    assert res.cache_gb_per_layer == pytest.approx([k * 2 * 8 / 1e9 for k in (1, 2, 100)])
    rows = res.hot_rows["layer3_rows"]
    assert rows.shape == (2, 2) and rows[0, 0] == 1 and res.hot_rows["layer3_counts"][0, 0] == 6
    assert locality.interpolate_hit(res, 3, 0) == 0.0


def test_hash_corpus_splits_at_a_document_boundary(v41_layout):
    docs = [np.arange(10, 60), np.arange(100, 130), np.arange(200, 260)]
    tr = locality.hash_corpus(v41_layout, corpus.Corpus("t", docs, "test"))
    assert tr.ids.shape == (140, 2, 24) and tr.split in (50, 80)
    expect = v41_layout.hash(np.concatenate(docs)[None], seq_starts=[0, 50, 80]).global_[0]
    assert np.array_equal(tr.ids, expect)


def test_read_trace_ids_text_and_errors(tmp_path, deepseek_tokenizer):
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3\n\n4,5,6\n")
    c = corpus.read_trace(ids, deepseek_tokenizer, vocab_size=100)
    assert [d.tolist() for d in c.docs] == [[1, 2, 3], [4, 5, 6]]
    text = tmp_path / "t.txt"
    text.write_text("Hello world, this is a test.\n\nA second paragraph here.\n")
    assert len(corpus.read_trace(text, deepseek_tokenizer).docs) == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 5\n7 x 9\n")
    with pytest.raises(BadInputError, match="line 3"):
        corpus.read_trace(bad, deepseek_tokenizer)
    big = tmp_path / "big.txt"
    big.write_text("1 2\n3 999\n")
    with pytest.raises(BadInputError, match="line 2.*999"):
        corpus.read_trace(big, deepseek_tokenizer, vocab_size=100)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"hello\nworld\n\xff\xfe bad\n")
    with pytest.raises(BadInputError, match="line 3"):
        corpus.read_trace(binary, deepseek_tokenizer)
    with pytest.raises(BadInputError, match="empty"):
        (tmp_path / "e.txt").write_text("\n\n")
        corpus.read_trace(tmp_path / "e.txt", deepseek_tokenizer)


def test_bundled_text_is_real_and_sizeable(deepseek_tokenizer):
    assert len(corpus.wikipedia_texts()) > 100
    c = corpus.bundled_corpus(deepseek_tokenizer)
    assert c.n_tokens > 50_000 and len(c.docs) > 100
