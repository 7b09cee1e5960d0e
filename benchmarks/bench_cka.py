"""All-pairs minibatch CKA: engram's stacked-Gram accumulator against ckatorch and torch-cka.

The same activations (random, LLM-shaped: layers x examples x width, with a shared low-rank
signal so CKA values are not all ~0) for two "models", the same minibatches, the same
estimator (Nguyen et al.'s minibatch unbiased HSIC_1, linear kernel, equal batch sizes):

- ours: ``MinibatchAccumulator`` (one centred Gram per layer and batch, one matrix product
  for all pairs, float64);
- ckatorch 1.0.3: ``ckatorch.core.cka_batch(x, y)`` per layer pair on all batches at once
  ``[n_batches, b, d]`` (float64; its ``CKA`` class calls the same function per pair);
- torch-cka 0.21: its ``CKA.compare`` loop, driven by replay modules that emit the stored
  activations through real forward hooks (float32, as the package computes);
- a straightforward per-pair loop (our formulas, Grams rebuilt per pair) as the baseline
  always present, and the one to compare with when a package is missing.

Values are checked against ours (1e-6 where the estimator and precision are the same: ckatorch
and the loop; torch-cka computes in float32 and is reported, not asserted).

    pip install ".[bench]"   # ckatorch, torch-cka (ckatorch also imports seaborn)
    python benchmarks/bench_cka.py [--layers 30] [--width 576] [--examples 2048] [--batch 64]

Ends with ``ratio: <x> (ours vs fastest of ckatorch/torch-cka, all-pairs, <shape>)``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engram_cli.analysis import cka as C  # noqa: E402


def activations(layers: int, n: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 16))
    out = np.empty((layers, n, width), dtype=np.float32)
    for layer in range(layers):
        out[layer] = z @ rng.normal(size=(16, width)) * (1 + layer / layers) + rng.normal(size=(n, width))
    return out


def ours(xa: np.ndarray, xb: np.ndarray, b: int, device: str, chunk_bytes: int = 256 << 20) -> np.ndarray:
    """As ``engram analyze cka`` does: chunks of g equal-size batches, one Gram per layer and batch."""
    acc = C.MinibatchAccumulator()
    nb = xa.shape[1] // b
    g = max(1, chunk_bytes // (8 * b * (xa.shape[0] * xa.shape[2] + xb.shape[0] * xb.shape[2])))
    ta = torch.from_numpy(xa[:, :nb * b]).to(device).reshape(xa.shape[0], nb, b, -1)
    tb = torch.from_numpy(xb[:, :nb * b]).to(device).reshape(xb.shape[0], nb, b, -1)
    for s in range(0, nb, g):
        acc.update_batched(ta[:, s:s + g].double(), tb[:, s:s + g].double())
    return acc.cka()


def per_pair_loop(xa: np.ndarray, xb: np.ndarray, b: int, device: str) -> np.ndarray:
    """The straightforward way: for every pair and batch, build and centre both Grams."""
    out = np.empty((xa.shape[0], xb.shape[0]))
    ta = torch.from_numpy(xa).to(device).double()
    tb = torch.from_numpy(xb).to(device).double()
    for i in range(xa.shape[0]):
        for j in range(xb.shape[0]):
            xy = xx = yy = 0.0
            for s in range(0, xa.shape[1], b):
                k = C.center_gram(C.gram(ta[i, s:s + b]), True)
                m = C.center_gram(C.gram(tb[j, s:s + b]), True)
                xy += float((k * m).sum())
                xx += float((k * k).sum())
                yy += float((m * m).sum())
            out[i, j] = xy / np.sqrt(xx * yy)
    return out


def load_ckatorch():
    """``ckatorch.core``; without seaborn (imported by its plotting module) load the core alone."""
    try:
        return importlib.import_module("ckatorch.core"), ""
    except ModuleNotFoundError as exc:
        spec = importlib.util.find_spec("ckatorch")
        if spec is None or exc.name == "ckatorch":
            return None, "ckatorch is not installed"
        stub = types.ModuleType("ckatorch")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["ckatorch"] = stub
        return importlib.import_module("ckatorch.core"), f" (core only: {exc.name} missing)"


def ckatorch_all_pairs(core, xa: np.ndarray, xb: np.ndarray, b: int, device: str) -> np.ndarray:
    nb = xa.shape[1] // b
    ta = torch.from_numpy(xa[:, :nb * b]).to(device).reshape(xa.shape[0], nb, b, -1)
    tb = torch.from_numpy(xb[:, :nb * b]).to(device).reshape(xb.shape[0], nb, b, -1)
    out = np.empty((xa.shape[0], xb.shape[0]))
    for i in range(xa.shape[0]):
        for j in range(xb.shape[0]):
            out[i, j] = float(core.cka_batch(ta[i], tb[j]))
    return out


class Replay(torch.nn.Module):
    """A 'model' whose layer l returns the stored activations of layer l for the batch indices."""

    def __init__(self, feats: torch.Tensor):
        super().__init__()
        self.feats = feats
        self.layers = torch.nn.ModuleList(Emit(feats, layer) for layer in range(feats.shape[0]))

    def forward(self, idx):
        for layer in self.layers:
            layer(idx)
        return idx


class Emit(torch.nn.Module):
    def __init__(self, feats: torch.Tensor, layer: int):
        super().__init__()
        self.feats, self.layer = feats, layer

    def forward(self, idx):
        return self.feats[self.layer, idx]


def torch_cka_all_pairs(xa: np.ndarray, xb: np.ndarray, b: int, device: str) -> np.ndarray:
    import warnings

    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    n = (xa.shape[1] // b) * b
    names_a = [f"layers.{i}" for i in range(xa.shape[0])]
    names_b = [f"layers.{i}" for i in range(xb.shape[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(Replay(torch.from_numpy(xa).to(device)), Replay(torch.from_numpy(xb).to(device)), "A", "B",
                  names_a, names_b, device=device)
        loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=b, shuffle=False)
        cka.compare(loader, loader)
    return cka.export()["CKA"].double().cpu().numpy()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-loop", action="store_true", help="skip the straightforward per-pair loop")
    args = ap.parse_args()
    L, n, d, b, dev = args.layers, args.examples - args.examples % args.batch, args.width, args.batch, args.device
    shape = f"{L}x{L} layers, {n} examples x {d}, batch {b}, {dev}"
    print(f"all-pairs minibatch CKA: {shape}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    xa, xb = activations(L, n, d, 0), activations(L, n, d, 1)
    t_ours, s_ours = timed(lambda: ours(xa, xb, b, dev))
    print(f"  ours (stacked Grams, float64)      {t_ours:9.3f} s")
    rivals: dict[str, float] = {}
    core, note = load_ckatorch()
    if core is None:
        print(f"  ckatorch                           not available: {note}")
    else:
        t, s = timed(lambda: ckatorch_all_pairs(core, xa, xb, b, dev))
        diff = float(np.abs(s - s_ours).max())
        assert diff < 1e-6, f"ckatorch differs by {diff}"
        rivals["ckatorch"] = t
        print(f"  ckatorch 1.0.3 cka_batch per pair  {t:9.3f} s   max |diff| {diff:.1e}{note}")
    if importlib.util.find_spec("torch_cka") is None:
        print("  torch-cka                          not available: torch-cka is not installed")
    else:
        t, s = timed(lambda: torch_cka_all_pairs(xa, xb, b, dev))
        diff = float(np.abs(s - s_ours).max())
        rivals["torch-cka"] = t
        print(f"  torch-cka 0.21 CKA.compare         {t:9.3f} s   max |diff| {diff:.1e} (float32 inside torch-cka)")
    if not args.skip_loop:
        t, s = timed(lambda: per_pair_loop(xa, xb, b, dev))
        diff = float(np.abs(s - s_ours).max())
        assert diff < 1e-6, f"per-pair loop differs by {diff}"
        print(f"  straightforward per-pair loop      {t:9.3f} s   max |diff| {diff:.1e}")
        if not rivals:
            rivals["per-pair loop"] = t
    name = min(rivals, key=rivals.get)
    what = "fastest of ckatorch/torch-cka" if name != "per-pair loop" else "the per-pair loop (no package available)"
    print(f"ratio: {rivals[name] / t_ours:.1f} (ours vs {what}, all-pairs, {shape})")


if __name__ == "__main__":
    main()
