"""Capture per-layer activations through a :class:`~engram_cli.models.views.ModelView`.

Usage (hooks are always removed on exit, even on error)::

    from engram_cli.analysis.capture import capture

    with capture(view, points=("block",), layers=None, branch_reduce="model") as cap:
        view.model(input_ids=ids, use_cache=False)
        cap.check()                         # every requested hook fired (else BadInputError)
    h = cap.states[("block", 3)]            # [B, T, H], detached, model dtype, on the layer's device

Read-out points (``layer`` is the zero-based decoder-layer index everywhere):

- ``embed``: the residual stream entering decoder layer 0 (the embedding output as the stack sees
  it, after any branch expansion or scaling); keyed ``("embed", -1)``.
- ``block`` (default): the output of decoder layer ``i`` (its own residual stream, read by a forward
  hook; never transformers' ``hidden_states[-1]``, which is already final-normed).
- ``pre_engram`` / ``post_engram``: at Engram layers only, the residual stream before and after the
  Engram add: the block input, and block input + the Engram module's output (the demo's
  ``hidden = engram(hidden) + hidden`` at the start of the block). Enter ablation hooks *before*
  ``capture`` so ``post_engram`` sees the ablated output.

Hyper-connection (mHC) branches: the residual stream is ``[B,T,hc,D]`` (the reference model) or
``[B,T,hc*D]`` (Qwen4-Exp) with ``view.hc_mult`` branches. ``branch_reduce`` turns it into
``[B,T,D]``: ``model`` (the model's own output mapping, ``view.branch_mixer``: the branch mean for
the reference model, the hyper-connection mixer for Qwen4-Exp, which includes its norm), ``mean``,
``sum`` or ``first``; ``none`` keeps the raw state as the model holds it (``[B,T,hc,D]``,
``[B,T,hc*D]`` or ``[B,T,D]``; :func:`reduce_branches` reduces it later). Single-branch models
give ``[B,T,D]`` for every other choice.

``cap.states`` holds the states of the most recent forward pass (each pass overwrites them); pass
``sink=fn(point, layer, tensor)`` to stream them to a callback instead of storing them, and
``device="cpu"`` to move each state as it is captured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from engram_cli.errors import BadInputError, UsageError

POINTS = ("embed", "block", "pre_engram", "post_engram")
BRANCH_REDUCE = ("model", "mean", "sum", "first")
EMBED_LAYER = -1

Key = tuple[str, int]


def branches(t: Any, hc: int) -> Any:
    """The residual stream as ``[B,T,hc,D]`` (a 4-D tensor as is; ``[B,T,hc*D]`` split; else one branch)."""
    if t.dim() == 4:
        return t
    if hc > 1:
        if t.shape[-1] % hc:
            raise BadInputError(f"a residual state of width {t.shape[-1]} does not split into {hc} branches")
        return t.unflatten(-1, (hc, t.shape[-1] // hc))
    return t.unsqueeze(-2)


def _module_device(mod: Any) -> Any:
    for p in mod.parameters():
        return p.device
    return None


def reduce_branches(view: Any, t: Any, how: str = "model") -> Any:
    """``[B,T,H]`` from a raw residual state by ``how`` (see the module docstring); ``none`` -> unchanged."""
    if how == "none":
        return t
    if how not in BRANCH_REDUCE:
        raise UsageError(f"unknown branch reduction {how!r}", hint=f"one of {', '.join(BRANCH_REDUCE)}")
    if how == "model" and view.branch_mixer is not None:
        dev = _module_device(view.branch_mixer) if hasattr(view.branch_mixer, "parameters") else None
        return view.branch_mixer(t if dev is None else t.to(dev))
    b = branches(t, view.hc_mult)
    if b.shape[-2] == 1:
        return b[..., 0, :]
    if how == "model":
        raise UsageError(f"{view.family} model has {b.shape[-2]} residual branches but no known output mapping",
                         hint="use --branch-reduce mean, sum or first")
    if how == "mean":
        return b.mean(dim=-2)
    if how == "sum":
        return b.sum(dim=-2)
    return b[..., 0, :]


@dataclass
class Capture:
    """What :func:`capture` yields: ``states[(point, layer)]`` and the keys it expects."""

    expected: list[Key]
    branch_reduce: str
    states: dict[Key, Any] = field(default_factory=dict)
    seen: set[Key] = field(default_factory=set)

    def clear(self) -> None:
        self.states.clear()
        self.seen.clear()

    def check(self) -> None:
        """Raise BadInputError when a requested hook did not fire in the last forward pass."""
        missing = [k for k in self.expected if k not in self.seen]
        if missing:
            names = ", ".join(f"{p}@{layer}" for p, layer in missing[:8])
            raise BadInputError(f"read-out point(s) never fired: {names}",
                                hint="the model's forward does not run these modules; check --layers-path/--engram-path")


def expected_keys(view: Any, points: Sequence[str], layers: Sequence[int] | None) -> list[Key]:
    """The ``(point, layer)`` keys in depth order (embed, then per layer pre, post, block)."""
    bad = [p for p in points if p not in POINTS]
    if bad:
        raise UsageError(f"unknown read-out point(s) {', '.join(bad)}", hint=f"one of {', '.join(POINTS)}")
    n = len(view.layers)
    ids = list(range(n)) if layers is None else [int(x) for x in layers]
    out_of_range = [i for i in ids if not 0 <= i < n]
    if out_of_range:
        raise UsageError(f"layer(s) {out_of_range} out of range", hint=f"zero-based decoder layers 0..{n - 1}")
    keys: list[Key] = [("embed", EMBED_LAYER)] if "embed" in points else []
    for i in ids:
        if i in view.engram_modules:
            keys += [(p, i) for p in ("pre_engram", "post_engram") if p in points]
        if "block" in points:
            keys.append(("block", i))
    return keys


def _hidden_arg(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    for name in ("hidden_states", "hidden", "x"):
        if name in kwargs:
            return kwargs[name]
    raise BadInputError("cannot find the hidden state among a decoder layer's inputs")


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


@contextlib.contextmanager
def capture(view: Any, points: Sequence[str] = ("block",), layers: Sequence[int] | None = None,
            branch_reduce: str = "model", *, sink: Callable[[str, int, Any], None] | None = None,
            device: Any = None) -> Iterator[Capture]:
    """Register read-out hooks for ``points`` x ``layers`` (None = all); see the module docstring."""
    keys = expected_keys(view, points, layers)
    if branch_reduce != "none" and branch_reduce not in BRANCH_REDUCE:
        raise UsageError(f"unknown branch reduction {branch_reduce!r}", hint=f"one of {', '.join(BRANCH_REDUCE)}")
    cap = Capture(expected=keys, branch_reduce=branch_reduce)
    wanted = set(keys)
    pre_raw: dict[int, Any] = {}

    def emit(point: str, layer: int, raw: Any) -> None:
        state = reduce_branches(view, raw.detach(), branch_reduce)
        if device is not None:
            state = state.to(device)
        cap.seen.add((point, layer))
        if sink is not None:
            sink(point, layer, state)
        else:
            cap.states[(point, layer)] = state

    def pre_hook(layer: int):
        def hook(mod, args, kwargs):
            h = _hidden_arg(args, kwargs)
            if layer == 0 and ("embed", EMBED_LAYER) in wanted:
                emit("embed", EMBED_LAYER, h)
            if ("pre_engram", layer) in wanted:
                emit("pre_engram", layer, h)
            if ("post_engram", layer) in wanted:
                pre_raw[layer] = h.detach()
        return hook

    def block_hook(layer: int):
        def hook(mod, args, out):
            emit("block", layer, _first(out))
        return hook

    def engram_hook(layer: int):
        def hook(mod, args, out):
            pre = pre_raw.pop(layer)
            emit("post_engram", layer, pre + _first(out).detach().to(pre.device))
        return hook

    handles = []
    try:
        pre_layers = {i for (p, i) in keys if p in ("pre_engram", "post_engram")}
        if ("embed", EMBED_LAYER) in wanted:
            pre_layers.add(0)
        for i in sorted(pre_layers):
            handles.append(view.layers[i].register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        for p, i in keys:
            if p == "block":
                handles.append(view.layers[i].register_forward_hook(block_hook(i)))
            elif p == "post_engram":
                handles.append(view.engram_modules[i].register_forward_hook(engram_hook(i)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        pre_raw.clear()
