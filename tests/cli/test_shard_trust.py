"""What `engram shard` promises beyond bytes: --force keeps what is not its own, verify covers
every file a run wrote, decoded-value comparison where encodings admit several byte forms,
what each target keeps (omitted, reported), one schema id per document, shared options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.tables_helpers import make_v41_checkpoint, read_tables, run_shard

run = run_shard
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root, lay = make_v41_checkpoint(tmp_path_factory.mktemp("trust") / "src")
    return root


def _json(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _flip(path, at=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def test_force_keeps_unrelated_files_and_removes_only_listed_ones(src, tmp_path):
    out = tmp_path / "o"
    assert run("convert", src, "-o", out, "--to", "heads").exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "engram-l1-h99.safetensors").write_text("looks like ours, but no manifest listed it")
    doc = _json(run("convert", src, "-o", out, "--to", "packed", "--force", "--json"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "engram-l1-h99.safetensors").exists()
    assert sorted(doc["kept_unrelated"]) == ["engram-l1-h99.safetensors", "notes.txt"]
    assert "engram-l1-h00.safetensors" in doc["removed_stale"] and not list(out.glob("engram-l1-h0*.safetensors"))
    r = run("convert", src, "-o", out, "--to", "packed", "--force")
    assert r.exit_code == 0 and "notes.txt" in r.stderr  # reported on stderr
    assert run("verify", out, "--source", src).exit_code == 0


@pytest.mark.parametrize("name", [INDEX, "config.json", "engram_layout.json", "token_map.safetensors"])
def test_verify_covers_every_side_file(src, tmp_path, name):
    out = tmp_path / "h"
    assert run("convert", src, "-o", out, "--to", "hf", "--max-shard-size", "2MB").exit_code == 0
    man = json.loads((out / "engram-shards.json").read_text())
    assert {s["name"] for s in man["side_files"]} == {INDEX, "config.json", "engram_layout.json", "token_map.safetensors"}
    assert run("verify", out).exit_code == 0
    _flip(out / name)
    r = run("verify", out)
    assert r.exit_code == 4 and name in r.stderr


def test_single_shard_hf_has_no_index(src, tmp_path):
    out = tmp_path / "one"
    doc = _json(run("convert", src, "-o", out, "--to", "hf", "--json"))
    assert not (out / INDEX).exists() and (out / "model.safetensors").exists()
    assert INDEX not in {s["name"] for s in doc["side_files"]}
    orig, got = read_tables(src), read_tables(out)
    assert all(np.array_equal(got[k], v) for k, v in orig.items() if k != "token_map")


def test_fp8_bf16_fp8_round_trip_verifies_by_decoded_values(src, tmp_path):
    assert run("convert", src, "-o", tmp_path / "b", "--table-dtype", "bf16").exit_code == 0
    assert run("convert", tmp_path / "b", "-o", tmp_path / "f", "--table-dtype", "fp8-e4m3").exit_code == 0
    orig, back = read_tables(src), read_tables(tmp_path / "f")
    assert not np.array_equal(orig["layers.1.engram.embed.scale"], back["layers.1.engram.embed.scale"])  # other bytes
    rep = _json(run("verify", tmp_path / "f", "--source", src, "--json"))["verify"]
    assert rep["ok"] and rep["comparison"] == {"1": "decoded values", "14": "decoded values"}
    rep = _json(run("verify", tmp_path / "b", "--source", src, "--json"))["verify"]
    assert rep["comparison"] == {"1": "bytes", "14": "bytes"}
    # control: a changed value (checksums made to match) fails the decoded comparison
    f = tmp_path / "f" / "model.safetensors"
    man = json.loads((tmp_path / "f" / "engram-shards.json").read_text())
    t = next(t for x in man["files"] for t in x["tensors"] if t["name"] == "layers.1.engram.embed.weight")
    _flip(f, t["offset"] + 5)
    import xxhash

    man["files"][0]["xxh3_128"] = xxhash.xxh3_128(f.read_bytes()).hexdigest()
    (tmp_path / "f" / "engram-shards.json").write_text(json.dumps(man))
    r = run("verify", tmp_path / "f", "--source", src)
    assert r.exit_code == 4 and "decodes to other values" in r.stderr


def test_ranks_to_hf_records_and_reports_what_is_not_kept(src, tmp_path):
    doc = _json(run("convert", src, "-o", tmp_path / "r", "--to", "ranks", "--policy", "sglang-floor", "--ranks", 2, "--json"))
    assert set(doc["omitted"]["tensors"]) == {"embed.weight", "norm.weight"} | {
        f"layers.{i}.engram.{k}" for i in (1, 14) for k in ("q_weight", "k_weight")}
    assert doc["omitted"]["files"] == ["config.json"]
    assert _json(run("convert", tmp_path / "r", "-o", tmp_path / "h", "--to", "hf", "--json"))["omitted"] == doc["omitted"]
    rep = _json(run("verify", tmp_path / "h", "--source", src, "--json"))["verify"]
    assert rep["ok"] and rep["omitted"] == doc["omitted"]
    r = run("verify", tmp_path / "h", "--source", src)
    assert r.exit_code == 0 and "6 other tensors" in r.stdout
    # control: an omission the manifest does not record is a failure
    man = json.loads((tmp_path / "h" / "engram-shards.json").read_text())
    man["omitted"]["tensors"].remove("norm.weight")
    (tmp_path / "h" / "engram-shards.json").write_text(json.dumps(man))
    r = run("verify", tmp_path / "h", "--source", src)
    assert r.exit_code == 4 and "neither in the output nor recorded as omitted" in r.stderr


def test_hf_output_converted_again_keeps_everything(src, tmp_path):
    assert run("convert", src, "-o", tmp_path / "a", "--to", "hf", "--max-shard-size", "2MB").exit_code == 0
    doc = _json(run("convert", tmp_path / "a", "-o", tmp_path / "b", "--to", "hf", "--json"))
    assert doc["omitted"] == {"tensors": [], "files": []}
    orig, got = read_tables(src), read_tables(tmp_path / "b")
    assert set(orig) <= set(got) and all(np.array_equal(got[k], v) for k, v in orig.items())
    assert (tmp_path / "b" / "config.json").read_bytes() == (src / "config.json").read_bytes()


def test_old_manifest_schema_is_still_read(src, tmp_path):
    out = tmp_path / "p"
    assert run("convert", src, "-o", out, "--to", "packed").exit_code == 0
    man = json.loads((out / "engram-shards.json").read_text())
    assert man["schema"] == "engram.shards/1"
    man["schema"] = "engram-shards/1"
    for k in ("side_files", "omitted"):  # what manifests written before them lacked
        del man[k]
    (out / "engram-shards.json").write_text(json.dumps(man))
    assert run("verify", out, "--source", src).exit_code == 0
    assert run("convert", out, "-o", tmp_path / "h", "--to", "hf").exit_code == 0


def test_schema_ids_and_defaults(src, tmp_path):
    plan = _json(run("plan", src, "--json"))
    assert plan["schema"] == "engram.shard.plan/1" and plan["plan"]["target"] == "hf"  # same default as convert
    rng = _json(run("ranges", "--policy", "vllm-head", "--ranks", 4, "--json"))  # default preset
    assert rng["schema"] == "engram.shard.ranges/1" and rng["ranges"][0]["layer"] == 1
    assert "deepseek-v4.1-flash" in rng["layout_source"]
    out = tmp_path / "l"
    doc = _json(run("convert", src, "--out", out, "--to", "local", "--policy", "vllm-head", "--ranks", 4, "--rank", 1, "--json"))
    assert doc["schema"] == "engram.shard.convert/1" and (out / "engram-local.json").is_file()  # --out still works
    assert json.loads((out / "engram-local.json").read_text())["schema"] == "engram.local/1"
    assert _json(run("verify", out, "--json"))["schema"] == "engram.shard.verify/1"


def test_old_dtype_spelling_and_decimal_sizes(src, tmp_path):
    a = _json(run("plan", src, "--dtype", "bf16", "--engram-only", "--json"))["plan"]
    b = _json(run("plan", src, "--table-dtype", "bf16", "--engram-only", "--json"))["plan"]
    assert a == b and a["dtype"] == "bf16"
    r = run("plan", src, "--to", "packed")
    assert r.exit_code == 0 and " MB" in r.stdout and "MiB" not in r.stdout and "size" in r.stdout
    r = run("plan", src, "--dtype", "bf16", "--table-dtype", "int8")
    assert r.exit_code == 2


def test_gguf_fix_never_overwrites_without_force(src, tmp_path):
    assert run("convert", src, "-o", tmp_path / "g", "--to", "gguf").exit_code == 0
    target = tmp_path / "fixed.gguf"
    target.write_bytes(b"precious")
    r = run("gguf-fix", tmp_path / "g" / "engram.gguf", "-o", target, "--layout", src)
    assert r.exit_code == 2 and "--force" in r.stderr and target.read_bytes() == b"precious"
    r = run("gguf-fix", tmp_path / "g" / "engram.gguf", "-o", target, "--layout", src, "--force", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["schema"] == "engram.shard.gguf_fix/1"


def _engram_config_checkpoint(root, with_tokenizer: bool):
    from engram_cli.layout.tokenizer import resolve_tokenizer_file

    make_v41_checkpoint(root, save_layout=False)
    cfg = {"architectures": ["Test"], "engram_layer_ids": [1, 14], "engram_max_ngram_size": 4, "engram_n_heads": 8,
           "engram_head_dim": 256, "engram_vocab_size": 300, "engram_pad_token_id": 2}
    (root / "config.json").write_text(json.dumps(cfg))
    if with_tokenizer:
        shutil.copy(resolve_tokenizer_file(None), root / "tokenizer.json")
    return root


def test_gguf_from_config_builds_the_token_map_from_the_tokenizer(tmp_path):
    import gguf

    ck = _engram_config_checkpoint(tmp_path / "ck", True)
    r = run("convert", ck, "--to", "gguf", "--config", ck / "config.json", "-o", tmp_path / "g")
    assert r.exit_code == 0, r.output
    rd = gguf.GGUFReader(str(tmp_path / "g" / "engram.gguf"))
    keys = [k for k in rd.fields if k.endswith("token_map")]
    assert keys and len(rd.fields[keys[0]].contents()) > 100_000  # the DeepSeek vocabulary
    bare = _engram_config_checkpoint(tmp_path / "bare", False)
    r = run("convert", bare, "--to", "gguf", "--config", bare / "config.json", "-o", tmp_path / "g2")
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 3 and err[0].startswith("error:") and "--layout" in r.stderr and len(err) <= 2
    assert not (tmp_path / "g2").exists()


def test_options_object_is_validated_once():
    from engram_cli.errors import UsageError
    from engram_cli.tables.options import Policy, ShardOptions, TableDtype, Target

    o = ShardOptions(source="x", to="ranks", policy="vllm-head", ranks=4, table_dtype="fp8-e4m3", max_shard_size="2MB")
    assert o.to is Target.ranks and o.policy is Policy.vllm_head and o.table_dtype is TableDtype.fp8_e4m3
    assert o.max_shard_size == 2_000_000
    with pytest.raises(UsageError, match="--table-dtype"):
        ShardOptions(source="x", table_dtype="fp4")
    with pytest.raises(AttributeError):
        o.to = Target.hf  # frozen
    with pytest.raises(TypeError):
        ShardOptions("x")  # keyword only


def test_local_progress_counts_bytes(src, tmp_path):
    from engram_cli.tables.api import convert, prepare
    from engram_cli.tables.options import ShardOptions

    prep = prepare(ShardOptions(source=src, to="local", policy="sglang-floor", ranks=2, rank=0, output=tmp_path / "l"))
    seen = []
    convert(prep, progress=lambda done, total, desc: seen.append((done, total)))
    total = sum(f.work_bytes for f in prep.plan.files)
    assert seen[-1] == (total, total)
    rows = sum(t.nbytes for f in prep.plan.files for t in f.tensors)
    heads = sum(f.head_bytes for f in prep.plan.files)
    assert total == rows + heads and all(b - a >= 0 for (a, _), (b, _) in zip(seen, seen[1:]))


def test_verify_does_not_import_the_executor():
    code = ("import sys, engram_cli.tables.verify; "
            "sys.exit(1 if 'engram_cli.tables.execute' in sys.modules or 'engram_cli.tables.writer' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_disk_full_leaves_nothing_behind(src, tmp_path, monkeypatch):
    import errno

    from engram_cli.tables import writer

    calls = {"n": 0}
    real = writer.Sink._write

    def full(self, mv):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, mv)

    monkeypatch.setattr(writer.Sink, "_write", full)
    r = run("convert", src, "-o", tmp_path / "o", "--to", "heads")
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 1 and "no space left on device" in err[0] and "unexpected" not in r.stderr
    assert not (tmp_path / "o").exists()  # no finished file, no staging folder
    old = tmp_path / "old"
    monkeypatch.undo()
    assert run("convert", src, "-o", old, "--to", "packed").exit_code == 0
    monkeypatch.setattr(writer.Sink, "_write", full)
    calls["n"] = 0
    before = sorted(p.name for p in old.iterdir())
    assert run("convert", src, "-o", old, "--to", "heads", "--force").exit_code == 1
    assert sorted(p.name for p in old.iterdir()) == before  # the previous output is untouched
