"""DeepSeek layouts against the published numbers and the straightforward reference."""

import numpy as np
import pytest

from benchmarks.straightforward_hash import naive_hash_one, straightforward_hash
from engram_cli.errors import BadInputError, LayoutMismatchError, UsageError
from engram_cli.layout import PRESETS, EngramLayout, layout_from_config, layout_from_preset, load_layout
from engram_cli.layout.config import validate_layout
from engram_cli.layout.store import save_layout


def test_bundled_tokenizer_compresses_to_published_size(deepseek_token_map):
    tm = deepseek_token_map
    assert tm.vocab_size == 129_280
    assert tm.compressed_size == 99_092
    assert round(100 * tm.reduction, 2) == 23.35
    # colibri: 15,502 classes merge more than one token; the largest merges 163
    assert tm.merged_class_count() == 15_502
    assert int(tm.class_sizes().max()) == 163


def test_compression_rules(deepseek_tokenizer, deepseek_token_map):
    tok, lut = deepseek_tokenizer, deepseek_token_map.lookup
    # case, leading space and accents collapse to one class
    ids = [tok.token_to_id(t) for t in ("A", "a", "Ġa", "ĠA")]
    assert len({int(lut[i]) for i in ids}) == 1
    # distinct words stay distinct
    assert lut[tok.token_to_id("Ġcapital")] != lut[tok.token_to_id("Ġcountry")]
    # the specials at 0..2 keep their own ids in order of first appearance
    assert list(lut[:3]) == [0, 1, 2]


def test_v41_flash_preset_matches_published_layout(v41_layout):
    lay = v41_layout
    assert lay.variant == "deepseek-v4.1"
    assert lay.layer_ids == (1, 14)
    assert lay.n_columns == 24
    assert sum(lay.primes[0]) == 384_006_168
    assert sum(lay.primes[1]) == 384_016_682
    assert lay.num_embeddings == (384_006_168, 384_016_682)
    assert list(lay.multipliers[0]) == [76632096046245, 4839876093313, 35959672319349, 73987337458391]
    assert list(lay.multipliers[1]) == [67716810739261, 51510806800915, 30921347202721, 82619226485591]
    assert lay.primes[0][0] == 16_000_057 and lay.primes[0][-1] == 16_000_463
    assert lay.primes[1][0] == 16_000_477 and lay.primes[1][-1] == 16_000_889
    all_primes = [p for layer in lay.primes for p in layer]
    assert len(set(all_primes)) == len(all_primes)
    assert lay.offsets[0][0] == 0 and lay.offsets[0][1] == lay.primes[0][0]
    assert lay.bytes_per_row() == 264
    assert lay.table_bytes(1) == 101_377_628_352
    assert lay.compressed_pad_id == 2
    checks = validate_layout(lay, PRESETS["deepseek-v4.1-flash"])
    assert all(c["ok"] for c in checks) and len(checks) == 3


def test_v41_config_with_text_config_and_pad_alias(deepseek_token_map):
    inner = dict(PRESETS["deepseek-v4.1-flash"])
    inner["engram_pad_id"] = inner.pop("engram_pad_token_id")
    lay = layout_from_config({"model_type": "deepseek_v41", "text_config": inner}, deepseek_token_map)
    assert sum(lay.primes[1]) == 384_016_682


def test_mismatch_raises_with_both_numbers(deepseek_token_map):
    cfg = dict(PRESETS["deepseek-v4.1-flash"], engram_compressed_vocab_size=99_000)
    lay = layout_from_config(cfg, deepseek_token_map)
    with pytest.raises(LayoutMismatchError) as exc:
        validate_layout(lay, cfg)
    assert "99,092" in exc.value.message and "99,000" in exc.value.message


