"""Train the bundled demo ``EngramForCausalLM`` (reproducible: fixed seed, fixed step count).

    nice python -m engram_cli.models.demo.train -o engram_cli/data/demo-model --suites engram_cli/data/suites

Builds the GPT-2 tokenizer file, the Engram layout from it (the same code path as
``engram build-vocab``), the corpus and the held-out suites (``corpus.py``), then trains on
2 CPU threads. The loss is taken on every answer token (fact values, reading answers), on every
token of a reading item's sentence prefix (it repeats the passage, meant to teach copying),
and on a fixed random 25 % of the other positions: the 50k-way LM head dominates CPU time.
The bundled run took 21 min wall on a 2-core machine shared with other jobs (about 14 min
when it was less loaded); see docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engram_cli.layout.store import save_layout
from engram_cli.models.demo.corpus import EOS, FACT_TEMPLATES, SEED, DemoCorpus, build_corpus, build_suites, reading_items, write_suites


@dataclass
class DemoTrainConfig:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    engram_layers: tuple[int, ...] = (1, 2)
    max_ngram_size: int = 3
    n_heads: int = 4
    head_dim: int = 32
    vocab_base: int = 11500
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 600
    lr: float = 3e-3
    engram_lr_mult: float = 5.0
    warmup: int = 40
    fact_repeats: int = 8
    other_loss_fraction: float = 0.25
    seed: int = SEED


# ------------------------------------------------------------------------------- tokenising
def _pieces_for_fact(sentence: str) -> list[tuple[str, int]]:
    """Split a fact sentence into (text, is_answer) pieces; the value is the answer."""
    for tpls in FACT_TEMPLATES.values():
        for tpl in tpls:
            pat = re.escape(tpl).replace(r"\{country\}", "(?P<country>.+?)").replace(r"\{value\}", "(?P<value>.+?)")
            m = re.fullmatch(pat, sentence, flags=re.S)
            if m:
                a, b = m.span("value")
                pre = sentence[:a]
                if pre.endswith(" "):
                    return [(pre[:-1], OTHER), (" " + sentence[a:b], ANSWER), (sentence[b:], OTHER)]
                return [(pre, OTHER), (sentence[a:b], ANSWER), (sentence[b:], OTHER)]
    return [(sentence, OTHER)]


OTHER, ANSWER, COPY = 0, 1, 2  # loss-position classes: sampled, always, always (not in answer_loss)


def _encode_pieces(tok, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    ans: list[int] = []
    for text, cls in pieces:
        if not text:
            continue
        e = tok.encode(text, add_special_tokens=False).ids
        ids += e
        ans += [int(cls)] * len(e)
    return ids, ans


def epoch_stream(tok, corpus: DemoCorpus, epoch: int, cfg: DemoTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and answer mask of one epoch: wiki + fact_repeats x facts + reading, shuffled."""
    rng = random.Random(cfg.seed * 7 + epoch)
    docs: list[list[tuple[str, bool]]] = []
    for p in corpus.train_wiki_paragraphs():
        docs.append([(p, OTHER)])
    from engram_cli.models.demo.corpus import fact_documents
    for r in range(cfg.fact_repeats):
        for d in fact_documents(corpus.countries, random.Random(cfg.seed * 100 + epoch * 31 + r)):
            pieces: list[tuple[str, bool]] = []
            for j, sent in enumerate(d.split("\n")):
                if j:
                    pieces.append(("\n", OTHER))
                pieces += _pieces_for_fact(sent)
            docs.append(pieces)
    for it in reading_items(corpus.train_wiki_paragraphs(), random.Random(cfg.seed * 1000 + epoch)):
        # the sentence prefix repeats the passage: loss on all of it is meant to teach copying
        docs.append([(f"Passage: {it.passage}\nComplete from the passage:", OTHER), (" " + it.prefix, COPY),
                     (" " + it.answer, ANSWER), (it.punct + "\n", OTHER)])
    rng.shuffle(docs)
    eos_id = tok.token_to_id(EOS)
    ids: list[int] = []
    ans: list[int] = []
    for d in docs:
        i, a = _encode_pieces(tok, d)
        ids += i + [eos_id]
        ans += a + [OTHER]
    return np.asarray(ids, dtype=np.int64), np.asarray(ans, dtype=np.int8)


# ------------------------------------------------------------------------------- building
def build_model(tok_dir: Path, cfg: DemoTrainConfig):
    from engram_cli.layout import build_token_map, layout_from_config, load_tokenizer
    from engram_cli.models.reference import EngramConfig, EngramForCausalLM

    tok = load_tokenizer(str(tok_dir))
    tm = build_token_map(tok)
    eos_id = tok.token_to_id(EOS)
    # the same path as `engram build-vocab TOKENIZER --config DIR` (deepseek-demo fields)
    demo_fields = {"engram_variant": "deepseek-demo", "layer_ids": list(cfg.engram_layers),
                   "max_ngram_size": cfg.max_ngram_size, "n_head_per_ngram": cfg.n_heads,
                   "n_embed_per_ngram": cfg.n_heads * cfg.head_dim,
                   "engram_vocab_size": [cfg.vocab_base] * (cfg.max_ngram_size - 1), "pad_id": eos_id, "seed": 0}
    lay = layout_from_config(demo_fields, tm)
    config = EngramConfig(
        vocab_size=tm.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=1024, engram_layout=lay.to_dict(), bos_token_id=eos_id,
        eos_token_id=eos_id, pad_token_id=eos_id)
    model = EngramForCausalLM(config)
    model.model.set_token_map(tm.lookup)
    return tok, lay, model


