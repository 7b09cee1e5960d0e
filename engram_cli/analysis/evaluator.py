"""A built-in evaluator with no hub access (lm-eval-style scoring).

- multiple_choice: sum log-likelihood of each choice after the context -> ``acc``;
  ``acc_norm`` divides by the choice's length in bytes (lm-eval's definition).
- generate_until: greedy decoding until a stop string or ``max_gen_toks`` -> ``exact_match``
  after lm-eval-style normalisation (lower case, punctuation and articles removed, spaces
  collapsed), against any of the answers.
- loglikelihood_rolling: per-token negative log-likelihood -> perplexity.

Each scoring call takes a list of ``conditions`` (callables returning a context manager, e.g.
no hooks and an ablation) and runs them on the same batch back to back, so next-token
KL(base || ablated) is computed on the fly without storing vocab-sized arrays.
"""

from __future__ import annotations

import contextlib
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable

from engram_cli.analysis.batching import budget_groups, fixed_batches, length_order, pad_batch

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


@dataclass
class ItemScores:
    """Per item and per condition: score (0/1 or nll sum), token counts, KL at the prompt end."""
    scores: list[list[float]] = field(default_factory=list)  # [condition][item]
    norm_scores: list[list[float]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # KL(cond0 || cond1) per item (first two conditions)
    outputs: list[list[str]] = field(default_factory=list)


def _kl(logp_base, logp_abl):
    return (logp_base.exp() * (logp_base - logp_abl)).sum(-1)


class Evaluator:
    def __init__(self, view, tokenizer, *, batch_size: int = 32, device: str = "cpu", max_length: int = 1024):
        if tokenizer is None:
            from engram_cli.errors import BadInputError

            raise BadInputError("the model folder has no tokenizer.json", hint="pass --tokenizer DIR")
        self.view = view
        self.tok = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.max_length = max_length

    def _pad(self, seqs: list[list[int]]):
        pad = self.tok.eos_id if self.tok.eos_id is not None else 0
        return pad_batch(seqs, pad, self.device)[0]

    # ------------------------------------------------------------------ multiple choice
    def multiple_choice(self, items, conditions: list[Callable[[], Any]], progress=None) -> ItemScores:
        import torch

        res = ItemScores(scores=[[] for _ in conditions], norm_scores=[[] for _ in conditions])
        reqs = []  # (item index, choice index, ctx ids, cont ids)
        for i, it in enumerate(items):
            ctx = self.tok.encode(it["context"])
            for j, ch in enumerate(it["choices"]):
                cont = self.tok.encode(ch)
                full = (ctx + cont)[-self.max_length:]
                reqs.append((i, j, full, len(cont)))
        ll = [[[0.0] * len(it["choices"]) for it in items] for _ in conditions]
        kl_by_item: dict[int, float] = {}
        order = length_order([len(r[2]) for r in reqs])
        for b0 in range(0, len(order), self.batch_size):
            batch = [reqs[r] for r in order[b0:b0 + self.batch_size]]
            x = self._pad([r[2] for r in batch])
            mask = torch.zeros_like(x, dtype=torch.bool)
            ctx_end = torch.zeros_like(x, dtype=torch.bool)
            for k, (_, _, full, nc) in enumerate(batch):
                mask[k, len(full) - nc - 1:len(full) - 1] = True
                ctx_end[k, len(full) - nc - 1] = True
            targets = [torch.tensor(full[len(full) - nc:]) for (_, _, full, nc) in batch]
            first_rows: dict[int, Any] = {}  # batch-local: the prompt-end distribution under condition 0
            for c, cond in enumerate(conditions):
                with torch.no_grad(), cond():
                    logits = self.view.logits_at(x, mask | ctx_end)
                logp = torch.log_softmax(logits, -1).cpu()
                sel = (mask | ctx_end)[mask | ctx_end].cpu()
                # rows of logp are in row-major order of (mask|ctx_end); split per sequence
                counts = (mask | ctx_end).sum(1).tolist()
                pos = 0
                for k, (i, j, _full, _nc) in enumerate(batch):
                    rows = logp[pos:pos + counts[k]]
                    pos += counts[k]
                    ll[c][i][j] = float(rows.gather(1, targets[k].view(-1, 1)).sum())
                    if j == 0 and c == 0 and len(conditions) > 1:
                        first_rows[i] = rows[0]
                    elif j == 0 and c == 1:
                        kl_by_item[i] = float(_kl(first_rows.pop(i), rows[0]))
                del sel
            if progress:
                progress(min(b0 + self.batch_size, len(order)), len(order), "")
        for c in range(len(conditions)):
            for i, it in enumerate(items):
                scores = ll[c][i]
                gold = it["gold"]
                res.scores[c].append(float(max(range(len(scores)), key=scores.__getitem__) == gold))
                normed = [s / max(1, len(ch.encode("utf-8"))) for s, ch in zip(scores, it["choices"])]
                res.norm_scores[c].append(float(max(range(len(normed)), key=normed.__getitem__) == gold))
        if len(conditions) > 1:
            res.kl = [kl_by_item[i] for i in range(len(items))]
        return res

    # ------------------------------------------------------------------ generation
    def generate(self, items, conditions, until: list[str], max_gen_toks: int, progress=None) -> ItemScores:
        """Greedy decoding per condition; batches hold contexts of similar length (longest first)."""
        ctxs = [self.tok.encode(it["context"])[-(self.max_length - max_gen_toks):] for it in items]
        texts = [[""] * len(items) for _ in conditions]
        kl = [0.0] * len(items)
        finished = 0
        for idx in fixed_batches([len(c) for c in ctxs], self.batch_size):
            first_lp: list[Any] = []  # batch-local first-step distributions per condition
            for c, cond in enumerate(conditions):
                outs = self._greedy([ctxs[i] for i in idx], cond, until, max_gen_toks,
                                    first_lp if len(conditions) > 1 else None)
                for i, out in zip(idx, outs):
                    texts[c][i] = out
            if len(first_lp) > 1:
                for i, v in zip(idx, _kl(first_lp[0], first_lp[1]).tolist()):
                    kl[i] = float(v)
            finished += len(idx)
            if progress:
                progress(finished, len(items), "")
        res = ItemScores(scores=[[] for _ in conditions], outputs=[[] for _ in conditions])
        for c in range(len(conditions)):
            for i, it in enumerate(items):
                out = texts[c][i]
                out = out[:min([out.find(u) for u in until if u in out] or [len(out)])]
                res.outputs[c].append(out)
                res.scores[c].append(float(any(normalize_answer(out) == normalize_answer(a) for a in it["answers"])))
        if len(conditions) > 1:
            res.kl = kl
        return res

    def _greedy(self, ctxs: list[list[int]], cond, until: list[str], max_gen_toks: int, first_lp: list | None) -> list[str]:
        """Decoded continuations of ``ctxs`` under ``cond``; finished rows leave the batch."""
        import torch

        seqs = [list(s) for s in ctxs]
        done = [False] * len(seqs)
        texts = [""] * len(seqs)
        with torch.no_grad(), cond():
            for step in range(max_gen_toks):
                active = [k for k in range(len(seqs)) if not done[k]]
                x = self._pad([seqs[k] for k in active])
                last = torch.zeros_like(x, dtype=torch.bool)
                for r, k in enumerate(active):
                    last[r, len(seqs[k]) - 1] = True
                logits = self.view.logits_at(x, last)
                if step == 0 and first_lp is not None:
                    first_lp.append(torch.log_softmax(logits, -1).cpu())
                nxt = dict(zip(active, logits.argmax(-1).tolist()))
                for k in active:
                    if self.tok.eos_id is not None and nxt[k] == self.tok.eos_id:
                        done[k] = True
                        continue
                    seqs[k].append(nxt[k])
                    texts[k] = self.tok.decode(seqs[k][len(ctxs[k]):])
                    if any(u in texts[k] for u in until):
                        done[k] = True
                if all(done):
                    break
        return texts

    # ------------------------------------------------------------------ perplexity
    def _vocab_size(self) -> int:
        emb = getattr(self.view.model, "get_output_embeddings", lambda: None)()
        if emb is not None and getattr(emb, "weight", None) is not None:
            return int(emb.weight.shape[0])
        return int(getattr(getattr(self.view.model, "config", None), "vocab_size", 0) or 50_000)

    def rolling(self, items, conditions, progress=None, logit_budget: int = 1 << 26) -> ItemScores:
        """Perplexity: summed next-token NLL per item (and mean KL per item across conditions).

        Sequences go through the model in groups whose scored positions times the vocab stay
        under ``logit_budget`` floats (64 M = 256 MiB per log-prob tensor), so memory does not
        grow with --batch-size, the documents' length or the vocab.
        """
        import torch

        res = ItemScores(scores=[[] for _ in conditions])
        kls: list[float] = []
        max_rows = max(1, logit_budget // max(1, self._vocab_size()))
        seqs_all = [self.tok.encode(it["text"])[: self.max_length] for it in items]
        groups = budget_groups([len(s) - 1 for s in seqs_all], self.batch_size, max_rows)
        done = 0
        for group in groups:
            seqs = [seqs_all[i] for i in group]
            x = self._pad(seqs)
            mask = torch.zeros_like(x, dtype=torch.bool)
            for k, s in enumerate(seqs):
                mask[k, :len(s) - 1] = True
            counts = mask.sum(1).tolist()
            lps = []
            for c, cond in enumerate(conditions):
                with torch.no_grad(), cond():
                    logp = torch.log_softmax(self.view.logits_at(x, mask), -1).cpu()
                lps.append(logp)
                pos = 0
                for k, s in enumerate(seqs):
                    tgt = torch.tensor(s[1:]).view(-1, 1)
                    res.scores[c].append(-float(logp[pos:pos + counts[k]].gather(1, tgt).sum()))
                    pos += counts[k]
            if len(conditions) > 1:
                kl = _kl(lps[0], lps[1])
                pos = 0
                for k in range(len(seqs)):
                    kls.append(float(kl[pos:pos + counts[k]].mean()))
                    pos += counts[k]
            del lps
            for s in seqs:
                res.tokens.append(len(s) - 1)
            done += len(group)
            if progress:
                progress(done, len(items), "")
        res.kl = kls
        return res


def no_hooks():
    return contextlib.nullcontext()
