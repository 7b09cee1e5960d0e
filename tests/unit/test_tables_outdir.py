"""The path guard, and the output folder's staging and commit: a crash at every step of the
commit leaves either the previous output or a folder without manifest or index; unrelated
files are never removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engram_cli.errors import BadInputError, UsageError
from engram_cli.pathguard import check_name, safe_join
from engram_cli.tables import outdir
from engram_cli.tables.manifest import MANIFEST, Manifest, ManifestFile, SideFile


# ---------------------------------------------------------------- path guard
@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "\\\\server\\x", "C:\\x", "", "a\x1bb", "a\x00", 5, None])
def test_guard_refuses(tmp_path, name):
    with pytest.raises(BadInputError):
        safe_join(tmp_path, name, "entry")


@pytest.mark.parametrize("name", ["a.bin", "sub/a.bin", "a..b.bin", ".hidden"])
def test_guard_accepts(tmp_path, name):
    assert safe_join(tmp_path, name, "entry") == tmp_path / name
    assert check_name(name, "entry") == name


def test_guard_symlinks(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"x")
    (base / "inside.bin").write_bytes(b"y")
    os.symlink(tmp_path / "outside.bin", base / "out.bin")
    os.symlink(base / "inside.bin", base / "in.bin")
    os.symlink(tmp_path, base / "up")
    with pytest.raises(BadInputError, match="outside"):
        safe_join(base, "out.bin", "entry")
    with pytest.raises(BadInputError, match="outside"):
        safe_join(base, "up/outside.bin", "entry")
    assert safe_join(base, "in.bin", "entry") == base / "in.bin"


def test_guard_follows_hf_cache_blobs(tmp_path):
    repo = tmp_path / "models--org--m"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "deadbeef").write_bytes(b"weights")
    os.symlink("../../blobs/deadbeef", snap / "model.safetensors")
    assert safe_join(snap, "model.safetensors", "checkpoint file").read_bytes() == b"weights"


# ---------------------------------------------------------------- staging and commit
def _manifest(out: Path, names: list[str]) -> None:
    Manifest("packed", tuple(ManifestFile(n, "raw", (out / n).stat().st_size, None) for n in names[:-1]), (),
             side_files=(SideFile(names[-1], "index", (out / names[-1]).stat().st_size, None),)).write(out)


def _old_output(out: Path) -> None:
    out.mkdir()
    for n in ("a.bin", "stale.bin", "model.safetensors.index.json"):
        (out / n).write_text("old " + n)
    _manifest(out, ["a.bin", "stale.bin", "model.safetensors.index.json"])
    (out / "notes.txt").write_text("mine")


def _stage(out: Path, force: bool = True) -> outdir.OutputDir:
    planned = ["a.bin", "b.bin", "model.safetensors.index.json"]
    od = outdir.prepare_output(out, out.parent / "src", planned, force)
    outdir.begin(od)
    for n in planned:
        od.staged(n).write_text("new " + n)
    (od.staged(MANIFEST)).write_text("{}")
    return od


def test_commit_replaces_listed_files_and_keeps_others(tmp_path):
    out = tmp_path / "out"
    _old_output(out)
    with pytest.raises(UsageError, match="already holds a conversion"):
        _stage(out, force=False)
    od = _stage(out)
    assert (out / "a.bin").read_text() == "old a.bin"  # nothing touched before the commit
    outdir.commit(od)
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "b.bin", MANIFEST, "model.safetensors.index.json", "notes.txt"]
    assert (out / "a.bin").read_text() == "new a.bin" and (out / "notes.txt").read_text() == "mine"
    assert od.removed == ["stale.bin"] and od.kept == ["notes.txt"]


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("step", range(9))
def test_a_kill_at_any_commit_step_never_looks_complete(tmp_path, monkeypatch, step):
    out = tmp_path / "out"
    _old_output(out)
    od = _stage(out)
    calls = {"n": 0}
    real_replace, real_unlink = os.replace, Path.unlink

    def counted(fn):
        def wrapper(*a, **k):
            if calls["n"] == step:
                raise _Killed
            calls["n"] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(outdir.os, "replace", counted(real_replace))
    monkeypatch.setattr(Path, "unlink", counted(real_unlink))
    try:
        outdir.commit(od)
    except _Killed:
        pass
    monkeypatch.undo()
    names = {p.name for p in out.iterdir()}
    has_index, has_manifest = "model.safetensors.index.json" in names, MANIFEST in names
    assert has_manifest or not has_index  # an index (what HF readers go by) never stands without its manifest
    if has_index and has_manifest:  # complete: entirely the old output or entirely the new one
        texts = {(out / n).read_text().split()[0] for n in ("a.bin", "model.safetensors.index.json")}
        assert len(texts) == 1
        if texts == {"new"}:
            assert "b.bin" in names and "stale.bin" not in names
    assert (out / "notes.txt").read_text() == "mine"
    od2 = _stage(out)  # a rerun clears the leftover staging folder and completes
    outdir.commit(od2)
    assert not any(n.endswith(".tmp") for n in os.listdir(out)) and (out / "b.bin").read_text() == "new b.bin"


def test_refuses_foreign_folder_and_names(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        outdir.prepare_output(out, tmp_path / "src", ["a.bin"], False)
    with pytest.raises(UsageError, match="folder"):
        outdir.prepare_output(tmp_path / "p", tmp_path / "src", ["sub/a.bin"], True)
    with pytest.raises(BadInputError):
        outdir.prepare_output(tmp_path / "p", tmp_path / "src", ["../a.bin"], True)


def test_an_interrupt_during_the_swap_waits_for_it(tmp_path, monkeypatch):
    import signal

    out = tmp_path / "out"
    _old_output(out)
    od = _stage(out)
    real = os.replace
    sent = []

    def replace_and_interrupt(a, b):
        if not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)  # arrives in the middle of the swap
        return real(a, b)

    monkeypatch.setattr(outdir.os, "replace", replace_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        outdir.commit(od)
    names = {p.name for p in out.iterdir()}
    assert {"a.bin", "b.bin", MANIFEST, "model.safetensors.index.json", "notes.txt"} <= names  # the swap completed
    assert (out / "b.bin").read_text() == "new b.bin" and not any(n.endswith(".tmp") for n in names)
