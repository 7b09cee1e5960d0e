"""Plan builders, one per target: hf, ranks, heads, packed (gguf in gguf_io, local in local)."""

from __future__ import annotations

import json
from pathlib import Path

from engram_cli.errors import BadInputError, UsageError
from engram_cli.pathguard import safe_join
from engram_cli.tables.codecs import check_convertible, target_encoding
from engram_cli.tables.manifest import MANIFEST
from engram_cli.tables.model import Encoding, Geometry, TableInfo
from engram_cli.tables.names import FAMILIES, HEAD_SCALE, HEAD_WEIGHT, PROJ_KEYS, PROJ_WEIGHT, TILE_SCALE_SUFFIXES, render
from engram_cli.tables.plan import (
    CopyFile,
    IndexFile,
    Omitted,
    OutFile,
    OutTensor,
    RewriteFile,
    ShardPlan,
    TableSlice,
    TensorBytes,
    TensorCopy,
    TileDequant,
)
from engram_cli.tables.policies import HEAD_POLICIES, LayerRanges, Piece, RangeSet, RankRange, ranks_for
from engram_cli.tables.source_info import Source

HF_INDEX = "model.safetensors.index.json"
LOCAL_JSON = "engram-local.json"


def _enc(t: TableInfo, dtype: str) -> Encoding:
    enc = target_encoding(t.encoding, dtype)
    check_convertible(t.encoding, enc, f"layer {t.layer_id}")
    return enc


def split_tensors(t: TableInfo, enc: Encoding, pieces: tuple[Piece, ...], pad: int, wname: str, sname: str | None,
                  heads: tuple[int, int] | None = None) -> list[OutTensor]:
    rows = sum(p.rows for p in pieces) + pad
    out = [OutTensor(wname, enc.weight_dtype, (rows, enc.weight_cols(t.dim)),
                     TableSlice(t.layer_id, pieces, "weight", enc, pad, heads), enc.weight_row_bytes(t.dim))]
    if enc.scale_dtype:
        g = enc.groups(t.dim)
        out.append(OutTensor(sname or wname + "_scale", enc.scale_dtype, (rows, g),
                             TableSlice(t.layer_id, pieces, "scale", enc, pad, heads), enc.scale_row_bytes(t.dim)))
    return out


def global_scale_tensor(t: TableInfo, name: str) -> list[OutTensor]:
    """The NVFP4 ``weight_scale_2`` scalar written unchanged beside a part of the table (none otherwise)."""
    gs = t.global_scale
    if gs is None:
        return []
    return [OutTensor(name, gs.dtype, gs.shape, TensorBytes(gs.data, f"layer {t.layer_id} {gs.suffix}"))]


def _gs_name(t: TableInfo, wname: str) -> str:
    return (wname.removesuffix(".weight") if wname.endswith(".weight") else wname) + ".weight_scale_2"


