"""One path guard for every name read from a file or given as an option (bottom layer).

A name such as a manifest entry, an index ``weight_map`` value, a layout's ``token_map``
file or ``--gguf-name`` must resolve inside its base folder: relative, no ``..`` part, no
control character, and no symbolic link leading out of the folder. The one exception is the
Hugging Face cache, whose snapshot folders hold links into the sibling ``blobs/`` folder:
a link from ``.../snapshots/REV/NAME`` into ``.../blobs/`` is followed. Anything else is
refused with exit 3 naming the entry.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from engram_cli.errors import BadInputError


def _hf_blobs(base: Path) -> Path | None:
    """``.../blobs`` when ``base`` is ``.../snapshots/REV`` of a Hugging Face cache repo."""
    if base.parent.name == "snapshots" and (base.parent.parent / "blobs").is_dir():
        return (base.parent.parent / "blobs").resolve()
    return None


def check_name(name: object, what: str) -> str:
    """``name`` when it is a plain relative path (``a.bin``, ``sub/a.bin``); else exit 3."""
    if not isinstance(name, str) or not name:
        raise BadInputError(f"{what}: file name {name!r} is not a non-empty string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadInputError(f"{what}: file name {name!r} contains control characters")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BadInputError(f"{what}: file name {name!r} is an absolute path", hint="names must stay inside their folder")
    if any(part == ".." for part in pure.parts):
        raise BadInputError(f"{what}: file name {name!r} leads out of its folder ('..')",
                            hint="names must stay inside their folder")
    return name


def safe_join(base: str | os.PathLike[str], name: object, what: str) -> Path:
    """``base / name`` after :func:`check_name`, refusing a symbolic link that leaves ``base``.

    ``what`` names the entry in the error (e.g. ``"engram-shards.json: file"``). The path
    need not exist; when it (or a folder on the way) is a link, its target must lie inside
    ``base`` (or in the ``blobs/`` of a Hugging Face cache snapshot)."""
    name = check_name(name, what)
    base = Path(base)
    joined = base / name
    root = base.resolve()
    target = joined.resolve()
    if target == root or root in target.parents:
        return joined
    blobs = _hf_blobs(root)
    if blobs is not None and blobs in target.parents and inside(root, (root / name).parent):
        return joined  # a Hugging Face cache snapshot: the file itself links into ../../blobs
    raise BadInputError(f"{what}: {name!r} resolves outside {base} (symbolic link to {target})",
                        hint="names must stay inside their folder")


def inside(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (resolved) lies inside ``base`` (resolved)."""
    root, p = Path(base).resolve(), Path(path).resolve()
    return p == root or root in p.parents
