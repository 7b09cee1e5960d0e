"""Fixtures for the models/analysis/ablate tests: tiny random models saved to tmp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the capital of is paris rome berlin madrid france italy germany spain passage question answer "
         "what a an in on city country river red blue green one two three four five ___ . , ? : \n").split(" ")


def tiny_tokenizer(out_dir: Path, extra: tuple[str, ...] = ()) -> Path:
    """A word-level tokenizer.json over a small vocabulary (id 0 = <eos>, 1 = [UNK])."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, "[UNK]": 1}
    for w in list(WORDS) + list(extra):
        w = w.strip()
        if w and w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    return out_dir / "tokenizer.json"


def tiny_reference_model(vocab_size: int = 64, hc_mult: int = 1, layer_ids=(1, 2), seed: int = 0,
                         n_layers: int = 3):
    import numpy as np
    import torch

    from engram_cli.layout import EngramLayout
    from engram_cli.models.reference import EngramConfig, EngramForCausalLM

    torch.manual_seed(seed)
    lookup = np.arange(vocab_size, dtype=np.int64) // 2  # a real (2:1) compression
    lay = EngramLayout.custom(variant="deepseek-demo", layer_ids=list(layer_ids), max_ngram_size=3, n_heads=2,
                              head_dim=8, vocab_base=101, token_map=lookup, pad_id=0, seed=0)
    cfg = EngramConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                       num_attention_heads=4, hc_mult=hc_mult, engram_layout=lay.to_dict(), eos_token_id=0,
                       bos_token_id=0, pad_token_id=0)
    model = EngramForCausalLM(cfg)
    model.model.set_token_map(lookup)
    # the demo's zero-ish init makes the Engram output tiny; make it visible for tests
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.engram is not None:
                layer.engram.multi_head_embedding.embedding.weight.normal_(0, 1.0)
    return model.eval()


def save_tiny_reference(out_dir: Path, **kw) -> Path:
    model = tiny_reference_model(**kw)
    model.save_pretrained(str(out_dir))
    tiny_tokenizer(out_dir)
    return out_dir


def tiny_qwen4exp(out_dir: Path | None = None, ple: bool = True, vocab_size: int = 64):
    import torch
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    torch.manual_seed(0)
    cfg = Qwen4ExpTextConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, layer_types=["linear_attention", "linear_attention"], hc_lowrank=8, linear_conv_kernel_dim=4,
        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=2, num_experts_per_tok=1,
        hc_count=2, ple_layer_ids=[1] if ple else [], ple_embed_dim=16, ngram_size=3, heads_per_ngram=2,
        ngram_vocab_size_base=97, make_ngram_vocab_size_divisible_by=8, eos_token_id=0, pad_token_id=0,
        bos_token_id=0, tie_word_embeddings=False, use_cache=False)
    model = Qwen4ExpForCausalLM(cfg).eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        tiny_tokenizer(out_dir)
    return model


def write_suite(path: Path, header: dict | None, items: list[dict]) -> Path:
    lines = ([json.dumps(header)] if header else []) + [json.dumps(i) for i in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_suites(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    caps = [("france", "paris"), ("italy", "rome"), ("germany", "berlin"), ("spain", "madrid")]
    write_suite(out_dir / "caps_mc.jsonl", {"task": "caps_mc", "category": "factual", "output_type": "multiple_choice"},
                [{"context": f"the capital of {c} is", "choices": [f" {x}" for _, x in caps],
                  "gold": i} for i, (c, _) in enumerate(caps)])
    write_suite(out_dir / "read_gen.jsonl", {"task": "read_gen", "category": "reading", "output_type": "generate_until",
                                             "until": ["\n"], "max_gen_toks": 3},
                [{"context": f"passage : the capital of {c} is {x} . question : the capital of {c} is ___ answer :",
                  "answers": [x]} for c, x in caps])
    write_suite(out_dir / "ppl.jsonl", {"task": "ppl", "category": "other", "output_type": "loglikelihood_rolling"},
                [{"text": "the capital of france is paris . the river is blue"}, {"text": "one two three four five"}])
    return out_dir


TRAIN_WORDS = "the capital of river town founded trader north south salt wool copper year merchant lies on in is was by a".split()


def demo_train_texts(n: int = 300) -> list[str]:
    """Seeded word-salad sentences for tiny demo-v2 training runs."""
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(TRAIN_WORDS) for _ in range(rng.randint(6, 20))) + "." for _ in range(n)]


def tiny_v2_config(**kw):
    """A demo-v2 training config small enough for a test (2 layers, d = 32, 4 steps)."""
    from engram_cli.models.demo.train_v2 import V2Config

    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, engram_layers=(1,),
                n_heads=2, head_dim=8, vocab_base=101, vocab_size=300, seq_len=16, batch_size=4, steps=4, warmup=2)
    return V2Config(**{**base, **kw})


def tiny_text_stream(tok):
    """``stream(epoch)`` over :func:`demo_train_texts` (every epoch the same ids, all positions class 0)."""
    import numpy as np

    ids = np.asarray([i for t in demo_train_texts() for i in tok.encode(t).ids + [0]], dtype=np.int64)
    return lambda epoch: (ids, np.zeros_like(ids, dtype=np.int8))
