"""--checksum xxh3|sha256: recorded per file in engram-shards.json and honoured by verify."""

from __future__ import annotations

import hashlib
import json

import pytest
import xxhash

from tests.tables_helpers import make_v41_checkpoint, run_shard

run = run_shard


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_v41_checkpoint(tmp_path_factory.mktemp("c") / "src")[0]


@pytest.mark.parametrize("target", [["--to", "packed"], ["--to", "local", "--policy", "vllm-head", "--ranks", 4, "--rank", 1]])
def test_sha256_recorded_and_verified(root, tmp_path, target):
    out = tmp_path / "o"
    r = run("convert", root, "-o", out, *target, "--checksum", "sha256", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["checksum"] == "sha256" and all("sha256" in f and "xxh3_128" not in f for f in doc["files"])
    man = json.loads((out / "engram-shards.json").read_text())
    for f in man["files"]:
        assert f["checksum"] == "sha256"
        assert f["sha256"] == hashlib.sha256((out / f["name"]).read_bytes()).hexdigest()
    assert run("verify", out, "--source", root).exit_code == 0
    p = out / man["files"][0]["name"]
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    r = run("verify", out)
    assert r.exit_code == 4 and "sha256" in r.output and p.name in r.output


def test_default_xxh3_and_old_manifests(root, tmp_path):
    out = tmp_path / "o"
    assert run("convert", root, "-o", out, "--to", "heads").exit_code == 0
    man = json.loads((out / "engram-shards.json").read_text())
    f = man["files"][0]
    assert f["checksum"] == "xxh3-128" and f["xxh3_128"] == xxhash.xxh3_128((out / f["name"]).read_bytes()).hexdigest()
    for f in man["files"]:  # a manifest written before --checksum existed: no "checksum" key
        del f["checksum"]
    (out / "engram-shards.json").write_text(json.dumps(man))
    assert run("verify", out).exit_code == 0


def test_unknown_checksum_is_usage_error(root, tmp_path):
    r = run("convert", root, "-o", tmp_path / "o", "--to", "packed", "--checksum", "md5")
    assert r.exit_code == 2 and "--checksum" in r.output
    assert not (tmp_path / "o").exists()
