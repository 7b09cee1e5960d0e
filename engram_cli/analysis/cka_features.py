"""CKA features: texts and entity spans -> examples -> per-layer block outputs in a store.

An *example* is one hidden-state row per layer: the last token of a text (``last``), every
token after ``skip_first`` (``all``), the mean over a text's tokens after ``skip_first``
(``mean-pool``), or the token holding an entity span's last character (``entity-final``).
Examples are numbered once, from the texts, so two models (even with different tokenizers for
last / mean-pool / entity-final) fill the same rows; each side marks the rows it could fill
(a span cut off by ``max_length`` is invalid) and the analysis keeps the rows valid on both.

Stores are ``[layers, examples, width]`` float32: in memory, or a ``numpy.memmap`` file when a
cache directory is given or the features are large, so model A can be freed before model B is
loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engram_cli.analysis.spans import Span, encode_with_offsets, final_token, read_spans
from engram_cli.errors import BadInputError, UsageError
from engram_cli.progress import ProgressCallback

POSITIONS = ("last", "all", "mean-pool", "entity-final")
IN_MEMORY_BYTES = 1 << 30


@dataclass
class TextItem:
    text: str
    spans: tuple[Span, ...] = ()


def bundled_texts(suites_dir: Path) -> list[str]:
    """The held-out Wikipedia paragraphs (``wiki_ppl``) and the distinct reading passages."""
    out: list[str] = []
    for line in (suites_dir / "wiki_ppl.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "text" in row:
            out.append(row["text"])
    seen = set()
    for line in (suites_dir / "reading_mc.jsonl").read_text(encoding="utf-8").splitlines():
        ctx = json.loads(line).get("context", "")
        if ctx.startswith("Passage: ") and "\nComplete from the passage:" in ctx:
            p = ctx[len("Passage: "):ctx.index("\nComplete from the passage:")]
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


def read_texts(path: Path) -> list[str]:
    """JSONL with a ``text`` field per line, or plain text (one text per non-empty line)."""
    if not path.is_file():
        raise BadInputError(f"text file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text") from None
    out = []
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj.get("text"), str) or not obj["text"]:
                raise BadInputError(f"{path}:{i}: a JSON line needs a non-empty string 'text'")
            out.append(obj["text"])
        else:
            out.append(raw)
    if not out:
        raise BadInputError(f"{path}: no texts")
    return out


def load_items(positions: str, texts: Path | None, spans: Path | None, suites_dir: Path,
               bundled_spans: Path) -> tuple[list[TextItem], str]:
    """The texts (with spans for entity-final) and a description of their source."""
    if positions not in POSITIONS:
        raise UsageError(f"unknown --positions {positions!r}", hint=", ".join(POSITIONS))
    if positions == "entity-final":
        if texts is not None:
            raise UsageError("--texts does not apply to --positions entity-final (the texts come from --spans)")
        path = spans or bundled_spans
        return [TextItem(r.text, r.spans) for r in read_spans(path)], str(path) if spans else "bundled entity spans"
    if spans is not None:
        raise UsageError("--spans needs --positions entity-final")
    if texts is not None:
        return [TextItem(t) for t in read_texts(texts)], str(texts)
    return [TextItem(t) for t in bundled_texts(suites_dir)], "bundled texts (wiki_ppl + reading passages)"


@dataclass
class Tokenized:
    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]] | None


def tokenize(items: Sequence[TextItem], tokenizer: Any, max_length: int, with_offsets: bool) -> Tokenized:
    if tokenizer is None:
        raise BadInputError("the model has no tokenizer", hint="pass --tokenizer DIR (with tokenizer.json)")
    ids, offs = [], []
    for it in items:
        if with_offsets:
            i, o = encode_with_offsets(tokenizer, it.text)
            ids.append(i[:max_length])
            offs.append(o[:max_length])
        else:
            ids.append(list(tokenizer.encode(it.text))[:max_length])
    return Tokenized(ids, offs if with_offsets else None)


@dataclass
class ExamplePlan:
    """Examples as ``(text, key)``: key = span index (entity-final), token position (all), or 0."""

    positions: str
    skip_first: int
    examples: list[tuple[int, int]]
    n_candidates: int  # before the --max-examples subsample
    reference_ids: list[list[int]] | None = None  # `all`: the token ids every side must reproduce


def plan_examples(items: Sequence[TextItem], tok: Tokenized, positions: str, skip_first: int,
                  max_examples: int | None, seed: int) -> ExamplePlan:
    """Number the examples (from the first side's tokenization for ``all``); seeded subsample."""
    if positions == "entity-final":
        ex = [(t, k) for t, it in enumerate(items) for k in range(len(it.spans))]
    elif positions == "all":
        ex = [(t, p) for t, ids in enumerate(tok.ids) for p in range(skip_first, len(ids))]
    else:
        ex = [(t, 0) for t in range(len(items))]
    n = len(ex)
    if max_examples is not None and n > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))
        ex = [ex[i] for i in keep]
    return ExamplePlan(positions, skip_first, ex, n, tok.ids if positions == "all" else None)


