"""The project's own reference Engram model: ``EngramForCausalLM``.

A LLaMA-style decoder (RMSNorm, rotary attention, SwiGLU MLP) with Engram modules at the
layers named by its layout. The Engram module follows the reference demo
(``deepseek-ai/Engram`` ``engram_demo_v1.py``; see ``shared/reference/formats.md`` section 1):

    hash ids (EngramLayout) -> MultiHeadEmbedding (one nn.Embedding + ``offsets`` buffer)
    -> flatten -> per hc-branch key_projs[i] -> norm1[i];  query = norm2[i](hidden[:, :, i])
    gate = (k * q).sum(-1) / sqrt(hidden); gate = sign(gate) * sqrt(|gate|.clamp_min(1e-6));
    gate = sigmoid(gate); value = gate * value_proj(emb); out = value + short_conv(value)

and the block does ``hidden = engram(hidden, input_ids) + hidden`` before attention.
Parameter names are the demo's (``layers.{i}.engram.multi_head_embedding.embedding.weight``
and so on), so table tools read them.

Layer ids are **zero-based** decoder-layer indices. With ``hc_mult > 1`` the residual stream
has shape ``[B, T, hc_mult, D]``; attention and MLP read the branch mean and add their output
to every branch (a stand-in for mHC, as in the demo, which mocks it); the LM head reads the
branch mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "engram_ref"
DEMO_FIELDS = ("engram_variant", "layer_ids", "max_ngram_size", "n_head_per_ngram", "n_embed_per_ngram",
               "engram_vocab_size", "pad_id", "seed")


class EngramConfig(PretrainedConfig):
    """Config of :class:`EngramForCausalLM`. ``engram_layout`` is ``EngramLayout.to_dict()``."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 128,
        intermediate_size: int = 384,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        max_position_embeddings: int = 512,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        hc_mult: int = 1,
        kernel_size: int = 4,
        engram_layout: dict | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.hc_mult = hc_mult
        self.kernel_size = kernel_size
        self.engram_layout = engram_layout
        self.initializer_range = initializer_range
        for key in DEMO_FIELDS:
            kwargs.pop(key, None)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        if engram_layout:
            # The reference demo's field names, so `engram build-vocab TOKENIZER --config DIR`
            # rebuilds exactly this layout from the tokenizer (layout_from_config, deepseek-demo).
            self.engram_variant = engram_layout["variant"]
            self.layer_ids = [int(x["layer_id"]) for x in engram_layout["layers"]]
            self.max_ngram_size = int(engram_layout["max_ngram_size"])
            self.n_head_per_ngram = int(engram_layout["n_heads"])
            self.n_embed_per_ngram = int(engram_layout["n_heads"]) * int(engram_layout["head_dim"])
            self.engram_vocab_size = [int(b) for b in engram_layout.get("vocab_bases", [])]
            self.pad_id = int(engram_layout["pad_id"])
            self.seed = int(engram_layout.get("seed", 0))

    # convenience views of the layout dict --------------------------------------------
    @property
    def engram_layer_ids(self) -> list[int]:
        return list(self.engram_layout["layer_ids"]) if self.engram_layout else []


def _layout_numbers(layout: dict, layer_id: int) -> tuple[list[int], int, int, int]:
    """(num_embeddings per column, n_columns, head_dim, max_ngram) for one layer from a layout dict."""
    from engram_cli.layout import EngramLayout

    lay = EngramLayout.from_dict(layout, token_map=None)
    idx = lay.layer_index(layer_id)
    sizes = [int(x) for x in lay.primes[idx]]
    return sizes, int(lay.n_columns), int(lay.head_dim), int(lay.max_ngram_size)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(dtype)


class MultiHeadEmbedding(nn.Module):
    """All heads' tables in one ``nn.Embedding``; ``offsets`` turns head-local ids into rows."""

    def __init__(self, sizes: list[int], dim: int):
        super().__init__()
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=True)
        self.embedding = nn.Embedding(int(sum(sizes)), dim)

    def forward(self, local_ids: torch.Tensor) -> torch.Tensor:  # [B,T,C] -> [B,T,C,dim]
        return self.embedding(local_ids + self.offsets)


