"""Reading items about invented towns: the answer is stated only in the passage.

Every town, river, province and founder name is made of random syllables and checked against
the real training text, so no training text can supply the answer; the years and goods are
common words drawn uniformly, so their prior carries no per-item information. A passage
describes one town (four facts in random order) and a decoy town (two facts of the same kinds),
so copying any plausible word from the passage is not enough: the question names the town.

Training items and suite items come from disjoint name pools (``split="train"`` /
``"heldout"``), so the suites' towns are never seen in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st", "sk")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
CODAS = ("", "", "n", "r", "l", "s", "th", "m", "k", "nd")
GOODS = ("wool", "salt", "copper", "timber", "glass", "silk", "amber", "tin", "cheese", "leather", "paper", "honey",
         "barley", "rope", "pottery", "iron", "wine", "olives", "cotton", "linen", "coal", "marble", "tea", "rice",
         "soap", "candles", "furs", "pepper", "clocks", "boats")
RELATIONS = ("founder", "year", "export", "river", "province")
QUESTIONS = {
    "founder": "Who founded {town}?",
    "year": "In which year was {town} founded?",
    "export": "What is the main export of {town}?",
    "river": "On which river does {town} lie?",
    "province": "In which province is {town}?",
}
SENTENCES = {
    "province": ("{town} is a small town in the province of {value}.", "The town of {town} belongs to the province of {value}."),
    "year": ("{town} was founded in {value}.", "The first houses of {town} were built in {value}."),
    "founder": ("{town} was founded by a merchant named {value}.", "A trader called {value} founded {town}."),
    "river": ("{town} lies on the river {value}.", "The river {value} runs through {town}."),
    "export": ("The main export of {town} is {value}.", "{town} sells {value} to its neighbours."),
}
DECOY = {
    "province": "The nearby town of {town} is in the province of {value}.",
    "year": "The nearby town of {town} was founded in {value}.",
    "founder": "The nearby town of {town} was founded by {value}.",
    "river": "The nearby town of {town} lies on the river {value}.",
    "export": "The nearby town of {town} mainly exports {value}.",
}


def _name(rng: random.Random, syllables: int) -> str:
    s = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
    return s[:1].upper() + s[1:]


def invented_names(seed: int, n: int, forbidden: set[str]) -> list[str]:
    """``n`` distinct invented names (2–3 syllables) not in ``forbidden`` (lower-cased words)."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        name = _name(rng, rng.choice((2, 2, 3)))
        key = name.lower()
        if key in seen or key in forbidden or not 4 <= len(name) <= 11:
            continue
        seen.add(key)
        out.append(name)
    return out


@dataclass
class Town:
    name: str
    facts: dict[str, str]


@dataclass
class EntityItem:
    """One reading item: a passage about a town (and a decoy), a question about one relation."""

    passage: str
    town: str
    relation: str
    answer: str
    decoy_value: str | None
    values_in_passage: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        return f"Passage: {self.passage}\nQuestion: {QUESTIONS[self.relation].format(town=self.town)}\nAnswer:"

    def passage_span(self) -> list[int]:
        return [len("Passage: "), len("Passage: ") + len(self.passage)]

    def text(self) -> str:
        return f"{self.prompt()} {self.answer}"


@dataclass
class NamePools:
    """Disjoint invented-name pools for the towns, rivers, provinces and founders of one split."""

    towns: list[str]
    rivers: list[str]
    provinces: list[str]
    founders: list[str]

    def pool(self, relation: str) -> list[str]:
        return {"river": self.rivers, "province": self.provinces, "founder": self.founders}.get(relation, [])


def name_pools(forbidden: set[str], split: str, n: int = 400) -> NamePools:
    """Name pools for ``split`` (``train`` or ``heldout``); the two splits share no name."""
    names = invented_names(7919, 8 * n, forbidden)
    off = 0 if split == "train" else 4 * n
    return NamePools(*(names[off + k * n: off + (k + 1) * n] for k in range(4)))


def value_pool(relation: str, pools: NamePools) -> list[str]:
    if relation == "year":
        return [str(y) for y in range(1210, 1890, 7)]
    if relation == "export":
        return list(GOODS)
    return pools.pool(relation)


def make_town(rng: random.Random, pools: NamePools, name: str) -> Town:
    return Town(name, {rel: rng.choice(value_pool(rel, pools)) for rel in RELATIONS})


def make_item(rng: random.Random, pools: NamePools, decoy_pick: Callable | None = None) -> EntityItem:
    """A passage (4 facts about a town + 2 about a decoy town) and one question about the town.

    ``decoy_pick(relation, answer, pool, rng, exclude)``, when given, chooses the decoy town's value
    for the asked relation (the suites use it to match the decoy's prior to the answer's).
    """
    town_name, decoy_name = rng.sample(pools.towns, 2)
    town, decoy = make_town(rng, pools, town_name), make_town(rng, pools, decoy_name)
    rels = rng.sample(RELATIONS, 4)
    relation = rng.choice(rels)
    decoy_rels = rng.sample(RELATIONS, 2)
    if relation not in decoy_rels and rng.random() < 0.5:
        decoy_rels[0] = relation  # half the time the decoy states the same relation (a value of the same kind)
    for rel in RELATIONS:  # the decoy never shares a value with the town, so every answer is said once
        while decoy.facts[rel] == town.facts[rel]:
            decoy.facts[rel] = rng.choice(value_pool(rel, pools))
    if decoy_pick is not None and relation in decoy_rels:
        decoy.facts[relation] = decoy_pick(relation, town.facts[relation], value_pool(relation, pools), rng,
                                           set(town.facts.values()))
    sents = [rng.choice(SENTENCES[r]).format(town=town.name, value=town.facts[r]) for r in rels]
    sents = [sents[0]] + rng.sample(sents[1:], len(sents) - 1)
    dec = [DECOY[r].format(town=decoy.name, value=decoy.facts[r]) for r in decoy_rels]
    pos = rng.randrange(1, len(sents) + 1)
    passage = " ".join(sents[:pos] + dec + sents[pos:])
    values = [town.facts[r] for r in rels] + [decoy.facts[r] for r in decoy_rels]
    return EntityItem(passage, town.name, relation, town.facts[relation],
                      decoy.facts[relation] if relation in decoy_rels else None, values)


def entity_items(seed: int, n: int, pools: NamePools, decoy_pick: Callable | None = None) -> list[EntityItem]:
    rng = random.Random(seed)
    return [make_item(rng, pools, decoy_pick) for _ in range(n)]


def in_passage(word: str, passage: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", passage) is not None
