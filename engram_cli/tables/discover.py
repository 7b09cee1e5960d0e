"""Find Engram tables in an HF checkpoint by name family, and validate dtypes and shapes."""

from __future__ import annotations

from dataclasses import dataclass

from engram_cli.errors import BadInputError, UsageError
from engram_cli.tables.checkpoint import Checkpoint
from engram_cli.tables.model import Encoding, GlobalScale, Segment, TableInfo
from engram_cli.tables.names import FAMILIES, NameFamily, render, template_regex
from engram_cli.tables.st_format import DTYPE_SIZE, TensorEntry

WEIGHT_DTYPES = {"F8_E4M3", "BF16", "F16", "F32", "I8"}
SCALE_DTYPES = {"F8_E8M0", "U8", "F32"}
NVFP4_GROUP = 16  # e2m1 values per e4m3 block scale


@dataclass(frozen=True)
class Discovered:
    family: NameFamily
    tables: tuple[TableInfo, ...]
    table_tensors: frozenset[str]  # every tensor name that belongs to a table (weight, scale, pieces)


def _segment(ck: Checkpoint, name: str, start: int) -> Segment:
    e = ck.entry(name)
    return Segment(str(ck.file_of(name)), start, start + e.shape[0], e.offset, e.row_bytes, 0, name)


def _check_2d(ck: Checkpoint, e: TensorEntry, what: str) -> None:
    if len(e.shape) != 2:
        raise BadInputError(f"{ck.weight_map[e.name]}: {what} {e.name!r} has shape {list(e.shape)}, expected 2-D [rows, dim]")


def discover(ck: Checkpoint, family: str | NameFamily | None = None) -> Discovered:
    """Tables of the given family (or the first family that matches)."""
    if isinstance(family, NameFamily):
        fams = [family]
    elif family:
        if family not in FAMILIES:
            raise UsageError(f"unknown name family {family!r}", hint="choose one of " + ", ".join(FAMILIES))
        fams = [FAMILIES[family]]
    else:
        fams = list(FAMILIES.values())
    for fam in fams:
        found = _discover_family(ck, fam)
        if found.tables:
            return found
    raise BadInputError(
        f"{ck.root}: no Engram table found ({', '.join(f.name for f in fams)} names)",
        hint="pass --key with a template such as 'decoder.layers_{layer}.engram.embedding' for other checkpoints",
    )


def _match_names(names: list[str], fam: NameFamily) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """(prefix, layer) -> [(piece index or -1 for a whole table, tensor name)] of a family's tables."""
    weight_res = [template_regex(t) for t in fam.weight]
    split_re = template_regex(fam.split_weight) if fam.split_weight else None
    found: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name in names:
        for rx in weight_res:
            m = rx.match(name)
            if m:
                found.setdefault((m.group("prefix") if "prefix" in rx.groupindex else "", int(m.group("layer"))), []).append((-1, name))
        m = split_re.match(name) if split_re else None
        if m:
            key = (m.group("prefix") if "prefix" in split_re.groupindex else "", int(m.group("layer")))
            found.setdefault(key, []).append((int(m.group("part")), name))
    return found


