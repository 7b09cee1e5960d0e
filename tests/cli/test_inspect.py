"""``engram inspect``: every kind of Engram-bearing path, its consistency checks, the engine
table, and that the command printed for each "no" really makes that engine's answer "yes"."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables_helpers import make_v41_checkpoint  # noqa: E402

from engram_cli.layout.store import save_layout

DEMO = Path(__file__).resolve().parents[2] / "engram_cli" / "data" / "demo-model"


def inspect(cli, path, *extra):
    r = cli("inspect", str(path), "--json", *extra)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "engram.inspect/1"
    return doc


def engines(doc) -> dict[str, dict]:
    return {e["engine"]: e for e in doc["engines"]}


@pytest.fixture(scope="module")
def v41(tmp_path_factory):
    return make_v41_checkpoint(tmp_path_factory.mktemp("insp") / "ck")


def run_fix(cli, fix: str, out: Path) -> None:
    argv = shlex.split(fix.replace(" OUT.gguf", f" {out}").replace(" OUT", f" {out}"))
    assert argv[0] == "engram"
    r = cli(*argv[1:])
    assert r.exit_code == 0, (fix, r.output)


def test_synthetic_v41_checkpoint(cli, v41, tmp_path):
    root, lay = v41
    doc = inspect(cli, root)
    assert doc["format"] == "hf" and doc["family"] == "deepseek-v4.1" and doc["dialect"] is None
    assert [t["layer"] for t in doc["tables"]] == [1, 14] and doc["tables"][0]["rows"] == lay.num_embeddings[0]
    assert doc["tables"][0]["encoding"] == "fp8-e4m3" and doc["tables"][0]["scale"].startswith("e8m0, 1 per 32 columns")
    assert doc["tables"][0]["bytes"] == lay.num_embeddings[0] * 264
    assert doc["layout_source"] == "engram_layout.json" and doc["consistent"] is True
    assert doc["layout"]["layers"] == [{"config_id": 1, "seed_id": 1, "tensor_index": 1}, {"config_id": 14, "seed_id": 14, "tensor_index": 14}]
    e = engines(doc)
    assert e["vLLM"]["loads"] == "yes" and e["SGLang"]["loads"] == "yes"
    # every "no" with a command: run it, and the engine says "yes" to the result
    for name in ("ds4 / strix-llama.cpp", "llama.cpp #28696", "Mooncake"):
        assert e[name]["loads"] == "no" and e[name]["fix"], name
        out = tmp_path / name.split()[0].replace(".", "")
        run_fix(cli, e[name]["fix"], out)
        assert engines(inspect(cli, out))[name]["loads"] == "yes", name
    assert e["Megatron-LM"]["loads"] == "no" and e["Megatron-LM"]["fix"] is None
    r = cli("inspect", str(root))
    assert r.exit_code == 0 and "consistency" in r.stdout and "vLLM" in r.stdout


def test_gguf_fix_commands_from_inspect(cli, v41, tmp_path):
    root, _ = v41
    assert cli("shard", "convert", str(root), "-o", str(tmp_path / "l"), "--to", "gguf").exit_code == 0
    doc = inspect(cli, tmp_path / "l" / "engram.gguf")
    assert doc["format"] == "gguf" and doc["dialect"] == "llamacpp" and doc["consistent"] is True
    ds4 = engines(doc)["ds4 / strix-llama.cpp"]
    assert ds4["loads"] == "no" and "rows" in ds4["reason"] and "gguf-fix" in ds4["fix"]
    run_fix(cli, ds4["fix"], tmp_path / "fixed.gguf")
    doc = inspect(cli, tmp_path / "fixed.gguf")
    assert doc["dialect"] == "ds4" and engines(doc)["ds4 / strix-llama.cpp"]["loads"] == "yes"
    for dialect in ("llamacpp", "ds4", "both"):
        out = tmp_path / f"g-{dialect}"
        assert cli("shard", "convert", str(root), "-o", str(out), "--to", "gguf", "--gguf-dialect", dialect).exit_code == 0
        doc = inspect(cli, out)
        assert doc["format"] == "engram" and doc["dialect"] == dialect and doc["consistent"] is True
        assert engines(doc)["ds4 / strix-llama.cpp"]["loads"] == ("no" if dialect == "llamacpp" else "yes")


@pytest.mark.parametrize("args", [
    ["--to", "hf"], ["--to", "ranks", "--policy", "vllm-head", "-P", "4"], ["--to", "heads"],
    ["--to", "heads", "--head-format", "rows"], ["--to", "packed"], ["--to", "gguf"],
    ["--to", "local", "--policy", "vllm-head", "-P", "4", "--rank", "1"],
])
def test_every_target_output(cli, v41, tmp_path, args):
    root, lay = v41
    out = tmp_path / "o"
    r = cli("shard", "convert", str(root), "-o", str(out), *args)
    assert r.exit_code == 0, r.output
    doc = inspect(cli, out)
    assert doc["format"] == "engram" and f"target {args[1]}" in doc["detail"]
    assert sorted(t["layer"] for t in doc["tables"]) == [1, 14] and doc["layout"] is not None
    assert doc["consistent"] is True, [c for c in doc["checks"] if not c["ok"]]
    e = engines(doc)
    assert e["Mooncake"]["loads"] == ("yes" if "rows" in args else "no")
    assert e["vLLM"]["loads"] == ("yes" if args[1] in ("hf", "local") else "no")


def test_demo_model(cli):
    doc = inspect(cli, DEMO)
    assert doc["format"] == "hf" and doc["family"] == "deepseek-demo" and doc["consistent"] is True
    assert doc["layout"]["variant"] == "deepseek-demo" and [t["layer"] for t in doc["tables"]] == [1, 2]
    assert engines(doc)["vLLM"]["loads"] == "n/a"


def test_tiny_qwen4_exp(cli, tmp_path):
    transformers = pytest.importorskip("transformers")  # noqa: F841
    import torch
    from tiny_models import tiny_qwen4_exp_config
    from transformers import Qwen4ExpForCausalLM

    torch.manual_seed(0)
    Qwen4ExpForCausalLM(tiny_qwen4_exp_config(ple_layer_ids=[2, 3])).save_pretrained(tmp_path / "q")
    doc = inspect(cli, tmp_path / "q")
    assert doc["format"] == "hf" and doc["family"] == "qwen4-exp" and doc["consistent"] is True
    assert [(t["layer"], t["config_id"], t["seed_id"]) for t in doc["tables"]] == [(1, 2, 0), (2, 3, 1)]
    assert doc["layout"]["layer_numbering"] == "qwen4-exp"
    pads = [c for c in doc["checks"] if c["check"].startswith("sum of primes")]
    assert pads and all(c["ok"] and "padding rows" in c["note"] for c in pads)
    assert engines(doc)["vLLM"]["loads"] == "yes" and engines(doc)["llama.cpp #28696"]["loads"] == "n/a"


def test_layout_folder_and_inconsistent_gguf(cli, v41, tmp_path):
    import gguf

    from engram_cli.tables.gguf_read import read_gguf

    root, lay = v41
    save_layout(lay, tmp_path / "lay")
    doc = inspect(cli, tmp_path / "lay")
    assert doc["format"] == "layout" and doc["tables"] == [] and doc["consistent"] is True
    assert {e["loads"] for e in doc["engines"]} == {"n/a"}
    assert cli("shard", "convert", str(root), "-o", str(tmp_path / "g"), "--to", "gguf").exit_code == 0
    src = tmp_path / "g" / "engram.gguf"
    g = read_gguf(src)
    rd = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "deepseek41")
    for k, f in rd.fields.items():
        if k.startswith("deepseek41.engram."):
            val = f.contents()
            if k.endswith("multipliers"):
                val = [val[0] + 2] + val[1:]  # still odd, no longer the seed rule's
            w.add_key_value(k, val, f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in g.tables:
        w.add_tensor(t.tensor, np.asarray(rd.tensors[[x.name for x in rd.tensors].index(t.tensor)].data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    doc = inspect(cli, tmp_path / "bad.gguf")
    assert doc["consistent"] is False
    bad = [c["check"] for c in doc["checks"] if c["ok"] is False]
    assert bad == ["multipliers, layer 1 (seed id 1)"]


def test_truncated_files_are_one_line_errors(cli, v41, tmp_path):
    root, _ = v41
    assert cli("shard", "convert", str(root), "-o", str(tmp_path / "g"), "--to", "gguf").exit_code == 0
    data = (tmp_path / "g" / "engram.gguf").read_bytes()
    for name, cut in (("half.gguf", data[: len(data) // 2]), ("head.gguf", data[:100])):
        (tmp_path / name).write_bytes(cut)
        r = cli("inspect", str(tmp_path / name))
        assert r.exit_code == 3 and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error")]) == 1
    st = next(root.glob("*.safetensors")).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) // 2])
    r = cli("inspect", str(tmp_path / "cut.safetensors"))
    assert r.exit_code == 3 and "truncated" in r.stderr
    r = cli("inspect", str(tmp_path / "missing"))
    assert r.exit_code == 3


@pytest.mark.parametrize("dialect", ["mini", "pointer", "bound", "legacy"])
def test_read_only_dialects(cli, tmp_path, dialect):
    from tables_helpers import small_layout

    from tests.unit.test_gguf_dialects import build, raw_rows

    lay = small_layout()
    path = build(dialect, tmp_path, lay, raw_rows(lay))
    doc = inspect(cli, path)
    assert doc["format"] == "gguf" and doc["dialect"] == {"legacy": "llamacpp"}.get(dialect, dialect)
    assert doc["consistent"] is True, [c for c in doc["checks"] if not c["ok"]]
    assert [t["rows"] for t in doc["tables"]] == list(lay.num_embeddings)
    assert doc["layout_source"] == ("GGUF keys and tensors" if dialect in ("pointer", "bound") else "GGUF keys")
    ds4 = engines(doc)["ds4 / strix-llama.cpp"]
    assert ds4["loads"] == "no" and ("--gguf-dialect ds4" if dialect == "pointer" else "gguf-fix") in ds4["fix"]
    run_fix(cli, ds4["fix"], tmp_path / "fixed")
    assert engines(inspect(cli, tmp_path / "fixed"))["ds4 / strix-llama.cpp"]["loads"] == "yes"
