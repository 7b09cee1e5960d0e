"""Which engines load an Engram file or folder as it is, and the ``engram`` command that fixes a no.

The rules restate what each engine reads (formats.md 3, 4 and 7): vLLM and SGLang load HF
checkpoints (DeepSeek-V4.1 fp8 tables with e8m0 row scales; Qwen4-Exp PLE tables), llama.cpp
#28696 and ik_llama.cpp a GGUF with the nine llamacpp keys and quantised (not raw) tables,
ds4/strix-llama.cpp a GGUF with the ds4 keys and raw ``row264`` tables written last, Mooncake
per-head row objects, Megatron torch-DCP per-head tables (which engram does not write).
"""

from __future__ import annotations

import shlex
from typing import Callable

from engram_cli.inspect.model import Compat, Found
from engram_cli.tables import gguf_dialects as D

RAW = D.RAW_ENCODING


def _q(path: str) -> str:
    return shlex.quote(path)


def _convert(f: Found, *args: str) -> str:
    path = str(f.gguf.path) if f.gguf is not None else f.path  # a GGUF output is converted from its file
    return " ".join(("engram shard convert", _q(path), *args, "-o", "OUT"))


def _gguf_fix(f: Found, dialect: str) -> str:
    path = f.gguf.path if f.gguf is not None else f.path
    extra = "" if f.layout is not None else " --layout LAYOUT_DIR"
    return f"engram shard gguf-fix {_q(str(path))} --dialect {dialect}{extra} -o OUT.gguf"


def _hf_state(f: Found) -> tuple[bool, str]:
    """(is a complete HF checkpoint, why not)."""
    if f.format == "hf":
        return True, ""
    if f.format == "engram" and f.manifest is not None:
        m = f.manifest
        if m.target == "hf":
            return (False, "tables only (--engram-only): merge them with the original checkpoint") if m.omitted else (True, "")
        return False, f"an engram shard output (target {m.target}), not a checkpoint"
    return False, {"gguf": "a GGUF file", "layout": "a layout without tables"}.get(f.format, f.format)


def _fp8_rows(f: Found) -> bool:
    return bool(f.tables) and all(t.encoding in ("fp8-e4m3", RAW) and "e8m0" in t.scale for t in f.tables)


def _lossless(f: Found) -> bool:
    return all(t.encoding not in ("q8_0",) and not t.encoding.startswith(("q", "Q")) for t in f.tables)


def _to_hf(f: Found) -> str | None:
    if not _lossless(f):
        return None
    return _convert(f, "--to", "hf", *(("--engram-only",) if f.gguf is not None else ()))


def _hf_engine(name: str, ref: str, qwen_fp8_only: bool) -> Callable[[Found], Compat]:
    def rule(f: Found) -> Compat:
        if not f.tables:
            return Compat(name, ref, "n/a", "no Engram tables")
        if f.family == "deepseek-demo":
            return Compat(name, ref, "n/a", f"{name} has no architecture for the reference demo model")
        ok, why = _hf_state(f)
        local = f.manifest is not None and f.manifest.target == "local"
        if local:
            want = {"vLLM": "vllm-head", "SGLang": "sglang-floor"}[name]
            if f.manifest.policy == want:
                return Compat(name, ref, "yes", f"node-local copy of one rank's rows ({want}); other rows are holes")
            rank = (f.manifest.local or {}).get("rank", 0)
            return Compat(name, ref, "no", f"node-local copy for policy {f.manifest.policy}; {name} places rows by {want}",
                          f"engram shard convert SOURCE_CHECKPOINT --to local --policy {want} --ranks {f.manifest.world} "
                          f"--rank {rank} -o OUT")
        if not ok:
            return Compat(name, ref, "no", f"{name} loads HF safetensors checkpoints; this is {why}", _to_hf(f))
        if f.family == "qwen4-exp":
            if qwen_fp8_only and not all(t.encoding == "fp8-e4m3" for t in f.tables):
                return Compat(name, ref, "no", f"its Qwen4-Exp PLE reader takes FP8 tables; these are "
                              f"{', '.join(sorted({t.encoding for t in f.tables}))}")
            return Compat(name, ref, "yes", "Qwen4-Exp PLE n-gram tables (ngram_embedding)")
        if not _fp8_rows(f):
            enc = ", ".join(sorted({t.encoding for t in f.tables}))
            return Compat(name, ref, "no", f"DeepSeek-V4.1 tables must be fp8-e4m3 with e8m0 row scales; these are {enc}",
                          _convert(f, "--to", "hf", "--table-dtype", "fp8-e4m3"))
        return Compat(name, ref, "yes", "fp8-e4m3 tables with e8m0 scales under DeepSeek-V4.1 names")
    return rule