# ---------------------------------------------------------------- projections (DeepSeek engram.{q_weight,k_weight,wkv})
def projection_tensors(source: Source, t: TableInfo, *, tile: int | None = None) -> list[tuple[str, OutTensor, str | None]]:
    """(key, tensor, dropped scale name) for each Engram projection of a table's layer.

    BF16/F16/F32 projections are copied; an fp8-e4m3 ``wkv.weight`` with ``tile x tile`` e8m0
    block scales (``wkv.scale``, ``.weight_scale`` or ``.weight_scale_inv``; formats.md 2.2) is
    written dequantised to BF16 (formats.md 6, items 2 and 8) and its scale tensor dropped.
    """
    ck = source.checkpoint
    if ck is None:
        raise UsageError("--with-projections needs an HF checkpoint source")
    tile = tile or _tile_size(ck)
    out = []
    for key in PROJ_KEYS:
        sname = render(PROJ_WEIGHT, prefix=t.prefix, layer=t.layer_id).replace("{key}", key)
        if sname not in ck.weight_map:
            continue
        e = ck.entry(sname)
        if e.dtype in ("BF16", "F16", "F32"):
            out.append((key, OutTensor(sname, e.dtype, e.shape, TensorCopy(sname)), None))
            continue
        if e.dtype != "F8_E4M3":
            raise UsageError(f"{sname}: {e.dtype} projections are not converted (BF16/F16/F32 are copied, "
                             f"fp8-e4m3 with e8m0 block scales dequantised)")
        base = sname.removesuffix(".weight")
        scale = next((f"{base}.{sfx}" for sfx in TILE_SCALE_SUFFIXES if f"{base}.{sfx}" in ck.weight_map), None)
        if scale is None:
            raise BadInputError(f"{sname}: fp8 projection without a block-scale tensor ({base}.scale)")
        se = ck.entry(scale)
        if len(e.shape) != 2:
            raise BadInputError(f"{sname}: expected a 2-D matrix, got shape {list(e.shape)}")
        want = (-(-e.shape[0] // tile), -(-e.shape[1] // tile))
        if se.dtype not in ("F8_E8M0", "U8") or se.shape != want:
            raise UsageError(f"{scale}: {se.dtype}{list(se.shape)} is not an e8m0 {tile}x{tile} block scale of "
                             f"{sname} (expected F8_E8M0{list(want)})",
                             hint="only ue8m0 block scales (DeepSeek-V4.1 weight_block_size [32, 32]) are dequantised")
        out.append((key, OutTensor(sname, "BF16", e.shape, TileDequant(sname, scale, tile, "BF16"), e.shape[1] * 2), scale))
    return out


def _tile_size(ck) -> int:
    """``quantization_config.weight_block_size`` of config.json (square), else 32."""
    try:
        cfg = ck.config() or {}
    except Exception:  # noqa: BLE001 - a broken config.json is reported elsewhere
        cfg = {}
    for c in (cfg, cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}):
        q = c.get("quantization_config") if isinstance(c, dict) else None
        bs = q.get("weight_block_size") if isinstance(q, dict) else None
        if isinstance(bs, list) and len(bs) == 2 and bs[0] == bs[1] and int(bs[0]) > 0:
            return int(bs[0])
    return 32


def _names(source: Source, t: TableInfo) -> tuple[str, str | None]:
    fam = FAMILIES.get(t.family) or FAMILIES["deepseek-v4.1"]
    w = render(fam.weight[0], prefix=t.prefix, layer=t.layer_id)
    s = render(fam.scale[0], prefix=t.prefix, layer=t.layer_id) if fam.scale else None
    names = t.source_names if source.format == "hf" and len(t.weight) == 1 else _manifest_names(source, t)
    if names:
        w = names[0]
        if len(names) > 1 and t.encoding.scale_dtype:
            s = names[1]
    if s is None:
        s = w.removesuffix(".weight") + ".scale" if w.endswith(".weight") else w + ".scale"
    return w, s


def _manifest_names(source: Source, t: TableInfo) -> tuple[str, ...]:
    """Original tensor names of a whole (unsplit) table recorded by an earlier conversion."""
    for mt in source.manifest.tables if source.manifest else ():
        if mt.layer == t.layer_id and not mt.source_parts:
            return mt.source_names
    return ()


def _need_geos(geos: tuple[Geometry, ...], what: str) -> None:
    if not geos:
        raise UsageError(f"{what} needs the hash-head sizes (primes) of each table",
                         hint="pass --layout DIR (engram_layout.json), --config config.json or --preset NAME")


def table_ranges(policy: str, geos: tuple[Geometry, ...], tables: tuple[TableInfo, ...], world: int,
                 edp: int = 1) -> RangeSet:
    if policy in HEAD_POLICIES:
        _need_geos(geos, f"policy {policy}")
        layers = [LayerRanges(g.layer_id, tuple(ranks_for(policy, g, world, edp=edp))) for g in geos]
    else:
        layers = [LayerRanges(t.layer_id, tuple(ranks_for(policy, Geometry(t.layer_id, (), t.rows), world, edp=edp)))
                  for t in tables]
    return RangeSet(policy, world, edp, tuple(layers))


def source_side_files(source: Source) -> list[Path]:
    """Files beside the shards of an HF source (config, tokenizer, ...): neither a shard, nor
    the index, nor a manifest or a hidden file. A link leaving the folder is refused (exit 3)."""
    ck = source.checkpoint
    if ck is None:
        return []
    out = []
    for p in sorted(ck.root.iterdir()):
        if p.name in ck.headers or p.name in (HF_INDEX, MANIFEST, LOCAL_JSON) or p.name.startswith("."):
            continue
        safe_join(ck.root, p.name, f"source file {p.name}")
        if p.is_file():
            out.append(p)
    return out


def omitted(source: Source, plan: ShardPlan) -> Omitted:
    """What of the source the plan does not write: other tensors and files, and what the
    source itself recorded as omitted (an output of an output keeps the whole account)."""
    written = {t.name for f in plan.files for t in f.tensors}
    written |= {t.source.scale for f in plan.files for t in f.tensors if isinstance(t.source, TileDequant)}
    kept = set(plan.side_names())
    m = source.manifest
    tensors, files = (list(m.omitted.tensors), list(m.omitted.files)) if m and m.omitted else ([], [])
    if source.checkpoint is not None:
        tensors += [n for n in source.checkpoint.names() if n not in source.table_tensors and n not in written]
        files += [p.name for p in source_side_files(source) if p.name not in kept]
    elif m is not None:
        tensors += [t.name for f in m.files for t in f.tensors if t.copy and t.name not in written]
        files += [s.name for s in m.side_files if s.role in ("copy", "rewrite") and s.name not in kept]
    return Omitted(tuple(dict.fromkeys(tensors)), tuple(dict.fromkeys(files)))


def _base(source: Source, target: str, geos, files, dtype, **kw) -> ShardPlan:
    return ShardPlan(target=target, source=str(source.path), source_format=source.format, tables=source.tables,
                     geometries=geos, files=tuple(files), dtype=dtype, family=source.family, **kw)


# ---------------------------------------------------------------- hf
def hf_shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def greedy_shards(sizes: list[int], max_size: int) -> list[list[int]]:
    """huggingface_hub's rule: fill in order; a tensor over the limit gets its own shard."""
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_size = 0
    for i, s in enumerate(sizes):
        if cur and cur_size + s > max_size:
            groups.append(cur)
            cur, cur_size = [], 0
        cur.append(i)
        cur_size += s
    if cur:
        groups.append(cur)
    return groups


def qwen_split_pieces(rows: int, parts: int) -> list[Piece]:
    chunk = -(-rows // parts)
    pieces = [Piece(i * chunk, min(rows, (i + 1) * chunk)) for i in range(parts) if i * chunk < rows]
    if len(pieces) != parts:
        raise UsageError(f"--split-parts {parts} does not split {rows} rows into {parts} non-empty pieces "
                         f"(torch.chunk gives {len(pieces)})")
    return pieces


def plan_hf(source: Source, geos: tuple[Geometry, ...], *, dtype: str = "keep", max_shard_size: int = 5 * 10**9,
            engram_only: bool = False, split_parts: int | None = None, with_projections: bool = False) -> ShardPlan:
    tensors: list[OutTensor] = []
    by_first: dict[str, list[OutTensor]] = {}
    proj: dict[str, OutTensor] = {}  # source name -> replacement (copied or dequantised projection)
    dropped: set[str] = set()  # block scales of dequantised projections
    for t in source.tables:
        enc = _enc(t, dtype)
        fam = FAMILIES.get(t.family)
        full = (Piece(0, t.rows),)
        parts = split_parts or _source_parts(source, t)
        if fam is not None and fam.split_weight and parts:
            outs = []
            for i, p in enumerate(qwen_split_pieces(t.rows, parts)):
                wname = render(fam.split_weight, prefix=t.prefix, layer=t.layer_id, part=i)
                sname = render(fam.split_scale, prefix=t.prefix, layer=t.layer_id, part=i) if fam.split_scale else None
                outs += split_tensors(t, enc, (p,), 0, wname, sname)
                outs += global_scale_tensor(t, _gs_name(t, wname))
        else:
            w, s = _names(source, t)
            outs = split_tensors(t, enc, full, 0, w, s) + global_scale_tensor(t, _gs_name(t, w))
        key = t.source_names[0] if t.source_names else f"__table_{t.layer_id}"
        by_first[key] = outs
        if with_projections:
            for _key, ot, scale in projection_tensors(source, t):
                proj[ot.name] = ot
                if scale:
                    dropped.add(scale)
    if source.checkpoint is not None and (not engram_only or proj):
        emitted: set[str] = set()
        for name in source.checkpoint.names():
            if name in by_first:
                tensors += by_first.pop(name)
            elif name in source.table_tensors or name in dropped:
                continue
            elif name in proj:
                tensors.append(proj[name])
            elif name not in emitted and not engram_only:
                e = source.checkpoint.entry(name)
                tensors.append(OutTensor(name, e.dtype, e.shape, TensorCopy(name)))
            emitted.add(name)
    for outs in by_first.values():
        tensors += outs
    groups = greedy_shards([t.nbytes for t in tensors], max_shard_size)
    names = hf_shard_names(len(groups))
    files = [OutFile(n, "safetensors", tuple(tensors[i] for i in g), (("format", "pt"),)) for n, g in zip(names, groups)]
    index = None
    if len(files) > 1:  # one shard: model.safetensors alone, like huggingface_hub and transformers
        index = IndexFile({"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                           "weight_map": {t.name: f.name for f in files for t in f.tensors}}, HF_INDEX)
    copies, rewrites = [], []
    for p in source_side_files(source) if not engram_only else []:
        if p.name == "config.json" and split_parts:
            rewrites.append(RewriteFile(p, p.name, _rewrite_split_parts(p, split_parts)))
        else:
            copies.append(CopyFile(p, p.name))
    return _base(source, "hf", geos, files, dtype, index=index, copies=tuple(copies), rewrites=tuple(rewrites),
                 split_parts=split_parts, settings=(("max_shard_size", max_shard_size), ("split_parts", split_parts),
                                                    ("with_projections", with_projections)))


def _source_parts(source: Source, t: TableInfo) -> int | None:
    """How many shard_i pieces the original checkpoint used (None: one whole tensor)."""
    if source.format == "hf":
        return len(t.weight) if len(t.weight) > 1 else None
    for mt in source.manifest.tables if source.manifest else ():
        if mt.layer == t.layer_id:
            return mt.source_parts
    return None


def _rewrite_split_parts(path: Path, parts: int) -> bytes:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    target = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    target["split_ngram_parts"] = parts
    return (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()


# ---------------------------------------------------------------- ranks
def rank_file_name(r: RankRange, world: int, edp: int, ext: str = "safetensors") -> str:
    if r.tp_rank is not None:
        return f"engram-tp{r.tp_rank:02d}-of-{world:02d}-edp{r.edp_rank:02d}-of-{edp:02d}.{ext}"
    return f"engram-rank{r.rank:03d}-of-{world:03d}.{ext}"


def plan_ranks(source: Source, geos: tuple[Geometry, ...], *, policy: str, world: int, edp: int = 1,
               dtype: str = "keep") -> ShardPlan:
    ranges = table_ranges(policy, geos, source.tables, world, edp)
    n_files = len(ranges.layers[0].ranks)
    files = []
    for k in range(n_files):
        tensors: list[OutTensor] = []
        info: dict = {}
        for t, lr in zip(source.tables, ranges.layers):
            r, layer = lr.ranks[k], lr.layer
            enc = _enc(t, dtype)
            if policy == "megatron-ep":
                for p in r.pieces:
                    h = p.head if p.head is not None else "pad"
                    tensors += split_tensors(t, enc, (p,), 0, HEAD_WEIGHT.format(layer=layer, head=h),
                                             HEAD_SCALE.format(layer=layer, head=h), (p.head, p.head + 1) if p.head is not None else None)
                tensors += global_scale_tensor(t, f"engram.l{layer}.weight_scale_2")
            else:
                w, s = _names(source, t)
                tensors += split_tensors(t, enc, r.pieces, r.pad_rows, w, s, r.heads) + global_scale_tensor(t, _gs_name(t, w))
            info[str(layer)] = r.to_dict()
        r0 = ranges.layers[0].ranks[k]
        meta = (("format", "pt"), ("engram.policy", policy), ("engram.rank", str(r0.rank)),
                ("engram.world", str(world * edp)), ("engram.ranges", json.dumps(info, separators=(",", ":"))))
        files.append(OutFile(rank_file_name(r0, world, edp), "safetensors", tuple(tensors), meta,
                             (("rank", r0.rank), ("layers", info))))
    return _base(source, "ranks", geos, files, dtype, policy=policy, world=world, edp=edp, ranges=ranges)


# ---------------------------------------------------------------- heads
def plan_heads(source: Source, geos: tuple[Geometry, ...], *, dtype: str = "keep", head_format: str = "safetensors") -> ShardPlan:
    _need_geos(geos, "--to heads")
    if head_format not in ("safetensors", "rows"):
        raise UsageError(f"unknown --head-format {head_format!r}", hint="safetensors or rows (Mooncake objects)")
    files = []
    for t, g in zip(source.tables, geos):
        enc = _enc(t, dtype)
        heads = [(h, Piece(o, o + s, h)) for h, (o, s) in enumerate(zip(g.offsets, g.head_sizes))]
        if g.pad_rows:
            heads.append(("pad", Piece(sum(g.head_sizes), t.rows, None)))
        for h, p in heads:
            hs = f"{h:02d}" if isinstance(h, int) else h
            hr = (h, h + 1) if isinstance(h, int) else None
            info = (("layer", t.layer_id), ("head", h), ("rows", [p.start, p.stop]))
            if head_format == "rows":
                rb = enc.weight_row_bytes(t.dim) + enc.scale_row_bytes(t.dim)
                ot = OutTensor(f"engram:l{t.layer_id}:h{h}", "U8", (p.rows, rb), TableSlice(t.layer_id, (p,), "rows", enc, 0, hr), rb)
                files.append(OutFile(f"engram-l{t.layer_id}-h{hs}.row{rb}.bin", "raw", (ot,), (), info))
            else:
                ts = split_tensors(t, enc, (p,), 0, HEAD_WEIGHT.format(layer=t.layer_id, head=h),
                                   HEAD_SCALE.format(layer=t.layer_id, head=h), hr)
                ts += global_scale_tensor(t, f"engram.l{t.layer_id}.h{h}.weight_scale_2")
                meta = (("format", "pt"), ("engram.layer", str(t.layer_id)), ("engram.head", str(h)),
                        ("engram.rows", f"{p.start}:{p.stop}"))
                files.append(OutFile(f"engram-l{t.layer_id}-h{hs}.safetensors", "safetensors", tuple(ts), meta, info))
    return _base(source, "heads", geos, files, dtype, settings=(("head_format", head_format),))


# ---------------------------------------------------------------- packed
def plan_packed(source: Source, geos: tuple[Geometry, ...], *, packing: str = "rows", dtype: str = "keep",
                policy: str | None = None, world: int | None = None, edp: int = 1) -> ShardPlan:
    if packing not in ("rows", "split"):
        raise UsageError(f"unknown --packing {packing!r}", hint="rows (256 e4m3 bytes then 8 e8m0 bytes per row) or split (weights then scales)")
    if (policy is None) != (world is None):
        raise UsageError("--policy and --ranks go together")
    ranges = table_ranges(policy, geos, source.tables, world, edp) if policy else None
    per_layer = [(lr.layer, lr.ranks) for lr in ranges.layers] if ranges else \
        [(t.layer_id, (RankRange(0, (Piece(0, t.rows),)),)) for t in source.tables]
    files = []
    for t, (layer, rr) in zip(source.tables, per_layer):
        enc = _enc(t, dtype)
        wb, sb = enc.weight_row_bytes(t.dim), enc.scale_row_bytes(t.dim)
        for r in rr:
            rows = r.rows + r.pad_rows
            base = f"engram-l{layer}" + (f"-rank{r.rank:03d}-of-{len(rr):03d}" if policy else "")
            info = (("layer", layer), ("rank", r.rank if policy else None), ("ranges", r.to_dict()))
            if packing == "rows":
                ot = OutTensor(f"l{layer}.rows", "U8", (rows, wb + sb), TableSlice(layer, r.pieces, "rows", enc, r.pad_rows, r.heads), wb + sb)
                name = f"{base}.row{wb + sb}.bin"
                if enc.weight_dtype == "F8_E4M3" and sb == 8 and t.dim == 256:
                    name = f"{base}.e4m3_e8m0_32_row264.bin"
                files.append(OutFile(name, "raw", (ot,), (), info))
            else:
                ts = [OutTensor(f"l{layer}.weight", "U8", (rows, wb), TableSlice(layer, r.pieces, "weight", enc, r.pad_rows, r.heads), wb)]
                if sb:
                    ts.append(OutTensor(f"l{layer}.scale", "U8", (rows, sb), TableSlice(layer, r.pieces, "scale", enc, r.pad_rows, r.heads), sb))
                files.append(OutFile(f"{base}.ws.bin", "raw", tuple(ts), (), info))
    return _base(source, "packed", geos, files, dtype, policy=policy, world=world, edp=edp, ranges=ranges,
                 settings=(("packing", packing),))
