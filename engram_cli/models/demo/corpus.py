"""The demo model's corpus and its held-out evaluation suites, built from offline assets.

Sources (all from PyPI, nothing from the hub):
- ``gensim==4.4.0``: the Wikipedia sample in its test data (89 usable articles, CC BY-SA).
- ``countryinfo==1.0.1``: 254 countries (capital, currency codes, demonym, subregion; MIT).

Split (fixed seed):
- Wikipedia articles: ``HELD_OUT_ARTICLES`` articles are held out entirely; their paragraphs
  feed the reading suites and the held-out perplexity suite and never appear in training.
- Countries: every fact is in training (closed-book memory needs it). The factual suites are
  fixed files that score those facts with the prompt templates listed in ``FACT_TEMPLATES``
  (the first template of each relation, seen in training). Countries whose capital repeats
  the country's name (e.g. "Mexico City") are left out of the factual suites, because the
  answer could be copied from the prompt.
- Reading: a passage + the prefix of one of its sentences, answered by the next word (said
  once in the passage), built the same way for training (from training articles) and for the
  suites (from held-out articles).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from engram_cli.models.demo.wikitext import load_articles, package_dir

SEED = 1234
HELD_OUT_ARTICLES = 12
EOS = "<|endoftext|>"

FACT_TEMPLATES = {
    "capital": [
        "The capital of {country} is {value}.",
        "{value} is the capital city of {country}.",
        "Question: What is the capital of {country}?\nAnswer: {value}",
        "{country} has its seat of government in {value}.",
    ],
    "currency": [
        "The currency code of {country} is {value}.",
        "Question: What is the currency code of {country}?\nAnswer: {value}",
        "Prices in {country} are given in {value}.",
    ],
    "demonym": [
        "People from {country} are called {value}.",
        "A person from {country} is {value}.",
    ],
    "subregion": [
        "{country} is a country in {value}.",
    ],
}


@dataclass
class Country:
    name: str
    capital: str | None
    currency: str | None
    demonym: str | None
    subregion: str | None

    def facts(self) -> dict[str, str]:
        out = {"capital": self.capital, "currency": self.currency, "demonym": self.demonym,
               "subregion": self.subregion}
        return {k: v for k, v in out.items() if v}


def load_countries() -> list[Country]:
    out = []
    for path in sorted((package_dir("countryinfo") / "data").glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        name = d.get("name")
        if not isinstance(name, str) or not name:
            continue
        cap = d.get("capital") if isinstance(d.get("capital"), str) and d.get("capital") else None
        curs = d.get("currencies") or []
        cur = curs[0] if curs and isinstance(curs[0], str) else None
        dem = d.get("demonym") if isinstance(d.get("demonym"), str) and d.get("demonym") else None
        sub = d.get("subregion") if isinstance(d.get("subregion"), str) and d.get("subregion") else None
        out.append(Country(name, cap, cur, dem, sub))
    return out


# ---------------------------------------------------------------------------------- reading
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]+|\d{3,4}")


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(paragraph) if 20 <= len(s.strip()) <= 300]


@dataclass
class ReadingItem:
    """Extractive cloze reading: complete a sentence of the passage with its next word.

    The answer is a capitalised word or a number that occurs once in the passage and is
    followed by punctuation there, so the prompt's sentence prefix points at exactly one place.
    """

    passage: str
    prefix: str
    answer: str
    punct: str
    distractors: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        return f"Passage: {self.passage}\nComplete from the passage: {self.prefix}"

    def passage_span(self) -> list[int]:
        """``context_span`` of the passage in :meth:`prompt`."""
        return [len("Passage: "), len("Passage: ") + len(self.passage)]

    def text(self) -> str:
        return f"{self.prompt()} {self.answer}{self.punct}"


_TARGET = re.compile(r"(?<=\s)([A-Z][A-Za-z\-]{3,}|\d{3,4})(?=[.,;])")


def reading_items(paragraphs: list[str], rng: random.Random, max_chars: int = 420,
                  per_paragraph: int = 4) -> list[ReadingItem]:
    """Passage + a sentence prefix whose next word (said once in the passage) is the answer."""
    items = []
    for para in paragraphs:
        sents = sentences(para)
        for _ in range(per_paragraph):
            if len(sents) < 2:
                break
            start = rng.randrange(len(sents))
            passage_sents = []
            for s in sents[start:]:
                if sum(len(x) + 1 for x in passage_sents) + len(s) > max_chars:
                    break
                passage_sents.append(s)
            if len(passage_sents) < 2:
                continue
            passage = " ".join(passage_sents)
            target_sent = rng.choice(passage_sents)
            cands = [m for m in _TARGET.finditer(target_sent)
                     if m.start() >= 12 and len(re.findall(rf"\b{re.escape(m.group(1))}\b", passage)) == 1]
            if not cands:
                continue
            m = rng.choice(cands)
            answer = m.group(1)
            prefix = target_sent[:m.start()].rstrip()
            words = {w for s in passage_sents for w in _WORD.findall(s) if w != answer and len(w) >= 4}
            strong = sorted(w for w in words if w[0].isupper() or w.isdigit())
            weak = sorted(w for w in words if w not in strong and len(w) >= 5)
            rng.shuffle(strong)
            rng.shuffle(weak)
            items.append(ReadingItem(passage, prefix, answer, target_sent[m.end()], (strong + weak)[:3]))
    return items


# ---------------------------------------------------------------------------------- facts
def fact_sentences(country: Country) -> list[str]:
    out = []
    for rel, value in country.facts().items():
        for tpl in FACT_TEMPLATES[rel]:
            out.append(tpl.format(country=country.name, value=value))
    return out


def fact_documents(countries: list[Country], rng: random.Random, per_doc: int = 8) -> list[str]:
    """One pass over every fact sentence, shuffled into gazetteer-like documents."""
    sents = [s for c in countries for s in fact_sentences(c)]
    rng.shuffle(sents)
    return ["\n".join(sents[i:i + per_doc]) for i in range(0, len(sents), per_doc)]


def answer_in_prompt(country: Country, value: str) -> bool:
    a, b = country.name.lower(), value.lower()
    return a[:5] in b or b[:5] in a


# ---------------------------------------------------------------------------------- split
@dataclass
class DemoCorpus:
    train_articles: list[tuple[str, list[str]]]
    heldout_articles: list[tuple[str, list[str]]]
    countries: list[Country]

    def train_wiki_paragraphs(self) -> list[str]:
        return [p for _, ps in self.train_articles for p in ps]

    def epoch_documents(self, epoch: int) -> dict[str, list[str]]:
        """Training documents of one epoch by source (reading items and fact orders vary per epoch)."""
        rng = random.Random(SEED * 1000 + epoch)
        reading = [it.text() for it in reading_items(self.train_wiki_paragraphs(), rng)]
        return {
            "wiki": list(self.train_wiki_paragraphs()),
            "facts": fact_documents(self.countries, rng),
            "reading": reading,
        }


def build_corpus() -> DemoCorpus:
    articles = load_articles()
    rng = random.Random(SEED)
    order = list(range(len(articles)))
    rng.shuffle(order)
    held = set(order[:HELD_OUT_ARTICLES])
    return DemoCorpus(
        train_articles=[a for i, a in enumerate(articles) if i not in held],
        heldout_articles=[a for i, a in enumerate(articles) if i in held],
        countries=load_countries(),
    )


# ---------------------------------------------------------------------------------- suites
def _mc_options(answer: str, pool: list[str], rng: random.Random, k: int = 3) -> tuple[list[str], int]:
    others = sorted({p for p in pool if p != answer})
    choices = rng.sample(others, k) + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def build_suites(corpus: DemoCorpus, n_reading: int = 200, n_ppl: int = 60) -> dict[str, dict]:
    """The bundled suites: ``{name: {"header": {...}, "items": [...]}}`` (see docs/ablate.md)."""
    suites: dict[str, dict] = {**_factual_suites(corpus), **_reading_suites(corpus, n_reading)}
    chunks = []
    for _, ps in corpus.heldout_articles:
        for p in ps:
            if len(p) >= 300:
                chunks.append(p[:600])
    random.Random(SEED + 4).shuffle(chunks)
    suites["wiki_ppl"] = {"header": {
        "task": "wiki_ppl", "category": "other", "output_type": "loglikelihood_rolling",
        "description": "held-out Wikipedia paragraphs (first 600 chars), perplexity", "text_split": "heldout"},
        "items": [{"id": f"ppl/{i}", "text": t} for i, t in enumerate(chunks[:n_ppl])]}
    suites["wiki_train_ppl"] = train_text_suite(corpus, n_ppl)
    return suites




def _factual_suites(corpus: DemoCorpus) -> dict[str, dict]:
    suites: dict[str, dict] = {}
    rng = random.Random(SEED + 1)
    suites: dict[str, dict] = {}
    caps = [c for c in corpus.countries if c.capital and not answer_in_prompt(c, c.capital)]
    cap_pool = [c.capital for c in corpus.countries if c.capital]
    items = []
    for c in caps:
        choices, gold = _mc_options(c.capital, cap_pool, rng)
        items.append({"id": f"capital/{c.name}", "context": f"The capital of {c.name} is",
                      "choices": [f" {x}." for x in choices], "gold": gold, "subject_span": _subject(f"The capital of {c.name} is", c.name)})
    suites["capitals_mc"] = {"header": {
        "task": "capitals_mc", "category": "factual", "output_type": "multiple_choice",
        "description": "closed-book: 'The capital of X is' + 4 capitals (countryinfo)"}, "items": items}
    suites["capitals_qa"] = {"header": {
        "task": "capitals_qa", "category": "factual", "output_type": "generate_until",
        "until": ["\n"], "max_gen_toks": 12,
        "description": "closed-book QA, greedy + exact match (countryinfo)"},
        "items": [{"id": f"capital-qa/{c.name}",
                   "context": f"Question: What is the capital of {c.name}?\nAnswer:",
                   "answers": [c.capital], "subject_span": _subject(f"Question: What is the capital of {c.name}?", c.name)}
                  for c in caps]}
    curs = [c for c in corpus.countries if c.currency]
    cur_pool = [c.currency for c in corpus.countries if c.currency]
    items = []
    for c in curs:
        choices, gold = _mc_options(c.currency, cur_pool, rng)
        items.append({"id": f"currency/{c.name}", "context": f"The currency code of {c.name} is",
                      "choices": [f" {x}." for x in choices], "gold": gold,
                      "subject_span": _subject(f"The currency code of {c.name} is", c.name)})
    suites["currency_mc"] = {"header": {
        "task": "currency_mc", "category": "factual", "output_type": "multiple_choice",
        "description": "closed-book: ISO currency code of a country, 4 choices (countryinfo)"}, "items": items}
    return suites


def _reading_suites(corpus: DemoCorpus, n_reading: int) -> dict[str, dict]:
    suites: dict[str, dict] = {}
    paras = [p for _, ps in corpus.heldout_articles for p in ps]
    seen: set[tuple[str, str]] = set()
    ritems = []
    for it in reading_items(paras, random.Random(SEED + 2), per_paragraph=6):
        if len(it.distractors) >= 3 and (it.passage, it.answer) not in seen:
            seen.add((it.passage, it.answer))
            ritems.append(it)
    random.Random(SEED + 3).shuffle(ritems)
    ritems = ritems[:n_reading]
    mc, mc_hard, gen = [], [], []
    answer_pool = sorted({it.answer for it in ritems})
    for i, it in enumerate(ritems):
        rng_i = random.Random(SEED + 10 + i)
        choices = it.distractors[:3] + [it.answer]
        rng_i.shuffle(choices)
        span = it.passage_span()
        mc_hard.append({"id": f"reading-hard/{i}", "context": it.prompt(), "choices": [f" {x}" for x in choices],
                        "gold": choices.index(it.answer), "context_span": span})
        outside = [w for w in answer_pool
                   if w != it.answer and not re.search(rf"\b{re.escape(w)}\b", it.passage)]
        choices = rng_i.sample(outside, 3) + [it.answer]
        rng_i.shuffle(choices)
        mc.append({"id": f"reading/{i}", "context": it.prompt(), "choices": [f" {x}" for x in choices],
                   "gold": choices.index(it.answer), "context_span": span})
        gen.append({"id": f"reading-gen/{i}", "context": it.prompt(), "answers": [it.answer], "context_span": span})
    suites["reading_mc"] = {"header": {
        "task": "reading_mc", "category": "reading", "output_type": "multiple_choice",
        "description": "held-out Wikipedia passage + a sentence prefix; which word comes next "
                       "(the 3 distractors are answers of other held-out items that do not occur in this passage)"},
        "items": mc}
    suites["reading_mc_hard"] = {"header": {
        "task": "reading_mc_hard", "category": "reading", "output_type": "multiple_choice",
        "description": "as reading_mc, but the 3 distractors are other words of the same passage"},
        "items": mc_hard}
    suites["reading_gen"] = {"header": {
        "task": "reading_gen", "category": "reading", "output_type": "generate_until",
        "until": ["\n", ".", ",", ";"], "max_gen_toks": 8,
        "description": "held-out Wikipedia passage + a sentence prefix; greedy next word, exact match"}, "items": gen}
    return suites


def _subject(context: str, name: str) -> list[int]:
    """``subject_span`` of ``name`` in ``context``, with the space before it (removal leaves one space)."""
    start = context.index(" " + name)
    return [start, start + 1 + len(name)]


def train_text_suite(corpus: DemoCorpus, n: int = 60) -> dict:
    """The memorisation control: paragraphs the model WAS trained on, cut like ``wiki_ppl``."""
    chunks = [p[:600] for p in corpus.train_wiki_paragraphs() if len(p) >= 300]
    random.Random(SEED + 5).shuffle(chunks)
    return {"header": {"task": "wiki_train_ppl", "category": "other", "output_type": "loglikelihood_rolling",
                       "description": "training-set Wikipedia paragraphs (first 600 chars; seen in training), perplexity",
                       "text_split": "train"},
            "items": [{"id": f"train-ppl/{i}", "text": t} for i, t in enumerate(chunks[:n])]}


def write_suites(suites: dict[str, dict], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, s in suites.items():
        p = out_dir / f"{name}.jsonl"
        lines = [json.dumps(s["header"], ensure_ascii=False)]
        lines += [json.dumps(it, ensure_ascii=False) for it in s["items"]]
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(p)
    return paths
