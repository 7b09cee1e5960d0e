"""The compiled hash kernel against the numpy kernel, the straightforward loop and Python
integers: every variant and rule, primes of every size, mixes near 2**63, int32 ids.

Tests taking the ``kernel`` fixture run twice, through ``EngramLayout.hash`` with the numba
kernel and with ``ENGRAM_NO_NUMBA=1`` (the numpy fallback), so CI covers both ways.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.straightforward_hash import naive_hash_one, straightforward_hash
from engram_cli.errors import UsageError
from engram_cli.layout import EngramLayout, hashing
from engram_cli.layout.store import save_layout

I64_MAX = 2**63 - 1


@pytest.fixture(params=["numba", "numpy"])
def kernel(request, monkeypatch):
    """Route ``EngramLayout.hash`` through one CPU kernel (and check that it was the one used)."""
    calls = []
    real = hashing.hash_numpy
    monkeypatch.setattr(hashing, "hash_numpy", lambda *a, **k: calls.append(1) or real(*a, **k))
    if request.param == "numba":
        pytest.importorskip("numba")
        monkeypatch.delenv("ENGRAM_NO_NUMBA", raising=False)
        monkeypatch.setattr(hashing, "NUMBA_MIN_TOKENS", 0)
    else:
        monkeypatch.setenv("ENGRAM_NO_NUMBA", "1")
    yield request.param
    assert bool(calls) == (request.param == "numpy"), "the other kernel ran"


def _layout(variant="deepseek-v4.1", base=1000, n=4, heads=8, vocab=300, layers=(1, 5)):
    return EngramLayout.custom(variant=variant, layer_ids=list(layers),
                               max_ngram_size=n, n_heads=heads, head_dim=16, vocab_base=base,
                               compressed_vocab_size=vocab, pad_id=2)


def _qwen(base=20_000, eos=7):
    """A qwen4-exp-style layout: identity compression, EOS resets (pad = EOS as in the model)."""
    lay = _layout(base=base, n=3, heads=4)
    return dataclasses.replace(lay, variant="qwen4-exp", eos_token_id=eos, pad_id=eos, compressed_pad_id=eos)


def _numba():
    return pytest.importorskip("engram_cli.layout.hash_numba")


# Bases whose primes take every path: all below 2**13 (integer %), 8191 | 8209 straddling the
# float threshold inside one order, the float path, real size, near int32, above 2**32 (integer %).
BASES = [2, 700, 8180, 20_000, 16_000_000, 2**31 - 200, 2**40]


@pytest.mark.parametrize("base", BASES)
def test_equals_straightforward_loop_for_primes_of_every_size(kernel, base):
    lay = _layout(base=base)
    ids = np.random.default_rng(base % 1000).integers(0, 300, size=(3, 3000))
    got = lay.hash(ids)
    local, glob = straightforward_hash(ids, lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, lay.n_heads)
    np.testing.assert_array_equal(got.global_, glob)
    np.testing.assert_array_equal(got.local, local)


def test_primes_straddle_the_float_threshold():
    flat = [p for row in _layout(base=8180).primes for p in row]
    assert 8191 in flat and 8209 in flat  # 2**13 - 1 takes integer %, 8209 the float path


@pytest.mark.parametrize("variant", ["deepseek-v4.1", "deepseek-demo"])
def test_v41_rules_and_demo_equal_python_integers(kernel, variant):
    lay = _layout(variant=variant, base=20_000, heads=3)
    rng = np.random.default_rng(3)
    toks = rng.integers(3, 300, size=60)
    starts, dead = [0, 11, 12, 25, 59], {5, 30, 31, 40}
    mask = np.zeros(60, dtype=bool)
    mask[list(dead)] = True
    kw = {"dead_mask": mask} if variant == "deepseek-v4.1" else {}
    got = lay.hash(toks, seq_starts=starts, **kw)
    local, glob = naive_hash_one(list(toks), lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, 3,
                                 starts=starts, dead=dead if kw else ())
    np.testing.assert_array_equal(got.global_, glob)
    np.testing.assert_array_equal(got.local, local)


def test_qwen_eos_resets_equal_python_integers(kernel):
    lay = _qwen()
    rng = np.random.default_rng(4)
    toks = rng.integers(0, 300, size=50)
    toks[[0, 9, 10, 11, 30, 49]] = 7  # EOS at the start, in a run, at the end
    got = lay.hash(toks, seq_starts=[20])
    _, glob = naive_hash_one(list(toks), 7, lay.multipliers, lay.primes, lay.offsets, 4, starts=[20], eos=7)
    np.testing.assert_array_equal(got.global_, glob)


def test_real_v41_layout_equals_python_integers(kernel, v41_layout):
    ids = np.random.default_rng(7).integers(0, 129_280, size=(2, 40))
    dead = ids % 11 == 0
    got = v41_layout.hash(ids, seq_starts=[0, 17], dead_mask=dead)
    comp = v41_layout.compress(ids)
    for b in range(2):
        _, glob = naive_hash_one(list(comp[b]), v41_layout.compressed_pad_id, v41_layout.multipliers, v41_layout.primes,
                                 v41_layout.offsets, 8, starts=[0, 17], dead=set(np.flatnonzero(dead[b]).tolist()))
        np.testing.assert_array_equal(got.global_[b], glob)


def test_numba_equals_numpy_kernel_on_long_mixed_input():
    hn = _numba()
    lay = _layout(base=16_000_000)
    rng = np.random.default_rng(11)
    comp = rng.integers(0, 300, size=(3, 20_000))
    starts = rng.random(comp.shape) < 0.01
    dead = rng.random(comp.shape) < 0.01
    args = (lay.compressed_pad_id, lay.multipliers, lay.primes, lay.offsets, lay.n_heads)
    avail = hashing.available_lookbacks(comp.shape, 4, starts, dead)
    want = hashing.hash_numpy(comp, avail, *args)
    for threads, chunk in ((1, 4096), (2, 777), (2, 1)):
        got = hn.hash_global(comp, *args, start_mask=starts, dead_mask=dead, threads=threads, chunk=chunk)
        np.testing.assert_array_equal(got, want)
    eos = hashing.available_lookbacks(comp.shape, 4, hashing.eos_starts(comp, starts, 5))
    np.testing.assert_array_equal(hn.hash_global(comp, *args, start_mask=starts, eos_id=5), hashing.hash_numpy(comp, eos, *args))


# Prime sets for the adversarial mixes: every path in mixed orders (integer %, the general float
# path, above int32) and orders whose primes all take ``mod_fast`` (its extremes 8209 and 2**31 - 1).
ADVERSARIAL_PRIMES = {
    "mixed": [[2, 3, 8191, 8209], [65_521, 16_000_057, 2**31 - 1, 2**61 - 1]],
    "fast": [[8209, 8219, 2**31 - 19, 2**31 - 1], [16_000_057, 2**31 - 1, 8209, 65_521]],
}


def _adversarial(primes, n_heads=2):
    """Multipliers at the int64 bound for vocab 300, tokens at its top: products and mixes near 2**63."""
    vocab = 300
    bound = I64_MAX // vocab
    mults = [[bound - 1 if bound % 2 == 0 else bound, bound - 2 if bound % 2 else bound - 3, bound - 40] for _ in range(2)]
    offsets = [list(np.concatenate([[0], np.cumsum(row[:-1])])) for row in primes]
    rng = np.random.default_rng(5)
    comp = np.where(rng.random((2, 4000)) < 0.7, vocab - 1 - rng.integers(0, 3, (2, 4000)), rng.integers(0, vocab, (2, 4000)))
    return comp.astype(np.int64), mults, primes, offsets, n_heads


@pytest.mark.parametrize("prime_set", sorted(ADVERSARIAL_PRIMES))
def test_mixes_near_2_63_equal_numpy_and_straightforward(prime_set):
    hn = _numba()
    comp, mults, primes, offsets, heads = _adversarial(ADVERSARIAL_PRIMES[prime_set])
    products = comp.max() * np.asarray(mults, dtype=object)
    assert (products < 2**63).all() and (products > 2**62).all()
    pr = np.asarray(primes, dtype=np.int64)
    fast = hn._fast_orders(comp, 299, np.asarray(mults, dtype=np.int64), pr, hn.reciprocals(pr), heads)
    assert fast.all() if prime_set == "fast" else fast.any() and not fast.all()  # both loops run where meant
    _, want = straightforward_hash(comp, 299, mults, primes, offsets, heads)
    got = hn.hash_global(comp, 299, mults, primes, offsets, heads)
    np.testing.assert_array_equal(got, want)
    avail = hashing.available_lookbacks(comp.shape, 3)
    np.testing.assert_array_equal(hashing.hash_numpy(comp, avail, 299, mults, primes, offsets, heads), want)
    _, slow = naive_hash_one(list(comp[0, :50]), 299, mults, primes, offsets, heads)
    np.testing.assert_array_equal(got[0, :50], slow)


def _edge_inputs(p):
    """x near 2**63 and near multiples of p (below and above), plus the ends of the range."""
    top = I64_MAX // p
    ks = np.concatenate([top - np.arange(2000), np.random.default_rng(0).integers(2**20, top, 2000)])
    xs = [int(k) * p + d for k in ks for d in (-2, -1, 0, 1, p // 2, p - 1) if 0 <= int(k) * p + d <= I64_MAX]
    return xs + [I64_MAX, I64_MAX - 1, 0, 1, p - 1, p, 2**53 + 1, 2**62]


@pytest.mark.parametrize("p", [8209, 2**31 - 1])
def test_fast_modulo_edge_takes_and_skips_the_correction(p):
    """``mod_fast`` at its smallest and largest prime: the rounded quotient is floor(x/p) or one
    more, and the one correction (``r += p``) is needed for some inputs and not for others."""
    hn = _numba()
    inv = float(hn.reciprocals(np.array([p]))[0])
    taken = skipped = 0
    for x in _edge_inputs(p):
        q = round(float(x) * inv)  # fl(fl(x) * fl(1/p)) rounded half-even, as Q + 2**52 does
        assert x // p <= q <= x // p + 1
        taken += q > x // p
        skipped += q == x // p
        assert hn.mod_fast(np.int64(x), float(x), np.int64(p), inv) == x % p
    assert taken and skipped, "the test no longer reaches both cases"


def test_float_modulo_edge_needs_both_corrections():
    """At p = 8209 (smallest prime >= 2**13) and x near 2**63 and near multiples of p, the
    float quotient is off by one both ways and the integer correction repairs it."""
    hn = _numba()
    p = 8209
    inv = float(hn.reciprocals(np.array([p]))[0])
    assert inv != 0.0 and float(hn.reciprocals(np.array([8191]))[0]) == 0.0
    xs = _edge_inputs(p)
    low = high = 0
    for x in xs:
        q = hn.quotient_estimate(np.int64(x), inv)
        assert abs(q - x // p) <= 1
        low += q < x // p
        high += q > x // p
        assert hn.mod_exact(np.int64(x), np.int64(p), inv) == x % p
    assert low and high, "the test no longer reaches the corrections"


@pytest.mark.parametrize("p", [2, 3, 8191, 8209, 65_521, 16_000_057, 2**31 - 1, 2**32 + 15, 2**61 - 1])
def test_mod_exact_every_prime_size(p):
    hn = _numba()
    inv = float(hn.reciprocals(np.array([p]))[0])
    rng = np.random.default_rng(p % 97)
    xs = [int(v) for v in rng.integers(0, I64_MAX, 3000, dtype=np.int64)] + [I64_MAX - i for i in range(50)]
    xs += [-1, -p, -(2**63)]  # negative mixes (never produced by valid inputs) follow numpy's floor modulo
    for x in xs:
        assert hn.mod_exact(np.int64(x), np.int64(p), inv) == x % p


def test_int32_ids_equal_int64(kernel, v41_layout):
    ids = np.random.default_rng(2).integers(0, 129_280, size=(2, 500))
    a = v41_layout.hash(ids, seq_starts=[0, 100])
    b = v41_layout.hash(ids, seq_starts=[0, 100], id_dtype="int32")
    assert b.global_.dtype == np.int32 and b.local.dtype == np.int32
    np.testing.assert_array_equal(a.global_, b.global_)
    np.testing.assert_array_equal(a.local, b.local)
    assert int(b.global_.max()) < max(v41_layout.num_embeddings)


def test_int32_refused_when_rows_exceed_it(kernel):
    lay = _layout(base=1000, n=2, heads=1, layers=(1,))
    fits = dataclasses.replace(lay, num_embeddings=(2**31,))  # largest id 2**31 - 1
    assert fits.hash(np.arange(10), id_dtype="int32").global_.dtype == np.int32
    big = dataclasses.replace(lay, num_embeddings=(2**31 + 1,))
    with pytest.raises(UsageError, match=r"int32 cannot hold this layout's row ids: a layer has 2,147,483,649 rows"):
        big.hash(np.arange(10), id_dtype="int32")
    assert big.hash(np.arange(10)).global_.dtype == np.int64
    with pytest.raises(UsageError, match="unknown id dtype"):
        lay.hash(np.arange(10), id_dtype="int16")


def test_torch_kernel_equals_cpu_with_every_rule():
    torch = pytest.importorskip("torch")
    lay = _layout(base=20_000)
    ids = np.random.default_rng(8).integers(0, 300, size=(2, 700))
    dead = ids % 13 == 0
    want = lay.hash(ids, seq_starts=[0, 300], dead_mask=dead, backend="numpy")
    got = lay.hash(torch.from_numpy(ids), seq_starts=[0, 300], dead_mask=torch.from_numpy(dead), backend="torch",
                   id_dtype="int32")
    assert got.global_.dtype == torch.int32
    np.testing.assert_array_equal(got.global_.numpy(), want.global_)
    q = _qwen()
    ids[:, ::9] = 7
    np.testing.assert_array_equal(q.hash(torch.from_numpy(ids), backend="torch").global_.numpy(),
                                  q.hash(ids, backend="numpy").global_)


def test_no_numba_env_and_small_inputs_use_numpy(monkeypatch):
    monkeypatch.setenv("ENGRAM_NO_NUMBA", "1")
    assert not hashing.numba_enabled()
    monkeypatch.setenv("ENGRAM_NO_NUMBA", "0")
    pytest.importorskip("numba")
    assert hashing.numba_enabled()
    calls = []
    real = hashing.hash_numpy
    monkeypatch.setattr(hashing, "hash_numpy", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.delitem(sys.modules, "engram_cli.layout.hash_numba", raising=False)
    _layout().hash(np.arange(100) % 300)  # below NUMBA_MIN_TOKENS: numba's import would cost more than it saves
    assert calls
    monkeypatch.setitem(sys.modules, "engram_cli.layout.hash_numba", _numba())  # loaded: small inputs use it too
    calls.clear()
    _layout().hash(np.arange(100) % 300)
    assert not calls


def test_help_does_not_import_numba_or_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from engram_cli.cli.app import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "import engram_cli.layout, engram_cli.layout.hashing\n"
        "bad = [m for m in ('numba', 'torch', 'llvmlite', 'sympy', 'engram_cli.layout.hash_numba') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_id_dtype(cli, tmp_path):
    import json

    a = json.loads(cli("hash", "--ids", "1,2,3,4,5", "--json").stdout)
    b = json.loads(cli("hash", "--ids", "1,2,3,4,5", "--json", "--id-dtype", "int32").stdout)
    assert a == b
    big = dataclasses.replace(_layout(base=1000, n=2, heads=1, layers=(1,)), num_embeddings=(2**31 + 1,))
    save_layout(big, tmp_path / "big")
    res = cli("hash", "--ids", "1,2", "--layout", str(tmp_path / "big"), "--id-dtype", "int32", "--json")
    assert res.exit_code == 2 and "int32 cannot hold" in res.output and not res.stdout.startswith("{")
    assert cli("hash", "--ids", "1,2", "--layout", str(tmp_path / "big"), "--json").exit_code == 0
