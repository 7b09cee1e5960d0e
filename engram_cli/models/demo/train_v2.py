"""Train demo model v2 (8 layers, Engram at layers 1 and 4) or its no-Engram twin (both shipped).

    python -m engram_cli.models.demo.train_v2 -o engram_cli/data/demo-model-v2
    python -m engram_cli.models.demo.train_v2 -o engram_cli/data/demo-model-v2-twin --no-engram

Both runs use the same corpus, BPE, token stream, steps, schedule and backbone initialisation
(every backbone tensor is initialised from a generator seeded by its name, so the twin's
backbone starts identical); the twin only lacks the Engram modules (iso-compute backbone).
Before training the script rebuilds the v2 suites and refuses to run if the shipped
``engram_cli/data/suites-v2`` differ (they were fixed before any v2 training). ``--time-steps N``
runs N steps and prints the projected wall time without writing anything. See docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engram_cli.fsutil import umask_file_mode
from engram_cli.layout.store import save_layout
from engram_cli.models.demo.corpus import SEED
from engram_cli.models.demo.corpus_v2 import ANSWER, COPY

SUITES_V2 = Path(__file__).resolve().parents[2] / "data" / "suites-v2"


@dataclass
class V2Config:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    engram: bool = True
    engram_layers: tuple[int, ...] = (1, 4)
    max_ngram_size: int = 3
    n_heads: int = 4
    head_dim: int = 32
    vocab_base: int = 16000
    vocab_size: int = 8192
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 760
    lr: float = 2e-3
    engram_lr_mult: float = 5.0
    warmup: int = 60
    weight_decay: float = 0.05
    fact_repeats: int = 4
    reading_items: int = 4000
    copy_docs: int = 12000
    seed: int = SEED


def build_model_v2(tok, cfg: V2Config):
    """``(layout or None, model)``: the Engram model, or with ``cfg.engram=False`` its twin."""
    import torch

    from engram_cli.layout import build_token_map, layout_from_config
    from engram_cli.models.reference import EngramConfig, EngramForCausalLM

    eos = tok.token_to_id("<|endoftext|>")
    lay = None
    if cfg.engram:
        tm = build_token_map(tok)
        fields = {"engram_variant": "deepseek-demo", "layer_ids": list(cfg.engram_layers), "max_ngram_size": cfg.max_ngram_size,
                  "n_head_per_ngram": cfg.n_heads, "n_embed_per_ngram": cfg.n_heads * cfg.head_dim,
                  "engram_vocab_size": [cfg.vocab_base] * (cfg.max_ngram_size - 1), "pad_id": eos, "seed": 0}
        lay = layout_from_config(fields, tm)
    config = EngramConfig(vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                          num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                          max_position_embeddings=1024, engram_layout=lay.to_dict() if lay else None,
                          bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = EngramForCausalLM(config)
    if lay is not None:
        model.model.set_token_map(tm.lookup)
    init_by_name(model, cfg.seed)
    return lay, model.to(torch.float32)


def init_by_name(model, seed: int, std: float = 0.02) -> None:
    """Initialise every parameter from a generator seeded by ``seed`` and its name (twins share the backbone)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight" and p.dim() == 1:
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            else:
                g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make_optimizer(model, cfg: V2Config):
    import torch

    tables = [p for n, p in model.named_parameters() if n.endswith("multi_head_embedding.embedding.weight")]
    ids = {id(p) for p in tables}
    decay = [p for n, p in model.named_parameters() if id(p) not in ids and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if id(p) not in ids and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if tables:
        groups.append({"params": tables, "weight_decay": 0.0, "lr_mult": cfg.engram_lr_mult})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step: int, cfg: V2Config) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))


@contextmanager
def exact_fp32(device: str):
    """On CUDA: deterministic kernels and no TF32 (fp32 as on the CPU), restored on exit; a no-op on the CPU."""
    import torch

    if not device.startswith("cuda"):
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved[2:]


def train_loop(model, stream: Callable[[int], tuple[np.ndarray, np.ndarray]], cfg: V2Config, steps: int,
               log: Callable[[str], None] = print, device: str = "cpu") -> list[dict]:
    """``steps`` AdamW steps over consecutive ``batch x seq_len`` windows of ``stream(epoch)``; deterministic.

    ``device`` (e.g. ``"cuda"``) trains there under :func:`exact_fp32`; the model is back on the CPU on return.
    """
    with exact_fp32(device):
        return _train_loop(model, stream, cfg, steps, log, device)


def _train_loop(model, stream, cfg: V2Config, steps: int, log: Callable[[str], None], device: str) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    model.to(device)
    opt = make_optimizer(model, cfg)
    model.train()
    epoch, pos = 0, 0
    ids, cls = stream(0)
    per_step = cfg.batch_size * cfg.seq_len
    history, t0 = [], time.time()
    for step in range(steps):
        if pos + per_step + 1 > len(ids):
            epoch, pos = epoch + 1, 0
            ids, cls = stream(epoch)
        chunk = torch.from_numpy(ids[pos:pos + per_step + 1]).to(device)
        c = torch.from_numpy(cls[pos + 1:pos + per_step + 1]).to(device).view(cfg.batch_size, cfg.seq_len)
        pos += per_step
        x, y = chunk[:-1].view(cfg.batch_size, cfg.seq_len), chunk[1:].view(cfg.batch_size, cfg.seq_len)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_mult"]
        logits = model(x).logits.float()
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view_as(y)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            with torch.no_grad():
                row = {"step": step, "epoch": epoch, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - t0, 1)}
                for name, k in (("answer_loss", ANSWER), ("copy_loss", COPY)):
                    m = c == k
                    row[name] = round(losses[m].mean().item(), 4) if m.any() else None
            history.append(row)
            log(json.dumps(row))
    model.to("cpu").eval()
    return history


