"""Loading a ``.gguf`` file through ``engram_cli.models.loading.load_model`` (transformers' ``gguf_file=``).

A tiny LLaMA (2 layers, hidden 64, GQA 4/2 heads) and a byte-level BPE ("gpt2") tokenizer of 300
tokens are written to GGUF by hand with ``gguf.GGUFWriter``, the way llama.cpp's converter does it
(its tensor names, q/k rows permuted for rotary, F32), then loaded back offline and compared.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")
np = pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_helpers import WORDS, tiny_suites  # noqa: E402

from engram_cli.models.loading import load_model  # noqa: E402
from engram_cli.models.views import view_for  # noqa: E402

N_LAYERS, HIDDEN, N_HEADS, N_KV, FFN, CTX = 2, 64, 4, 2, 128, 128
EOS = "<|endoftext|>"
TEXT = "the capital of france is paris . one two three?"

# HF parameter suffix (under model.layers.N.) -> llama.cpp tensor name (under blk.N.)
_LAYER_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}


def _tokenizer():
    """A byte-level BPE: the 256 byte symbols, <|endoftext|> (id 0) and merges learnt from WORDS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 8, trainer)
    return tok


def _permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): HF rotary halves -> interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(model, tok, path: Path) -> Path:
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HIDDEN // N_HEADS)
    w.add_rope_freq_base(float(model.config.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == EOS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab[EOS])
    w.add_eos_token_id(vocab[EOS])
    for hf, t in model.state_dict().items():
        a = t.detach().float().numpy()
        name = _gguf_name(hf)
        if ".attn_q." in name:
            a = _permute(a, N_HEADS, N_HEADS)
        elif ".attn_k." in name:
            a = _permute(a, N_HEADS, N_KV)
        w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=FFN,
                      num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_KV,
                      max_position_embeddings=CTX, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("gguf")
    path = write_gguf(model, tok, root / "tiny-llama-f32.gguf")
    return model, tok, path


@pytest.fixture()
def no_network(monkeypatch):
    """Offline for real: HF_HUB_OFFLINE=1 and any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError("network access while loading a local .gguf")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_file_is_llama_cpp_shaped(tiny):
    model, _, path = tiny
    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.attn_q.weight"} <= names
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    k = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight")
    stored = np.asarray(k.data).reshape(model.model.layers[0].self_attn.k_proj.weight.shape)
    assert not np.array_equal(stored, model.model.layers[0].self_attn.k_proj.weight.detach().numpy())  # permuted


def test_gguf_loads_offline_and_round_trips(tiny, no_network):
    model, tok, path = tiny
    lm = load_model(path, device="cpu", dtype="float32")
    m = lm.model
    assert type(m).__name__ == "LlamaForCausalLM" and not m.training
    assert lm.source == str(path) and lm.device == "cpu"
    cfg = m.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (N_LAYERS, HIDDEN, N_HEADS, N_KV, FFN, tok.get_vocab_size())
    assert not cfg.tie_word_embeddings
    # every tensor, q/k un-permuted by transformers, equals the original
    ref, got = model.state_dict(), m.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], ref[k]), k
    ids = torch.tensor([tok.encode(TEXT).ids])
    with torch.no_grad():
        assert torch.allclose(m(ids).logits, model(ids).logits, atol=1e-6, rtol=0)
    # the tokenizer is rebuilt from the GGUF metadata and tokenises like the original
    assert lm.tokenizer is not None and lm.tokenizer.eos_id == 0
    assert lm.tokenizer.encode(TEXT) == tok.encode(TEXT).ids
    assert lm.tokenizer.decode(lm.tokenizer.encode(TEXT)) == TEXT


def test_gguf_load_prints_no_progress_bar(tiny, no_network, capfd):
    """transformers' de-quantisation bar would bypass --quiet and --json: loading prints nothing."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_model(tiny[2], device="cpu", dtype="float32")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert not hf_logging.is_progress_bar_enabled()


def test_gguf_view_is_llama_like(tiny, no_network):
    model, tok, path = tiny
    m = load_model(path, device="cpu").model
    v = view_for(m)
    assert v.family == "llama-like" and len(v.layers) == N_LAYERS and not v.engram_modules
    assert v.final_norm is m.model.norm and v.unembed is m.lm_head
    ids = torch.tensor([tok.encode(TEXT).ids])
    with torch.no_grad():
        assert torch.allclose(v.logits_at(ids), model(ids).logits, atol=1e-6, rtol=0)


def test_same_named_file_in_cwd_is_not_loaded(tiny, tmp_path, monkeypatch, no_network):
    """transformers tries a bare ``gguf_file`` name in the current directory first: a decoy there must not win."""
    model, _, path = tiny
    decoy = tmp_path / path.name
    decoy.write_bytes(path.read_bytes())
    r = gguf.GGUFReader(str(decoy), "r+")
    next(t for t in r.tensors if t.name == "output.weight").data[...] = 0.0
    r.data.flush()
    del r
    monkeypatch.chdir(tmp_path)
    m = load_model(path, device="cpu").model
    assert torch.equal(m.lm_head.weight, model.lm_head.weight)
    assert load_model(path.name, device="cpu").model.lm_head.weight.abs().sum() == 0  # the relative name: the decoy


def test_ablate_refuses_gguf_without_engram(tiny, tmp_path, no_network):
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    _, _, path = tiny
    suites = tiny_suites(tmp_path / "s")
    r = CliRunner().invoke(app, ["ablate", str(path), "--tasks", str(suites / "caps_mc.jsonl"), "--device", "cpu"])
    assert r.exit_code == 3, r.output
    assert "LlamaForCausalLM (llama-like) has no Engram modules" in r.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 8)
    r = CliRunner().invoke(app, ["ablate", str(junk), "--tasks", str(suites / "caps_mc.jsonl"), "--device", "cpu"])
    flat = "".join(r.stderr.split())  # rich wraps long lines
    assert r.exit_code == 3 and f"cannotloadmodelfrom{junk}:".replace(" ", "") in flat, r.output


@pytest.mark.parametrize("command", [["ablate"], ["analyze", "logit-lens"], ["analyze", "cka"]])
def test_model_gguf_with_a_flipped_count_is_refused_before_loading(tiny, tmp_path, command):
    """A .gguf model whose token-list count has its top byte set: one exit 3 line from the header
    check every model command runs first (the gguf reader inside transformers would read past
    the end of the file), in a fresh process with a time limit."""
    import struct
    import subprocess
    import sys

    _, _, path = tiny
    data = bytearray(path.read_bytes())
    at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4  # type, element type, count
    assert struct.unpack_from("<Q", data, at)[0] < 10_000
    data[at + 7] = 0x7F
    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "engram_cli", *command, str(bad), "-o", str(tmp_path / "out"), "--device", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "flipped.gguf: not a readable GGUF file (key " in r.stderr and "Traceback" not in r.stderr
