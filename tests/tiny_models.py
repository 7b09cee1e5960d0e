"""Tiny real models built from configs (no downloads)."""

from __future__ import annotations


def tiny_qwen4_exp_config(**overrides):
    """A `Qwen4ExpTextConfig` small enough for CPU tests, with PLE on layers 1 and 3."""
    from transformers import Qwen4ExpTextConfig

    kwargs = dict(
        vocab_size=512, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=4, num_experts_per_tok=2,
        hc_count=2, hc_lowrank=8, ple_layer_ids=[1, 3], ple_embed_dim=32, ngram_size=3, heads_per_ngram=4,
        ngram_vocab_size_base=1000, make_ngram_vocab_size_divisible_by=64, eos_token_id=7, split_ngram_parts=4,
        linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=32, indexer_budget=64, indexer_compress_ratio=4,
    )
    kwargs.update(overrides)
    return Qwen4ExpTextConfig(**kwargs)
