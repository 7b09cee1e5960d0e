"""Demo v2 training pieces: bit-identical reruns, the twin's shared backbone, data builders, priors."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engram_cli.models.demo.bpe import train_bpe  # noqa: E402
from engram_cli.models.demo.train_v2 import build_model_v2, exact_fp32, train_loop  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import demo_train_texts, tiny_text_stream, tiny_v2_config  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return train_bpe(demo_train_texts(), 300)


def test_bpe_is_deterministic(tok):
    again = train_bpe(demo_train_texts(), 300)
    assert again.to_str() == tok.to_str()
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.get_vocab_size() <= 300
    assert tok.decode(tok.encode("the salt town.").ids) == "the salt town."


@pytest.mark.parametrize("engram", [True, False])
def test_training_reruns_bit_identical(tok, engram):
    states = []
    for _ in range(2):
        cfg = tiny_v2_config(engram=engram)
        _, model = build_model_v2(tok, cfg)
        hist = train_loop(model, tiny_text_stream(tok), cfg, cfg.steps, log=lambda s: None)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert hist[-1]["step"] == 3 and np.isfinite(hist[-1]["loss"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    _, fresh = build_model_v2(tok, tiny_v2_config(engram=engram))
    assert any(not torch.equal(fresh.state_dict()[k], states[0][k]) for k in states[0])  # training moved the weights


def test_explicit_cpu_device_is_the_default_path(tok):
    """``device="cpu"`` trains exactly as the default, leaves the model on the CPU, and exact_fp32 is a no-op there."""
    runs = []
    for kw in ({}, {"device": "cpu"}):
        cfg = tiny_v2_config()
        _, model = build_model_v2(tok, cfg)
        hist = train_loop(model, tiny_text_stream(tok), cfg, cfg.steps, log=lambda s: None, **kw)
        runs.append((hist, model.state_dict()))
        assert {p.device.type for p in model.parameters()} == {"cpu"} and not model.training
    assert [h["loss"] for h in runs[0][0]] == [h["loss"] for h in runs[1][0]]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    before = torch.are_deterministic_algorithms_enabled()
    with exact_fp32("cpu"):
        assert torch.are_deterministic_algorithms_enabled() == before


def test_train_v2_refuses_a_missing_device(capsys):
    from engram_cli.models.demo.train_v2 import main

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(SystemExit) as err:
        main(["-o", "unused", "--device", "cuda"])
    assert err.value.code == 2 and "--device cuda: no such device here" in capsys.readouterr().err


def test_twin_shares_the_backbone_and_lacks_engram(tok):
    _, model = build_model_v2(tok, tiny_v2_config())
    _, twin = build_model_v2(tok, tiny_v2_config(engram=False))
    m, t = dict(model.named_parameters()), dict(twin.named_parameters())
    assert set(t) == {k for k in m if ".engram." not in k}
    assert all(torch.equal(m[k], t[k]) for k in t)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in twin.parameters())
    assert twin.config.engram_layer_ids == [] and model.config.engram_layer_ids == [1]


def test_copy_data_and_probe():
    from engram_cli.models.demo.corpus_v2 import COPY, OTHER
    from engram_cli.models.demo.stream_v2 import copy_documents, copy_probe

    real = [list(range(100, 160))]
    docs = copy_documents(random.Random(1), 6, 300, 7, real)
    assert docs == copy_documents(random.Random(1), 6, 300, 7, real)
    for ids, cls in docs:
        n = (len(ids) - 1) // 2
        assert ids[:n] == ids[n + 1:] and ids[n] == 7 and cls == [OTHER] * (n + 1) + [COPY] * n
    probe = copy_probe(5, 3, 300, 7, length=10)
    assert all(len(s) == 21 and s[:10] == s[11:] for s in probe)


def test_copy_accuracy_counts_the_second_copy():
    from engram_cli.models.demo.eval_v2 import copy_accuracy

    class Oracle(torch.nn.Module):
        """Predicts the token that followed the previous occurrence of the current token (a perfect inductor)."""

        def forward(self, x):
            b, t = x.shape
            logits = torch.zeros(b, t, 400)
            for i in range(b):
                for p in range(t):
                    prev = [q for q in range(p) if x[i, q] == x[i, p]]
                    logits[i, p, int(x[i, prev[-1] + 1]) if prev else 0] = 1.0
            return type("O", (), {"logits": logits})()

    seqs = [[5, 6, 7, 8, 9, 1, 5, 6, 7, 8, 9]]
    assert copy_accuracy(Oracle(), seqs) == 1.0

    class Blank(torch.nn.Module):
        def forward(self, x):
            return type("O", (), {"logits": torch.zeros(*x.shape, 400)})()

    assert copy_accuracy(Blank(), seqs) == 0.0


def test_bigram_baseline():
    from engram_cli.models.demo.eval_v2 import bigram_perplexity

    train = np.tile(np.arange(10), 200)
    out = bigram_perplexity(train, [list(range(10)) * 3], 10)
    assert out["perplexity"] < 1.5 and 0 < out["lambda"] <= 0.95
    shuffled = bigram_perplexity(np.random.default_rng(0).integers(0, 10, 2000), [list(range(10)) * 3], 10)
    assert shuffled["perplexity"] > 8


def test_entity_items_answer_stated_once_and_pools_disjoint():
    from engram_cli.models.demo.entities import entity_items, name_pools

    train, held = name_pools({"salt"}, "train", 60), name_pools({"salt"}, "heldout", 60)
    assert not set(train.towns + train.rivers + train.provinces + train.founders) & set(
        held.towns + held.rivers + held.provinces + held.founders)
    items = entity_items(3, 50, held)
    assert [i.text() for i in items] == [i.text() for i in entity_items(3, 50, held)]
    for it in items:
        import re

        assert len(re.findall(rf"\b{re.escape(it.answer)}\b", it.passage)) == 1
        assert it.prompt()[slice(*it.passage_span())] == it.passage and it.town in it.prompt().split("Question:")[1]


def test_matched_distractors_leave_the_prior_at_chance():
    from engram_cli.models.demo.priors import matched_distractors

    pool = [f"v{i}" for i in range(300)]
    score = {v: random.Random(v).random() for v in pool}.__getitem__
    rng = random.Random(0)
    top = low = 0
    n = 3000
    for _ in range(n):
        a = rng.choice(pool)
        d = matched_distractors(a, pool, score, rng, exclude=[pool[0]])
        assert len(set(d)) == 3 and a not in d and pool[0] not in d
        top += max(d + [a], key=score) == a
        low += min(d + [a], key=score) == a
    assert abs(top / n - 0.25) < 0.03 and abs(low / n - 0.25) < 0.03


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("gensim", "countryinfo")),
                    reason="needs the offline corpus packages (docs/demo-model.md)")
def test_shipped_v2_suites_are_what_the_builder_makes():
    """The v2 suites are fixed: the builder (corpus + prior) reproduces the shipped files byte for byte."""
    from engram_cli.models.demo.corpus_v2 import build_corpus_v2
    from engram_cli.models.demo.suites_v2 import build_suites_v2, bundled_prior, suite_files_match
    from engram_cli.models.demo.train_v2 import SUITES_V2

    corpus = build_corpus_v2()
    suites, _ = build_suites_v2(corpus, bundled_prior(corpus))
    assert suite_files_match(suites, SUITES_V2) == []


def test_saved_model_files_follow_the_umask(tok, tmp_path):
    from engram_cli.fsutil import umask_file_mode
    from engram_cli.models.demo.train_v2 import save_v2

    lay, model = build_model_v2(tok, tiny_v2_config())
    save_v2(model, lay, tok, tmp_path / "m", {"note": "test"})
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {umask_file_mode()}


def test_copy_probe_stream_labels_the_repeats():
    from engram_cli.models.demo.copy_probe import copy_stream, held_out_spans
    from engram_cli.models.demo.corpus_v2 import COPY

    ids, cls = copy_stream(0, symbols=20, reps=3, min_len=4, max_len=9, newline=7, eos=0, docs=50)
    assert ids.shape == cls.shape
    again = copy_stream(0, symbols=20, reps=3, min_len=4, max_len=9, newline=7, eos=0, docs=50)
    assert np.array_equal(ids, again[0]) and np.array_equal(cls, again[1])
    docs = np.split(ids, np.flatnonzero(ids == 0) + 1)[:-1]
    assert len(docs) == 50
    pos = 0
    for doc in docs:  # S 7 S 7 S 0: the second and third copies are COPY, separators and the end are not
        n = (len(doc) - 3) // 3
        assert list(doc[:n]) == list(doc[n + 1:2 * n + 1]) == list(doc[2 * n + 2:3 * n + 2]) and doc[n] == doc[2 * n + 1] == 7
        expected = [0] * (n + 1) + ([COPY] * n + [0]) * 2
        assert list(cls[pos:pos + len(doc)]) == expected
        pos += len(doc)
    spans = held_out_spans(20, 7, n=3, length=5)
    assert all(s[:5] == s[6:] and s[5] == 7 for s in spans)


def test_copy_probe_runs_and_reports(capsys):
    import json

    from engram_cli.models.demo.copy_probe import main

    assert main(["--steps", "3", "--log-every", "25", "--symbols", "40", "--batch-size", "2", "--seq-len", "16"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in rows[:-1]] == [0, 2]  # train_loop records every 25th step and the last
    assert all(np.isfinite(r["copy_loss"]) for r in rows[:-1])
    assert 0.0 <= rows[-1]["copy_accuracy"] <= 1.0 and rows[-1]["reps"] == 2
    with pytest.raises(SystemExit) as err:
        main(["--separator-id", "999999"])
    assert err.value.code == 2
