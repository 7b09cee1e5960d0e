"""CKA estimators against the textbook formulas, their invariances, the minibatch estimator's
convergence, the alignment index, the span reader and the robustness transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engram_cli.analysis import cka as C  # noqa: E402
from engram_cli.analysis.alignment import align, argmax_match, soft_alignment_index  # noqa: E402
from engram_cli.analysis.cka_features import clamp_outliers, remove_top_pcs  # noqa: E402
from engram_cli.analysis.cka_run import CkaSettings, validate  # noqa: E402
from engram_cli.analysis.spans import Span, build_entity_spans, bundled_spans_path, final_token, read_spans  # noqa: E402
from engram_cli.errors import BadInputError, UsageError  # noqa: E402

# -- reference implementations, straight from the formulas ---------------------------------

def ref_linear(x):
    return x @ x.T


def ref_rbf(x, threshold=1.0):
    """Kornblith et al. (2019) ``gram_rbf``: bandwidth from the median of all squared distances."""
    g = x @ x.T
    sq = np.diag(g)
    d2 = -2 * g + sq[:, None] + sq[None, :]
    return np.exp(-d2 / (2 * threshold ** 2 * np.median(d2)))


def ref_hsic_unbiased(K, L):
    """Song et al. (2012) HSIC_1: 1/(n(n-3)) [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1]."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)) / (n * (n - 3))


