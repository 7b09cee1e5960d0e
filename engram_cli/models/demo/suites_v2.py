"""Demo v2 evaluation suites, built and fixed BEFORE any v2 training.

    python -m engram_cli.models.demo.suites_v2 -o engram_cli/data/suites-v2

Reading (category ``reading``): passages about invented towns (``entities.py``; held-out name
pool), multiple choice and generative; ``context_span`` marks the passage. Factual: country
facts in the trained phrasing and in never-trained phrasings (``facts_v2.py``), multiple choice
and generative; ``subject_span`` marks the country. Distractors are matched in prior frequency
(``priors.py``: a unigram model of the training text under the bundled model's GPT-2 tokenizer),
and ``manifest.json`` records each suite's unigram-prior accuracy, its SHA-256 and what was left
out. Perplexity: held-out Wikipedia (the same text as v1's ``wiki_ppl``) and news, and a sample
of the training text (the memorisation control). ``train_v2`` refuses to train when the shipped
files differ from what this module builds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from engram_cli.models.demo.corpus import SEED, answer_in_prompt, write_suites
from engram_cli.models.demo.corpus_v2 import CorpusV2, build_corpus_v2, training_texts
from engram_cli.models.demo.entities import entity_items, in_passage, value_pool
from engram_cli.models.demo.facts_v2 import HELDOUT_PROBES, TRAINED_PROBES, seen_probes
from engram_cli.models.demo.priors import UnigramPrior, matched_distractors, mc_choices, prior_accuracy

N_READING = 200
N_PPL = 60


def _subject(context: str, name: str) -> list[int]:
    start = context.index(name)
    if start > 0 and context[start - 1] == " ":
        start -= 1
    return [start, context.index(name) + len(name)]


def reading_suites(corpus: CorpusV2, prior: UnigramPrior) -> dict[str, dict]:
    pools = corpus.heldout_pools

    def decoy_pick(relation, answer, pool, rng, exclude):
        return matched_distractors(answer, pool, lambda v: prior.score(" " + v), rng, 1, exclude)[0]

    mc, gen = [], []
    for i, it in enumerate(entity_items(SEED + 30, N_READING, pools, decoy_pick)):
        rng = random.Random(SEED + 31 + i)
        pool = value_pool(it.relation, pools)  # bins over the whole pool; words of the passage are only excluded
        exclude = list(it.values_in_passage) + [it.town] + [v for v in pool if in_passage(v, it.passage)]
        dis = [it.decoy_value] if it.decoy_value else []
        dis += matched_distractors(it.answer, pool, lambda v: prior.score(" " + v), rng, 3 - len(dis), exclude)
        choices, gold = mc_choices(it.answer, dis, rng)
        mc.append({"id": f"entity-mc/{i}", "relation": it.relation, "context": it.prompt(), "choices": choices,
                   "gold": gold, "context_span": it.passage_span()})
    for i, it in enumerate(entity_items(SEED + 32, N_READING, pools)):
        gen.append({"id": f"entity-gen/{i}", "relation": it.relation, "context": it.prompt(), "answers": [it.answer],
                    "context_span": it.passage_span()})
    desc = "invented towns (names never in any training text): passage + question, answer stated only in the passage"
    return {
        "reading_entity_mc": {"header": {"task": "reading_entity_mc", "category": "reading", "output_type": "multiple_choice",
                                         "description": desc + "; 4 choices, prior-matched; a decoy town's value is a "
                                         "distractor when the passage states one"}, "items": mc},
        "reading_entity_gen": {"header": {"task": "reading_entity_gen", "category": "reading", "output_type": "generate_until",
                                          "until": ["\n", "."], "max_gen_toks": 10, "description": desc + "; greedy, exact match"},
                               "items": gen},
    }


def _one_per_answer(countries: list, attr: str) -> list:
    """One country per distinct answer (seeded pick), so a frequent answer (EUR: 32 countries) cannot
    be won by always naming it: every value is the gold answer of exactly one item."""
    by_value: dict[str, list] = {}
    for c in countries:
        by_value.setdefault(getattr(c, attr), []).append(c)
    keep = {random.Random(f"{SEED}/{attr}/{v}").choice(sorted(cs, key=lambda c: c.name)).name for v, cs in by_value.items()}
    return [c for c in countries if c.name in keep]


def _fact_rows(corpus: CorpusV2, attr: str, probe_kind: str, skip: set) -> list:
    rows = [c for c in corpus.countries if getattr(c, attr) and not (attr == "capital" and answer_in_prompt(c, c.capital))]
    return [c for c in _one_per_answer(rows, attr) if (probe_kind, c.name) not in skip]


def _fact_mc(name: str, probe: str, rel: str, corpus: CorpusV2, prior: UnigramPrior, skip: set, seed: int) -> dict:
    attr = "capital" if rel.startswith("capital") else "currency"
    rows = _fact_rows(corpus, attr, rel, skip)
    pool = sorted({getattr(c, attr) for c in corpus.countries if getattr(c, attr)})
    items = []
    for c in rows:
        rng = random.Random(f"{seed}/{c.name}")
        value = getattr(c, attr)
        ctx = probe.format(country=c.name)
        dis = matched_distractors(value, pool, lambda v: prior.score(f" {v}."), rng)
        choices, gold = mc_choices(value, dis, rng, " {}.")
        items.append({"id": f"{name}/{c.name}", "context": ctx, "choices": choices, "gold": gold,
                      "subject_span": _subject(ctx, c.name)})
    return {"header": {"task": name, "category": "factual", "output_type": "multiple_choice",
                       "description": f"closed-book {attr}: {probe!r} + 4 prior-matched choices, one item per distinct "
                       "answer (countryinfo)"}, "items": items}


def _fact_gen(name: str, probe: str, corpus: CorpusV2, skip: set) -> dict:
    rows = _fact_rows(corpus, "capital", "capital_qa", skip)
    items = []
    for c in rows:
        ctx = probe.format(country=c.name)
        items.append({"id": f"{name}/{c.name}", "context": ctx, "answers": [c.capital], "subject_span": _subject(ctx, c.name)})
    return {"header": {"task": name, "category": "factual", "output_type": "generate_until", "until": ["\n"],
                       "max_gen_toks": 12, "description": f"closed-book capital, greedy + exact match: {probe!r}"}, "items": items}


def factual_suites(corpus: CorpusV2, prior: UnigramPrior, skip: set) -> dict[str, dict]:
    return {
        "capitals_mc": _fact_mc("capitals_mc", TRAINED_PROBES["capital"], "capital", corpus, prior, set(), SEED + 40),
        "capitals_mc_heldout": _fact_mc("capitals_mc_heldout", HELDOUT_PROBES["capital"], "capital", corpus, prior, skip,
                                        SEED + 41),
        "currency_mc": _fact_mc("currency_mc", TRAINED_PROBES["currency"], "currency", corpus, prior, set(), SEED + 42),
        "currency_mc_heldout": _fact_mc("currency_mc_heldout", HELDOUT_PROBES["currency"], "currency", corpus, prior, skip,
                                        SEED + 43),
        "capitals_qa": _fact_gen("capitals_qa", TRAINED_PROBES["capital_qa"], corpus, set()),
        "capitals_qa_heldout": _fact_gen("capitals_qa_heldout", HELDOUT_PROBES["capital_qa"], corpus, skip),
    }


def ppl_chunks(paragraphs: list[str], seed: int, n: int = N_PPL, cut: int = 600) -> list[str]:
    """The v1 ``wiki_ppl`` recipe: paragraphs of >= 300 chars cut to ``cut``, seeded shuffle, first ``n``."""
    chunks = [p[:cut] for p in paragraphs if len(p) >= 300]
    random.Random(seed).shuffle(chunks)
    return chunks[:n]


def perplexity_suites(corpus: CorpusV2) -> dict[str, dict]:
    def suite(name, texts, split, desc):
        return {"header": {"task": name, "category": "other", "output_type": "loglikelihood_rolling", "text_split": split,
                           "description": desc}, "items": [{"id": f"{name}/{i}", "text": t} for i, t in enumerate(texts)]}

    return {
        "wiki_ppl": suite("wiki_ppl", ppl_chunks(corpus.heldout_text["wiki"], SEED + 4), "heldout",
                          "held-out Wikipedia paragraphs (first 600 chars; the same text as v1's wiki_ppl), perplexity"),
        "wiki_train_ppl": suite("wiki_train_ppl", ppl_chunks(corpus.wiki_train, SEED + 5), "train",
                                "training-set Wikipedia paragraphs (first 600 chars; seen in training), perplexity"),
        "news_ppl": suite("news_ppl", ppl_chunks(corpus.heldout_text["lee"], SEED + 6, 30), "heldout",
                          "held-out Lee news articles (first 600 chars), perplexity"),
    }


def bundled_prior(corpus: CorpusV2) -> UnigramPrior:
    """The unigram prior under the CURRENT bundled demo model's tokenizer (GPT-2 BPE)."""
    from tokenizers import Tokenizer

    from engram_cli.models.loading import demo_model_dir

    return UnigramPrior(Tokenizer.from_file(str(demo_model_dir() / "tokenizer.json")), training_texts(corpus))


