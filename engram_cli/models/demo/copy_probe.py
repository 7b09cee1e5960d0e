"""When does copying (an induction head) form? A small backbone trained on copy documents only.

    python -m engram_cli.models.demo.copy_probe --reps 2 --steps 40000   # v2's copy documents: S \\n S
    python -m engram_cli.models.demo.copy_probe --reps 4 --steps 40000   # each span four times
    python -m engram_cli.models.demo.copy_probe --min-len 16 --max-len 16 --batch-size 16 --seq-len 128 \\
        --steps 600                                                      # control: a fixed offset

The backbone is ``train_v2``'s (``models/reference.py`` without Engram, the same initialisation,
optimiser, schedule and training loop); the ids are those of the bundled v2 BPE (symbols are ids
300..300+S, copies separated by its newline, or ``--separator-id``, and ended by ``<|endoftext|>``). Each epoch is 20,000
documents from ``random.Random(epoch)``; every ``--log-every`` steps the copy loss (the mean
loss on the repeats) is printed, and at the end the greedy copy accuracy on 64 held-out spans.
docs/demo-model.md reports what these runs showed.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

from engram_cli.models.demo.corpus_v2 import COPY, OTHER
from engram_cli.models.demo.stream_v2 import copy_probe
from engram_cli.models.demo.train_v2 import SUITES_V2, V2Config, build_model_v2, train_loop

TOKENIZER = SUITES_V2.parent / "demo-model-v2" / "tokenizer.json"
FIRST_SYMBOL = 300


def copy_stream(epoch: int, symbols: int, reps: int, min_len: int, max_len: int, newline: int, eos: int,
                docs: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, classes)`` of one epoch: ``S (\\n S) * (reps - 1) <eos>`` documents, repeats labelled COPY."""
    rng = random.Random(epoch)
    ids: list[int] = []
    cls: list[int] = []
    for _ in range(docs):
        n = rng.randint(min_len, max_len)
        span = [rng.randrange(FIRST_SYMBOL, FIRST_SYMBOL + symbols) for _ in range(n)]
        ids += (span + [newline]) * (reps - 1) + span + [eos]
        cls += [OTHER] * (n + 1) + ([COPY] * n + [OTHER]) * (reps - 1)
    return np.asarray(ids, np.int64), np.asarray(cls, np.int8)


def held_out_spans(symbols: int, newline: int, n: int = 64, length: int = 20, seed: int = 123) -> list[list[int]]:
    """``stream_v2.copy_probe`` over this probe's symbols."""
    return copy_probe(seed, n, FIRST_SYMBOL + symbols, newline, length, first=FIRST_SYMBOL)


def main(argv: list[str] | None = None) -> int:
    import torch
    from tokenizers import Tokenizer

    from engram_cli.models.demo.eval_v2 import copy_accuracy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--reps", type=int, default=2, help="copies of each span (2: S \\n S)")
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=30)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=40_000, help="also the cosine schedule's length")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=1000, help="a multiple of 25 (train_loop records every 25th step)")
    ap.add_argument("--separator-id", type=int, default=None,
                    help="token between the copies (default: the BPE's newline, as in v2's copy documents)")
    a = ap.parse_args(argv)
    if not (a.reps >= 2 and 1 <= a.min_len <= a.max_len and a.symbols >= 2 and a.steps >= 1):
        ap.error("need --reps >= 2, 1 <= --min-len <= --max-len, --symbols >= 2 and --steps >= 1")
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(str(TOKENIZER))
    if FIRST_SYMBOL + a.symbols > tok.get_vocab_size():
        ap.error(f"--symbols {a.symbols}: at most {tok.get_vocab_size() - FIRST_SYMBOL} with the v2 BPE")
    if a.separator_id is not None and not 0 <= a.separator_id < tok.get_vocab_size():
        ap.error(f"--separator-id {a.separator_id}: not an id of the v2 BPE (0..{tok.get_vocab_size() - 1})")
    newline = tok.encode("\n", add_special_tokens=False).ids[0] if a.separator_id is None else a.separator_id
    eos = tok.token_to_id("<|endoftext|>")
    cfg = V2Config(engram=False, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers,
                   num_attention_heads=a.heads, seq_len=a.seq_len, batch_size=a.batch_size, steps=a.steps, lr=a.lr,
                   warmup=20)
    _, model = build_model_v2(tok, cfg)

    def log(line: str) -> None:
        row = json.loads(line)
        if row["step"] % a.log_every == 0 or row["step"] == a.steps - 1:
            print(json.dumps({"step": row["step"], "copy_loss": row["copy_loss"], "elapsed_s": row["elapsed_s"]}), flush=True)

    train_loop(model, lambda e: copy_stream(e, a.symbols, a.reps, a.min_len, a.max_len, newline, eos), cfg, a.steps, log)
    acc = copy_accuracy(model, held_out_spans(a.symbols, newline))
    print(json.dumps({"copy_accuracy": round(acc, 4), **vars(a)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
