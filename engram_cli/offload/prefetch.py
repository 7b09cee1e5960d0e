"""Offloaded Engram tables for the end-to-end check: a prefetcher per placement and the module that reads it.

``FilePrefetcher`` (CPU only): the tables are one file on disk; one worker thread reads each
layer's rows (serialised in layer order, like a single fetch lane) while the earlier layers run.
``UvaPrefetcher`` (CUDA): the tables sit in registered host memory; each layer's rows are gathered
over UVA on a side stream with one event per layer. ``install`` swaps every Engram module's
embedding for a ``PrefetchedEmbedding`` and returns a handle that restores the model.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engram_cli.offload import gpu


def engram_tables(model: Any) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(layer index, weight [rows, dim] as numpy, offsets [columns]) for each Engram layer, in layer order."""
    out = []
    for i, layer in enumerate(model.model.layers):
        eng = getattr(layer, "engram", None)
        if eng is not None:
            mhe = eng.multi_head_embedding
            out.append((i, mhe.embedding.weight.detach().cpu().numpy(), mhe.offsets.detach().cpu().numpy()))
    return out


class FilePrefetcher:
    """Rows read from a file (one table after another) by one worker thread."""

    def __init__(self, tables: list[tuple[int, np.ndarray, np.ndarray]], path: Path):
        self.path = Path(path)
        self.dtype = tables[0][1].dtype
        self.meta = []  # (row offset in file, rows, dim, column offsets)
        start = 0
        with open(self.path, "wb") as f:
            for _, w, offs in tables:
                f.write(np.ascontiguousarray(w).tobytes())
                self.meta.append((start, w.shape[0], w.shape[1], offs.astype(np.int64)))
                start += w.shape[0]
            f.flush()
            os.fsync(f.fileno())
        self.dim = tables[0][1].shape[1]
        self.file = np.memmap(self.path, dtype=self.dtype, mode="r").reshape(-1, self.dim)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []

    def rows(self, k: int, local: np.ndarray) -> np.ndarray:
        base, _, _, offs = self.meta[k]
        return self.file[local + offs + base]

    def start(self, local_ids: np.ndarray) -> None:
        """Queue every layer's fetch; ``local_ids`` is ``[B, T, layers, C]`` head-local ids."""
        self.pending = [self.pool.submit(self.rows, k, local_ids[:, :, k]) for k in range(len(self.meta))]

    def wait(self, k: int, device: Any) -> torch.Tensor:
        return torch.from_numpy(self.pending[k].result()).to(device)

    def fetch_us(self, k: int, local: np.ndarray) -> float:
        """µs to fetch one layer's rows for ``local`` ``[B, T, C]`` alone (for the fetch curve)."""
        t0 = time.perf_counter_ns()
        self.rows(k, local)
        return (time.perf_counter_ns() - t0) / 1e3

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        del self.file
        self.path.unlink(missing_ok=True)


class UvaPrefetcher:
    """Rows gathered over UVA from registered host memory on a side stream, one event per layer."""

    def __init__(self, tables: list[tuple[int, np.ndarray, np.ndarray]]):
        gpu.require_cuda("the offloaded validation")
        self.hosts = [np.ascontiguousarray(w) for _, w, _ in tables]
        self.regs = [gpu.register_host(h.reshape(-1).view(np.uint8)) for h in self.hosts]
        self.views = [gpu.uva_view(h.reshape(-1).view(np.uint8), r).view(torch.from_numpy(h[:0]).dtype).view(h.shape)
                      for h, r in zip(self.hosts, self.regs)]
        self.offsets = [torch.as_tensor(o, device="cuda") for _, _, o in tables]
        self.stream = torch.cuda.Stream()
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def start(self, local_ids: np.ndarray) -> None:
        ids = torch.from_numpy(np.ascontiguousarray(local_ids)).pin_memory()
        self.stream.wait_stream(torch.cuda.current_stream())
        self.pending = []
        with torch.cuda.stream(self.stream):
            dev_ids = ids.to("cuda", non_blocking=True)
            for k, view in enumerate(self.views):
                rows = view[dev_ids[:, :, k] + self.offsets[k]]
                ev = torch.cuda.Event()
                ev.record(self.stream)
                self.pending.append((rows, ev))

    def fetch_us(self, k: int, local: np.ndarray) -> float:
        """µs of one layer's UVA gather for ``local`` ``[B, T, C]`` alone (CUDA events; index upload excluded)."""
        ids = torch.from_numpy(np.ascontiguousarray(local)).to("cuda") + self.offsets[k]
        torch.cuda.synchronize()
        return gpu.time_events(lambda: self.views[k][ids])

    def wait(self, k: int, device: Any) -> torch.Tensor:
        rows, ev = self.pending[k]
        torch.cuda.current_stream().wait_event(ev)
        rows.record_stream(torch.cuda.current_stream())
        return rows

    def close(self) -> None:
        torch.cuda.synchronize()
        self.views = []
        for r in self.regs:
            r.close()


class PrefetchedEmbedding(nn.Module):
    """Stands in for ``MultiHeadEmbedding``: returns the prefetched rows of its layer."""

    def __init__(self, prefetcher: Any, k: int):
        super().__init__()
        self.prefetcher, self.k = prefetcher, k

    def forward(self, local_ids: torch.Tensor) -> torch.Tensor:  # [B,T,C] -> [B,T,C,dim]
        rows = self.prefetcher.wait(self.k, local_ids.device)
        if tuple(rows.shape[:3]) != tuple(local_ids.shape):
            raise RuntimeError("prefetched rows do not match the step's ids")
        return rows


class Installed:
    """Swaps the prefetched embeddings in (``attach``) and out (``detach``); ``close`` frees the prefetcher."""

    def __init__(self, model: Any, prefetcher: Any):
        self.model, self.prefetcher = model, prefetcher
        self.engrams = [layer.engram for layer in model.model.layers if getattr(layer, "engram", None) is not None]
        self.saved = [eng.multi_head_embedding for eng in self.engrams]
        self.attached = False

    def attach(self) -> None:
        for k, eng in enumerate(self.engrams):
            eng.multi_head_embedding = PrefetchedEmbedding(self.prefetcher, k)
        self.attached = True

    def detach(self) -> None:
        for eng, mhe in zip(self.engrams, self.saved):
            eng.multi_head_embedding = mhe
        self.model.model.__dict__.pop("hash_ids", None)
        self.attached = False

    def step(self, input_ids: torch.Tensor, full_ids: torch.Tensor) -> None:
        """Hash this step once, start the prefetch, and hand the same ids to the model's forward."""
        m = self.model.model
        local = type(m).hash_ids(m, full_ids)[:, -input_ids.shape[1]:]
        self.prefetcher.start(local.cpu().numpy())
        m.hash_ids = lambda _ids, _local=local: _local

    def close(self) -> None:
        self.detach()
        self.prefetcher.close()


def install(model: Any, placement: str, path: Path | None = None) -> Installed:
    """Offload the model's Engram tables (detached until ``attach``): ``placement`` "file" (needs ``path``) or "uva"."""
    tables = engram_tables(model)
    if not tables:
        raise ValueError("the model has no Engram layers")
    pf = FilePrefetcher(tables, path) if placement == "file" else UvaPrefetcher(tables)
    return Installed(model, pf)
