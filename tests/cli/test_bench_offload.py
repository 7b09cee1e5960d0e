"""`engram bench-offload`: bad inputs refused before any work, and a small end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """Token ids: 12 sequences of 300 ids with repeats (so caches hit)."""
    rng = np.random.default_rng(0)
    f = tmp_path_factory.mktemp("trace") / "ids.txt"
    f.write_text("\n".join(" ".join(map(str, rng.zipf(1.2, 300) % 5000)) for _ in range(12)) + "\n")
    return f


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_table_larger_than_memory_is_refused_with_both_numbers(cli):
    res = cli("bench-offload", "--table-size", "100000", "--tiers", "host")
    assert res.exit_code == 3
    line = _one_error_line(res)
    assert "100000.00 GB" in line and "GB of memory" in line and "GB is free" in line


def test_table_larger_than_disk_is_refused_with_both_numbers(cli, monkeypatch, tmp_path, trace):
    import shutil

    from engram_cli.offload import run

    monkeypatch.setattr(run.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    res = cli("bench-offload", "--tiers", "nvme", "--table-size", "0.01", "--file-dir", str(tmp_path), "--trace", str(trace))
    assert res.exit_code == 3
    line = _one_error_line(res)
    assert "0.01 GB does not fit" in line and "0.00 GB is free" in line


def test_unreadable_trace_names_the_line(cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n4 five 6\n")
    res = cli("bench-offload", "--trace", str(bad), "--tiers", "host")
    assert res.exit_code == 3
    assert "line 2" in _one_error_line(res)


def test_gpu_tier_without_cuda_exits_5(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res = cli("bench-offload", "--tiers", "gpu")
    assert res.exit_code == 5
    assert "CUDA" in _one_error_line(res)


def test_unknown_tier_and_hot_rows_without_output(cli):
    assert cli("bench-offload", "--tiers", "host,tape").exit_code == 2
    assert cli("bench-offload", "--export-hot-rows", "4").exit_code == 2


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_tmpfs_file_dir_is_warned(cli, trace):
    from engram_cli.offload.files import TMPFS_TYPES, filesystem_of

    if filesystem_of(Path("/dev/shm"))[0] not in TMPFS_TYPES:
        pytest.skip("/dev/shm is not tmpfs here")
    res = cli("bench-offload", "--quick", "--tiers", "nvme", "--file-dir", "/dev/shm", "--table-size", "0.004",
              "--trace", str(trace), "--json", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "tmpfs" in res.stderr and "warning" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["sections"]["nvme"]["on_tmpfs"] is True
    assert doc["sections"]["projection"] == {"skipped": "no fetch curve: run the host or gpu tier"}


def test_small_run_writes_the_report(cli, tmp_path, trace):
    out, prof = tmp_path / "report", tmp_path / "profile.json"
    res = cli("bench-offload", "--quick", "--tiers", "host,nvme", "--table-size", "0.02", "--file-dir", str(tmp_path),
              "--trace", str(trace), "--layer-ms", "0.3", "--export-hot-rows", "4", "--threads", "1",
              "--profile", str(prof), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "engram.bench_offload/1" and doc["provenance"]["threads"] == 1
    sec = doc["sections"]
    assert sec["gpu"] == {"skipped": "no device"} or "bulk" in sec["gpu"]
    assert all(c["verified_calls"] >= 1 and c["ratio"] is not None for c in sec["host"]["cells"])
    assert all(c["verified_rows"] == c["rows"] for c in sec["nvme"]["cells"])
    assert sec["locality"]["n_tokens"] == 3600 and len(sec["locality"]["stats"]) == 6
    assert set(doc["verdicts"]) == {"v4.1-flash", "paper-27b"} and all(doc["verdicts"].values())
    assert sec["projection"]["timing_source"] == "--layer-ms 0.3"
    assert len(doc["fingerprint_id"]) == 16 and doc["fingerprint"]["cpus"] >= 1
    names = {p.name for p in out.iterdir()}
    assert {"offload.json", "hot_rows.npz", "hit_rate_vs_cache_gb.png", "overhead_vs_batch.png",
            "gather_gbps_vs_row_bytes.png", "latency_vs_rows.png"} <= names
    hot = np.load(out / "hot_rows.npz")
    assert hot["layer1_rows"].shape == (24, 4) and (hot["layer1_counts"][:, 0] >= hot["layer1_counts"][:, 1]).all()
    assert json.loads(prof.read_text())["fingerprint_id"] == doc["fingerprint_id"]


def test_stale_profile_is_detected():
    from engram_cli.offload.profile import fingerprint, stale_fields

    fp = fingerprint()
    assert stale_fields({"fingerprint": fp}, fp) == []
    assert stale_fields({"fingerprint": dict(fp, torch="0.0")}, fp) == ["torch"]


def test_replacing_a_profile_from_another_machine_warns(tmp_path, capsys):
    from engram_cli.cli.bench_offload import _warn_stale
    from engram_cli.cli.output import Output
    from engram_cli.offload.profile import fingerprint

    fp = fingerprint()
    prof = tmp_path / "offload.json"
    prof.write_text(json.dumps({"fingerprint": dict(fp, cpu_model="another CPU")}))
    _warn_stale(Output(), prof, fp)
    assert "cpu_model" in capsys.readouterr().err
    prof.write_text(json.dumps({"fingerprint": fp}))
    _warn_stale(Output(), prof, fp)
    assert capsys.readouterr().err == ""