def _rows_for(plan: ExamplePlan, items: Sequence[TextItem], tok: Tokenized) -> tuple[dict[int, list[tuple[int, Any]]], np.ndarray]:
    """Per text: ``(row, position or slice)``; and the valid mask of all rows."""
    per_text: dict[int, list[tuple[int, Any]]] = {}
    valid = np.zeros(len(plan.examples), dtype=bool)
    for row, (t, key) in enumerate(plan.examples):
        n = len(tok.ids[t])
        if plan.positions == "entity-final":
            pos = final_token(tok.offsets[t], items[t].spans[key]) if tok.offsets is not None else None
            where = pos if pos is not None and pos < n else None
        elif plan.positions == "all":
            where = key if key < n else None
        elif plan.positions == "last":
            where = n - 1 if n > 0 else None
        else:
            where = slice(plan.skip_first, n) if n > plan.skip_first else None
        if where is not None:
            valid[row] = True
            per_text.setdefault(t, []).append((row, where))
    return per_text, valid


@dataclass
class FeatureStore:
    """Block outputs ``[layers, examples, width]`` float32 and the rows this side filled."""

    data: np.ndarray
    valid: np.ndarray
    layers: list[int]
    path: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.data.shape[2])


def new_array(shape: tuple[int, ...], cache_dir: Path | None, spill_dir: Path, name: str) -> tuple[np.ndarray, Path | None]:
    """A float32 array: a ``.npy`` memmap under ``cache_dir`` when given, else in memory up to
    ``IN_MEMORY_BYTES`` and a memmap under ``spill_dir`` beyond."""
    nbytes = int(np.prod(shape)) * 4
    if cache_dir is None and nbytes <= IN_MEMORY_BYTES:
        return np.zeros(shape, dtype=np.float32), None
    where = cache_dir or spill_dir
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.npy"
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape), path


def _gather_plan(texts: list[int], per_text: dict) -> tuple[list[int], list[int], list[int], list[tuple[int, int, slice]]]:
    rows, bs, ps, pooled = [], [], [], []
    for b, t in enumerate(texts):
        for row, where in per_text[t]:
            if isinstance(where, slice):
                pooled.append((row, b, where))
            else:
                rows.append(row)
                bs.append(b)
                ps.append(where)
    return rows, bs, ps, pooled


