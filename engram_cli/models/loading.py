"""Load a model (and its tokenizer) from a local directory or a ``.gguf`` file; never the hub."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engram_cli.errors import BadInputError, DeviceUnavailableError, UsageError

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


@contextlib.contextmanager
def _no_gguf_progress_bar():
    """transformers' GGUF de-quantisation loop calls ``tqdm`` itself (not through its logging
    switch): give it a disabled bar while a model loads."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def demo_model_dir() -> Path:
    """The bundled demo model (package data)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo-model"


def demo_v2_dir() -> Path:
    """The bundled demo model v2 (8 layers, Engram at layers 1 and 4; docs/demo-model.md)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo-model-v2"


def demo_twin_dir() -> Path:
    """The bundled no-Engram twin of demo model v2 (same backbone, data and steps)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo-model-v2-twin"


def twin_pair(model: str | None, model_b: str | None) -> tuple[str, str]:
    """``--compare twin``: MODEL (default: demo model v2) against the bundled twin."""
    if model_b is not None:
        raise UsageError("give MODEL_B or --compare twin, not both", hint="--compare twin compares with the bundled twin")
    twin = demo_twin_dir()
    if not (twin / "config.json").is_file():
        raise BadInputError(f"the bundled twin is missing ({twin})", hint="reinstall engram, or give MODEL_B")
    return (model if model is not None else str(demo_v2_dir())), str(twin)


def demo_suites_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "suites"


class TextTokenizer:
    """A minimal tokenizer wrapper: ``encode(text) -> ids``, ``decode(ids) -> text``."""

    def __init__(self, tok: Any, eos_id: int | None):
        self._tok = tok
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        if hasattr(self._tok, "encode") and type(self._tok).__module__.startswith("tokenizers"):
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids))


@dataclass
class LoadedModel:
    model: Any
    tokenizer: TextTokenizer | None
    source: str
    device: str


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError("CUDA was requested but is not available", hint="use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}", hint="auto, cpu or cuda[:N]")
    return device


def load_text_tokenizer(path: Path, gguf_file: str | None = None, eos_id: int | None = None) -> TextTokenizer | None:
    if gguf_file:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file, local_files_only=True)
        return TextTokenizer(tok, tok.eos_token_id)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return TextTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), eos_id)
    return None


def load_model(spec: str | os.PathLike | None = None, *, device: str = "auto", dtype: str = "float32",
               device_map: str | None = None, tokenizer: str | None = None) -> LoadedModel:
    """Load ``spec`` (None = the bundled demo model) in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engram_cli.models.reference import register_auto_classes

    register_auto_classes()
    from safetensors import SafetensorError

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    path = Path(spec) if spec is not None else demo_model_dir()
    if not path.exists():
        hint = ("the bundled demo model is missing from this install" if spec is None
                else "pass a local model directory (config.json + safetensors) or a .gguf file")
        raise BadInputError(f"model not found: {path}", hint=hint)
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="float32, float16 or bfloat16")
    torch_dtype = getattr(torch, DTYPES[dtype])
    dev = resolve_device(device)
    gguf_file = None
    if path.is_file():
        if path.suffix != ".gguf":
            raise BadInputError(f"{path} is a file but not a .gguf", hint="pass a model directory or a .gguf file")
        # an absolute path: transformers looks a bare ``gguf_file`` name up in the current directory
        # before ``path``, so a same-named file there would silently supply the weights
        path = path.resolve()
        gguf_file, path = str(path), path.parent
    elif not (path / "config.json").is_file():
        raise BadInputError(f"{path} has no config.json", hint="not a transformers model directory")
    where = gguf_file or str(path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if device_map:
        kwargs["device_map"] = device_map
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its loading bars would bypass --quiet and --json
    try:
        if not gguf_file:
            AutoConfig.from_pretrained(str(path), local_files_only=True)
        with _no_gguf_progress_bar():
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError, EOFError) as exc:  # truncated or corrupt weights too
        raise BadInputError(f"cannot load model from {where}: {(str(exc).splitlines() or [type(exc).__name__])[0]}",
                            hint="the weights are truncated or corrupt, or not a transformers checkpoint") from None
    if not device_map:
        model = model.to(dev)
    model.eval()
    eos = getattr(model.config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) else eos
    tok_path = Path(tokenizer) if tokenizer else path
    tok = load_text_tokenizer(tok_path, None if tokenizer else gguf_file, eos)
    return LoadedModel(model=model, tokenizer=tok, source=str(Path(spec) if spec else path),
                       device=str(next(model.parameters()).device))
