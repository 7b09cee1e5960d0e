"""The compiled table codecs against the straightforward torch codec: every (code, scale)
pair, every bf16 bit pattern, NaN, +-inf, zeros, subnormals, rounding ties; the documented
error bounds; and the dispatch in ``codecs`` both ways (numba, and ``ENGRAM_NO_NUMBA=1``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nb = pytest.importorskip("numba")

from engram_cli.tables import codec_kernels as ck  # noqa: E402
from engram_cli.tables import codecs  # noqa: E402
from engram_cli.tables.codecs import decode_reference, e4m3_e8m0_lut, encode  # noqa: E402
from engram_cli.tables.model import Encoding  # noqa: E402

FP8 = Encoding("F8_E4M3", "F8_E8M0", 32)
FP8_U8_16 = Encoding("F8_E4M3", "U8", 16)
I8 = Encoding("I8", "F32", 32)
BF16, F32 = Encoding("BF16"), Encoding("F32")
TDT = {"BF16": torch.bfloat16, "F32": torch.float32}
NDT = {"BF16": np.uint16, "F32": np.uint32}


def _all_pairs():
    """Row r holds all 256 codes, every group scaled by byte r: all 65536 (code, scale) pairs."""
    return np.tile(np.arange(256, dtype=np.uint8), (256, 1)), np.repeat(np.arange(256, dtype=np.uint8)[:, None], 8, axis=1)


def _straightforward(src, dst, dim, w, s):
    """The torch reference: decode to fp32 (or bf16), encode."""
    return encode(decode_reference(src, dim, w, s, codecs._mid(src, dst)), dst, dim)


def _bytes(bits: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(bits).view(np.uint8).reshape(n, -1)


def _specials(n_rows=64, dim=64, seed=0):
    """fp32 rows spanning the whole range, with NaN, +-inf, +-0, subnormals, ties and groups whose
    amax sits exactly on, just below and just above 448 * 2**k."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n_rows, dim)) * np.exp2(rng.integers(-140, 120, (n_rows, 1)))).astype(np.float32)
    x[0, :3] = [np.nan, 1.0, -2.0]
    x[1, :3] = [np.inf, 1.0, -np.inf]
    x[2, :] = 0.0
    x[2, 40] = -0.0
    x[3, :2] = [1e-45, -1e-45]  # amax / 448 underflows to 0 in fp32
    x[4, :2] = [np.float32(1e-40), -3e-39]  # subnormal amax
    for i, k in enumerate(range(-5, 5)):
        r = 5 + i
        x[r, 0] = np.float32(448.0 * 2.0**k)
        x[r, 32] = np.nextafter(np.float32(448.0 * 2.0**k), np.float32(np.inf))
        x[r, 33] = np.nextafter(np.float32(448.0 * 2.0**k), np.float32(0))
    x[15, :16] = (np.arange(16, dtype=np.float32) + 0.5) * np.float32(2.0**-9)  # e4m3 subnormal ties
    x[15, 16:32] = np.float32(1.0) + np.arange(16, dtype=np.float32) * np.float32(2.0**-4)  # normal ties
    x[16, :32] = np.linspace(-127.5, 127.5, 32, dtype=np.float32)  # int8 ties at amax 127.5
    x[17, :] = np.float32(3.4e38) * np.sign(rng.standard_normal(dim)).astype(np.float32)
    x[18, 0] = np.nan
    x[18, 1] = -np.nan
    return x


@nb.njit
def _e4m3_all(x, out):
    for i in range(x.size):
        out[i] = ck.e4m3_from_f32(x[i])
    return out


def test_e4m3_rounding_equals_torch_for_every_bf16_pattern_and_random_fp32():
    bf = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
    rnd = np.random.default_rng(1).integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for x in (bf, rnd):
        want = torch.from_numpy(x.copy()).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        assert np.array_equal(_e4m3_all(x, np.empty(x.size, np.uint8)), want)


@pytest.mark.parametrize("out", ["BF16", "F32"])
def test_decode_equals_reference_for_all_code_scale_pairs(out):
    w, s = _all_pairs()
    ref = decode_reference(FP8, 256, w, s, out).view(torch.int16 if out == "BF16" else torch.int32).numpy().view(NDT[out])
    got = ck.decode(w, s, 32, e4m3_e8m0_lut(out), np.empty((256, 256), NDT[out]))
    if out == "BF16":  # torch's own bf16 NaN bits depend on its kernel; the table always gives 0xFFFF
        nan = (ref & 0x7FFF) > 0x7F80
        assert np.array_equal(nan, (got & 0x7FFF) > 0x7F80) and (got[nan] == 0xFFFF).all()
        ref = np.where(nan, 0xFFFF, ref)
    assert np.array_equal(got, ref)


