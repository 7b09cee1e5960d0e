"""`engram analyze logit-lens` end to end: tiny models built from configs, and the bundled demo model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import WORDS, save_tiny_reference, tiny_tokenizer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402

runner = CliRunner()
SCHEMA = "engram.analyze.logit_lens/1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    model = save_tiny_reference(root / "model", vocab_size=80, n_layers=3, hc_mult=2)
    deeper = save_tiny_reference(root / "deeper", vocab_size=80, n_layers=4)
    texts = root / "texts.jsonl"
    lines = [{"text": "the capital of france is paris . the river is blue"},
             {"context": "the capital of italy is", "choices": [" rome", " paris"], "gold": 0},
             {"context": "passage : the city is red . question : the city is", "answers": [" red"]},
             {"text": "one two three four five one two three"}] * 3
    texts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, model, deeper, texts


def _run(*args):
    return runner.invoke(app, ["analyze", "logit-lens", *map(str, args)])


def _one_line_error(r, code: int, needle: str) -> None:
    assert r.exit_code == code, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_json_single_model(setup):
    root, model, _, texts = setup
    r = _run(model, "--texts", texts, "--device", "cpu", "--json", "--points", "embed", "--points", "block",
             "--points", "post_engram", "--bootstrap", "0")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == SCHEMA and doc["paired"] is None and doc["provenance"]["device"] == "cpu"
    m = doc["models"][0]
    labels = [x["label"] for x in m["readouts"]]
    assert labels == ["embed", "L0", "L1.post-engram", "L1", "L2.post-engram", "L2"]
    kl = m["metrics"]["kl_final_layer"]
    assert kl["mean"][-1] == 0.0 and len(kl["ci95"]) == len(labels) and kl["mean"][0] > 0
    assert m["metrics"]["top1_agree"]["mean"][-1] == 1.0 and m["n_tokens"] > 0
    assert doc["settings"]["branch_reduce"] == "model" and doc["settings"]["units"] == "nats"
    assert doc["texts"]["n_texts"] == 12 and m["final_logits_check"] < 1e-5
    assert m["layers_to_convergence"]["never_fraction"] == 0.0
    assert kl["ci95"][0] == [None, None] and m["layers_to_convergence"]["lo"] is None  # --bootstrap 0: no CIs


def test_compare_ablated_outputs_and_heatmap(setup):
    root, model, _, texts = setup
    out = root / "out"
    r = _run(model, "--compare", "ablated", "--texts", texts, "--device", "cpu", "-o", out, "--heatmap",
             "--heatmap-positions", "6", "--bits", "--bootstrap", "200")
    assert r.exit_code == 0, r.output
    assert "A - B" in r.stdout and "area between" in r.stdout
    assert {p.name for p in out.iterdir()} == {"logit_lens.json", "logit_lens.png", "logit_lens.npz",
                                               "logit_lens_heatmap.png"}
    doc = json.loads((out / "logit_lens.json").read_text())
    assert doc["settings"]["compare"] == "ablated" and doc["settings"]["units"] == "bits"
    assert doc["models"][1]["name"].endswith("(Engram ablated)")
    p = doc["paired"]["metrics"]["kl_final_layer"]
    assert p["delta"][-1] == 0.0 and any(abs(d) > 1e-6 for d in p["delta"]) and p["area"] is not None
    h = doc["heatmaps"][0]
    assert h["labels"][-1] == "L2" and len(h["top_prob"]) == 3 and len(h["top_prob"][0]) == 6
    import numpy as np

    with np.load(out / "logit_lens.npz") as z:
        assert z["a_sums"].shape[0] == doc["models"][0]["n_sequences"] and "b_sums" in z


def test_same_model_twice_gives_zero_delta(setup):
    root, model, _, texts = setup
    r = _run(model, model, "--texts", texts, "--device", "cpu", "--json", "--bootstrap", "200")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for m in doc["paired"]["metrics"].values():
        assert all(d == 0 for d in m["delta"]) and m["area"] == 0


def test_refusals(setup):
    root, model, deeper, texts = setup
    _one_line_error(_run(model, deeper, "--texts", texts, "--device", "cpu"), 3, "equal layer counts")
    _one_line_error(_run(model, model, "--compare", "ablated", "--texts", texts), 2, "not both")
    plain = root / "plain.txt"
    plain.write_text("the capital of france is paris\n")
    _one_line_error(_run(model, "--texts", plain, "--positions", "answer", "--device", "cpu"), 3, "needs task items")
    full = root / "full"
    full.mkdir(exist_ok=True)
    (full / "x").write_text("x")
    _one_line_error(_run(model, "--texts", texts, "-o", full), 2, "not empty")
    _one_line_error(_run(root / "missing", "--texts", texts), 3, "model not found")


def test_different_tokenizers_refused(setup):
    root, model, _, texts = setup
    other = save_tiny_reference(root / "other_tok", vocab_size=80, n_layers=3)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<eos>": 0, "[UNK]": 1}
    for w in reversed([w.strip() for w in WORDS if w.strip()]):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(other / "tokenizer.json"))
    _one_line_error(_run(model, other, "--texts", texts, "--device", "cpu"), 3, "tokenize the texts differently")


def test_unknown_architecture_names_override_options(tmp_path):
    from transformers import BertConfig, BertLMHeadModel

    cfg = BertConfig(vocab_size=80, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     is_decoder=True)
    BertLMHeadModel(cfg).save_pretrained(str(tmp_path / "bert"))
    tiny_tokenizer(tmp_path / "bert")
    r = _run(tmp_path / "bert", "--device", "cpu", "--limit", "1")
    _one_line_error(r, 3, "cannot find the decoder layers")
    assert "--layers-path" in r.output and "--engram-path" in r.output and "bert.encoder.layer" in r.output


def test_demo_model_small():
    r = _run("--limit", "1", "--max-length", "24", "--device", "cpu", "--json", "--bootstrap", "100")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    m = doc["models"][0]
    assert m["name"] == "bundled demo model" and m["engram_layers"] == [1, 2] and m["n_layers"] == 4
    assert m["metrics"]["kl_final_layer"]["mean"][-1] == 0.0


@pytest.mark.slow
def test_demo_model_compare_ablated(tmp_path):
    r = _run("--compare", "ablated", "--limit", "2", "--max-length", "64", "--device", "cpu", "-o", tmp_path / "o", "--heatmap",
             "--points", "embed", "--points", "block", "--points", "pre_engram", "--points", "post_engram")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "o" / "logit_lens.json").read_text())
    labels = doc["paired"]["labels"]
    assert labels[0] == "embed" and "L1.post-engram" in labels and labels[-1] == "L3"
    d = doc["paired"]["metrics"]["kl_final_layer"]["delta"]
    # before the first Engram layer the two runs share every state, so only the final distributions differ
    assert d[-1] == 0.0 and any(abs(x) > 1e-3 for x in d)


def test_cli_choices_match_the_domain():
    from engram_cli.analysis.capture import BRANCH_REDUCE, POINTS
    from engram_cli.analysis.lens_texts import POSITIONS
    from engram_cli.analysis.logit_lens import METRICS
    from engram_cli.cli.analyze_logit_lens import BranchReduce, Metric, Point, Positions

    assert [x.value for x in Point] == list(POINTS) and [x.value for x in BranchReduce] == list(BRANCH_REDUCE)
    assert [x.value for x in Positions] == list(POSITIONS) and [x.value for x in Metric] == list(METRICS)