def build_suites_v2(corpus: CorpusV2, prior: UnigramPrior) -> tuple[dict[str, dict], dict]:
    """All v2 suites and the manifest facts (prior accuracies, exclusions) that do not depend on files."""
    skip = seen_probes(corpus.train_text, corpus.countries)
    suites = {**reading_suites(corpus, prior), **factual_suites(corpus, prior, skip), **perplexity_suites(corpus)}
    info = {"prior": "add-one unigram over the v2 training text (epoch 0) under the bundled demo model's GPT-2 tokenizer",
            "prior_tokens": prior.total_tokens, "heldout_probes_seen_in_training": sorted(f"{p}/{c}" for p, c in skip),
            "suites": {}}
    for name, s in suites.items():
        row = {"n": len(s["items"]), "category": s["header"]["category"], "output_type": s["header"]["output_type"]}
        if row["output_type"] == "multiple_choice":
            row["unigram_prior_accuracy"] = round(prior_accuracy(s["items"], prior, "max"), 4)
            row["unigram_rarest_accuracy"] = round(prior_accuracy(s["items"], prior, "min"), 4)
            row["chance"] = 0.25
        info["suites"][name] = row
    return suites, info


def write_suites_v2(suites: dict[str, dict], info: dict, out_dir: Path) -> list[Path]:
    paths = write_suites(suites, out_dir)
    for p in paths:
        info["suites"][p.stem]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    (out_dir / "manifest.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return paths


def suite_files_match(suites: dict[str, dict], directory: Path) -> list[str]:
    """Names of suites whose shipped file differs from (or is missing next to) the built one."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = write_suites(suites, Path(tmp))
        return [p.stem for p in built if not (directory / p.name).is_file() or (directory / p.name).read_bytes() != p.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the demo v2 suites (fixed before training).")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    corpus = build_corpus_v2()
    suites, info = build_suites_v2(corpus, bundled_prior(corpus))
    write_suites_v2(suites, info, args.output)
    print(json.dumps(info["suites"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