def test_decode_partial_groups_and_group_16():
    rng = np.random.default_rng(2)
    w = rng.integers(0, 256, (37, 70), dtype=np.uint8)
    s = rng.integers(0, 256, (37, 3), dtype=np.uint8)
    lut = e4m3_e8m0_lut("F32")
    want = lut[(s.astype(np.int64).repeat(32, axis=1)[:, :70] << 8) | w]
    assert np.array_equal(ck.decode(w, s, 32, lut, np.empty((37, 70), np.uint32)), want)
    s16 = rng.integers(0, 256, (37, 5), dtype=np.uint8)
    want16 = lut[(s16.astype(np.int64).repeat(16, axis=1)[:, :70] << 8) | w]
    assert np.array_equal(ck.decode(w, s16, 16, lut, np.empty((37, 70), np.uint32)), want16)


@pytest.mark.parametrize("dst", [FP8, I8, FP8_U8_16], ids=["fp8", "int8", "fp8-u8-g16"])
def test_requantise_all_code_scale_pairs_equals_reference(dst):
    """Every (code, scale) pair decoded (fp8 source), and the same values as bf16 and fp32 sources."""
    w, s = _all_pairs()
    lut32 = e4m3_e8m0_lut("F32")
    want = _straightforward(FP8, dst, 256, w, s)
    got = ck.quantise(FP8, dst, 256, w, s, lut32)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    for src, bits in ((BF16, e4m3_e8m0_lut("BF16")), (F32, lut32)):
        x = _bytes(bits[(s.astype(np.int64).repeat(32, axis=1) << 8) | w], 256)
        want = _straightforward(src, dst, 256, x, None)
        got = ck.quantise(src, dst, 256, x, None, lut32)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), src.name


@pytest.mark.parametrize("dst", [FP8, I8], ids=["fp8", "int8"])
def test_quantise_specials_equals_reference(dst):
    x = _specials()
    n, dim = x.shape
    lut32 = e4m3_e8m0_lut("F32")
    for src, raw in ((F32, x), (BF16, (x.view(np.uint32) >> 16).astype(np.uint16))):
        b = _bytes(raw, n)
        want = _straightforward(src, dst, dim, b, None)
        got = ck.quantise(src, dst, dim, b, None, lut32)
        bad = np.argwhere(got[0] != want[0])
        assert not bad.size, f"{src.name}: first mismatch at {bad[0]}: {x[tuple(bad[0])]!r}"
        assert np.array_equal(got[1], want[1]), src.name
        scales = ck.quantise(src, dst, dim, b, None, lut32, scales_only=True)[1]
        assert np.array_equal(scales, want[1])


def _bf16_groups_every_pattern_every_scale(seed: int = 0) -> np.ndarray:
    """bf16 bits, 32-value groups: each group holds one anchor magnitude that sets its scale
    (every exponent field 1..254, so every e8m0 byte the fast path takes, and the float path's
    e < -110 ones) and 31 values spread over all 65536 bit patterns, so every pattern meets
    scales from far below to far above it (zeros, subnormals, NaN, inf included)."""
    rng = np.random.default_rng(seed)
    pats = rng.permutation(np.tile(np.arange(65536, dtype=np.uint16), 4))
    n_groups = pats.size // 31
    x = np.empty((n_groups, 32), np.uint16)
    x[:, 1:] = pats[: n_groups * 31].reshape(n_groups, 31)
    ex = rng.integers(1, 255, n_groups).astype(np.uint16)
    x[:, 0] = (ex << 7) | rng.integers(0, 128, n_groups).astype(np.uint16) | (rng.integers(0, 2, n_groups).astype(np.uint16) << 15)
    # most groups: the others shrunk below the anchor (finite), so the anchor is the amax
    finite = x[:, 1:] & 0x7FFF
    small = rng.random(n_groups) < 0.9
    shrunk = np.minimum(finite, x[:, :1] & 0x7FFF) | (x[:, 1:] & 0x8000)
    x[small, 1:] = shrunk[small]
    return x.reshape(-1, 256)