def _discover_family(ck: Checkpoint, fam: NameFamily) -> Discovered:
    tables: list[TableInfo] = []
    used: set[str] = set()
    found = _match_names(ck.names(), fam)
    for (prefix, layer), pieces in sorted(found.items(), key=lambda kv: kv[0][1]):
        whole = [n for p, n in pieces if p < 0]
        parts = sorted((p, n) for p, n in pieces if p >= 0)
        if whole and parts:
            raise BadInputError(f"layer {layer}: both a whole table {whole[0]!r} and shard_i pieces are present")
        if parts:
            idx = [p for p, _ in parts]
            if idx != list(range(len(idx))):
                missing = sorted(set(range(max(idx) + 1)) - set(idx))
                raise BadInputError(f"layer {layer}: table pieces are not consecutive (missing shard_{missing[0] if missing else '?'})")
            piece_names = [n for _, n in parts]
        else:
            piece_names = whole[:1]
        entries = [ck.entry(n) for n in piece_names]
        part_scales = _part_scales(ck, fam, prefix, layer, piece_names) if parts else None
        first_scale = part_scales[0] if part_scales else _whole_scale(ck, fam, prefix, layer)
        nvfp4 = entries[0].dtype == "U8" and first_scale is not None and ck.entry(first_scale).dtype == "F8_E4M3"
        if part_scales is not None and not nvfp4:
            raise BadInputError(f"layer {layer}: table pieces {entries[0].dtype} with per-piece row scales "
                                f"({part_scales[0]!r}) are only supported for NVFP4 (U8 weights)")
        for e in entries:
            _check_2d(ck, e, "table")
            if e.dtype not in WEIGHT_DTYPES and not (nvfp4 and e.dtype == "U8"):
                raise BadInputError(
                    f"{ck.weight_map[e.name]}: table {e.name!r} has dtype {e.dtype}, expected one of {sorted(WEIGHT_DTYPES)}"
                )
        dim, wdtype = entries[0].shape[1], entries[0].dtype
        for e in entries[1:]:
            if e.shape[1] != dim or e.dtype != wdtype:
                raise BadInputError(f"{ck.weight_map[e.name]}: piece {e.name!r} is {e.dtype}{list(e.shape)}, "
                                    f"expected {wdtype}[*, {dim}] like the first piece")
        segs, start = [], 0
        for n in piece_names:
            seg = _segment(ck, n, start)
            segs.append(seg)
            start = seg.stop
        rows = start
        if nvfp4:
            t, names_all = _nvfp4_table(ck, fam, prefix, layer, piece_names, tuple(segs), part_scales)
            used.update(names_all)
            tables.append(t)
            continue
        # scale
        scale_name = _whole_scale(ck, fam, prefix, layer)
        enc = Encoding(wdtype)
        scale_segs: tuple[Segment, ...] = ()
        if scale_name:
            se = ck.entry(scale_name)
            _check_2d(ck, se, "scale")
            if se.dtype not in SCALE_DTYPES:
                raise BadInputError(f"{ck.weight_map[scale_name]}: scale {scale_name!r} has dtype {se.dtype}, "
                                    f"expected F8_E8M0 or U8 (or F32 for int8 tables)")
            if se.shape[0] != rows or se.shape[1] == 0 or dim % se.shape[1]:
                raise BadInputError(f"{ck.weight_map[scale_name]}: scale {scale_name!r} has shape {list(se.shape)}, "
                                    f"expected [{rows}, {dim // 32}] (one scale per 32 columns of a row)")
            if wdtype == "F8_E4M3" and se.dtype == "F32" or wdtype == "I8" and se.dtype != "F32":
                raise BadInputError(f"{ck.weight_map[scale_name]}: scale {scale_name!r} dtype {se.dtype} does not fit a {wdtype} table")
            enc = Encoding(wdtype, se.dtype, dim // se.shape[1])
            scale_segs = (_segment(ck, scale_name, 0),)
        elif wdtype == "I8":
            raise BadInputError(f"table {piece_names[0]!r} is int8 but has no scale tensor")
        names_all = tuple(piece_names) + ((scale_name,) if scale_name else ())
        used.update(names_all)
        tables.append(TableInfo(layer, rows, dim, enc, tuple(segs), scale_segs, fam.name, prefix, names_all))
    return Discovered(fam, tuple(tables), frozenset(used))




def _whole_scale(ck: Checkpoint, fam: NameFamily, prefix: str, layer: int) -> str | None:
    """The first row-group scale tensor of a whole table; scalars (Qwen4-Exp's global FP8
    ``ngram_embedding.weight_scale``) are not row scales and stay plain tensors."""
    for t in fam.scale:
        cand = render(t, prefix=prefix, layer=layer)
        if cand in ck.weight_map and len(ck.entry(cand).shape) >= 2:
            return cand
    return None


def _part_scales(ck: Checkpoint, fam: NameFamily, prefix: str, layer: int, pieces: list[str]) -> list[str] | None:
    if not fam.split_scale:
        return None
    names = [render(fam.split_scale, prefix=prefix, layer=layer, part=i) for i in range(len(pieces))]
    have = [n in ck.weight_map and len(ck.entry(n).shape) >= 2 for n in names]
    if not any(have):
        return None
    if not all(have):
        missing = [n for n, h in zip(names, have) if not h]
        raise BadInputError(f"layer {layer}: {len(missing)} of {len(names)} table pieces have no scale tensor "
                            f"(first: {missing[0]!r})")
    return names


def _read_small(ck: Checkpoint, name: str) -> bytes:
    e = ck.entry(name)
    with open(ck.file_of(name), "rb") as fh:
        fh.seek(e.offset)
        data = fh.read(e.nbytes)
    if len(data) != e.nbytes:
        raise BadInputError(f"{ck.weight_map[name]}: tensor {name!r} is truncated")
    return data


def global_scale(ck: Checkpoint, fam: NameFamily, prefix: str, layer: int, n_parts: int | None) -> tuple[GlobalScale | None, tuple[str, ...]]:
    """The NVFP4 ``weight_scale_2`` of a table: one scalar, or one per piece that must all be equal."""
    if not fam.global_scale:
        return None, ()
    if n_parts:
        tmpl = next((t for t in fam.global_scale if "{part}" in t), None)
        names = [render(tmpl, prefix=prefix, layer=layer, part=i) for i in range(n_parts)] if tmpl else []
    else:
        names = [render(t, prefix=prefix, layer=layer) for t in fam.global_scale if "{part}" not in t]
    names = [n for n in names if n in ck.weight_map]
    if not names:
        return None, ()
    if n_parts and len(names) != n_parts:
        raise BadInputError(f"layer {layer}: only {len(names)} of {n_parts} table pieces have a weight_scale_2 tensor")
    vals = []
    for n in names:
        e = ck.entry(n)
        if e.dtype not in ("F32", "BF16", "F16") or e.nbytes != DTYPE_SIZE[e.dtype]:
            raise BadInputError(f"{ck.weight_map[n]}: {n!r} is {e.dtype}{list(e.shape)}, expected one F32 scalar")
        vals.append(GlobalScale(e.dtype, e.shape, _read_small(ck, n)))
    first = vals[0]
    diff = [(n, v) for n, v in zip(names, vals) if (v.dtype, v.data) != (first.dtype, first.data)]
    if diff:
        shown = ", ".join(f"{_short(n)}={v.value!r}" for n, v in [(names[0], first)] + diff[:4])
        raise BadInputError(f"layer {layer}: NVFP4 weight_scale_2 differs across table pieces: {shown}"
                            + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""),
                            hint="the pieces were quantised separately; re-partitioning would change their values, "
                                 "so re-quantise them with one global scale first")
    return first, tuple(names)


