"""Find Engram tables in an HF checkpoint by name family, and validate dtypes and shapes."""

from __future__ import annotations

from dataclasses import dataclass

from engram_cli.errors import BadInputError, UsageError
from engram_cli.tables.checkpoint import Checkpoint
from engram_cli.tables.model import Encoding, Segment, TableInfo
from engram_cli.tables.names import FAMILIES, NameFamily, render, template_regex
from engram_cli.tables.st_format import TensorEntry

WEIGHT_DTYPES = {"F8_E4M3", "BF16", "F16", "F32", "I8"}
SCALE_DTYPES = {"F8_E8M0", "U8", "F32"}


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


def _discover_family(ck: Checkpoint, fam: NameFamily) -> Discovered:
    names = ck.names()
    tables: list[TableInfo] = []
    used: set[str] = set()
    weight_res = [template_regex(t) for t in fam.weight]
    split_re = template_regex(fam.split_weight) if fam.split_weight else None
    found: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name in names:
        for rx in weight_res:
            m = rx.match(name)
            if m:
                found.setdefault((m.group("prefix") if "prefix" in rx.groupindex else "", int(m.group("layer"))), []).append((-1, name))
        if split_re:
            m = split_re.match(name)
            if m:
                key = (m.group("prefix") if "prefix" in split_re.groupindex else "", int(m.group("layer")))
                found.setdefault(key, []).append((int(m.group("part")), name))
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
        for e in entries:
            _check_2d(ck, e, "table")
            if e.dtype not in WEIGHT_DTYPES:
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
        # scale
        scale_name = None
        for t in fam.scale:
            cand = render(t, prefix=prefix, layer=layer)
            if cand in ck.weight_map:
                scale_name = cand
                break
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