def extract(view: Any, tokenizer: Any, items: Sequence[TextItem], plan: ExamplePlan, *, max_length: int,
            forward_batch: int, branch_reduce: str, device: Any, cache_dir: Path | None, spill_dir: Path, name: str,
            progress: ProgressCallback | None = None) -> FeatureStore:
    """Run the model over the texts and keep every layer's block output at the planned rows."""
    import torch

    from engram_cli.analysis.batching import iter_batches
    from engram_cli.analysis.capture import capture

    tok = tokenize(items, tokenizer, max_length, plan.positions == "entity-final")
    if plan.reference_ids is not None and tok.ids != plan.reference_ids:
        raise UsageError("--positions all needs both models to tokenize the texts identically",
                         hint="use --positions last, mean-pool or entity-final for models with different tokenizers")
    per_text, valid = _rows_for(plan, items, tok)
    layers = list(range(len(view.layers)))
    width = _probe_width(view, tok, per_text, branch_reduce, device)
    data, path = new_array((len(layers), len(plan.examples), width), cache_dir, spill_dir, name)
    texts = sorted(per_text)
    pad = getattr(tokenizer, "eos_id", None) or 0
    state: dict[str, Any] = {}

    def sink(point: str, layer: int, h: Any) -> None:
        rows, bs, ps, pooled = state["gather"]
        if rows:
            data[layer, rows] = h[torch.tensor(bs, device=h.device), torch.tensor(ps, device=h.device)].float().cpu().numpy()
        for row, b, sl in pooled:
            data[layer, row] = h[b, sl].float().mean(0).cpu().numpy()

    done = 0
    with torch.no_grad(), capture(view, ("block",), None, branch_reduce, sink=sink) as cap:
        for batch in iter_batches([tok.ids[t] for t in texts], forward_batch, pad, device):
            state["gather"] = _gather_plan([texts[i] for i in batch.indices], per_text)
            cap.clear()
            _forward(view, batch.ids)
            cap.check()
            done += len(batch.indices)
            if progress:
                progress(done, len(texts), f"{name}: forward")
    if isinstance(data, np.memmap):
        data.flush()
    return FeatureStore(data=data, valid=valid, layers=layers, path=path)


def _forward(view: Any, ids: Any) -> None:
    """Run the decoder stack (the backbone when the view has one: no vocabulary projection)."""
    if view.backbone is not None:
        view.backbone(ids)
    else:
        view.model(input_ids=ids, use_cache=False)


def _probe_width(view: Any, tok: Tokenized, per_text: dict, branch_reduce: str, device: Any) -> int:
    """The read-out width (after the branch reduction), from one short forward pass."""
    import torch

    from engram_cli.analysis.capture import capture

    if not per_text:
        raise BadInputError("no example could be placed in any text", hint="check the spans or raise --max-length")
    t = min(per_text)
    ids = torch.tensor([tok.ids[t][:8]], dtype=torch.long, device=device)
    with torch.no_grad(), capture(view, ("block",), [0], branch_reduce) as cap:
        _forward(view, ids)
        cap.check()
    return int(cap.states[("block", 0)].shape[-1])


# -- robustness transforms --------------------------------------------------------------------

def clamp_outliers(x: np.ndarray, q: float) -> np.ndarray:
    """Clip every feature (column) of ``x [n, d]`` to its ``q`` and ``1-q`` quantiles."""
    lo, hi = np.quantile(x, [q, 1 - q], axis=0)
    return np.clip(x, lo, hi).astype(np.float32)


def remove_top_pcs(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``x [n, d]`` with its top-``k`` principal components projected out (scikit-learn PCA)."""
    from sklearn.decomposition import PCA

    k = min(k, min(x.shape) - 1)
    if k < 1:
        return x.astype(np.float32)
    pca = PCA(n_components=k, random_state=seed).fit(x)
    z = (x - pca.mean_) @ pca.components_.T
    return (x - z @ pca.components_).astype(np.float32)


def transformed(store: FeatureStore, rows: np.ndarray, kind: str, value: float, seed: int) -> np.ndarray:
    """The kept rows of every layer under one robustness transform, ``[layers, n, width]`` in memory."""
    out = np.empty((store.data.shape[0], rows.size, store.width), dtype=np.float32)
    for layer in range(store.data.shape[0]):
        x = np.asarray(store.data[layer, rows], dtype=np.float64)
        out[layer] = clamp_outliers(x, value) if kind == "clamp-outliers" else remove_top_pcs(x, int(value), seed)
    return out