def train(out_dir: Path, suites_dir: Path | None, cfg: DemoTrainConfig, log=print) -> dict:
    import torch
    import torch.nn.functional as F

    from engram_cli.models.demo.tokenizer import write_gpt2_tokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_scratch = tempfile.TemporaryDirectory(prefix="engram-demo-tok-")  # removed even when training is interrupted
    tok_tmp = Path(tok_scratch.name)
    write_gpt2_tokenizer(tok_tmp)
    tok, lay, model = build_model(tok_tmp, cfg)
    corpus = build_corpus()
    if suites_dir is not None:
        write_suites(build_suites(corpus), suites_dir)
    n_params = sum(p.numel() for p in model.parameters())
    n_engram = sum(p.numel() for n, p in model.named_parameters() if ".engram." in n)
    log(f"params {n_params/1e6:.2f}M (engram {n_engram/1e6:.2f}M); setup {time.time()-t0:.1f}s")

    engram_tables = [p for n, p in model.named_parameters() if n.endswith("multi_head_embedding.embedding.weight")]
    table_ids = {id(p) for p in engram_tables}
    decay = [p for n, p in model.named_parameters() if id(p) not in table_ids and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if id(p) not in table_ids and p.dim() < 2]
    opt = torch.optim.AdamW([
        {"params": decay, "weight_decay": 0.05, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": engram_tables, "weight_decay": 0.0, "lr_mult": cfg.engram_lr_mult},
    ], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    epoch, pos = 0, 0
    ids, ans = epoch_stream(tok, corpus, epoch, cfg)
    log(f"epoch 0 stream: {len(ids):,} tokens, {int((ans == ANSWER).sum()):,} answer tokens, "
        f"{int((ans == COPY).sum()):,} copy tokens")
    history = []
    tokens_per_step = cfg.batch_size * cfg.seq_len
    for step in range(cfg.steps):
        if pos + tokens_per_step + 1 > len(ids):
            epoch += 1
            pos = 0
            ids, ans = epoch_stream(tok, corpus, epoch, cfg)
        chunk = torch.from_numpy(ids[pos:pos + tokens_per_step + 1])
        amask = torch.from_numpy(ans[pos:pos + tokens_per_step + 1])
        pos += tokens_per_step
        x = chunk[:-1].view(cfg.batch_size, cfg.seq_len)
        y = chunk[1:].view(cfg.batch_size, cfg.seq_len)
        cls = amask[1:].view(cfg.batch_size, cfg.seq_len)
        ya = cls == ANSWER
        keep = (cls != OTHER) | (torch.rand(y.shape, generator=gen) < cfg.other_loss_fraction)
        frac = min(1.0, (step + 1) / cfg.warmup)
        lr = cfg.lr * frac * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        hidden, _, _ = model.model(x)
        logits = model.lm_head(hidden[keep])
        loss = F.cross_entropy(logits.float(), y[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                a_loss = F.cross_entropy(logits.float()[ya[keep]], y[keep][ya[keep]]).item() if ya.any() else float("nan")
            history.append({"step": step, "loss": round(loss.item(), 4), "answer_loss": round(a_loss, 4),
                            "epoch": epoch, "elapsed_s": round(time.time() - t0, 1)})
            log(json.dumps(history[-1]))
    model.eval()
    wall = time.time() - t0
    save_demo_model(model, lay, tok_tmp, out_dir, cfg, {"train_wall_s": round(wall, 1), "history": history,
                                                       "epochs_started": epoch + 1})
    tok_scratch.cleanup()
    return {"wall_s": wall, "params": n_params, "engram_params": n_engram}


def save_demo_model(model, lay, tok_dir: Path, out_dir: Path, cfg: DemoTrainConfig, info: dict) -> None:
    """fp16 weights + config + tokenizer.json + layout, in one folder."""
    import shutil

    import torch
    from tokenizers import Tokenizer

    model16 = model.to(torch.float16)
    model16.save_pretrained(str(out_dir), safe_serialization=True)
    Tokenizer.from_file(str(tok_dir / "tokenizer.json")).save(str(out_dir / "tokenizer.json"), pretty=False)
    shutil.copy(tok_dir / "tokenizer_config.json", out_dir / "tokenizer_config.json")
    shutil.rmtree(tok_dir, ignore_errors=True)
    save_layout(lay, out_dir)
    meta = {"train_config": cfg.__dict__ | {"engram_layers": list(cfg.engram_layers)},
            "tokenizer": "GPT-2 byte-level BPE (openai-whisper==20250625 whisper/assets/gpt2.tiktoken)",
            "command": "nice python -m engram_cli.models.demo.train -o engram_cli/data/demo-model "
                       "--suites engram_cli/data/suites", **info}
    (out_dir / "training_info.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--suites", type=Path, default=None, help="also write the held-out suites here")
    ap.add_argument("--steps", type=int, default=DemoTrainConfig.steps)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DemoTrainConfig(steps=args.steps)
    res = train(args.output, args.suites, cfg)
    print(json.dumps({k: v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
