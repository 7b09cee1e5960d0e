"""`EngramLayout`: everything needed to reproduce Engram addressing bit-exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engram_cli.errors import BadInputError, UsageError
from engram_cli.layout import hashing
from engram_cli.layout.multipliers import pcg64_multipliers
from engram_cli.layout.numbering import LayerIds, numbered_ids
from engram_cli.layout.primes import distinct_primes

VARIANTS = ("deepseek-v4.1", "deepseek-demo", "qwen4-exp")
LAYOUT_SCHEMA = "engram.layout/1"

#: bytes per stored element for the table dtypes a layout can describe
TABLE_DTYPES = {
    "fp8-e4m3+e8m0": None,  # 1 byte per value + 1 e8m0 byte per 32 values
    "bf16": 2,
    "fp16": 2,
    "fp32": 4,
}


def _tuple2(rows: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in r) for r in rows)


def exclusive_cumsum(values: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 0
    for v in values:
        out.append(acc)
        acc += int(v)
    return tuple(out)


@dataclass(frozen=True)
class EngramLayout:
    """The addressing contract of one model's Engram tables (see ARCHITECTURE.md)."""

    variant: str
    layer_ids: tuple[int, ...]
    max_ngram_size: int
    n_heads: int  # heads per n-gram order
    head_dim: int
    primes: tuple[tuple[int, ...], ...]  # [layer][column], flat order-major
    offsets: tuple[tuple[int, ...], ...]  # exclusive prefix sums of primes
    multipliers: tuple[tuple[int, ...], ...]  # [layer][lookback k]
    num_embeddings: tuple[int, ...]  # rows of each layer's table (padded for qwen4-exp)
    vocab_size: int  # raw tokenizer size
    compressed_vocab_size: int
    pad_id: int  # raw
    compressed_pad_id: int
    vocab_bases: tuple[int, ...] = ()
    seed: int = 0
    eos_token_id: int | None = None
    table_dtype: str = "fp32"
    tokenizer: dict[str, Any] | None = field(default=None, compare=False)
    token_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    seed_ids: tuple[int, ...] = ()  # hash-seed id per layer (empty: the layer ids)
    tensor_ids: tuple[int, ...] = ()  # tensor-name index per layer, ``layers.{i}`` (empty: the layer ids)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise BadInputError(f"unknown hash variant {self.variant!r}", hint=f"one of {', '.join(VARIANTS)}")
        n_cols = self.n_columns
        if len(self.primes) != len(self.layer_ids) or any(len(p) != n_cols for p in self.primes):
            raise BadInputError("layout primes do not match layers x columns")
        if self.table_dtype not in TABLE_DTYPES:
            raise BadInputError(f"unknown table dtype {self.table_dtype!r}", hint=f"one of {', '.join(TABLE_DTYPES)}")
        for name in ("seed_ids", "tensor_ids"):
            ids = getattr(self, name)
            object.__setattr__(self, name, tuple(int(x) for x in ids) if ids else tuple(int(x) for x in self.layer_ids))
            if len(getattr(self, name)) != len(self.layer_ids):
                raise BadInputError(f"layout {name} has {len(ids)} entries for {len(self.layer_ids)} layers")
        if len(set(self.tensor_ids)) != len(self.tensor_ids):
            raise BadInputError(f"layout tensor indices {list(self.tensor_ids)} are not distinct")

    # --- layer numbering -------------------------------------------------------------
    def layer(self, i: int) -> LayerIds:
        """The three ids of the ``i``-th Engram layer."""
        return LayerIds(int(self.layer_ids[i]), int(self.seed_ids[i]), int(self.tensor_ids[i]))

    @property
    def layers(self) -> tuple[LayerIds, ...]:
        return tuple(self.layer(i) for i in range(len(self.layer_ids)))

    @property
    def numbering(self) -> str:
        """``deepseek``, ``qwen4-exp`` or ``megatron`` when the ids follow that rule, else ``custom``."""
        if self.variant == "qwen4-exp":  # seeds follow the order ple_layer_ids is written in
            ok = self.tensor_ids == numbered_ids("qwen4-exp", self.layer_ids)[1]
            return "qwen4-exp" if ok and sorted(self.seed_ids) == list(range(len(self.layer_ids))) else "custom"
        for name in ("deepseek", "megatron"):
            if (self.seed_ids, self.tensor_ids) == numbered_ids(name, self.layer_ids):
                return name
        return "custom"

    def index_of_tensor(self, tensor_index: int) -> int | None:
        """Position of the layer whose tensors are named ``layers.{tensor_index}`` (None: no such layer)."""
        try:
            return self.tensor_ids.index(int(tensor_index))
        except ValueError:
            return None

    # --- shape -----------------------------------------------------------------------
    @property
    def n_columns(self) -> int:
        """Hash columns per layer: (max_ngram_size - 1) * n_heads."""
        return (self.max_ngram_size - 1) * self.n_heads

    @property
    def columns(self) -> list[tuple[int, int]]:
        """(order, head) of every column, order-major."""
        return [(n, h) for n in range(2, self.max_ngram_size + 1) for h in range(self.n_heads)]

    def layer_index(self, layer_id: int) -> int:
        try:
            return self.layer_ids.index(int(layer_id))
        except ValueError:
            raise UsageError(
                f"layer {layer_id} has no Engram table", hint=f"Engram layers: {list(self.layer_ids)}"
            ) from None

    def rows(self, layer_id: int) -> int:
        return self.num_embeddings[self.layer_index(layer_id)]

    def bytes_per_row(self, dtype: str | None = None) -> int:
        dtype = dtype or self.table_dtype
        if dtype == "fp8-e4m3+e8m0":
            return self.head_dim + -(-self.head_dim // 32)
        return self.head_dim * TABLE_DTYPES[dtype]

    def table_bytes(self, layer_id: int, dtype: str | None = None) -> int:
        return self.rows(layer_id) * self.bytes_per_row(dtype)

    # --- hashing ---------------------------------------------------------------------
    def compress(self, ids: Any) -> Any:
        """Raw -> compressed ids (negative ids pass through).

        Identity for layouts without compression (qwen4-exp, or no token map and equal raw
        and compressed vocab sizes, as in synthetic layouts).
        """
        if self.variant == "qwen4-exp" or (self.token_map is None and self.vocab_size == self.compressed_vocab_size):
            if not hashing.is_torch(ids):
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size and arr.max() >= self.vocab_size:
                    raise BadInputError(f"token id {int(arr.max())} is outside the {self.vocab_size} ids of this layout")
                return arr
            return ids
        if self.token_map is None:
            raise BadInputError(
                "this layout has no token map, so raw ids cannot be compressed",
                hint="build it with `engram build-vocab TOKENIZER` and pass --layout DIR",
            )
        if hashing.is_torch(ids):
            import torch

            lut = torch.as_tensor(self.token_map, dtype=torch.int64, device=ids.device)
            ids64 = ids.to(torch.int64)
            out = lut[ids64.clamp_min(0).clamp_max(lut.shape[0] - 1)]
            out = torch.where(ids64 < 0, ids64, out)
            self._check_range_torch(ids64)
            return out
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.max() >= self.token_map.shape[0]):
            bad = int(arr.max())
            raise BadInputError(f"token id {bad} is outside the tokenizer's {self.token_map.shape[0]} ids")
        out = arr.copy()
        pos = arr >= 0
        out[pos] = self.token_map[arr[pos]]
        return out

    def _check_range_torch(self, ids: Any) -> None:
        if ids.numel() and int(ids.max()) >= self.token_map.shape[0]:
            raise BadInputError(f"token id {int(ids.max())} is outside the tokenizer's {self.token_map.shape[0]} ids")

    def hash(
        self,
        input_ids: Any,
        *,
        seq_starts: Any = None,
        dead_mask: Any = None,
        backend: str = "auto",
        id_dtype: str = "int64",
    ) -> hashing.HashIds:
        """Hash raw ids ``[batch, tokens]`` (or ``[tokens]``) into local and global row ids.

        ``seq_starts``: positions where packed sequences start (1-D ints, applied to every
        row) or a bool mask shaped like the ids. ``dead_mask``: bool mask of dead tokens
        (DeepSeek-V4.1 blocking). Torch input gives torch output on the same device.
        ``backend``: "auto" (torch for non-CPU tensors, else the CPU kernels of
        :func:`hashing.hash_cpu`), "numba", "numpy" or "torch". ``id_dtype``: "int64" or
        "int32" (UsageError when a layer's rows exceed int32).
        """
        dt = hashing.check_id_dtype(id_dtype, self.num_embeddings)
        is_torch = hashing.is_torch(input_ids)
        device = input_ids.device if is_torch else None
        use_torch = backend == "torch" or (backend == "auto" and is_torch and device.type != "cpu")
        if is_torch:
            raw = None if use_torch else input_ids.detach().to("cpu").numpy().astype(np.int64)
        else:
            raw = np.asarray(input_ids, dtype=np.int64)
        one_d = (input_ids.dim() if is_torch else raw.ndim) == 1
        shape = tuple(input_ids.shape) if is_torch else raw.shape
        if one_d:
            shape = (1, shape[0])
        if len(shape) != 2:
            raise UsageError(f"input ids must be [batch, tokens] or [tokens], got shape {tuple(shape)}")
        if dead_mask is not None and self.variant != "deepseek-v4.1":
            raise UsageError(f"dead tokens are a deepseek-v4.1 rule; this layout is {self.variant}")
        if (raw is not None and raw.size and raw.min() < 0) or (raw is None and input_ids.numel() and int(input_ids.min()) < 0):
            raise BadInputError("token ids must be non-negative")

        start_mask = hashing.start_mask(seq_starts, shape)
        # Qwen4-Exp: no compression (compressed ids are the raw ids), so the kernels see the EOS id itself
        eos = self.eos_token_id if self.variant == "qwen4-exp" else None
        args = (self.compressed_pad_id, self.multipliers, self.primes, self.offsets, self.n_heads)
        if use_torch:
            import torch

            ids_t = (input_ids if is_torch else torch.from_numpy(raw)).reshape(shape)
            comp = self.compress(ids_t)
            to_dev = (lambda m: None if m is None else torch.as_tensor(m).to(comp.device).reshape(shape))
            dead = None if dead_mask is None else to_dev(dead_mask).to(torch.bool)
            glob = hashing.hash_torch(comp, *args, start_mask=to_dev(start_mask), dead_mask=dead, eos_id=eos, id_dtype=dt.name)
            if not is_torch:
                comp, glob = comp.cpu().numpy(), glob.cpu().numpy()
        else:
            comp = self.compress(raw.reshape(shape))
            dead = None if dead_mask is None else hashing.as_numpy_bool(dead_mask).reshape(shape)
            kernel = backend if backend in ("numba", "numpy") else "auto"
            glob = hashing.hash_cpu(comp, *args, start_mask=start_mask, dead_mask=dead, eos_id=eos, id_dtype=dt.name, kernel=kernel)
            if is_torch:
                import torch

                comp, glob = (torch.from_numpy(a).to(device) for a in (comp, glob))
        if one_d:
            comp, glob = comp[0], glob[0]
        offsets = np.asarray(self.offsets, dtype=dt)
        if hashing.is_torch(glob):
            import torch

            offsets = torch.from_numpy(offsets).to(glob.device)
        return hashing.HashIds(compressed=comp, global_=glob, offsets=offsets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (without the token map itself)."""
        return {
            "schema": LAYOUT_SCHEMA,
            "variant": self.variant,
            "layer_ids": list(self.layer_ids),
            "max_ngram_size": self.max_ngram_size,
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "vocab_bases": list(self.vocab_bases),
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            "compressed_vocab_size": self.compressed_vocab_size,
            "pad_id": self.pad_id,
            "compressed_pad_id": self.compressed_pad_id,
            "eos_token_id": self.eos_token_id,
            "table_dtype": self.table_dtype,
            "layer_numbering": self.numbering,
            "bytes_per_row": self.bytes_per_row(),
            "columns": [{"order": n, "head": h} for n, h in self.columns],
            "layers": [
                {
                    "layer_id": lid,
                    "seed_id": self.seed_ids[i],
                    "tensor_index": self.tensor_ids[i],
                    "num_embeddings": self.num_embeddings[i],
                    "primes_sum": int(sum(self.primes[i])),
                    "table_bytes": self.num_embeddings[i] * self.bytes_per_row(),
                    "primes": list(self.primes[i]),
                    "offsets": list(self.offsets[i]),
                    "multipliers": [str(m) for m in self.multipliers[i]],
                }
                for i, lid in enumerate(self.layer_ids)
            ],
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], token_map: np.ndarray | None = None) -> EngramLayout:
        try:
            layers = d["layers"]
            ids = tuple(int(x["layer_id"]) for x in layers)
            # older files (before the id triple) follow their variant's numbering
            seed_default, tensor_default = numbered_ids("qwen4-exp" if d["variant"] == "qwen4-exp" else "deepseek", ids)
            return cls(
                variant=d["variant"],
                layer_ids=ids,
                seed_ids=tuple(int(x.get("seed_id", s)) for x, s in zip(layers, seed_default)),
                tensor_ids=tuple(int(x.get("tensor_index", t)) for x, t in zip(layers, tensor_default)),
                max_ngram_size=int(d["max_ngram_size"]),
                n_heads=int(d["n_heads"]),
                head_dim=int(d["head_dim"]),
                primes=_tuple2([x["primes"] for x in layers]),
                offsets=_tuple2([x["offsets"] for x in layers]),
                multipliers=_tuple2([[int(m) for m in x["multipliers"]] for x in layers]),
                num_embeddings=tuple(int(x["num_embeddings"]) for x in layers),
                vocab_size=int(d["vocab_size"]),
                compressed_vocab_size=int(d["compressed_vocab_size"]),
                pad_id=int(d["pad_id"]),
                compressed_pad_id=int(d["compressed_pad_id"]),
                vocab_bases=tuple(int(v) for v in d.get("vocab_bases", ())),
                seed=int(d.get("seed", 0)),
                eos_token_id=None if d.get("eos_token_id") is None else int(d["eos_token_id"]),
                table_dtype=d.get("table_dtype", "fp32"),
                tokenizer=d.get("tokenizer"),
                token_map=token_map,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"malformed layout description: {type(exc).__name__}: {exc}") from None

    # --- construction ----------------------------------------------------------------
    @classmethod
    def custom(
        cls,
        *,
        variant: str = "deepseek-v4.1",
        layer_ids: Sequence[int],
        max_ngram_size: int,
        n_heads: int,
        head_dim: int,
        vocab_base: int | Sequence[int],
        compressed_vocab_size: int | None = None,
        vocab_size: int | None = None,
        pad_id: int = 2,
        compressed_pad_id: int | None = None,
        token_map: np.ndarray | None = None,
        seed: int = 0,
        table_dtype: str | None = None,
        tokenizer: dict[str, Any] | None = None,
        layer_numbering: str = "deepseek",
    ) -> EngramLayout:
        """A DeepSeek-style layout (distinct primes, PCG64 multipliers) from explicit numbers.

        ``layer_numbering``: ``deepseek`` (0-based decoder ids everywhere) or ``megatron``
        (1-based global layer ids seed the hash; tensors are ``layers.{id - 1}``)."""
        if variant not in ("deepseek-v4.1", "deepseek-demo"):
            raise UsageError("EngramLayout.custom builds deepseek-style layouts; use layout_from_config for qwen4-exp")
        if max_ngram_size < 2 or n_heads < 1 or head_dim < 1:
            raise BadInputError("max n-gram size must be >= 2, heads and head dim >= 1")
        bases = [int(vocab_base)] * (max_ngram_size - 1) if isinstance(vocab_base, (int, np.integer)) else [int(b) for b in vocab_base]
        if token_map is not None:
            token_map = np.asarray(token_map, dtype=np.int64)
            compressed_vocab_size = int(token_map.max()) + 1 if compressed_vocab_size is None else compressed_vocab_size
            vocab_size = int(token_map.shape[0]) if vocab_size is None else vocab_size
            if compressed_pad_id is None:
                compressed_pad_id = int(token_map[pad_id])
        if compressed_vocab_size is None:
            raise UsageError("a compressed vocab size or a token map is needed")
        vocab_size = compressed_vocab_size if vocab_size is None else vocab_size
        compressed_pad_id = pad_id if compressed_pad_id is None else compressed_pad_id
        if layer_numbering == "qwen4-exp":
            raise UsageError("qwen4-exp numbering belongs to qwen4-exp layouts (layout_from_config)")
        seed_ids, tensor_ids = numbered_ids(layer_numbering, layer_ids)
        primes = distinct_primes(len(layer_ids), max_ngram_size, n_heads, bases)
        mults = [pcg64_multipliers(sid, max_ngram_size, compressed_vocab_size, seed) for sid in seed_ids]
        return cls(
            variant=variant,
            layer_ids=tuple(int(x) for x in layer_ids),
            seed_ids=seed_ids,
            tensor_ids=tensor_ids,
            max_ngram_size=int(max_ngram_size),
            n_heads=int(n_heads),
            head_dim=int(head_dim),
            primes=_tuple2(primes),
            offsets=tuple(exclusive_cumsum(p) for p in primes),
            multipliers=_tuple2(mults),
            num_embeddings=tuple(int(sum(p)) for p in primes),
            vocab_size=int(vocab_size),
            compressed_vocab_size=int(compressed_vocab_size),
            pad_id=int(pad_id),
            compressed_pad_id=int(compressed_pad_id),
            vocab_bases=tuple(bases),
            seed=int(seed),
            table_dtype=table_dtype or ("fp8-e4m3+e8m0" if variant == "deepseek-v4.1" else "fp32"),
            tokenizer=tokenizer,
            token_map=token_map,
        )