def ref_hsic_biased(K, L):
    """Gretton et al. (2005) HSIC_0 = tr(K H L H) / (n-1)^2."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_cka(x, y, kernel="linear", unbiased=False):
    k = ref_linear if kernel == "linear" else ref_rbf
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    K, L = k(x), k(y)
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def _data(seed=0, la=3, lb=4, n=40, da=12, db=30):
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(la, n, da))
    mix = rng.normal(size=(da, db))
    xb = np.stack([0.7 * xa[i % la] @ mix + rng.normal(size=(n, db)) * (1 + i) for i in range(lb)])
    xb[1] += 3.0  # an offset: CKA must not care
    return xa, xb


def _cka(xa, xb, **kw):
    t = C.hsic_terms(torch.tensor(xa), None if xb is None else torch.tensor(xb), **kw)
    return C.cka_from_hsic(t.xy, t.xx, t.yy), t


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("path", ["gram", "feature", "blocked"])
def test_matches_kornblith_formulas(kernel, unbiased, path):
    if kernel == "rbf" and path == "feature":
        pytest.skip("the feature-space form is linear only")
    xa, xb = _data()
    ref = np.array([[ref_cka(a, b, kernel, unbiased) for b in xb] for a in xa])
    if path == "blocked":
        t = C.blocked_gram_hsic(torch.tensor(xa), torch.tensor(xb), unbiased=unbiased, kernel=kernel,
                                block_bytes=8 * 40 * 7 * 5)  # 5-row blocks
        S = C.cka_from_hsic(t.xy, t.xx, t.yy)
    else:
        S, t = _cka(xa, xb, unbiased=unbiased, kernel=kernel, path=path)
    np.testing.assert_allclose(S, ref, rtol=0, atol=1e-10)
    # the HSIC values themselves carry the right scale (the minibatch average depends on it)
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    k = ref_linear if kernel == "linear" else ref_rbf
    ref_xy = np.array([[h(k(a), k(b)) for b in xb] for a in xa])
    np.testing.assert_allclose(t.xy, ref_xy, rtol=1e-9, atol=1e-12 * np.abs(ref_xy).max())


def test_feature_path_chosen_for_many_samples_and_agrees():
    xa, xb = _data(n=300, da=4, db=5)
    assert C.choose_path(300, (3, 4), (4, 5), "linear") == "feature"
    assert C.choose_path(40, (30, 576), (30, 576), "linear") == "gram"
    assert C.choose_path(10 ** 6, (3, 4), (4, 5), "rbf") == "gram"
    S_auto, _ = _cka(xa, xb, unbiased=True)
    S_gram, _ = _cka(xa, xb, unbiased=True, path="gram")
    np.testing.assert_allclose(S_auto, S_gram, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_linear_invariances(unbiased):
    xa, xb = _data(seed=3)
    S, _ = _cka(xa, xb, unbiased=unbiased)
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(xa.shape[2], xa.shape[2])))
    S_rot, _ = _cka(np.einsum("lnd,de->lne", xa, q) * 17.5, xb * 0.01, unbiased=unbiased)
    np.testing.assert_allclose(S_rot, S, atol=1e-10)


def test_self_comparison_exact_unit_diagonal_and_symmetric():
    xa, _ = _data(seed=5, la=6)
    for kw in ({"path": "gram"}, {"path": "feature"}, {"kernel": "rbf"}):
        for unbiased in (True, False):
            S, _ = _cka(xa, None, unbiased=unbiased, **kw)
            assert (np.diag(S) == 1.0).all() and (S == S.T).all(), kw
    t = C.blocked_gram_hsic(torch.tensor(xa), None, unbiased=True, block_bytes=8 * 40 * 6 * 3)
    S = C.cka_from_hsic(t.xy, t.xx, t.yy)
    assert (np.diag(S) == 1.0).all() and (S == S.T).all()
    acc = C.MinibatchAccumulator()
    for b in range(0, 40, 10):
        acc.update(torch.tensor(xa[:, b:b + 10]), None)
    S = acc.cka()
    assert (np.diag(S) == 1.0).all() and (S == S.T).all()


def test_undefined_cells_never_crash():
    xa, xb = _data(seed=2)
    xa[1] = 1.0  # a constant layer: its self-HSIC is 0
    for est in (True, False):
        S, t = _cka(xa, xb, unbiased=est)
        assert np.isnan(S[1]).all() and np.isfinite(S[[0, 2]]).all()
    assert np.isnan(C.cka_from_hsic(np.ones((1, 1)), np.array([-1e-9]), np.array([2.0]))).all()


def test_minibatch_converges_to_full_unbiased():
    """The mean of per-batch HSIC_1 over random partitions is the full-sample U-statistic (a
    U-statistic is the average of its subset U-statistics), and CKA's spread shrinks as b grows."""
    rng = np.random.default_rng(11)
    n = 512
    z = rng.normal(size=(n, 6))
    xa = np.stack([z @ rng.normal(size=(6, 16)) + rng.normal(size=(n, 16))])
    xb = np.stack([np.tanh(z @ rng.normal(size=(6, 24))) + 0.5 * rng.normal(size=(n, 24))])
    full, tf = _cka(xa, xb, unbiased=True, path="gram")
    rms, reps = {}, 12
    for b in (8, 32, 128, n):
        vals, xys = [], []
        for r in range(reps):
            perm = np.random.default_rng([r, b]).permutation(n)
            acc = C.MinibatchAccumulator()
            for s in range(0, n, b):
                sel = np.sort(perm[s:s + b])
                acc.update(torch.tensor(xa[:, sel]), torch.tensor(xb[:, sel]))
            vals.append(acc.cka()[0, 0])
            xys.append(acc.mean_terms().xy[0, 0])
        vals, xys = np.array(vals), np.array(xys)
        rms[b] = float(np.sqrt(np.mean((vals - full[0, 0]) ** 2)))
        if b < n:  # unbiased for the full-sample term: within 4 standard errors of the partitions' mean
            se = xys.std(ddof=1) / np.sqrt(reps)
            assert abs(xys.mean() - tf.xy[0, 0]) <= 4 * se + 1e-12, (b, xys.mean(), tf.xy[0, 0], se)
    assert rms[n] < 1e-12
    assert rms[8] > rms[32] > rms[128] > rms[n], rms