class ShortConv(nn.Module):
    """Per-branch RMSNorm, depthwise causal dilated Conv1d (no bias), SiLU."""

    def __init__(self, hidden: int, hc_mult: int, kernel_size: int, dilation: int, eps: float):
        super().__init__()
        self.hc_mult = hc_mult
        self.kernel_size = kernel_size
        self.dilation = dilation
        ch = hidden * hc_mult
        self.conv = nn.Conv1d(ch, ch, kernel_size, groups=ch, bias=False,
                              padding=(kernel_size - 1) * dilation, dilation=dilation)
        self.norms = nn.ModuleList([RMSNorm(hidden, eps) for _ in range(hc_mult)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,T,hc,D]
        b, t, hc, d = x.shape
        normed = torch.stack([self.norms[i](x[:, :, i]) for i in range(hc)], dim=2)
        y = self.conv(normed.reshape(b, t, hc * d).transpose(1, 2))[..., :t]
        return F.silu(y.transpose(1, 2).reshape(b, t, hc, d))


class EngramModule(nn.Module):
    """One Engram module (the demo's ``Engram``). Takes hash ids precomputed by the model."""

    def __init__(self, config: EngramConfig, layer_id: int):
        super().__init__()
        sizes, n_columns, head_dim, max_ngram = _layout_numbers(config.engram_layout, layer_id)
        d, hc = config.hidden_size, config.hc_mult
        self.layer_id = layer_id
        self.hidden_size = d
        self.hc_mult = hc
        self.n_columns = n_columns
        self.head_dim = head_dim
        in_dim = n_columns * head_dim
        self.multi_head_embedding = MultiHeadEmbedding(sizes, head_dim)
        self.short_conv = ShortConv(d, hc, config.kernel_size, max_ngram, config.rms_norm_eps)
        self.value_proj = nn.Linear(in_dim, d)
        self.key_projs = nn.ModuleList([nn.Linear(in_dim, d) for _ in range(hc)])
        self.norm1 = nn.ModuleList([RMSNorm(d, config.rms_norm_eps) for _ in range(hc)])
        self.norm2 = nn.ModuleList([RMSNorm(d, config.rms_norm_eps) for _ in range(hc)])

    def forward(self, hidden: torch.Tensor, hash_ids: torch.Tensor) -> torch.Tensor:
        """hidden ``[B,T,hc,D]``, hash_ids head-local ``[B,T,C]`` -> output ``[B,T,hc,D]``."""
        emb = self.multi_head_embedding(hash_ids).flatten(start_dim=-2).to(hidden.dtype)
        gates = []
        for i in range(self.hc_mult):
            key = self.norm1[i](self.key_projs[i](emb))
            query = self.norm2[i](hidden[:, :, i])
            g = (key * query).sum(-1) / math.sqrt(self.hidden_size)
            g = g.sign() * g.abs().clamp_min(1e-6).sqrt()
            gates.append(g.sigmoid().unsqueeze(-1))
        gate = torch.stack(gates, dim=2)  # [B,T,hc,1]
        value = gate * self.value_proj(emb).unsqueeze(2)
        return value + self.short_conv(value)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat((-x2, x1), dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, config: EngramConfig):
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.n_heads, self.head_dim = h, d // h
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, past=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        causal = past is None or past[0].shape[2] == 0
        if causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = k.shape[2]
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: EngramConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: EngramConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.engram = EngramModule(config, layer_id) if layer_id in config.engram_layer_ids else None
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden, hash_ids, cos, sin, past=None):
        # hidden: [B,T,hc,D]
        if self.engram is not None:
            hidden = self.engram(hidden, hash_ids) + hidden
        x = hidden.mean(dim=2) if hidden.shape[2] > 1 else hidden[:, :, 0]
        attn, present = self.self_attn(self.input_layernorm(x), cos, sin, past)
        hidden = hidden + attn.unsqueeze(2)
        x = hidden.mean(dim=2) if hidden.shape[2] > 1 else hidden[:, :, 0]
        hidden = hidden + self.mlp(self.post_attention_layernorm(x)).unsqueeze(2)
        return hidden, present