def _short(name: str) -> str:
    """``...ngram_embedding.shard_3.weight_scale_2`` -> ``shard_3``."""
    for piece in name.split("."):
        if piece.startswith("shard_"):
            return piece
    return name


def _nvfp4_table(ck: Checkpoint, fam: NameFamily, prefix: str, layer: int, piece_names: list[str],
                 segs: tuple[Segment, ...], part_scales: list[str] | None) -> tuple[TableInfo, tuple[str, ...]]:
    """NVFP4: weight U8 [rows, dim/2], scale F8_E4M3 [rows, dim/16] per piece, weight_scale_2 scalar."""
    scale_names = part_scales or [_whole_scale(ck, fam, prefix, layer)]
    entries = [ck.entry(n) for n in piece_names]
    dim = entries[0].shape[1] * 2
    sc_segs, start = [], 0
    for we, sn in zip(entries, scale_names):
        se = ck.entry(sn)
        _check_2d(ck, se, "scale")
        if se.dtype != "F8_E4M3" or se.shape != (we.shape[0], dim // NVFP4_GROUP):
            raise BadInputError(f"{ck.weight_map[sn]}: NVFP4 scale {sn!r} is {se.dtype}{list(se.shape)}, expected "
                                f"F8_E4M3[{we.shape[0]}, {dim // NVFP4_GROUP}] (one e4m3 scale per 16 values of a row)")
        seg = _segment(ck, sn, start)
        sc_segs.append(seg)
        start = seg.stop
    gs, gs_names = global_scale(ck, fam, prefix, layer, len(piece_names) if part_scales else None)
    if gs is None:
        raise BadInputError(f"layer {layer}: NVFP4 table {piece_names[0]!r} has no weight_scale_2 tensor")
    enc = Encoding("U8", "F8_E4M3", NVFP4_GROUP, pack=2)
    names_all = tuple(piece_names) + tuple(scale_names) + gs_names
    rows = sum(e.shape[0] for e in entries)
    return TableInfo(layer, rows, dim, enc, segs, tuple(sc_segs), fam.name, prefix, names_all, gs), names_all