@pytest.mark.parametrize("kw", [{"kernel": "linear", "path": "gram"}, {"kernel": "rbf"}, {"path": "feature"}])
def test_batched_kernels_equal_per_batch(kw):
    """The fast path (g batches per call) against one call per batch."""
    xa, xb = _data(seed=8, n=60)
    g, b = 5, 12
    ta = torch.tensor(xa).reshape(3, g, b, -1)
    tb = torch.tensor(xb).reshape(4, g, b, -1)
    main, same = C.hsic_terms_batched(ta, [tb, None], unbiased=True, **kw)
    for i in range(g):
        one = C.hsic_terms(ta[:, i], tb[:, i], unbiased=True, **kw)
        own = C.hsic_terms(ta[:, i], None, unbiased=True, **kw)
        for f in ("xy", "xx", "yy"):
            np.testing.assert_allclose(getattr(main, f)[i], getattr(one, f), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(getattr(same, f)[i], getattr(own, f), rtol=1e-12, atol=1e-12)
        assert (np.diagonal(same.xy[i]) == same.xx[i]).all()


def test_batch_bootstrap_identity_and_spread():
    xa, xb = _data(seed=4, n=80)
    acc = C.MinibatchAccumulator()
    for s in range(0, 80, 10):
        acc.update(torch.tensor(xa[:, s:s + 10]), torch.tensor(xb[:, s:s + 10]))
    same = C.batch_bootstrap(acc.stacked(), np.ones((1, acc.n_batches)))
    np.testing.assert_allclose(same[0], acc.cka(), atol=1e-14)
    counts = np.random.default_rng(0).multinomial(acc.n_batches, np.ones(acc.n_batches) / acc.n_batches, size=200)
    reps = C.batch_bootstrap(acc.stacked(), counts.astype(float))
    assert reps.shape == (200, 3, 4) and reps.std(0).min() > 0


def test_rbf_median_matches_numpy():
    x = torch.tensor(np.random.default_rng(1).normal(size=(2, 9, 3)))  # odd and even counts of distances
    for xi in x:
        np.testing.assert_allclose(C.gram(xi, "rbf").numpy(), ref_rbf(xi.numpy()), atol=1e-13)
    np.testing.assert_allclose(C.gram(x[:, :8], "rbf")[1].numpy(), ref_rbf(x[1, :8].numpy()), atol=1e-13)


def test_small_batches_refused():
    with pytest.raises(UsageError, match="below 4"):
        validate(CkaSettings(batch_size=3))
    validate(CkaSettings(batch_size=3, estimator="full-biased"))
    with pytest.raises(UsageError):
        validate(CkaSettings(epochs=2, estimator="full-unbiased"))
    with pytest.raises(ValueError):
        C.hsic_scale(3, True)


# -- alignment --------------------------------------------------------------------------------

def ref_soft_index(S, k):
    out = []
    for j in range(S.shape[1]):
        cand = sorted((i for i in range(S.shape[0]) if np.isfinite(S[i, j])), key=lambda i: (-S[i, j], i))[:k]
        w = np.array([max(S[i, j], 0.0) for i in cand])
        out.append(float((w * np.array(cand)).sum() / w.sum()) if w.sum() > 0 else np.nan)
    return np.array(out)


def test_soft_index_matches_loop_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        S = rng.uniform(-0.1, 1, size=(int(rng.integers(2, 12)), int(rng.integers(1, 9))))
        S[rng.random(S.shape) < 0.1] = np.nan
        for k in (1, 3, 5, 50):
            np.testing.assert_allclose(soft_alignment_index(S, k), ref_soft_index(S, k), equal_nan=True)
    reps = rng.uniform(0, 1, size=(7, 6, 5))
    np.testing.assert_allclose(soft_alignment_index(reps, 3), np.stack([ref_soft_index(r, 3) for r in reps]))


def test_alignment_shift_and_headline():
    # Engram layer j looks like baseline layer 2j (clipped): an upward shift
    la, lb = 8, 16
    S = np.array([[np.exp(-abs(i - min(2 * j, lb - 1))) for j in range(la)] for i in range(lb)])
    al = align(S, k=1)
    assert list(al.argmax) == [min(2 * j, lb - 1) for j in range(la)]
    np.testing.assert_allclose(al.diagonal, np.arange(la) * (lb - 1) / (la - 1))
    assert al.index_base == 0 and al.headline.layer == int(np.argmax(al.shift))
    assert al.headline.text == f"layer {al.headline.layer} \u2192 {al.soft_index[al.headline.layer]:.1f}"
    assert (argmax_match(np.full((3, 2), np.nan)) == -1).all()
    assert align(np.full((3, 2), np.nan)).headline is None


# -- spans ------------------------------------------------------------------------------------

def test_span_file_errors(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "The capital of France is Paris.", "spans": [[25, 30]]}\n{oops\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"s\.jsonl:2: invalid JSON"):
        read_spans(p)
    p.write_text('\n{"text": "abc", "spans": [[0, 9]]}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"s\.jsonl:2: span 0"):
        read_spans(p)
    p.write_text('{"text": "abc", "spans": [{"start": 0, "end": 2, "label": 3}]}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"s\.jsonl:1: span 0: 'label'"):
        read_spans(p)
    for text in ("", "\n\n", '{"text": "abc", "spans": []}\n'):
        p.write_text(text, encoding="utf-8")
        with pytest.raises(BadInputError, match="no entity spans"):
            read_spans(p)
    p.write_text('{"text": "Paris is big.", "spans": [{"start": 0, "end": 5, "label": "city"}, [9, 12]]}\n',
                 encoding="utf-8")
    r = read_spans(p)
    assert r[0].spans == (Span(0, 5, "city"), Span(9, 12, None)) and r[0].line == 1


def test_final_token_mapping():
    offs = [(0, 3), (3, 11), (11, 14), (14, 20), (20, 21)]  # "The| capital| of| Paris|."
    assert final_token(offs, Span(15, 20)) == 3
    assert final_token(offs, Span(0, 2)) == 0
    assert final_token([(0, 2), (3, 5)], Span(0, 3)) == 0  # the end char is an uncovered space


def test_final_token_with_the_demo_tokenizer():
    from engram_cli.analysis.spans import encode_with_offsets
    from engram_cli.models.loading import demo_model_dir, load_text_tokenizer

    tok = load_text_tokenizer(demo_model_dir())
    text = "The capital of Curaçao is Willemstad."
    ids, offs = encode_with_offsets(tok, text)
    assert ids == tok.encode(text)
    for start, word in ((15, "Curaçao"), (26, "Willemstad")):
        t = final_token(offs, Span(start, start + len(word)))
        assert word.endswith(tok.decode([ids[t]]).strip()[-2:])


def test_bundled_spans_are_reproducible():
    from engram_cli.models.loading import demo_suites_dir

    rows = [json.loads(x) for x in bundled_spans_path().read_text(encoding="utf-8").splitlines()]
    assert rows == build_entity_spans(demo_suites_dir())
    recs = read_spans(bundled_spans_path())
    assert len(recs) > 200 and sum(len(r.spans) for r in recs) > 400
    r = recs[0]
    assert {r.text[s.start:s.end] for s in r.spans} and all(s.label in ("country", "city") for s in r.spans)


# -- robustness transforms ----------------------------------------------------------------

def test_clamp_and_pca_removal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    x[3, 2] = 1e4  # a massive activation
    c = clamp_outliers(x, 0.01)
    assert c[3, 2] == pytest.approx(np.quantile(x[:, 2], 0.99), rel=1e-5)
    y = rng.normal(size=(500, 6)) + np.outer(rng.normal(size=500) * 30, rng.normal(size=6))
    r = remove_top_pcs(y, 1).astype(np.float64)
    top = np.linalg.svd(y - y.mean(0), full_matrices=False)[2][0]
    assert abs((r - r.mean(0)) @ top).max() < 1e-3 * abs(y @ top).max()
