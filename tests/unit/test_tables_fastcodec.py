"""The fast codec paths against the torch reference: the e4m3 x e8m0 lookup tables over all
256 x 256 (code, scale) pairs, tile-scaled projections, chunked conversions, the writer thread."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from engram_cli.tables import codecs
from engram_cli.tables.codecs import codec_threads, convert, convert_scales, decode, decode_reference, dequant_tiles, e4m3_e8m0_lut, encode
from engram_cli.tables.model import Encoding

FP8 = Encoding("F8_E4M3", "F8_E8M0", 32)
BITS = {"BF16": (torch.int16, np.uint16), "F32": (torch.int32, np.uint32)}


def _same_bf16(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bits, except that any NaN equals any NaN: torch's own bf16 NaN bits depend on the
    kernel it picks for a shape (0xFFFF vectorised, 0x7FC0 scalar); the tables always give 0xFFFF."""
    a, b = a.view(np.uint16), b.view(np.uint16)
    na, nb = (a & 0x7FFF) > 0x7F80, (b & 0x7FFF) > 0x7F80
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na], b[~nb]))


def _all_pairs():
    """Row r holds all 256 codes, every group scaled by byte r: all 65536 (code, scale) pairs."""
    w = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    s = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 8, axis=1)
    return w, s


@pytest.mark.parametrize("out", ["BF16", "F32"])
def test_lut_equals_reference_for_all_code_scale_pairs(out):
    w, s = _all_pairs()
    tdt, ndt = BITS[out]
    ref = decode_reference(FP8, 256, w, s, out).view(tdt).numpy().view(ndt)
    assert np.array_equal(e4m3_e8m0_lut(out).reshape(256, 256), ref)  # [scale, code]
    assert np.array_equal(decode(FP8, 256, w, s, out).view(tdt).numpy().view(ndt), ref)
    got, none = convert(FP8, Encoding(out), 256, w, s)
    assert none is None and np.array_equal(got.view(ndt), ref)
    # the edge cases named in the codec contract, spelled out
    lut = e4m3_e8m0_lut(out).reshape(256, 256)
    if out == "BF16":
        assert lut[0, 0x38] == 0 and lut[0, 0xB8] == 0x8000  # scale 0: signed zero
        assert lut[255, 0x38] == 0xFFFF and lut[127, 0x7F] == 0xFFFF  # NaN scale, NaN code
        assert lut[127, 0x80] == 0x8000 and lut[127, 0x01] == 0x3B00  # -0; subnormal 2**-9
        assert lut[1, 0x01] == 0  # 2**-135 rounds to zero in bf16
    else:
        assert lut[1, 0x01] == 0x00004000  # 2**-135 = 2**14 * 2**-149, an fp32 subnormal
        assert lut[254, 0x7E] == 0x7F800000  # 448 * 2**127 overflows to +inf


def test_lut_chunking_and_group_sizes(monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.integers(0, 256, (37, 64), dtype=np.uint8)
    s16 = rng.integers(0, 256, (37, 4), dtype=np.uint8)
    enc16 = Encoding("F8_E4M3", "U8", 16)
    want = decode_reference(enc16, 64, w, s16, "BF16").view(torch.int16).numpy()
    monkeypatch.setattr(codecs, "CHUNK_ELEMS", 64 * 5)  # 5-row chunks, a ragged last one
    got = decode(enc16, 64, w, s16, "BF16").view(torch.int16).numpy()
    assert _same_bf16(got, want)
    assert (got.view(np.uint16)[(w & 0x7F) == 0x7F] == 0xFFFF).all()


def test_dequant_tiles_matches_straightforward_reference():
    rng = np.random.default_rng(2)
    r, c = 100, 70  # partial tiles on both axes
    w = rng.integers(0, 256, (r, c), dtype=np.uint8)
    w[(w & 0x7F) == 0x7F] = 0x3C
    s = rng.integers(100, 150, (-(-r // 32), -(-c // 32)), dtype=np.uint8)
    s[1, 1] = 0
    x = torch.from_numpy(w).view(torch.float8_e4m3fn).to(torch.float64)
    sc = torch.pow(2.0, torch.from_numpy(s).to(torch.float64) - 127)
    sc[1, 1] = 0.0
    ref = (x * sc.repeat_interleave(32, 0).repeat_interleave(32, 1)[:r, :c]).to(torch.bfloat16).view(torch.int16).numpy()
    whole = dequant_tiles(w, s, 0).view(np.int16)
    assert np.array_equal(whole, ref)
    # block by block from an unaligned start row: the scale rows are those of the block's tiles
    a, b = 40, 90
    part = dequant_tiles(w[a:b], s[a // 32: -(-b // 32)], a).view(np.int16)
    assert np.array_equal(part, ref[a:b])


@pytest.mark.parametrize("src,dst", [
    (Encoding("BF16"), FP8), (Encoding("F32"), Encoding("I8", "F32", 32)), (FP8, Encoding("I8", "F32", 32)),
    (Encoding("I8", "F32", 32), Encoding("BF16")), (Encoding("F32"), Encoding("BF16")),
])
def test_chunked_conversions_equal_one_shot(monkeypatch, src, dst):
    rng = np.random.default_rng(3)
    n, dim = 50, 64
    x = torch.randn(n, dim) * torch.logspace(-4, 4, n).unsqueeze(1)
    if src.weight_dtype == "F8_E4M3" or src.weight_dtype == "I8":
        w, s = encode(x, src, dim)
    else:
        w, s = x.to({"BF16": torch.bfloat16, "F32": torch.float32}[src.weight_dtype]).view(torch.uint8).numpy().reshape(n, -1), None
    one = encode(decode_reference(src, dim, w, s, codecs._mid(src, dst)), dst, dim)
    monkeypatch.setattr(codecs, "CHUNK_ELEMS", dim * 7)
    got = convert(src, dst, dim, w, s)
    assert np.array_equal(got[0], one[0])
    if dst.scale_dtype:
        assert np.array_equal(got[1], one[1])
        assert np.array_equal(convert_scales(src, dst, dim, w, s), one[1])
    del rng


def test_codec_threads_restores():
    before = torch.get_num_threads()
    with codec_threads(1):
        codecs._torch()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_writer_thread_error_reaches_the_caller():
    from engram_cli.tables.writer import Sink as _Sink

    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(28, "No space left on device")

    sink = _Sink(Broken(), lambda n: None)
    with pytest.raises(OSError, match="No space"):
        for _ in range(10):  # the error surfaces at a later put or at close
            sink.put(b"x" * 1024)
        sink.close()
    sink.close(raise_error=False)  # the thread is gone; nothing left to raise

    buf = io.BytesIO()
    sink = _Sink(buf, lambda n: None, "sha256")
    for i in range(5):
        sink.put(bytes([i]) * 1000)
    sink.close()
    import hashlib

    assert buf.getvalue() == b"".join(bytes([i]) * 1000 for i in range(5))
    assert sink.hexdigest() == hashlib.sha256(buf.getvalue()).hexdigest()
