"""Conversions killed (SIGKILL) or interrupted (SIGINT, SIGTERM) at any point, also `--force`
re-conversions over an older output: no folder state passes as complete unless it verifies,
an interrupt leaves no temporary file, and a rerun completes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tables_helpers import make_v41_checkpoint  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INDEX = "model.safetensors.index.json"
MANIFEST = "engram-shards.json"
NEW = ["--to", "hf", "--max-shard-size", "2MB"]
OLD = NEW + ["--table-dtype", "bf16"]


def _cli(*args):
    return CliRunner().invoke(app, ["shard", *map(str, args)])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_v41_checkpoint(tmp_path_factory.mktemp("kill") / "src")[0]


def _start(root: Path, out: Path, args: list, delay: str = "0.02") -> subprocess.Popen:
    env = dict(os.environ, ENGRAM_TEST_WRITE_DELAY=delay, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "engram_cli", "shard", "convert", str(root), "-o", str(out), *args,
                             "--block-size", "64KB", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _writing(out: Path) -> bool:
    """The run has begun writing data (a temporary file inside its staging folder)."""
    return any(f.name.endswith(".tmp") for d in out.glob(".engram-staging-*") for f in d.iterdir()) if out.is_dir() else False


def _wait_writing(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _writing(out):
        time.sleep(0.01)


def _check_state(out: Path, root: Path) -> str:
    """The folder is either complete and verifies against the source, or visibly incomplete."""
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    assert INDEX not in names or MANIFEST in names, "an index without its manifest reads as a complete checkpoint"
    if MANIFEST not in names or INDEX not in names:
        return "incomplete"
    r = _cli("verify", out, "--source", root)
    assert r.exit_code == 0, f"a folder with manifest and index does not verify: {r.output}"
    return json.loads((out / MANIFEST).read_text())["dtype"]


def test_sigkill_mid_write_then_rerun(root, tmp_path):
    out = tmp_path / "out"
    proc = _start(root, out, ["--to", "packed"])
    _wait_writing(proc, out)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST).exists()
    assert any(p.name.endswith(".tmp") for p in out.iterdir())
    r = CliRunner().invoke(app, ["shard", "convert", str(root), "-o", str(out), "--to", "packed"])
    assert r.exit_code == 0, r.output
    assert (out / MANIFEST).exists()
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert _cli("verify", out, "--source", root).exit_code == 0


def _old_output(root: Path, out: Path) -> None:
    assert _cli("convert", root, "-o", out, *OLD).exit_code == 0
    (out / "notes.txt").write_text("mine")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_force_reconversion_killed_mid_write_keeps_the_old_output(root, tmp_path, sig):
    out = tmp_path / "out"
    _old_output(root, out)
    proc = _start(root, out, NEW + ["--force"])
    _wait_writing(proc, out)
    time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 130)
    assert _check_state(out, root) == "bf16"  # still the old, complete output
    if sig != signal.SIGKILL:
        assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # an interrupt cleans up
    assert _cli("convert", root, "-o", out, *NEW, "--force").exit_code == 0
    assert _check_state(out, root) == "keep" and (out / "notes.txt").read_text() == "mine"
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("seed", range(4))
def test_random_kills_of_force_reconversions(root, tmp_path, sig, seed):
    out = tmp_path / "out"
    _old_output(root, out)
    rng = random.Random(seed * 31 + sig)
    proc = _start(root, out, NEW + ["--force", "--verify", "full"], delay=str(rng.choice([0.0, 0.005, 0.02])))
    time.sleep(rng.uniform(0.0, 6.0))  # anywhere: start-up, planning, writing, verifying, committing, done
    proc.send_signal(sig)
    proc.wait()
    state = _check_state(out, root)
    assert state in ("bf16", "keep", "incomplete")
    if sig != signal.SIGKILL:
        # -sig / -SIGINT: during start-up (before the handlers exist, or before the command runs): nothing written yet
        assert proc.returncode in (0, 130, -sig, -signal.SIGINT)
        assert not any(p.name.endswith(".tmp") for p in out.iterdir())
        assert state != "incomplete"  # an interrupt happens before or after the swap, never inside it
    assert (out / "notes.txt").read_text() == "mine"
    assert _cli("convert", root, "-o", out, *NEW, "--force").exit_code == 0
    assert _check_state(out, root) == "keep"
