"""Save and load layouts: ``engram_layout.json`` plus the token map file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engram_cli.errors import BadInputError
from engram_cli.fsutil import atomic_path
from engram_cli.pathguard import safe_join

if TYPE_CHECKING:  # pragma: no cover
    from engram_cli.layout.layout import EngramLayout

LAYOUT_FILE = "engram_layout.json"
TOKEN_MAP_FILES = {"safetensors": "token_map.safetensors", "npy": "token_map.npy", "json": "token_map.json"}


def save_layout(layout: EngramLayout, directory: str | Path, token_map_format: str = "safetensors") -> list[str]:
    """Write the token map, then ``engram_layout.json`` (each atomically). Returns file names."""
    if token_map_format not in TOKEN_MAP_FILES:
        raise BadInputError(f"unknown token map format {token_map_format!r}", hint="safetensors, npy or json")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = layout.to_dict()
    written = []
    if layout.token_map is not None:
        name = TOKEN_MAP_FILES[token_map_format]
        tm = np.asarray(layout.token_map, dtype=np.int32)
        with atomic_path(directory / name) as tmp:
            if token_map_format == "safetensors":
                from safetensors.numpy import save_file

                save_file({"token_map": tm}, str(tmp), metadata={"format": "engram.token_map/1"})
            elif token_map_format == "npy":
                with open(tmp, "wb") as fh:
                    np.save(fh, tm)
            else:
                tmp.write_text(json.dumps(tm.tolist()), encoding="utf-8")
        doc["token_map"] = {"file": name, "dtype": "int32", "length": int(tm.shape[0])}
        written.append(name)
    else:
        doc["token_map"] = None
    with atomic_path(directory / LAYOUT_FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    written.append(LAYOUT_FILE)
    return written


def load_layout(path: str | Path) -> EngramLayout:
    """Load a layout directory (or its ``engram_layout.json``) saved by :func:`save_layout`."""
    from engram_cli.layout.layout import EngramLayout

    p = Path(path)
    if not p.exists():
        raise BadInputError(f"layout not found: {p}", hint="create one with `engram build-vocab -o DIR`")
    file = p / LAYOUT_FILE if p.is_dir() else p
    if not file.is_file():
        raise BadInputError(f"no {LAYOUT_FILE} in {p}", hint="create one with `engram build-vocab -o DIR`")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{file} is not a layout file: {exc}") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("engram.layout/"):
        raise BadInputError(f"{file} is not an engram layout (no engram.layout schema)")
    token_map = None
    info = doc.get("token_map")
    if info:
        if not isinstance(info, dict):
            raise BadInputError(f"{file.name}: token_map is {type(info).__name__}, expected an object")
        tm_file = safe_join(file.parent, info.get("file"), f"{file.name}: token_map file")
        if not tm_file.is_file():
            raise BadInputError(f"token map {tm_file} referenced by {file.name} is missing")
        token_map = _read_token_map(tm_file)
        if token_map.shape[0] != int(info.get("length", token_map.shape[0])):
            raise BadInputError(f"token map {tm_file.name} has {token_map.shape[0]} ids, the layout says {info['length']}")
    return EngramLayout.from_dict(doc, token_map=token_map)


def _read_token_map(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            arr = load_file(str(path))["token_map"]
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.asarray(json.loads(path.read_text(encoding="utf-8")))
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise BadInputError(f"cannot read token map {path}: {type(exc).__name__}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"token map {path} must be a 1-D integer array")
    return arr.astype(np.int64)
