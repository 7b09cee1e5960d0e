"""Open any Engram-bearing path for ``inspect``: an HF checkpoint, an ``engram shard`` output,
a GGUF of any dialect, or a layout folder. Headers, manifests and small constants only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engram_cli.errors import BadInputError
from engram_cli.inspect.model import Found, TableRow
from engram_cli.tables.model import Encoding, GlobalScale, TableInfo

MANIFEST = "engram-shards.json"
LAYOUT_FILE = "engram_layout.json"


def describe_scale(enc: Encoding, dim: int, gs: GlobalScale | None = None) -> str:
    """How a table's scales are laid out, in words."""
    if enc.scale_dtype is None:
        return "none"
    kind = {"F8_E8M0": "e8m0", "U8": "e8m0 (as U8)", "F32": "fp32", "F8_E4M3": "e4m3"}.get(enc.scale_dtype, enc.scale_dtype)
    what = "values" if enc.pack != 1 else "columns"
    text = f"{kind}, 1 per {enc.group} {what} of a row ([rows, {dim // enc.group}])"
    return text + (f" x global {gs.suffix} {gs.value:g}" if gs is not None else "")


def _files(segs) -> list[str]:
    return list(dict.fromkeys(Path(s.path).name for s in segs))


def row_from_info(t: TableInfo, storage: str | None = None) -> TableRow:
    files = _files(t.weight + t.scale)
    if storage is None:
        pieces = f"{len(t.weight)} row pieces, " if len(t.weight) > 1 else ""
        storage = f"{pieces}{len(files)} file{'s' if len(files) > 1 else ''}: {', '.join(files[:3])}" + (" ..." if len(files) > 3 else "")
    return TableRow(t.layer_id, t.rows, t.dim, t.encoding.name, describe_scale(t.encoding, t.dim, t.global_scale), t.nbytes,
                    storage, tuple(t.source_names[:4]) or tuple(dict.fromkeys(s.tensor for s in t.weight + t.scale))[:4])


def _config(path: Path) -> dict | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadInputError(f"{cfg}: not valid JSON") from None
    return data if isinstance(data, dict) else None


def near_layout(folder: Path, cfg: dict | None) -> tuple[Any | None, str, list[str]]:
    """The layout beside a checkpoint: ``engram_layout.json``, else its ``config.json`` (no token
    map: inspect never tokenises). A config that does not form a layout is a note, not an error."""
    from engram_cli.layout import layout_from_config, load_layout
    from engram_cli.layout.config import detect_variant

    if (folder / LAYOUT_FILE).is_file():
        return load_layout(folder), LAYOUT_FILE, []
    if cfg is None:
        return None, "", []
    try:
        detect_variant(cfg)
    except BadInputError:
        return None, "", []
    try:
        return layout_from_config(cfg), "config.json", []
    except BadInputError as exc:
        return None, "", [f"config.json does not give a layout: {exc}"]


