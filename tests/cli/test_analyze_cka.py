"""`engram analyze cka` end to end on tiny models saved to tmp dirs, and on the bundled demo model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import save_tiny_reference, tiny_qwen4exp, tiny_tokenizer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402

runner = CliRunner()
FAST = ["--cka-batch-size", "8", "--max-length", "24", "--max-examples", "128", "--bootstrap", "50", "--device", "cpu",
        "--threads", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("cka")
    ref = save_tiny_reference(root / "ref", vocab_size=80)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=80, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(str(root / "llama"))
    tiny_tokenizer(root / "llama")
    return root, ref, root / "llama"


def _run(*args):
    return runner.invoke(app, ["analyze", "cka", *[str(a) for a in args]])


def _doc(r):
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_ablated_json_and_report(models):
    root, ref, _ = models
    out = root / "out"
    doc = _doc(_run(ref, *FAST, "--clamp-outliers", "0.01", "--remove-top-pcs", "1", "-o", out, "--json"))
    assert doc["schema"] == "engram.analyze.cka/1" and doc["compare"] == "ablated" and doc["index_base"] == 0
    assert doc["model_b"]["ablated"] and doc["model_a"]["engram_layers"] == [1, 2]
    S = np.array(doc["cka"], dtype=float)
    assert S.shape == (3, 3)
    assert abs(S[0, 0] - 1) < 1e-9  # layer 0 runs before any Engram layer: identical in both passes
    assert np.nanmax(np.abs(np.array(doc["null_floor"]["cka"], dtype=float))) < 0.5
    al = doc["alignment"]
    assert al["k"] == 5 and len(al["soft_index"]) == 3 and al["headline"]["text"].startswith("layer ")
    assert len(doc["ci95_lo"]) == 3 and doc["self_check"]["ok"]
    assert set(doc["robustness"]) == {"clamp-outliers=0.01", "remove-top-pcs=1"}
    assert any("--top-k 5 >= the baseline's 3 layers" in w for w in doc["warnings"])
    assert doc["provenance"]["torch"] and doc["settings"]["estimator"] == "minibatch-unbiased"
    assert (out / "cka.png").stat().st_size > 5000
    z = np.load(out / "cka.npz")
    np.testing.assert_allclose(z["cka"], S, equal_nan=True)
    assert json.loads((out / "cka.json").read_text())["schema"] == "engram.analyze.cka/1"


def test_table_and_headline(models):
    _, ref, _ = models
    r = _run(ref, *FAST, "--top-k", "2", "--estimator", "full-biased")
    assert r.exit_code == 0, r.output
    assert "headline: layer" in r.stdout and "0-based" in r.stdout and "null floor" in r.stdout


@pytest.mark.parametrize("extra", [[], ["--estimator", "full-unbiased"], ["--kernel", "rbf"], ["--path", "feature"]])
def test_self_comparison_exact(models, extra):
    """A model without Engram against itself: exact unit diagonal, exactly symmetric."""
    _, _, llama = models
    doc = _doc(_run(llama, *FAST, "--json", *extra))
    assert doc["compare"] == "self"
    S = np.array(doc["cka"], dtype=float)
    assert (np.diag(S) == 1.0).all() and (S == S.T).all()
    doc2 = _doc(_run(llama, llama, *FAST, "--json", *extra))  # the same path twice: the same comparison
    assert doc2["compare"] == "self" and doc2["cka"] == doc["cka"]


def test_different_depths_and_epochs(models):
    _, ref, llama = models
    doc = _doc(_run(ref, llama, *FAST, "--epochs", "2", "--positions", "mean-pool", "--skip-first", "0", "--json"))
    assert doc["compare"] == "model-b" and np.array(doc["cka"], dtype=float).shape == (2, 3)
    assert doc["model_a"]["n_layers"] == 3 and doc["model_b"]["n_layers"] == 2
    assert doc["alignment"]["diagonal"] == [0.0, 0.5, 1.0]


def test_different_tokenizers(models, tmp_path):
    """A word-level model against a GPT-2-tokenized one: per-text positions work, `all` is refused."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from engram_cli.models.loading import demo_model_dir

    _, ref, _ = models
    LlamaForCausalLM(LlamaConfig(vocab_size=50257, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(str(tmp_path / "g"))
    shutil.copy(demo_model_dir() / "tokenizer.json", tmp_path / "g" / "tokenizer.json")
    doc = _doc(_run(ref, tmp_path / "g", *FAST, "--positions", "last", "--json"))
    assert doc["examples"]["used"] == 128 and doc["examples"]["candidates"] == 232 and np.array(doc["cka"], dtype=float).shape == (2, 3)
    r = _run(ref, tmp_path / "g", *FAST)
    assert r.exit_code == 2 and "tokenize the texts identically" in r.stderr


def test_preset_and_entity_final(models, tmp_path):
    _, ref, _ = models
    spans = tmp_path / "s.jsonl"
    spans.write_text("".join(json.dumps({"text": f"the capital of {c} is {x} .",
                                         "spans": [[15, 15 + len(c)], [19 + len(c), 19 + len(c) + len(x)]]}) + "\n"
                             for c, x in [("france", "paris"), ("italy", "rome"), ("germany", "berlin"),
                                          ("spain", "madrid")] * 4), encoding="utf-8")
    doc = _doc(_run(ref, *FAST, "--protocol", "engram-paper", "--spans", spans, "--json"))
    s = doc["settings"]
    assert (s["preset"], s["positions"], s["estimator"], s["kernel"], s["k"]) == (
        "engram-paper", "entity-final", "minibatch-unbiased", "linear", 5)
    assert doc["examples"]["used"] == 32
    doc = _doc(_run(ref, *FAST, "--protocol", "engram-paper", "--top-k", "2", "--json"))  # explicit wins; bundled spans
    assert doc["settings"]["k"] == 2 and doc["examples"]["source"] == "bundled entity spans"


def test_qwen4exp_branches(tmp_path):
    tiny_qwen4exp(tmp_path / "q", vocab_size=80)
    doc = _doc(_run(tmp_path / "q", *FAST, "--json"))
    assert doc["model_a"]["family"] == "qwen4-exp" and doc["compare"] == "ablated"
    assert np.isfinite(np.array(doc["cka"], dtype=float)).all()


@pytest.mark.parametrize("model,args,code,msg", [
    ("ref", ["--cka-batch-size", "3"], 2, "below 4"),
    ("ref", ["--positions", "entity-final", "--spans", "BAD"], 3, "bad.jsonl:2"),
    ("ref", ["--positions", "entity-final", "--spans", "EMPTY"], 3, "no entity spans"),
    ("ref", ["--spans", "EMPTY"], 2, "--spans needs --positions entity-final"),
    ("ref", ["--texts", "/nonexistent.txt"], 3, "text file not found"),
    ("llama", ["--compare", "ablated"], 3, "no Engram modules"),
    ("ref", ["--epochs", "2", "--estimator", "full-biased"], 2, "--epochs"),
    ("/nonexistent/model", [], 3, "model not found"),
    ("ref", ["--layers-path", "model.nowhere"], 3, "does not resolve"),
])
def test_errors(models, tmp_path, model, args, code, msg):
    _, ref, llama = models
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the capital", "spans": [[4, 11]]}\n{oops\n', encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    args = [{"BAD": bad, "EMPTY": empty}.get(a, a) for a in args]
    r = _run({"ref": ref, "llama": llama}.get(model, model), *FAST, *args)
    assert r.exit_code == code, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and msg in err[0], r.stderr


def test_output_refused_before_work(models, tmp_path):
    _, ref, _ = models
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    r = _run(ref, *FAST, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "not empty" in r.stderr


@pytest.mark.slow
def test_demo_model_against_ablated(tmp_path):
    doc = _doc(_run("--max-examples", "512", "--bootstrap", "200", "--top-k", "2", "--device", "cpu", "--json",
                    "-o", tmp_path / "demo"))
    assert doc["compare"] == "ablated" and doc["model_a"]["family"] == "engram-reference"
    S = np.array(doc["cka"], dtype=float)
    assert S.shape == (4, 4) and abs(S[0, 0] - 1) < 1e-9  # Engram sits at layers 1 and 2
    assert doc["null_floor"]["max_abs"] < 0.2 and (tmp_path / "demo" / "cka.png").is_file()
