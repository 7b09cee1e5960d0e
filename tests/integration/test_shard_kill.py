"""A conversion killed with SIGKILL mid-write leaves no manifest; a rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tables_helpers import make_v41_checkpoint  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402


def test_sigkill_mid_write_then_rerun(tmp_path):
    root, _ = make_v41_checkpoint(tmp_path / "src")
    out = tmp_path / "out"
    env = dict(os.environ, ENGRAM_TEST_WRITE_DELAY="0.02", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "engram_cli", "shard", "convert", str(root), "-o", str(out),
                             "--to", "packed", "--block-size", "64KB", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            break
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "engram-shards.json").exists()
    assert any(p.name.endswith(".tmp") for p in out.iterdir())
    r = CliRunner().invoke(app, ["shard", "convert", str(root), "-o", str(out), "--to", "packed"])
    assert r.exit_code == 0, r.output
    assert (out / "engram-shards.json").exists()
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert CliRunner().invoke(app, ["shard", "verify", str(out), "--source", str(root)]).exit_code == 0