def test_config_without_engram_fields_and_unknown_preset():
    with pytest.raises(BadInputError, match="no Engram fields"):
        layout_from_config({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(BadInputError, match="unknown preset"):
        layout_from_preset("nope")


def _small(variant="deepseek-v4.1", base=1000, n=4, heads=8, vocab=300):
    return EngramLayout.custom(
        variant=variant, layer_ids=[1, 5], max_ngram_size=n, n_heads=heads, head_dim=16,
        vocab_base=base, compressed_vocab_size=vocab, pad_id=2,
    )


@pytest.mark.parametrize("base", [1000, 20_000, 16_000_000])
def test_hash_equals_straightforward_reference(base):
    lay = _small(base=base)
    rng = np.random.default_rng(base)
    ids = rng.integers(0, 300, size=(3, 5000), dtype=np.int64)
    got = lay.hash(ids)
    local, glob = straightforward_hash(ids, lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, lay.n_heads)
    np.testing.assert_array_equal(got.local, local)
    np.testing.assert_array_equal(got.global_, glob)


def test_hash_on_v41_matches_python_integers(v41_layout):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 129_280, size=64)
    got = v41_layout.hash(ids)
    comp = v41_layout.compress(ids)
    local, glob = naive_hash_one(list(comp), 2, v41_layout.multipliers, v41_layout.primes, v41_layout.offsets, 8)
    np.testing.assert_array_equal(got.local, local)
    np.testing.assert_array_equal(got.global_, glob)


def test_global_ids_lie_in_their_head_range_and_contexts_repeat():
    lay = _small(base=5000)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 300, size=(2, 4000))
    h = lay.hash(ids)
    for li in range(2):
        off = np.asarray(lay.offsets[li])
        pr = np.asarray(lay.primes[li])
        g = h.global_[:, :, li, :]
        assert (g >= off).all() and (g < off + pr).all()
        np.testing.assert_array_equal(h.local[:, :, li, :], g - off)
    # identical 4-token contexts give identical ids in every column
    seq = np.array([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9]])
    h = lay.hash(seq)
    np.testing.assert_array_equal(h.global_[0, 4], h.global_[0, 9])
    # 2-gram columns only see (t, t-1): same bigram, same ids, even in different 4-gram contexts
    seq = np.array([[1, 2, 5, 6, 3, 4, 5, 6]])
    h = lay.hash(seq)
    np.testing.assert_array_equal(h.global_[0, 3, :, :8], h.global_[0, 7, :, :8])
    assert not np.array_equal(h.global_[0, 3, :, 16:], h.global_[0, 7, :, 16:])


def test_sequence_starts_and_dead_tokens_block_older_lookbacks():
    lay = _small(base=3000)
    rng = np.random.default_rng(3)
    toks = rng.integers(3, 300, size=40)
    starts = [0, 11, 25]
    dead = {5, 30}
    dead_mask = np.zeros(40, dtype=bool)
    dead_mask[list(dead)] = True
    got = lay.hash(toks, seq_starts=starts, dead_mask=dead_mask)
    local, glob = naive_hash_one(list(toks), lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, 8,
                                 starts=starts, dead=dead)
    np.testing.assert_array_equal(got.global_, glob)
    # a packed sequence hashes exactly like the same tokens on their own
    alone = lay.hash(toks[11:25])
    np.testing.assert_array_equal(got.global_[11:25], alone.global_)
    # the token after a dead one sees pad for every lookback from the dead one on
    only_after = lay.hash(np.concatenate([[2, 2, 2], toks[31:34]]))
    np.testing.assert_array_equal(got.global_[31], only_after.global_[3])


def test_demo_variant_rejects_dead_tokens_and_bad_ids():
    lay = _small(variant="deepseek-demo", n=3)
    with pytest.raises(UsageError):
        lay.hash(np.array([1, 2, 3]), dead_mask=np.array([False, True, False]))
    with pytest.raises(BadInputError):
        lay.hash(np.array([1, -2, 3]))


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip("torch")
    lay = _small(base=20_000)
    ids = np.random.default_rng(5).integers(0, 300, size=(2, 300))
    starts = [0, 100]
    a = lay.hash(ids, seq_starts=starts, dead_mask=ids == 7)
    b = lay.hash(torch.from_numpy(ids), seq_starts=starts, dead_mask=torch.from_numpy(ids == 7), backend="torch")
    assert isinstance(b.global_, torch.Tensor)
    np.testing.assert_array_equal(a.global_, b.global_.numpy())
    c = lay.hash(torch.from_numpy(ids), seq_starts=starts, dead_mask=ids == 7)  # CPU tensor: numpy kernel, torch out
    assert isinstance(c.global_, torch.Tensor)
    np.testing.assert_array_equal(a.global_, c.global_.numpy())