@pytest.mark.parametrize("dst", [FP8, I8], ids=["fp8", "int8"])
def test_bf16_fast_kernels_equal_reference_for_every_pattern_under_every_scale(dst):
    """The three-phase bf16 kernels (fp8 lookup table, vectorised int8) against torch."""
    raw = _bf16_groups_every_pattern_every_scale()
    n = raw.shape[0]
    b = _bytes(raw, n)
    lut32 = e4m3_e8m0_lut("F32")
    want = _straightforward(BF16, dst, 256, b, None)
    got = ck.quantise(BF16, dst, 256, b, None, lut32)
    bad = np.argwhere(got[0] != want[0])
    assert not bad.size, f"first mismatch at {bad[0]}: bits {raw[tuple(bad[0])]:#06x}"
    assert np.array_equal(got[1], want[1])
    assert np.array_equal(ck.quantise(BF16, dst, 256, b, None, lut32, scales_only=True)[1], want[1])
    if dst is FP8:  # both kernel paths were taken: table groups and e < -110 float-path groups
        sb = got[1].reshape(-1)
        assert (sb < 17).any() and (sb >= 17).any() and (sb > 127).any()


def test_bf16_kernel_writes_into_a_noncontiguous_output_through_the_general_path():
    raw = _bf16_groups_every_pattern_every_scale(1)[:64]
    b = _bytes(raw, 64)
    lut32 = e4m3_e8m0_lut("F32")
    want = ck.quantise(BF16, FP8, 256, b, None, lut32)
    big = np.zeros((64, 512), np.uint8)
    got = ck.quantise(BF16, FP8, 256, b, None, lut32, out_w=big[:, :256])
    assert np.array_equal(got[0], want[0]) and np.array_equal(big[:, :256], want[0])


def test_documented_error_bounds():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((200, 64)) * np.exp2(rng.integers(-30, 30, (200, 1)))).astype(np.float32)
    b = _bytes(x, 200)
    lut32 = e4m3_e8m0_lut("F32")
    groups = np.abs(x).reshape(200, 2, 32)
    amax = groups.max(axis=2, keepdims=True)
    w, s = ck.quantise(F32, FP8, 64, b, None, lut32)
    back = lut32[(s.astype(np.int64).repeat(32, axis=1) << 8) | w].view(np.float32).reshape(200, 2, 32)
    e = (s.astype(np.int64) - 127).reshape(200, 2, 1)
    err = np.abs(back - x.reshape(200, 2, 32))
    normal = np.abs(back) >= np.exp2(e - 6.0)  # e4m3 normal codes: |code| >= 2**-6
    assert (err[normal] <= 2.0**-4 * np.abs(x.reshape(200, 2, 32))[normal]).all()
    assert (err[~normal] <= np.broadcast_to(np.exp2(e - 10.0), err.shape)[~normal]).all()
    w, s = ck.quantise(F32, I8, 64, b, None, lut32)
    sc = s.view(np.float32).reshape(200, 2, 1)
    back = w.view(np.int8).reshape(200, 2, 32) * sc
    assert (np.abs(back - x.reshape(200, 2, 32)) <= amax / 254 + 2.0**-22 * amax).all()


# ---------------------------------------------------------------- dispatch in codecs, both ways
@pytest.fixture(params=["numba", "reference"])
def path(request, monkeypatch):
    if request.param == "numba":
        monkeypatch.delenv("ENGRAM_NO_NUMBA", raising=False)
        monkeypatch.setattr(codecs, "KERNEL_MIN_ELEMS", 0)
    else:
        monkeypatch.setenv("ENGRAM_NO_NUMBA", "1")
    return request.param


@pytest.mark.parametrize("src,dst", [(BF16, FP8), (F32, I8), (FP8, I8), (BF16, I8), (FP8_U8_16, FP8), (FP8, BF16), (FP8, F32)])
def test_convert_entry_points_agree_both_ways(path, monkeypatch, src, dst):
    calls = []
    monkeypatch.setattr(ck, "quantise", lambda *a, _q=ck.quantise, **k: calls.append(1) or _q(*a, **k))
    monkeypatch.setattr(ck, "decode", lambda *a, _d=ck.decode, **k: calls.append(1) or _d(*a, **k))
    n, dim = 300, 64
    x = torch.randn(n, dim) * torch.logspace(-6, 6, n).unsqueeze(1)
    if src.scale_dtype:
        w, s = encode(x, src, dim)
    else:
        w, s = x.to(TDT[src.weight_dtype]).view(torch.uint8).numpy().reshape(n, -1), None
    if dst.scale_dtype is None:
        want = (decode_reference(src, dim, w, s, dst.weight_dtype).view(torch.uint8).numpy().reshape(n, -1), None)
    else:
        want = _straightforward(src, dst, dim, w, s)
    pool = np.zeros(n * dst.weight_row_bytes(dim) + 100, np.uint8)
    got = codecs.convert(src, dst, dim, w, s, out_w=pool)
    assert np.array_equal(got[0], want[0])
    assert np.shares_memory(got[0], pool)
    if dst.scale_dtype:
        assert np.array_equal(got[1], want[1])
        assert np.array_equal(codecs.convert_scales(src, dst, dim, w, s), want[1])
    assert bool(calls) == (path == "numba")


