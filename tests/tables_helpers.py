"""Synthetic Engram checkpoints for the shard tests (imported by tests; not a conftest).

``make_v41_checkpoint`` writes the exact DeepSeek-V4.1 names, dtypes and scale layout
(``layers.{L}.engram.embed.weight`` F8_E4M3 ``[rows, 256]`` + ``.scale`` F8_E8M0 ``[rows, 8]``)
at reduced row counts with the real hash structure (24 columns, distinct primes from a small
base), spread over three shards with each table and its scale in different files; with
``with_wkv`` also the fp8 ``engram.wkv.weight`` with its 32x32-tile e8m0 ``wkv.scale``
(formats.md 2.2) at a reduced, tile-unaligned shape.

``make_qwen_nvfp4_checkpoint`` writes a Qwen4-Exp NVFP4 PLE table (formats.md 5.4):
``ngram_embedding.shard_{i}.weight`` U8 ``[rows_i, dim/2]``, ``.weight_scale`` F8_E4M3
``[rows_i, dim/16]`` and ``.weight_scale_2`` F32 scalar per piece, pieces split like
``torch.chunk`` (piece i starts at row ``i * ceil(R/parts)``), plus shipped hash buffers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engram_cli.layout import EngramLayout
from engram_cli.layout.store import save_layout as write_layout


def small_layout(vocab_base: int = 300, layer_ids=(1, 14), with_token_map: bool = True) -> EngramLayout:
    token_map = (np.arange(600, dtype=np.int64) % 500) if with_token_map else None
    return EngramLayout.custom(variant="deepseek-v4.1", layer_ids=list(layer_ids), max_ngram_size=4, n_heads=8,
                               head_dim=256, vocab_base=vocab_base, compressed_vocab_size=500, pad_id=2,
                               compressed_pad_id=2, token_map=token_map)


def random_fp8(rows: int, cols: int, rng: np.random.Generator) -> torch.Tensor:
    b = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    b[(b & 0x7F) == 0x7F] = 0x3C  # no NaN codes
    return torch.from_numpy(b).view(torch.float8_e4m3fn)


def random_scales(rows: int, groups: int, rng: np.random.Generator) -> torch.Tensor:
    b = rng.integers(118, 136, size=(rows, groups), dtype=np.uint8)
    return torch.from_numpy(b).view(torch.float8_e8m0fnu)


WKV_SHAPE = (80, 200)  # tile-unaligned on both axes: scale [3, 7]


def make_v41_checkpoint(root: Path, *, vocab_base: int = 300, seed: int = 0, scale_name: str = "scale",
                        scale_u8: bool = False, save_layout: bool = True, with_wkv: bool = False) -> tuple[Path, EngramLayout]:
    """Three shards: tables and their scales deliberately in different files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lay = small_layout(vocab_base)
    rng = np.random.default_rng(seed)
    t = {}
    for i, layer in enumerate(lay.layer_ids):
        rows = lay.num_embeddings[i]
        t[f"layers.{layer}.engram.embed.weight"] = random_fp8(rows, 256, rng)
        s = random_scales(rows, 8, rng)
        t[f"layers.{layer}.engram.embed.{scale_name}"] = s.view(torch.uint8) if scale_u8 else s
        t[f"layers.{layer}.engram.q_weight"] = torch.randn(4, 64, dtype=torch.bfloat16)
        t[f"layers.{layer}.engram.k_weight"] = torch.randn(4, 64, dtype=torch.bfloat16)
    t["embed.weight"] = torch.randn(100, 64, dtype=torch.bfloat16)
    t["norm.weight"] = torch.ones(64, dtype=torch.bfloat16)
    l1, l14 = lay.layer_ids
    sn = scale_name
    extra: dict[str, list[str]] = {}
    if with_wkv:
        r, c = WKV_SHAPE
        for layer in lay.layer_ids:
            t[f"layers.{layer}.engram.wkv.weight"] = random_fp8(r, c, rng)
            t[f"layers.{layer}.engram.wkv.scale"] = random_scales(-(-r // 32), -(-c // 32), rng)
        extra = {"model-00001-of-00003.safetensors": [f"layers.{l14}.engram.wkv.scale", f"layers.{l1}.engram.wkv.weight"],
                 "model-00002-of-00003.safetensors": [f"layers.{l1}.engram.wkv.scale"],
                 "model-00003-of-00003.safetensors": [f"layers.{l14}.engram.wkv.weight"]}
    shards = {
        "model-00001-of-00003.safetensors": ["embed.weight", f"layers.{l14}.engram.embed.{sn}", f"layers.{l1}.engram.q_weight"],
        "model-00002-of-00003.safetensors": [f"layers.{l1}.engram.embed.weight", f"layers.{l1}.engram.k_weight", "norm.weight"],
        "model-00003-of-00003.safetensors": [f"layers.{l1}.engram.embed.{sn}", f"layers.{l14}.engram.embed.weight",
                                             f"layers.{l14}.engram.q_weight", f"layers.{l14}.engram.k_weight"],
    }
    for fname, names in extra.items():
        shards[fname] = shards[fname] + names
    write_sharded(root, t, shards)
    (root / "config.json").write_text(json.dumps({"architectures": ["Test"], "note": "synthetic"}))
    if save_layout:
        write_layout(lay, root)
    return root, lay


def read_tables(root: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint as raw bytes (uint8 views), for bit-exact comparisons."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(root).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                x = fh.get_tensor(k)
                out[k] = x.contiguous().view(torch.uint8).numpy().copy() if x.dim() else x.view(1).view(torch.uint8).numpy().copy()
    return out


def wkv_reference(w: np.ndarray, s: np.ndarray) -> torch.Tensor:
    """Straightforward dequantisation of an fp8 matrix with 32x32-tile e8m0 scales to bf16."""
    r, c = w.shape
    x = torch.from_numpy(w).view(torch.float8_e4m3fn).to(torch.float64)
    sc = torch.pow(2.0, torch.from_numpy(s.astype(np.int64)).to(torch.float64) - 127)
    sc = sc.repeat_interleave(32, 0).repeat_interleave(32, 1)[:r, :c]
    return (x * sc).to(torch.bfloat16)


QWEN_PREFIX = "model.language_model."
QWEN_NGRAM = QWEN_PREFIX + "layers.{layer}.ple.ple_embedding.ngram_embedding"


def make_qwen_nvfp4_checkpoint(root: Path, *, rows: int = 1000, dim: int = 160, parts: int = 4, layer: int = 1,
                               scale2: float | list[float] = 0.0078125, seed: int = 0) -> Path:
    """A Qwen4-Exp checkpoint whose PLE n-gram table is NVFP4 in ``parts`` row pieces (two shards)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = QWEN_NGRAM.format(layer=layer)
    chunk = -(-rows // parts)
    s2 = scale2 if isinstance(scale2, list) else [scale2] * parts
    t: dict[str, torch.Tensor] = {}
    for i in range(parts):
        n = min(rows, (i + 1) * chunk) - i * chunk
        t[f"{base}.shard_{i}.weight"] = torch.from_numpy(rng.integers(0, 256, (n, dim // 2), dtype=np.uint8))
        t[f"{base}.shard_{i}.weight_scale"] = random_fp8(n, dim // 16, rng)
        t[f"{base}.shard_{i}.weight_scale_2"] = torch.tensor(s2[i], dtype=torch.float32)
    pe = QWEN_PREFIX + f"layers.{layer}.ple"
    t[f"{pe}.ple_embedding.layer_multipliers"] = torch.arange(6, dtype=torch.int64) * 2 + 1
    t[f"{pe}.ple_embedding.ngram_heads_offsets"] = torch.arange(4, dtype=torch.int64) * 250
    t[f"{pe}.key_proj.weight"] = torch.randn(64, dim, dtype=torch.bfloat16)
    t[QWEN_PREFIX + "embed_tokens.weight"] = torch.randn(128, 64, dtype=torch.bfloat16)
    names = sorted(t)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    write_sharded(root, t, shards)
    (root / "config.json").write_text(json.dumps({"architectures": ["Qwen4ExpForCausalLM"],
                                                  "text_config": {"split_ngram_parts": parts, "ple_embed_dim": dim}}))
    return root


def run_shard(*args):
    """Invoke ``engram shard ARGS...`` in-process; returns the click Result."""
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    return CliRunner().invoke(app, ["shard", *map(str, args)])


def write_sharded(root: Path, tensors: dict, shards: dict[str, list[str]]) -> None:
    """Save ``tensors`` into the named shard files and write ``model.safetensors.index.json``."""
    wm = {}
    for fname, names in shards.items():
        save_file({n: tensors[n].contiguous() for n in names}, str(root / fname), metadata={"format": "pt"})
        wm.update({n: fname for n in names})
    total = sum(tensors[n].numel() * tensors[n].element_size() for n in wm)
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))


def write_raw_safetensors(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    """A safetensors file from a header (dict, or raw bytes) and data, byte for byte as given
    (``length`` overrides the 8-byte header length), to build malformed files."""
    import struct

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def tiny_v41_tensors(rows: int = 4) -> tuple[dict, bytes]:
    """Header entries and data of a minimal V4.1 table (fp8 [rows, 256] + e8m0 scale [rows, 8])."""
    w, s = rows * 256, rows * 8
    header = {"__metadata__": {"format": "pt"},
              "layers.1.engram.embed.weight": {"dtype": "F8_E4M3", "shape": [rows, 256], "data_offsets": [0, w]},
              "layers.1.engram.embed.scale": {"dtype": "F8_E8M0", "shape": [rows, 8], "data_offsets": [w, w + s]}}
    data = bytes((i * 7) % 120 for i in range(w)) + bytes([127]) * s
    return header, data


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` (links not followed): size and xxh3 digest, to assert nothing changed."""
    import xxhash

    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_size, xxhash.xxh3_128(p.read_bytes()).hexdigest())
    return out

