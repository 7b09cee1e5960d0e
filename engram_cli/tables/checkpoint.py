"""An HF safetensors checkpoint directory: index, headers, consistency checks.

``model.safetensors`` or shards with ``model.safetensors.index.json``; every tensor is
resolved through ``weight_map`` (a table and its scale may sit in different shards). Only
headers are read here; data is read in row blocks by :mod:`engram_cli.tables.rows`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engram_cli.errors import BadInputError
from engram_cli.pathguard import safe_join
from engram_cli.tables.st_format import SafetensorsHeader, TensorEntry, read_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    root: Path
    index_path: Path | None
    weight_map: dict[str, str]  # tensor name -> file name (relative to root)
    headers: dict[str, SafetensorsHeader]  # file name -> parsed header
    index_metadata: dict

    @property
    def files(self) -> list[str]:
        return list(self.headers)

    def entry(self, name: str) -> TensorEntry:
        return self.headers[self.weight_map[name]].tensors[name]

    def file_of(self, name: str) -> Path:
        return self.root / self.weight_map[name]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def config(self) -> dict | None:
        cfg = self.root / "config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise BadInputError(f"{cfg}: not valid JSON") from None
        return None


def is_hf_checkpoint(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return (path / INDEX_FILE).is_file() or (path / SINGLE_FILE).is_file() or any(path.glob("*.safetensors"))


def _read_index(index_path: Path) -> dict:
    """The index document, checked: a ``weight_map`` of tensor name -> file name strings, and
    ``metadata`` (if any) an object; every file name stays inside the folder."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadInputError(f"{index_path.name}: corrupt index (not JSON)") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise BadInputError(f"{index_path.name}: corrupt index (no weight_map object)")
    if not isinstance(index.get("metadata", {}), (dict, type(None))):
        raise BadInputError(f"{index_path.name}: metadata is {type(index['metadata']).__name__}, expected an object")
    for name, f in index["weight_map"].items():
        if not isinstance(f, str):
            raise BadInputError(f"{index_path.name}: weight_map[{name!r}] is {type(f).__name__}, expected a file name")
        safe_join(index_path.parent, f, f"{index_path.name}: weight_map[{name!r}]")
    return index


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint directory (or one .safetensors file) and check index vs headers."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"source {path} does not exist")
    if path.is_file():
        root, files, index_path, index = path.parent, [path.name], None, None
    else:
        root = path
        index_path = path / INDEX_FILE
        if index_path.is_file():
            index = _read_index(index_path)
            files = list(dict.fromkeys(index["weight_map"].values()))
        else:
            index_path, index = None, None
            if (path / SINGLE_FILE).is_file():
                files = [SINGLE_FILE]
            else:
                files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                raise BadInputError(f"{path}: no model.safetensors, index or *.safetensors files")
            for f in files:
                safe_join(root, f, "checkpoint file")
    headers: dict[str, SafetensorsHeader] = {}
    for f in files:
        fp = root / f
        if not fp.is_file():
            some = next((k for k, v in (index or {}).get("weight_map", {}).items() if v == f), "?")
            raise BadInputError(f"index maps tensor {some!r} to {f}, which is missing")
        headers[f] = read_header(fp)
    weight_map = _weight_map(index, headers)
    return Checkpoint(root, index_path, weight_map, headers, dict((index or {}).get("metadata") or {}))


def _weight_map(index: dict | None, headers: dict[str, SafetensorsHeader]) -> dict[str, str]:
    """Tensor name -> file, from the index (checked against every header) or the headers alone."""
    weight_map: dict[str, str] = {}
    if index is not None:
        for name, f in index["weight_map"].items():
            if name not in headers[f].tensors:
                raise BadInputError(
                    f"index/header mismatch: index maps tensor {name!r} to {f}, but its header has no such tensor"
                )
            weight_map[name] = f
        for f, h in headers.items():
            for name in h.tensors:
                if index["weight_map"].get(name) != f:
                    raise BadInputError(
                        f"index/header mismatch: {f} holds tensor {name!r}, which the index "
                        + ("does not list" if name not in index["weight_map"] else f"maps to {index['weight_map'][name]}")
                    )
        return weight_map
    for f, h in headers.items():
        for name in h.tensors:
            if name in weight_map:
                raise BadInputError(f"tensor {name!r} appears in both {weight_map[name]} and {f}")
            weight_map[name] = f
    return weight_map
