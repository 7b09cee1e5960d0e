"""Demo v2 facts: every country fact in training, in templates AND in prose; probes in trained
and never-trained phrasings.

Training text states each fact in the gazetteer templates (``TRAIN_TEMPLATES``) and inside
short prose paragraphs (``PROSE``, one variant per epoch), so a fact is not tied to one
sentence frame. The suites probe it with the first template (trained phrasing) and with
``HELDOUT_PROBES``, phrasings that never occur in any training document
(:func:`seen_probes` finds any that the real text happens to contain; the suites drop them).
"""

from __future__ import annotations

import random

from engram_cli.models.demo.corpus import FACT_TEMPLATES, Country

TRAIN_TEMPLATES = FACT_TEMPLATES  # v1's trained phrasings, kept identical
PROSE = [
    "{country} is a country in {subregion}. Its government sits in {capital}, the national capital, and most "
    "official business passes through that city. Shops and banks in {country} count money in {currency}. "
    "Its citizens are known as {demonym}.",
    "Travellers who arrive in {country} usually start in {capital}, which has been the capital for a long time. "
    "The country lies in {subregion}, and its people, the {demonym}, pay with {currency}.",
    "Among the countries of {subregion} is {country}. The {demonym} run their national affairs from {capital}; "
    "wages and prices there are written in {currency}.",
]
HELDOUT_PROBES = {
    "capital": "{country}'s capital is",
    "capital_qa": "Question: Which city is the capital of {country}?\nAnswer:",
    "currency": "{country}'s currency code is",
}
TRAINED_PROBES = {
    "capital": "The capital of {country} is",
    "capital_qa": "Question: What is the capital of {country}?\nAnswer:",
    "currency": "The currency code of {country} is",
}


def _fill(tpl: str, c: Country) -> str | None:
    vals = {"country": c.name, "capital": c.capital, "currency": c.currency, "demonym": c.demonym,
            "subregion": c.subregion}
    needed = [k for k in vals if "{" + k + "}" in tpl]
    if any(not vals[k] for k in needed):
        return None
    return tpl.format(**{k: vals[k] for k in needed})


def template_sentences(c: Country) -> list[str]:
    out = []
    for rel, value in c.facts().items():
        for tpl in TRAIN_TEMPLATES[rel]:
            out.append(tpl.format(country=c.name, value=value))
    return out


def prose_paragraph(c: Country, rng: random.Random) -> str | None:
    """One prose paragraph for ``c`` (a variant whose facts it has), or None."""
    variants = [t for t in PROSE if _fill(t, c)]
    return _fill(rng.choice(variants), c) if variants else None


def fact_documents_v2(countries: list[Country], rng: random.Random, per_doc: int = 8) -> list[str]:
    """One pass over every template sentence (gazetteer documents) plus one prose paragraph per country."""
    sents = [s for c in countries for s in template_sentences(c)]
    rng.shuffle(sents)
    docs = ["\n".join(sents[i:i + per_doc]) for i in range(0, len(sents), per_doc)]
    docs += [p for c in countries if (p := prose_paragraph(c, rng))]
    return docs


def seen_probes(training_docs: list[str], countries: list[Country]) -> set[tuple[str, str]]:
    """``(probe, country)`` pairs whose held-out phrasing occurs in some training document.

    The suites leave those out, so a "never-trained phrasing" item is never trained."""
    text = "\n".join(training_docs)
    out = set()
    for c in countries:
        for probe, tpl in HELDOUT_PROBES.items():
            if tpl.format(country=c.name) in text:
                out.add((probe, c.name))
    return out