def _check_suites(corpus, directory: Path) -> dict:
    from engram_cli.models.demo.suites_v2 import build_suites_v2, bundled_prior, suite_files_match

    suites, _ = build_suites_v2(corpus, bundled_prior(corpus))
    bad = suite_files_match(suites, directory)
    if bad:
        raise SystemExit(f"the shipped v2 suites differ from what suites_v2 builds: {', '.join(bad)}; "
                         "they are fixed before training (rebuild them only before any v2 model exists)")
    return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))


def run(out_dir: Path, cfg: V2Config, time_steps: int | None = None, suites_dir: Path = SUITES_V2, log=print,
        device: str = "cpu") -> dict:
    import torch

    from engram_cli.models.demo.bpe import train_bpe
    from engram_cli.models.demo.corpus_v2 import build_corpus_v2, training_texts
    from engram_cli.models.demo.stream_v2 import class_counts, epoch_stream

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.time()
    corpus = build_corpus_v2()
    manifest = _check_suites(corpus, suites_dir)
    tok = train_bpe(training_texts(corpus), cfg.vocab_size)
    lay, model = build_model_v2(tok, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_engram = sum(p.numel() for n, p in model.named_parameters() if ".engram." in n)
    cache: dict[int, tuple] = {}

    def stream(epoch: int):
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_stream(tok, corpus, epoch, cfg)
            log(json.dumps({"epoch": epoch, **class_counts(cache[epoch][1])}))
        return cache[epoch]

    log(f"params {n_params / 1e6:.2f}M (engram {n_engram / 1e6:.2f}M, backbone {(n_params - n_engram) / 1e6:.2f}M); "
        f"setup {time.time() - t0:.0f}s")
    if time_steps:
        stream(0)
        t1, c1 = time.time(), time.process_time()
        train_loop(model, stream, cfg, time_steps, log, device)
        per, cpu = (time.time() - t1) / time_steps, (time.process_time() - c1) / time_steps
        return {"seconds_per_step": round(per, 3), "cpu_seconds_per_step": round(cpu, 3),
                "projected_minutes": round(per * cfg.steps / 60, 1),
                "projected_minutes_if_cores_idle_lower_bound": round(cpu / torch.get_num_threads() * cfg.steps / 60, 1),
                "torch_threads": torch.get_num_threads(), "params": n_params, "device": device}
    history = train_loop(model, stream, cfg, cfg.steps, log, device)
    info = {"train_config": asdict(cfg), "params": n_params, "engram_params": n_engram, "history": history,
            "train_wall_s": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(), "train_device": device,
            "suites_manifest_sha256": {k: v["sha256"] for k, v in manifest["suites"].items()},
            "sources": corpus.sources, **measure(model, tok, corpus, cfg, stream(0)[0])}
    save_v2(model, lay, tok, out_dir, info)
    return info


def measure(model, tok, corpus, cfg: V2Config, train_ids: np.ndarray) -> dict:
    """Held-out and training-text perplexity, copy accuracy, and the interpolated-bigram bar."""
    from engram_cli.models.demo.eval_v2 import bigram_perplexity, copy_accuracy, perplexity
    from engram_cli.models.demo.stream_v2 import copy_probe
    from engram_cli.models.demo.suites_v2 import perplexity_suites

    ppl = perplexity_suites(corpus)
    held = [it["text"] for it in ppl["wiki_ppl"]["items"]]
    newline = tok.encode("\n", add_special_tokens=False).ids[0]
    real = np.concatenate([np.asarray(tok.encode(t, add_special_tokens=False).ids, dtype=np.int64) for t in corpus.train_text])
    return {"heldout_wiki_ppl": round(perplexity(model, tok, held), 2),
            "train_wiki_ppl": round(perplexity(model, tok, [it["text"] for it in ppl["wiki_train_ppl"]["items"]]), 2),
            "bigram_heldout_wiki": bigram_perplexity(real, [tok.encode(t, add_special_tokens=False).ids for t in held],
                                                     tok.get_vocab_size()),
            "copy_accuracy": round(copy_accuracy(model, copy_probe(cfg.seed + 99, 64, tok.get_vocab_size(), newline)), 4)}


def save_v2(model, lay, tok, out_dir: Path, info: dict) -> None:
    """fp16 weights + config + tokenizer (+ layout) + training_info.json in ``out_dir``."""
    import torch

    from engram_cli.models.demo.bpe import save_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(tok, out_dir)
    if lay is not None:
        save_layout(lay, out_dir)
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for f in out_dir.iterdir():  # save_pretrained's weights come out 0600 (a temporary file renamed)
        if f.is_file():
            os.chmod(f, umask_file_mode())


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--no-engram", action="store_true", help="train the twin without Engram modules")
    ap.add_argument("--steps", type=int, default=V2Config.steps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=V2Config.batch_size, help="sequences of seq_len tokens per step")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (deterministic kernels, no TF32)")
    ap.add_argument("--time-steps", type=int, default=None, help="time this many steps, print the projection, write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        ap.error(f"--device {args.device}: no such device here (torch.cuda.is_available() is "
                 f"{torch.cuda.is_available()}); use --device cpu")
    cfg = V2Config(engram=not args.no_engram, steps=args.steps, batch_size=args.batch_size)
    res = run(args.output, cfg, args.time_steps, device=args.device)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
