"""`engram ablate` on the bundled demo model (a small --limit keeps it fast)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from engram_cli.cli.app import app  # noqa: E402
from engram_cli.models.loading import demo_model_dir, demo_suites_dir, load_model  # noqa: E402

pytestmark = pytest.mark.skipif(not (demo_model_dir() / "config.json").is_file(), reason="demo model not bundled")


def test_demo_model_loads_and_roundtrips(tmp_path):
    loaded = load_model(None, device="cpu")
    m = loaded.model
    assert type(m).__name__ == "EngramForCausalLM" and loaded.tokenizer is not None
    ids = torch.tensor([loaded.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        a = m(ids).logits
    m.save_pretrained(str(tmp_path))
    from engram_cli.models.reference import EngramForCausalLM

    m2 = EngramForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, a)
    assert sum(p.stat().st_size for p in demo_model_dir().iterdir()) <= 30 * 2**20


def test_bundled_suites_present():
    names = {p.stem for p in demo_suites_dir().glob("*.jsonl")}
    assert {"capitals_mc", "capitals_qa", "currency_mc", "reading_mc", "reading_mc_hard", "reading_gen", "wiki_ppl",
            "wiki_train_ppl"} <= names
    from engram_cli.analysis.tasks import resolve_tasks

    tasks = {t.name: t for t in resolve_tasks(None, demo_suites_dir())}
    assert tasks["capitals_mc"].span_fields == ["subject_span"] and tasks["reading_mc"].span_fields == ["context_span"]
    assert (tasks["wiki_ppl"].text_split, tasks["wiki_train_ppl"].text_split) == ("heldout", "train")
    v2 = demo_suites_dir().parent / "suites-v2"
    assert {t.name for t in resolve_tasks([str(v2)], demo_suites_dir())} >= {"reading_entity_mc", "reading_entity_gen",
                                                                             "capitals_mc_heldout", "wiki_train_ppl"}


def test_ablate_demo_defaults_limited(tmp_path):
    r = CliRunner().invoke(app, ["ablate", "--limit", "12", "--device", "cpu", "--json", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["family"] == "engram-reference" and len(doc["tasks"]) == 8
    assert {"factual", "reading"} <= set(doc["categories_all"])
    by = {t["task"]: t for t in doc["tasks"]}
    assert by["reading_mc"]["controls"][0]["span"] == "context" and by["capitals_mc"]["controls"][0]["span"] == "subject"
    assert [m["text_split"] for m in doc["memorisation"]] == ["train", "heldout"]
    assert (tmp_path / "o" / "retention.png").is_file()