def open_any(path: str | Path) -> Found:
    """Detect what ``path`` is and describe it (exit 3 for anything unreadable)."""
    from engram_cli.tables.checkpoint import is_hf_checkpoint

    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p} does not exist")
    if p.is_file():
        if p.suffix == ".gguf" or _magic(p) == b"GGUF":
            return open_gguf(p)
        if p.name == LAYOUT_FILE:
            return open_layout(p.parent)
        if p.name == MANIFEST:
            return open_output(p.parent)
        if p.suffix == ".safetensors":
            return open_hf(p)
        raise BadInputError(f"{p.name}: not a GGUF, safetensors, manifest or layout file", hint="inspect its folder instead")
    if (p / MANIFEST).is_file():
        return open_output(p)
    if is_hf_checkpoint(p):
        return open_hf(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return open_gguf(ggufs[0])
    if (p / LAYOUT_FILE).is_file() or _config(p) is not None:
        return open_layout(p)
    raise BadInputError(f"{p}: no safetensors checkpoint, engram shard output, GGUF or layout found")


def _magic(p: Path) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(4)


def open_hf(p: Path, detail: str = "", family: str | None = None) -> Found:
    from engram_cli.tables.checkpoint import open_checkpoint
    from engram_cli.tables.discover import discover

    folder = p if p.is_dir() else p.parent
    ck = open_checkpoint(p)
    cfg = _config(folder)
    layout, src, notes = near_layout(folder, cfg)
    try:
        found = discover(ck, family)
    except BadInputError:
        if layout is None:
            raise
        return Found(str(p), "layout", "checkpoint without Engram tables", layout.variant, (), layout, src, config=cfg,
                     notes=tuple(notes) + ("no Engram table in the safetensors files",))
    rows = tuple(row_from_info(t) for t in found.tables)
    n = len(ck.files)
    detail = detail or f"safetensors checkpoint, {n} file{'s' if n > 1 else ''}"
    return Found(str(p), "hf", detail, found.family.name, rows, layout, src, config=cfg, notes=tuple(notes))


def open_layout(folder: Path) -> Found:
    cfg = _config(folder)
    layout, src, notes = near_layout(folder, cfg)
    if layout is None:
        raise BadInputError(f"{folder}: neither {LAYOUT_FILE} nor a config.json with Engram fields")
    return Found(str(folder), "layout", f"layout from {src}", layout.variant, (), layout, src, config=cfg, notes=tuple(notes))


def open_gguf(p: Path, detail: str = "") -> Found:
    from engram_cli.tables.gguf_read import layout_from_gguf, read_gguf

    g = read_gguf(p)
    rows = []
    for t in g.tables:
        if t.encoding == "e4m3_e8m0_32_row264":
            scale = "e8m0, bytes 256..263 of each 264-byte row"
        elif t.storage == "Q8_0":
            scale = "fp16, 1 per 32-value block (Q8_0)"
        elif t.info is not None:
            scale = describe_scale(t.info.encoding, t.dim)
        else:
            scale = f"inside {t.storage} blocks"
        width = 264 if t.encoding == "e4m3_e8m0_32_row264" else t.dim
        where = f"GGUF {t.storage} [{width}, {t.rows}]" if t.storage != "safetensors" else t.note
        rows.append(TableRow(t.layer, t.rows, t.dim or 256, t.encoding, scale, t.nbytes, where, (t.tensor,)))
    layout = layout_from_gguf(g)
    kinds = sorted({s.split()[0] for s in g.constants.source.values()})
    src = f"GGUF {' and '.join(k + 's' for k in kinds)}" if layout is not None else ""
    detail = detail or f"GGUF, dialect {g.dialect}, {len(g.tensors)} tensors"
    return Found(str(p), "gguf", detail, "deepseek-v4.1", tuple(rows), layout, src, gguf=g, notes=g.notes)


def open_output(folder: Path) -> Found:
    """An ``engram shard`` output: tables as the manifest records them (partial outputs too)."""
    from engram_cli.layout.layout import EngramLayout
    from engram_cli.layout.store import load_layout
    from engram_cli.tables.manifest import Manifest

    man = Manifest.load(folder)
    detail = f"engram shard output, target {man.target}" + (f", {man.policy} P={man.world}" if man.policy else "")
    if man.target == "gguf" and man.files:
        f = open_gguf(folder / man.files[0].name)
        return Found(str(folder), "engram", f"{detail}; {f.detail}", man.family, f.tables, f.layout, f.layout_source, f.gguf,
                     man, notes=f.notes)
    if man.target == "local":
        f = open_hf(folder, detail + " (node-local sparse copy)", man.family)
        return Found(str(folder), "engram", f.detail, man.family, f.tables, f.layout, f.layout_source, None, man,
                     f.config, f.notes)
    layout, src = None, ""
    if (folder / LAYOUT_FILE).is_file():
        layout, src = load_layout(folder), LAYOUT_FILE
    elif man.layout:
        layout, src = EngramLayout.from_dict(man.layout), f"{MANIFEST} (no token map)"
    rows = []
    for mt in man.tables:
        parts = [(f.name, t) for f in man.files for t in f.tensors if t.table is not None and t.table.layer == mt.layer]
        files = list(dict.fromkeys(n for n, _ in parts))
        kinds = sorted({t.table.part for _, t in parts})
        held = sum(p.stop - p.start for _, t in parts if t.table.part in ("weight", "rows") for p in t.table.pieces)
        storage = f"{len(files)} file{'s' if len(files) != 1 else ''} ({'+'.join(kinds)})" + (
            f", {held:,} of {mt.rows:,} rows" if held != mt.rows else "")
        enc = mt.output_encoding
        scale = describe_scale(enc, mt.dim, mt.global_scale)
        if kinds == ["rows"] and enc.scale_dtype:
            scale = f"{scale.split(',')[0]}, after the weights in each {enc.weight_row_bytes(mt.dim) + enc.scale_row_bytes(mt.dim)}-byte row"
        nbytes = sum(t.nbytes for _, t in parts)
        rows.append(TableRow(mt.layer, mt.rows, mt.dim, enc.name, scale, nbytes, storage, tuple(files[:4])))
    return Found(str(folder), "engram", detail, man.family, tuple(rows), layout, src, manifest=man)

