"""`engram ablate` end to end on tiny models saved to tmp dirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import save_tiny_reference, tiny_qwen4exp, tiny_suites, write_suite  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    model = save_tiny_reference(root / "model", vocab_size=80)
    suites = tiny_suites(root / "suites")
    return root, model, suites


def _run(args):
    return runner.invoke(app, args)


def test_json_and_outputs(setup):
    root, model, suites = setup
    out = root / "out"
    r = _run(["ablate", str(model), "--tasks", str(suites), "--device", "cpu", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "engram.ablate/2" and doc["layers"] == [1, 2] and doc["mode"] == "zero"
    assert {t["task"] for t in doc["tasks"]} == {"caps_mc", "read_gen", "ppl"}
    assert (out / "retention.json").is_file() and (out / "retention.png").stat().st_size > 1000
    assert doc["paper_reference"]["tasks"] == {"TriviaQA": 0.29, "C3": 0.93}


def test_table_scale_and_layers(setup):
    root, model, suites = setup
    r = _run(["ablate", str(model), "--tasks", str(suites / "caps_mc.jsonl"), "--mode", "scale", "--alpha", "1",
              "--layers", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "caps_mc" in r.stdout and "100.0%" in r.stdout


def test_mean_and_order(setup):
    root, model, suites = setup
    for extra in (["--mode", "mean"], ["--ngram-order", "2"]):
        r = _run(["ablate", str(model), "--tasks", str(suites / "ppl.jsonl"), "--device", "cpu", "--json", *extra])
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,code,msg", [
    (["ablate", "/nonexistent/model"], 3, "model not found"),
    (["ablate", "MODEL", "--layers", "0,7"], 3, "not found in the model"),
    (["ablate", "MODEL", "--tasks", "BAD"], 3, "bad.jsonl:2"),
    (["ablate", "MODEL", "--alpha", "0.5"], 2, "--alpha"),
    (["ablate", "MODEL", "--mode", "capacity"], 2, "--rows"),
    (["ablate", "MODEL", "--rows", "4"], 2, "--rows only"),
    (["ablate", "MODEL", "--mode", "capacity", "--rows", "0"], 2, "positive"),
    (["ablate", "MODEL", "--mode", "capacity", "--rows", "4", "--ngram-order", "2"], 2, "--ngram-order"),
])
def test_errors(setup, args, code, msg):
    root, model, suites = setup
    bad = write_suite(root / "bad.jsonl", None, [{"context": "a", "choices": ["x", "y"], "gold": 0}])
    bad.write_text(bad.read_text() + "{oops\n")
    args = [str(model) if a == "MODEL" else str(bad) if a == "BAD" else a for a in args]
    if "--tasks" not in args:
        args += ["--tasks", str(suites / "caps_mc.jsonl")]
    r = _run(args + ["--device", "cpu"])
    assert r.exit_code == code, r.output
    assert msg in r.stderr


def test_mode_none_scores_a_model_without_engram(tmp_path):
    """The demo's no-Engram twin: `--mode none` scores it as it is (baseline, controls), no ablation."""
    from models_helpers import tiny_tokenizer

    from engram_cli.models.reference import EngramConfig, EngramForCausalLM

    EngramForCausalLM(EngramConfig(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, eos_token_id=0)).save_pretrained(str(tmp_path / "twin"))
    tiny_tokenizer(tmp_path / "twin")
    suites = tiny_suites(tmp_path / "s")
    r = _run(["ablate", str(tmp_path / "twin"), "--tasks", str(suites), "--device", "cpu", "--mode", "none", "--json",
              "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "none" and doc["layers"] == []
    assert all(t["baseline"] == t["ablated"] for t in doc["tasks"])
    assert (tmp_path / "o" / "retention.json").is_file() and not (tmp_path / "o" / "retention.png").exists()
    r = _run(["ablate", str(tmp_path / "twin"), "--tasks", str(suites), "--device", "cpu"])
    assert r.exit_code == 3 and "no Engram modules" in r.stderr


def test_model_without_engram(tmp_path):
    from models_helpers import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(str(tmp_path / "m"))
    tiny_tokenizer(tmp_path / "m")
    suites = tiny_suites(tmp_path / "s")
    r = _run(["ablate", str(tmp_path / "m"), "--tasks", str(suites), "--device", "cpu"])
    assert r.exit_code == 3 and "no Engram modules" in r.stderr


def test_qwen4exp_cli(tmp_path):
    tiny_qwen4exp(tmp_path / "q", vocab_size=80)
    suites = tiny_suites(tmp_path / "s")
    r = _run(["ablate", str(tmp_path / "q"), "--tasks", str(suites / "caps_mc.jsonl"), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["family"] == "qwen4-exp" and doc["tasks"][0]["kl_mean"] > 0
    tiny_qwen4exp(tmp_path / "q0", ple=False, vocab_size=80)
    r = _run(["ablate", str(tmp_path / "q0"), "--tasks", str(suites / "caps_mc.jsonl"), "--device", "cpu"])
    assert r.exit_code == 3 and "no PLE" in r.stderr


def test_capacity_sweep_and_controls(setup, tmp_path):
    root, model, suites = setup
    caps = [("france", "paris"), ("italy", "rome"), ("germany", "berlin"), ("spain", "madrid")]
    items = []
    for i, (c, x) in enumerate(caps):
        ctx = f"passage : the capital of {c} is {x} . question : the capital of {c} is"
        items.append({"context": ctx, "choices": [f" {y}" for _, y in caps], "gold": i,
                      "context_span": [10, ctx.index(" question")]})
    read = write_suite(tmp_path / "read.jsonl", {"task": "read", "category": "reading", "output_type": "multiple_choice"}, items)
    out = tmp_path / "o"
    r = _run(["ablate", str(model), "--tasks", str(read), "--mode", "capacity", "--rows", "1,4", "--rows", "100000",
              "--device", "cpu", "--json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["rows"] == [1, 4, 100000] and [p["rows"] for p in doc["dose_response"]] == [1, 4, 100000]
    last = doc["dose_response"][-1]["tasks"][0]
    assert last["baseline"] == last["ablated"]
    assert doc["tasks"][0]["controls"][0]["span"] == "context" and doc["tasks"][0]["floor"] is not None
    assert (out / "capacity.png").is_file() and (out / "retention.png").is_file()
    r = _run(["ablate", str(model), "--tasks", str(read), "--device", "cpu", "--no-controls"])
    assert r.exit_code == 0, r.output
    assert "Context controls" not in r.stdout
    r = _run(["ablate", str(model), "--tasks", str(read), "--device", "cpu"])
    assert r.exit_code == 0 and "Context controls" in r.stdout