def test_small_decodes_stay_on_numpy_until_numba_is_loaded(monkeypatch):
    import sys

    import engram_cli.tables

    monkeypatch.delenv("ENGRAM_NO_NUMBA", raising=False)
    monkeypatch.delitem(sys.modules, "engram_cli.tables.codec_kernels")
    monkeypatch.delattr(engram_cli.tables, "codec_kernels")
    assert codecs._compiled(10) is None and codecs._compiled(codecs.KERNEL_MIN_ELEMS) is not None
    assert codecs._compiled(10) is not None  # loaded now: small blocks use it too
    monkeypatch.setenv("ENGRAM_NO_NUMBA", "1")
    assert codecs._compiled() is None


def test_prepare_numba_skips_scipy_blas_but_leaves_scipy_importable():
    """numba's array support is loaded without scipy.linalg (0.2-0.4 s per process), the kernels
    still run, and SciPy can still be imported afterwards."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from engram_cli.tables import codecs\n"
            "k = codecs._compiled(); k._mag_table()\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg was imported'\n"
            "import scipy.linalg\n"
            "assert scipy.linalg.cython_blas is not None\n"
            "print('ok')\n")
    pytest.importorskip("scipy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ, "ENGRAM_NO_NUMBA": ""})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("out", ["BF16", "F32"])
def test_word_decode_equals_group_decode_aligned_or_not(out):
    """The 8-codes-per-word decode (aligned, full groups) and the group loop it falls back to
    (codes at an odd address, group 16 of width 48) give the same bits."""
    rng = np.random.default_rng(5)
    lut = e4m3_e8m0_lut(out)
    w = rng.integers(0, 256, (64, 256), dtype=np.uint8)
    s = rng.integers(0, 256, (64, 8), dtype=np.uint8)
    ref = ck.decode_fp8(w, s, 32, lut, np.empty((64, 256), lut.dtype))
    assert np.array_equal(ck.decode(w, s, 32, lut, np.empty((64, 256), lut.dtype)), ref)
    raw = np.empty(64 * 256 + 1, np.uint8)
    odd = raw[1:].reshape(64, 256)
    odd[:] = w
    assert odd.ctypes.data % 8 != 0
    assert np.array_equal(ck.decode(odd, s, 32, lut, np.empty((64, 256), lut.dtype)), ref)
    w48, s48 = w[:, :48], rng.integers(0, 256, (64, 3), dtype=np.uint8)
    got = ck.decode(w48, s48, 16, lut, np.empty((64, 48), lut.dtype))
    assert np.array_equal(got, ck.decode_fp8(np.ascontiguousarray(w48), s48, 16, lut, np.empty((64, 48), lut.dtype)))


@pytest.mark.parametrize("dst", [FP8, I8], ids=["fp8", "int8"])
def test_row_split_over_threads_gives_the_same_bytes(dst, monkeypatch):
    """A block split over kernel threads (uneven cuts) equals the one-thread result, for the
    quantisers, a scales-only call and the word decode."""
    raw = _bf16_groups_every_pattern_every_scale(2)[:1001]
    b = _bytes(raw, raw.shape[0])
    lut32 = e4m3_e8m0_lut("F32")
    monkeypatch.setattr(ck, "KERNEL_THREADS", 1)
    one = ck.quantise(BF16, dst, 256, b, None, lut32)
    one_s = ck.quantise(BF16, dst, 256, b, None, lut32, scales_only=True)[1]
    monkeypatch.setattr(ck, "KERNEL_THREADS", 3)
    monkeypatch.setattr(ck, "MIN_ROWS_PER_THREAD", 100)
    many = ck.quantise(BF16, dst, 256, b, None, lut32)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
    assert np.array_equal(ck.quantise(BF16, dst, 256, b, None, lut32, scales_only=True)[1], one_s)
    if dst is FP8:
        lut = e4m3_e8m0_lut("BF16")
        split = ck.decode(one[0], one[1], 32, lut, np.empty((1001, 256), lut.dtype))
        monkeypatch.setattr(ck, "KERNEL_THREADS", 1)
        assert np.array_equal(split, ck.decode(one[0], one[1], 32, lut, np.empty((1001, 256), lut.dtype)))
