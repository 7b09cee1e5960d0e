"""Adapters: turn a loaded model into a :class:`ModelView` (see ARCHITECTURE.md).

Registry first (the project's reference model, transformers' ``Qwen4ExpForCausalLM``,
LLaMA-like decoders without Engram), attribute probing second, and a clear error listing
candidate module paths last. Layer ids are zero-based decoder-layer indices everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from engram_cli.errors import BadInputError

ENGRAM_NAME_HINTS = ("engram", "ple", "ngram", "n_gram", "memory")


@dataclass
class ModelView:
    model: Any
    family: str
    layers: list[Any]
    final_norm: Any | None
    unembed: Any | None
    engram_modules: dict[int, Any] = field(default_factory=dict)
    engram_embeddings: dict[int, Any] = field(default_factory=dict)  # hook point for --ngram-order
    branch_reduce: str = "none"  # "none" | "mean" (over hyper-connection branches)
    hc_mult: int = 1
    ngram_columns: Callable[[int], list[int]] | None = None  # order -> embedding columns
    backbone: Callable[[Any], Any] | None = None  # input_ids -> final (post-norm) hidden [B,T,D]
    # the model's own hyper-connection output mapping: residual stream -> [B,T,D] (None: single branch / unknown)
    branch_mixer: Callable[[Any], Any] | None = None

    @property
    def engram_layer_ids(self) -> list[int]:
        return sorted(self.engram_modules)

    def logits_at(self, input_ids, positions=None):
        """Logits ``[N, V]`` at ``positions`` (a bool mask ``[B,T]``), or all ``[B,T,V]`` without."""
        if self.backbone is not None and self.unembed is not None:
            h = self.backbone(input_ids)
            return self.unembed(h if positions is None else h[positions]).float()
        logits = self.model(input_ids=input_ids, use_cache=False).logits.float()
        return logits if positions is None else logits[positions]


def _resolve(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _hf_backbone(model: Any) -> Callable[[Any], Any]:
    base = model.model

    def run(input_ids):
        return base(input_ids=input_ids, use_cache=False).last_hidden_state

    return run


def _view_reference(model: Any) -> ModelView:
    lay = model.model.engram_layout() if model.config.engram_layout else None  # None: the no-Engram twin
    n = lay.n_heads if lay else 0

    def cols(order: int) -> list[int]:
        if lay is None or not 2 <= order <= lay.max_ngram_size:
            raise BadInputError(f"n-gram order {order} not in 2..{lay.max_ngram_size if lay else 'none (no Engram)'}")
        return list(range((order - 2) * n, (order - 1) * n))

    layers = list(model.model.layers)
    return ModelView(
        model=model, family="engram-reference", layers=layers, final_norm=model.model.norm,
        unembed=model.lm_head,
        engram_modules={i: l.engram for i, l in enumerate(layers) if l.engram is not None},
        engram_embeddings={i: l.engram.multi_head_embedding for i, l in enumerate(layers) if l.engram is not None},
        branch_reduce="mean" if model.config.hc_mult > 1 else "none", hc_mult=model.config.hc_mult,
        ngram_columns=cols, backbone=lambda ids: model.model(ids)[0], branch_mixer=lambda h: h.mean(dim=-2))


def _view_qwen4exp(model: Any) -> ModelView:
    layers = list(model.model.layers)
    cfg = getattr(model.config, "text_config", model.config)
    engram = {i: l.ple for i, l in enumerate(layers) if getattr(l, "ple", None) is not None}
    if not engram:
        raise BadInputError(
            "this Qwen4Exp model has no PLE (Engram) layers: its config's ple_layer_ids is empty",
            hint="ablate needs a model with PLE n-gram tables")
    hc = int(getattr(cfg, "hc_count", 1) or 1)
    return ModelView(
        model=model, family="qwen4-exp", layers=layers, final_norm=getattr(model.model, "norm", None),
        unembed=model.lm_head, engram_modules=engram,
        engram_embeddings={i: m.ple_embedding for i, m in engram.items()},
        branch_reduce="model" if hc > 1 else "none", hc_mult=hc, backbone=_hf_backbone(model),
        branch_mixer=getattr(model.model, "hyper_connection_mixer", None))


def _view_llama_like(model: Any) -> ModelView:
    return ModelView(model=model, family="llama-like", layers=list(model.model.layers),
                     final_norm=model.model.norm, unembed=model.get_output_embeddings(),
                     backbone=_hf_backbone(model))


REGISTRY: dict[str, Callable[[Any], ModelView]] = {
    "EngramForCausalLM": _view_reference,
    "Qwen4ExpForCausalLM": _view_qwen4exp,
    "Qwen4ExpForConditionalGeneration": _view_qwen4exp,
}
LLAMA_LIKE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
              "Gemma3ForCausalLM", "Gemma2ForCausalLM", "GemmaForCausalLM", "Phi3ForCausalLM",
              "SmolLM3ForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM", "GraniteForCausalLM")


def candidate_paths(model: Any) -> list[str]:
    """Module paths that look like decoder-layer lists or Engram modules."""
    out = []
    for name, mod in model.named_modules():
        last = name.rsplit(".", 1)[-1].lower()
        if type(mod).__name__ == "ModuleList" and last in ("layers", "h", "blocks", "layer"):
            out.append(name)
        elif any(h in last for h in ENGRAM_NAME_HINTS) and not re.search(r"\.\d+\.", "." + name.split(".")[-1] + "."):
            out.append(name)
    return out[:20]


def _probe(model: Any, engram_path: str | None, layers_path: str | None) -> ModelView:
    layers = None
    if layers_path:
        try:
            layers = list(_resolve(model, layers_path))
        except (AttributeError, IndexError, TypeError) as exc:
            raise BadInputError(f"--layers-path {layers_path!r} does not resolve: {exc}") from None
    else:
        for path in ("model.layers", "model.model.layers", "transformer.h", "model.decoder.layers", "layers"):
            try:
                layers = list(_resolve(model, path))
                break
            except (AttributeError, IndexError, TypeError):
                continue
    if layers is None:
        raise BadInputError(
            f"cannot find the decoder layers of {type(model).__name__}",
            hint=("pass --layers-path (the decoder-layer list) and --engram-path (the Engram module inside a layer); "
                  f"candidate module paths: {', '.join(candidate_paths(model)) or 'none'}"))
    engram: dict[int, Any] = {}
    if engram_path:
        for i, layer in enumerate(layers):
            try:
                mod = _resolve(layer, engram_path)
            except (AttributeError, IndexError, TypeError):
                continue
            if mod is not None:
                engram[i] = mod
        if not engram:
            raise BadInputError(f"--engram-path {engram_path!r} resolves in no decoder layer")
    else:
        for i, layer in enumerate(layers):
            for name, child in layer.named_children():
                if any(h in name.lower() for h in ENGRAM_NAME_HINTS):
                    engram[i] = child
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return ModelView(model=model, family="probed", layers=layers, final_norm=None, unembed=unembed,
                     engram_modules=engram)


def view_for(model: Any, *, engram_path: str | None = None, layers_path: str | None = None) -> ModelView:
    """The view of ``model``: registry, then LLaMA-like, then attribute probing."""
    name = type(model).__name__
    if engram_path or layers_path:
        return _probe(model, engram_path, layers_path)
    if name in REGISTRY:
        return REGISTRY[name](model)
    if name in LLAMA_LIKE:
        return _view_llama_like(model)
    return _probe(model, None, None)


def require_engram(view: ModelView) -> ModelView:
    if not view.engram_modules:
        cands = candidate_paths(view.model)
        raise BadInputError(
            f"{type(view.model).__name__} ({view.family}) has no Engram modules",
            hint=("pass --engram-path (relative to a decoder layer, e.g. 'engram') and/or --layers-path; "
                  f"candidate module paths: {', '.join(cands) or 'none'}"))
    return view
