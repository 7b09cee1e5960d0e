"""Plain text from the Wikipedia sample shipped in gensim's test data (no gensim import).

``gensim==4.4.0`` ships ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-...bz2``:
206 pages, 106 of them real articles (CC BY-SA). This strips the wiki markup with regular
expressions (good enough for a training corpus; not a full MediaWiki parser).
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import pathlib
import re

from engram_cli.errors import BadInputError


def package_dir(name: str) -> pathlib.Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"package {name!r} is not installed",
                            hint="see docs/demo-model.md for the offline assets to install")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _strip_nested(text: str, open_: str, close: str) -> str:
    out, depth, i = [], 0, 0
    lo, lc = len(open_), len(close)
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += lo
        elif depth and text.startswith(close, i):
            depth -= 1
            i += lc
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(markup: str) -> list[str]:
    """Return the prose paragraphs of one article."""
    t = html.unescape(markup)
    t = re.sub(r"<!--.*?-->", "", t, flags=re.S)
    t = re.sub(r"<ref[^>]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    t = _strip_nested(t, "{{", "}}")
    t = _strip_nested(t, "{|", "|}")
    t = re.sub(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", t)
    t = re.sub(r"\[\[([^\]|]*)\|([^\]]*)\]\]", r"\2", t)
    t = re.sub(r"\[\[([^\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[https?://[^\s\]]+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[https?://[^\]]*\]", "", t)
    t = re.sub(r"<[^>]+>", "", t)
    t = t.replace("'''", "").replace("''", "")
    paras = []
    for line in t.split("\n"):
        line = line.strip()
        if len(line) < 80 or line[0] in "*#:;|!=_{}" or line.startswith("__"):
            continue
        line = re.sub(r"\(\s*[;,]?\s*\)", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        paras.append(line)
    return paras


def load_articles() -> list[tuple[str, list[str]]]:
    """``[(title, paragraphs)]`` for the real articles (redirects and stubs dropped), in file order."""
    data_dir = package_dir("gensim") / "test" / "test_data"
    files = sorted(data_dir.glob("enwiki-latest-pages-articles1*.bz2"))
    if not files:
        raise BadInputError(f"no enwiki sample under {data_dir}", hint="pip install --no-deps gensim==4.4.0")
    raw = bz2.open(files[0], "rt", encoding="utf-8").read()
    out = []
    for page in re.findall(r"<page>(.*?)</page>", raw, flags=re.S):
        title = re.search(r"<title>(.*?)</title>", page)
        text = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        if not title or not text or text.group(1).lstrip().upper().startswith("#REDIRECT"):
            continue
        paras = clean_wikitext(text.group(1))
        if sum(len(p) for p in paras) > 2000:
            out.append((html.unescape(title.group(1)), paras))
    return out