class EngramPreTrainedModel(PreTrainedModel):
    config_class = EngramConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Conv1d):
            nn.init.normal_(module.weight, mean=0.0, std=std)


class EngramModel(EngramPreTrainedModel):
    """The decoder stack. ``token_map`` (raw -> compressed ids) is a persistent buffer."""

    def __init__(self, config: EngramConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        tm_len = config.vocab_size if config.engram_layout else 0
        self.register_buffer("engram_token_map", torch.arange(tm_len, dtype=torch.int32), persistent=True)
        self._layout_cache: Any = None
        self.post_init()

    # the layout, with the token map from the buffer -------------------------------------
    def engram_layout(self):
        from engram_cli.layout import EngramLayout

        if self._layout_cache is None:
            tm = self.engram_token_map.detach().cpu().numpy().astype("int64")
            self._layout_cache = EngramLayout.from_dict(self.config.engram_layout, token_map=tm)
        return self._layout_cache

    def set_token_map(self, lookup) -> None:
        with torch.no_grad():
            self.engram_token_map.copy_(torch.as_tensor(lookup, dtype=torch.int32))
        self._layout_cache = None

    def _load_from_state_dict(self, *args, **kwargs):  # reset the cached layout on reload
        self._layout_cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def hash_ids(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Head-local hash ids ``[B,T,n_layers,C]`` for the whole sequence (needs the full prefix)."""
        if not self.config.engram_layout:
            return None
        ids = self.engram_layout().hash(input_ids.detach().cpu().numpy())
        return torch.as_tensor(ids.local, dtype=torch.long, device=input_ids.device)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype):
        hd = self.config.hidden_size // self.config.num_attention_heads
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, device=positions.device).float() / hd))
        freqs = positions.float()[:, None] * inv[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[None, None], emb.sin().to(dtype)[None, None]

    def forward(self, input_ids: torch.Tensor, full_ids: torch.Tensor | None = None,
                past_key_values=None, output_hidden_states: bool = False):
        b, t = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        x = self.embed_tokens(input_ids)
        hc = self.config.hc_mult
        hidden = x.unsqueeze(2).expand(b, t, hc, x.shape[-1]).contiguous() if hc > 1 else x.unsqueeze(2)
        all_hash = self.hash_ids(full_ids if full_ids is not None else input_ids)
        if all_hash is not None:
            all_hash = all_hash[:, -t:]
        positions = torch.arange(past_len, past_len + t, device=input_ids.device)
        cos, sin = self.rotary(positions, x.dtype)
        states = []
        presents = []
        lids = self.config.engram_layer_ids
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                states.append(hidden.mean(dim=2))
            h_ids = all_hash[:, :, lids.index(i)] if (layer.engram is not None) else None
            past = past_key_values[i] if past_key_values else None
            hidden, present = layer(hidden, h_ids, cos, sin, past)
            presents.append(present)
        out = self.norm(hidden.mean(dim=2))
        if output_hidden_states:
            states.append(out)
        return out, presents, (tuple(states) if output_hidden_states else None)


class EngramForCausalLM(EngramPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: EngramConfig):
        super().__init__(config)
        self.model = EngramModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor, attention_mask=None, labels=None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                full_ids: torch.Tensor | None = None, **kwargs: Any):
        hidden, _, states = self.model(input_ids, full_ids=full_ids,
                                       output_hidden_states=bool(output_hidden_states))
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=states)


def register_auto_classes() -> None:
    """Register the config/model with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, EngramConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(EngramConfig, EngramForCausalLM)
    except ValueError:
        pass