def _llama(name: str, ref: str) -> Callable[[Found], Compat]:
    def rule(f: Found) -> Compat:
        if not f.tables:
            return Compat(name, ref, "n/a", "no Engram tables")
        if f.family != "deepseek-v4.1":
            return Compat(name, ref, "n/a", f"its Engram loader is for the deepseek41 architecture, not {f.family}")
        g = f.gguf
        fix_convert = _convert(f, "--to", "gguf", "--gguf-type", "q8_0", "--gguf-dialect", "llamacpp")
        if g is None:
            note = "; writes the Engram tables (the rest of the model comes from llama.cpp's converter)" if f.format == "hf" else ""
            return Compat(name, ref, "no", "it loads GGUF files" + note, fix_convert if _lossless(f) else None)
        raw = [t for t in g.tables if t.encoding == RAW]
        miss = D.missing_keys("llamacpp", g.key_types())
        if raw:
            return Compat(name, ref, "no", f"tables are raw {RAW} (I8 [264, rows]); it expects Q8_0/K-quant "
                          f"[{g.tables[0].dim or 256}, rows]" + (f"; keys missing: {', '.join(miss)}" if miss else ""), fix_convert)
        if g.dialect == "pointer":
            return Compat(name, ref, "no", "its tables live in safetensors shards (a pointer GGUF)", fix_convert)
        if miss:
            return Compat(name, ref, "no", "keys missing: " + ", ".join(f"{D.PREFIX}{k}" for k in miss), _gguf_fix(f, "llamacpp"))
        return Compat(name, ref, "yes", "the nine deepseek41.engram keys and quantised tables")
    return rule


def _ds4(f: Found) -> Compat:
    name, ref = "ds4 / strix-llama.cpp", "antirez/ds4, strix-llama.cpp llama-dsv41-engram"
    if not f.tables:
        return Compat(name, ref, "n/a", "no Engram tables")
    if f.family != "deepseek-v4.1":
        return Compat(name, ref, "n/a", f"it runs DeepSeek-V4.1 only, not {f.family}")
    g = f.gguf
    if g is None:
        fix = _convert(f, "--to", "gguf", "--gguf-dialect", "ds4") if _fp8_rows(f) else None
        why = "it loads GGUF files with raw fp8 rows" + ("" if fix else "; these tables are not fp8-e4m3 with e8m0 scales")
        return Compat(name, ref, "no", why, fix)
    if any(t.encoding != RAW for t in g.tables):
        enc = ", ".join(sorted({t.encoding for t in g.tables}))
        if _fp8_rows(f):  # e.g. a pointer GGUF's fp8 rows in safetensors shards: packed into row264
            return Compat(name, ref, "no", f"it reads raw {RAW} tables in the GGUF; these are {enc}",
                          _convert(f, "--to", "gguf", "--gguf-dialect", "ds4"))
        return Compat(name, ref, "no", f"it reads raw {RAW} tables; these are {enc} (convert from the source checkpoint)")
    problems = [f"missing {D.PREFIX}{k}" for k in D.missing_keys("ds4", g.key_types())]
    primes = g.constants.get("primes")
    if primes is not None and max(int(p) for p in primes) >= 2**32:
        problems.append("primes exceed uint32")
    if not g.tables_last:
        problems.append("tables are not the last tensors")
    rows = g.constants.get("rows")
    ids = g.constants.get("layer_ids")
    if rows is not None and ids is not None:
        by = {t.layer: t.rows for t in g.tables}
        if [by.get(int(i)) for i in ids] != [int(r) for r in rows]:
            problems.append("rows key differs from the tables")
    if problems:
        return Compat(name, ref, "no", "; ".join(problems), _gguf_fix(f, "ds4"))
    return Compat(name, ref, "yes", f"ds4 keys, raw {RAW} tables last")


def _mooncake(f: Found) -> Compat:
    name, ref = "Mooncake", "kvcache-ai/Mooncake EngramStore"
    if not f.tables:
        return Compat(name, ref, "n/a", "no Engram tables")
    m = f.manifest
    if m is not None and m.target == "heads" and m.options.get("head_format") == "rows":
        return Compat(name, ref, "yes", "one engram:l{L}:h{h} row object per head (head-local rows)")
    fix = _convert(f, "--to", "heads", "--head-format", "rows") + ("" if f.layout is not None else " --layout LAYOUT_DIR")
    return Compat(name, ref, "no", "it stores one contiguous [rows, row_bytes] object per hash head", fix if _lossless(f) else None)


def _megatron(f: Found) -> Compat:
    name, ref = "Megatron-LM", "NVIDIA/Megatron-LM docs/models/engram.md"
    if not f.tables:
        return Compat(name, ref, "n/a", "no Engram tables")
    if f.family == "qwen4-exp" and f.format == "hf":
        return Compat(name, ref, "no", "it trains from torch-DCP per-head tables; its tools/engram/convert_qwen_ple.py "
                      "converts this checkpoint (padding rows dropped)")
    return Compat(name, ref, "no", "it loads torch-DCP per-head prime tables, which engram does not write; "
                  "`engram shard convert PATH --to heads` gives the per-head tables")


ENGINES: tuple[Callable[[Found], Compat], ...] = (
    _hf_engine("vLLM", "vllm deepseek_v41 / qwen4_exp", qwen_fp8_only=False),
    _hf_engine("SGLang", "sglang srt/layers/engram.py, PR #36567", qwen_fp8_only=True),
    _llama("llama.cpp #28696", "ggml-org/llama.cpp#28696"),
    _llama("ik_llama.cpp", "ik_llama.cpp #2455/#2506"),
    _ds4,
    _mooncake,
    _megatron,
)


def compatibility(f: Found) -> list[Compat]:
    return [rule(f) for rule in ENGINES]
