"""qwen4-exp ids equal transformers' own Qwen4ExpTextNGramEmbedding."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engram_cli.layout import layout_from_config  # noqa: E402
from tests.tiny_models import tiny_qwen4_exp_config  # noqa: E402


def _captured_ids(module, input_ids):
    """Run the n-gram embedding and capture the row ids it looks up."""
    seen = {}
    handle = module.ngram_embedding.register_forward_hook(lambda m, args, out: seen.setdefault("ids", args[0]))
    try:
        with torch.no_grad():
            module(input_ids, None)
    finally:
        handle.remove()
    return seen["ids"]


@pytest.fixture(scope="module")
def qwen():
    from transformers import Qwen4ExpForCausalLM

    torch.manual_seed(0)
    cfg = tiny_qwen4_exp_config()
    return cfg, Qwen4ExpForCausalLM(cfg).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ids_equal_transformers(qwen, seed):
    cfg, model = qwen
    layout = layout_from_config(cfg.to_dict())
    assert layout.variant == "qwen4-exp"
    assert layout.layer_ids == (1, 3)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(3, 40))
    ids[ids % 9 == 0] = cfg.eos_token_id  # sprinkle EOS, including at position 0 and runs
    ids[0, 0] = cfg.eos_token_id
    ids[1, 5:7] = cfg.eos_token_id
    ours = layout.hash(torch.from_numpy(ids))
    for li, layer_id in enumerate(layout.layer_ids):
        emb = model.model.layers[layer_id - 1].ple.ple_embedding
        theirs = _captured_ids(emb, torch.from_numpy(ids))
        assert torch.equal(ours.global_[:, :, li, :], theirs)
        assert emb.layer_multipliers.tolist() == list(layout.multipliers[li])
        assert emb.ngram_heads_vocab_sizes.tolist() == list(layout.primes[li])
        assert emb.ngram_heads_offsets.tolist() == list(layout.offsets[li])
        assert emb.ngram_embedding.num_embeddings == layout.num_embeddings[li]
        assert emb.ngram_embedding.embedding_dim == layout.head_dim


def test_torch_and_numpy_kernels_agree_on_qwen(qwen):
    cfg, _ = qwen
    layout = layout_from_config(cfg.to_dict())
    ids = np.random.default_rng(9).integers(0, cfg.vocab_size, size=(2, 64))
    ids[:, ::10] = cfg.eos_token_id
    a = layout.hash(ids)
    b = layout.hash(torch.from_numpy(ids), backend="torch")
    np.testing.assert_array_equal(a.global_, b.global_.numpy())


def test_nested_text_config_and_padding():
    cfg = tiny_qwen4_exp_config(make_ngram_vocab_size_divisible_by=1000).to_dict()
    layout = layout_from_config({"model_type": "qwen4_exp", "text_config": cfg})
    assert all(rows % 1000 == 0 for rows in layout.num_embeddings)
    assert all(rows >= sum(p) for rows, p in zip(layout.num_embeddings, layout.primes))