def test_compress_with_token_map_and_out_of_range(deepseek_token_map):
    lay = layout_from_preset("deepseek-v4.1-flash", deepseek_token_map)
    assert list(lay.compress(np.array([0, 1, 2, -1]))) == [0, 1, 2, -1]
    with pytest.raises(BadInputError, match="outside"):
        lay.compress(np.array([129_280]))
    no_map = layout_from_preset("deepseek-v4.1-flash")
    with pytest.raises(BadInputError, match="no token map"):
        no_map.hash(np.array([1, 2, 3]))


@pytest.mark.parametrize("fmt", ["safetensors", "npy", "json"])
def test_save_and_load_round_trip(tmp_path, deepseek_token_map, fmt):
    lay = layout_from_preset("deepseek-v4.1-flash", deepseek_token_map)
    files = save_layout(lay, tmp_path, token_map_format=fmt)
    assert files[-1] == "engram_layout.json"
    back = load_layout(tmp_path)
    assert back == lay
    np.testing.assert_array_equal(back.token_map, lay.token_map)
    ids = np.arange(100, 200)
    np.testing.assert_array_equal(back.hash(ids).global_, lay.hash(ids).global_)


def test_load_layout_errors(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_layout(tmp_path / "missing")
    (tmp_path / "engram_layout.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not a layout"):
        load_layout(tmp_path)


def test_demo_preset_matches_reference_demo_sizes(deepseek_token_map):
    lay = layout_from_preset("deepseek-demo", deepseek_token_map)
    assert lay.variant == "deepseek-demo"
    assert lay.layer_ids == (1, 15) and lay.max_ngram_size == 3 and lay.head_dim == 64
    # formats.md §1.2: 10,344,164 rows for layer 1 and 10,348,242 for layer 15
    assert lay.num_embeddings == (10_344_164, 10_348_242)
    assert lay.table_dtype == "fp32"
    ids = np.arange(1000, 1300).reshape(3, 100)
    comp = lay.compress(ids)
    local, glob = straightforward_hash(comp, lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, lay.n_heads)
    np.testing.assert_array_equal(lay.hash(ids).global_, glob)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 299), min_size=1, max_size=30),
    starts=st.sets(st.integers(0, 29), max_size=4),
    dead=st.sets(st.integers(0, 29), max_size=4),
    base=st.sampled_from([700, 20_000, 40_000_000]),
)
def test_property_hash_equals_rules_spelled_out(tokens, starts, dead, base):
    lay = _small(base=base, heads=3)
    n = len(tokens)
    starts = sorted(s for s in starts if s < n)
    dead = {d for d in dead if d < n}
    mask = np.zeros(n, dtype=bool)
    mask[list(dead)] = True
    got = lay.hash(np.array(tokens), seq_starts=starts or None, dead_mask=mask)
    local, glob = naive_hash_one(tokens, lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, 3,
                                 starts=starts, dead=dead)
    np.testing.assert_array_equal(got.local, local)
    np.testing.assert_array_equal(got.global_, glob)
    for li in range(2):
        assert (got.local[:, li, :] < np.asarray(lay.primes[li])).all()
        assert (got.local >= 0).all()


def test_threads_and_chunks_do_not_change_results():
    from engram_cli.layout import hashing

    lay = _small(base=20_000)
    ids = np.random.default_rng(2).integers(0, 300, size=(2, 10_000))
    avail = hashing.available_lookbacks(ids.shape, 4)
    args = (lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, lay.n_heads)
    one = hashing.hash_numpy(ids, avail, *args, threads=1)
    many = hashing.hash_numpy(ids, avail, *args, chunk=777, threads=3)
    np.testing.assert_array_equal(one, many)
