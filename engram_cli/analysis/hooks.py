"""Ablation hooks on Engram modules, as context managers that always remove their handles."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from engram_cli.errors import BadInputError, UsageError

MODES = ("zero", "mean", "scale")


def parse_layers(layers: str | list[int] | None) -> list[int] | None:
    """``all``/``None`` -> None (every Engram layer), else the ids; checked before any model loads."""
    if layers is None or layers == "all":
        return None
    if not isinstance(layers, str):
        return [int(x) for x in layers]
    try:
        wanted = [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layers must be 'all' or comma-separated integers, got {layers!r}") from None
    if not wanted or any(x < 0 for x in wanted):
        raise UsageError(f"--layers must be 'all' or non-negative layer ids, got {layers!r}")
    return wanted


def resolve_layers(view, layers: str | list[int] | None) -> list[int]:
    """``all`` / ``None`` -> every Engram layer; otherwise each id must have a module (else exit 3)."""
    available = view.engram_layer_ids
    wanted = parse_layers(layers)
    if wanted is None:
        return list(available)
    missing = [x for x in wanted if x not in available]
    if missing or not wanted:
        raise BadInputError(f"Engram layer(s) {missing or wanted} not found in the model",
                            hint=f"Engram layers (zero-based): {available}")
    return wanted


def _replace_output(output: Any, fn) -> Any:
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    return fn(output)


@contextlib.contextmanager
def engram_ablation(view, layers: list[int], mode: str = "zero", alpha: float = 0.0,
                    means: dict[int, Any] | None = None, ngram_order: int | None = None) -> Iterator[None]:
    """Suppress, replace or scale the Engram output at ``layers`` while the block is active.

    ``ngram_order``: only that order's columns of the hashed embedding are zeroed (before the
    projections); the rest of the module runs unchanged.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    handles = []
    try:
        for layer in layers:
            if ngram_order is not None:
                if view.ngram_columns is None or layer not in view.engram_embeddings:
                    raise UsageError(f"--ngram-order is not supported for {view.family} models")
                cols = view.ngram_columns(ngram_order)
                emb_mod = view.engram_embeddings[layer]

                def order_hook(mod, inp, out, cols=cols):
                    def f(t):
                        t = t.clone()
                        t[..., cols, :] = 0
                        return t
                    return _replace_output(out, f)

                handles.append(emb_mod.register_forward_hook(order_hook))
                continue
            mod = view.engram_modules[layer]
            if mode == "zero":
                def hook(m, i, out):
                    return _replace_output(out, lambda t: t * 0)
            elif mode == "scale":
                def hook(m, i, out, a=float(alpha)):
                    return _replace_output(out, lambda t: t * a if a != 1.0 else t)
            else:
                if not means or layer not in means:
                    raise UsageError("mean ablation needs per-layer means (see capture_means)")
                mean = means[layer]

                def hook(m, i, out, mean=mean):
                    return _replace_output(out, lambda t: mean.to(t.dtype).to(t.device).expand_as(t).clone())
            handles.append(mod.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_means(view, layers: list[int]) -> Iterator[dict[int, Any]]:
    """Accumulate the mean Engram output per layer (over batch and positions; per branch)."""
    import torch

    sums: dict[int, Any] = {}
    counts: dict[int, int] = {}
    result: dict[int, Any] = {}
    handles = []

    def make(layer):
        def hook(m, i, out):
            t = out[0] if isinstance(out, tuple) else out
            flat = t.detach().float().reshape(-1, *t.shape[2:])
            sums[layer] = sums.get(layer, 0) + flat.sum(0)
            counts[layer] = counts.get(layer, 0) + flat.shape[0]
        return hook

    try:
        for layer in layers:
            handles.append(view.engram_modules[layer].register_forward_hook(make(layer)))
        yield result
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for layer in sums:
                result[layer] = sums[layer] / counts[layer]
