"""Per-layer compute time of a backbone, measured with hooks on the bundled demo model (or a given one).

The projection needs ``layer_us(tokens)``: the time of one decoder layer at a step of
``tokens`` (a decode batch ``[B, 1]`` or a prefill chunk ``[1, T]``), and the embedding and
LM-head times around them. Engram layers are excluded from the per-layer mean (their own cost
is what offload changes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engram_cli.offload.stats import Dist, dist


@dataclass(frozen=True)
class StepTimes:
    kind: str  # decode | prefill
    tokens: int
    layer_us: Dist
    embed_us: Dist
    tail_us: Dist


class _Clock:
    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda

    def now(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter_ns() / 1e3


def _hook_layers(model: Any, clock: _Clock, record: dict[str, list[float]]) -> list[Any]:
    """Forward pre/post hooks recording every non-Engram decoder layer's µs."""
    handles, starts = [], {}
    for i, layer in enumerate(model.model.layers):
        if getattr(layer, "engram", None) is not None:
            continue

        def pre(mod, args, i=i):
            starts[i] = clock.now()

        def post(mod, args, out, i=i):
            record["layer"].append(clock.now() - starts[i])

        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    return handles


def measure_step(model: Any, kind: str, tokens: int, *, reps: int = 3, seed: int = 0) -> StepTimes:
    """Run ``reps`` forwards of a ``kind`` step of ``tokens`` tokens; per-layer, embedding and tail µs."""
    import torch

    dev = next(model.parameters()).device
    clock = _Clock(dev.type == "cuda")
    shape = (tokens, 1) if kind == "decode" else (1, tokens)
    gen = torch.Generator().manual_seed(seed)
    rec: dict[str, list[float]] = {"layer": [], "embed": [], "tail": []}
    handles = _hook_layers(model, clock, rec)
    try:
        with torch.no_grad():
            for r in range(reps + 1):
                ids = torch.randint(0, model.config.vocab_size, shape, generator=gen).to(dev)
                n_layer = len(rec["layer"])
                t0 = clock.now()
                x = model.model.embed_tokens(ids)
                t1 = clock.now()
                hidden, _, _ = model.model(ids)
                t2 = clock.now()
                model.lm_head(hidden[:, -1])  # logits of the last position only (prefill samples one token)
                t3 = clock.now()
                del x
                if r == 0:  # warm-up
                    del rec["layer"][n_layer:]
                    continue
                rec["embed"].append(t1 - t0)
                rec["tail"].append(t3 - t2)
    finally:
        for h in handles:
            h.remove()
    return StepTimes(kind, tokens, dist(rec["layer"]), dist(rec["embed"]), dist(rec["tail"]))


def load_demo(device: str = "cpu") -> Any:
    """The bundled demo model in float32 on ``device``."""
    from engram_cli.models.loading import load_model

    return load_model(None, device=device, dtype="float32")
