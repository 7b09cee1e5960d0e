"""The options every command shares: one name, one meaning, one help text.

Commands declare these ``Annotated`` aliases instead of their own ``typer.Option``; a test walks
the app and checks that an option name never means two things. Old spellings users may have
scripted stay as hidden aliases (``--out`` for ``--output``, ``--dtype`` for ``--model-dtype``
and ``--table-dtype``); :func:`pick` merges an option with its alias.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from engram_cli.tables.options import TableDtype

T = TypeVar("T")


class Preset(str, Enum):
    """Named layouts (``engram_cli.layout.config.PRESETS``; a test keeps the two in step)."""

    deepseek_v41_flash = "deepseek-v4.1-flash"
    deepseek_demo = "deepseek-demo"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class BranchReduce(str, Enum):
    """How hyper-connection branches become one residual state."""

    model = "model"
    mean = "mean"
    sum = "sum"
    first = "first"


class ModelDtype(str, Enum):
    """The torch dtype a model is loaded in."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


# output -----------------------------------------------------------------------------------
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (written atomically).")]
OutAliasOpt = Annotated[Optional[Path], typer.Option("--out", hidden=True, help="Old spelling of --output.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]

# layout -----------------------------------------------------------------------------------
_LAYOUT = "Layout"
LayoutOpt = Annotated[Optional[Path], typer.Option("--layout", "-l", help="Layout directory from `engram build-vocab`.",
                                                   rich_help_panel=_LAYOUT)]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Model config.json to derive the layout from.",
                                                   rich_help_panel=_LAYOUT)]
PresetOpt = Annotated[Optional[Preset], typer.Option("--preset", "-p", help="Named layout.", rich_help_panel=_LAYOUT)]
TokenizerOpt = Annotated[Optional[Path], typer.Option("--tokenizer", help="tokenizer.json or a directory holding one.")]

# models -----------------------------------------------------------------------------------
_MODEL = "Model"
ModelArg = Annotated[Optional[str], typer.Argument(help="Model directory or .gguf file (default: the bundled demo model).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.", rich_help_panel=_MODEL)]
ModelDtypeOpt = Annotated[ModelDtype, typer.Option("--model-dtype", help="Torch dtype to load the model in.",
                                                   rich_help_panel=_MODEL)]
ModelDtypeAliasOpt = Annotated[Optional[ModelDtype], typer.Option("--dtype", hidden=True, help="Old spelling of --model-dtype.")]
TableDtypeOpt = Annotated[TableDtype, typer.Option("--table-dtype", help="Encoding of the written table rows: keep, bf16, fp32, "
                                                   "fp8-e4m3 (e8m0 row-group scales) or int8 (group-32 fp32 scales).")]
TableDtypeAliasOpt = Annotated[Optional[TableDtype], typer.Option("--dtype", hidden=True, help="Old spelling of --table-dtype.")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="e.g. 'auto' (accelerate) for models larger than "
                                                     "one device.", rich_help_panel=_MODEL)]
EngramPathOpt = Annotated[Optional[str], typer.Option("--engram-path", help="Engram module path inside a decoder layer "
                                                      "(unknown architectures).", rich_help_panel=_MODEL)]
LayersPathOpt = Annotated[Optional[str], typer.Option("--layers-path", help="Path of the decoder-layer list (unknown "
                                                      "architectures).", rich_help_panel=_MODEL)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: the cores "
                                                   "not busy now, see docs/cli.md).", rich_help_panel=_MODEL)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.", rich_help_panel=_MODEL)]

# analyses ---------------------------------------------------------------------------------
_DATA = "Data"
BranchReduceOpt = Annotated[BranchReduce, typer.Option("--branch-reduce", help="Hyper-connection branches -> one state: "
                                                       "model (its own mapping), mean, sum, first.", rich_help_panel=_MODEL)]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", min=2, help="Tokens per text (longer texts are cut).",
                                           rich_help_panel=_DATA)]
SkipFirstOpt = Annotated[int, typer.Option("--skip-first", min=0, help="Leave out the first N tokens of every text "
                                           "(BOS / attention sinks).", rich_help_panel=_DATA)]
BootstrapOpt = Annotated[Optional[int], typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the CIs (0 = no CIs; "
                                                     "default per command, see its docs).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (bootstrap and any shuffling); recorded in the provenance.")]


def pick(value: T, alias: T | None, default: T | None = None, name: str = "") -> T:
    """Merge an option with its hidden old spelling; refuse both given with different values."""
    if alias is None:
        return value
    if value is not None and value != default and value != alias:
        from engram_cli.errors import UsageError

        raise UsageError(f"{name} was given twice with different values (old and new spelling)")
    return alias


def _busy_cores() -> int:
    """Other threads running now: the median of a few reads of the kernel's runnable count
    (``/proc/loadavg`` field 4, minus this process), else the 1-minute load average."""
    import statistics
    import time

    try:
        samples = []
        for _ in range(5):
            with open("/proc/loadavg", encoding="ascii") as fh:
                samples.append(int(fh.read().split()[3].split("/")[0]) - 1)
            time.sleep(0.02)
        return max(0, round(statistics.median(samples)))
    except (OSError, ValueError, IndexError):
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0


def default_threads() -> int:
    """Cores not busy now (``cpu_count - busy``, at least 1).

    Measured on a 2-core box (docs/cli.md): oversubscribing busy cores made ``engram ablate``
    3.3x slower (333 s wall with 2 threads vs 99.5 s with 1 while another job ran). The
    runnable count is read now rather than from the 1-minute load average, which still counts
    jobs that ended seconds ago."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, cpus - _busy_cores()))


def set_torch_threads(threads: int | None) -> int:
    """Apply ``--threads`` (or :func:`default_threads`) to torch; returns the number used."""
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


def start_model_run(device: Device, threads: int | None, models: tuple[str | None, ...] = ()) -> int:
    """What every model command does before loading: exit 5 when the device is missing (before
    any weights are read), exit 3 when a ``.gguf`` model's header counts cannot fit in its file
    (transformers' GGUF loading uses the gguf reader, which would loop on them without bound),
    then apply ``--threads``. Returns the thread count used."""
    from engram_cli.models.loading import resolve_device

    resolve_device(device.value)
    for model in models:
        if model and str(model).endswith(".gguf") and Path(model).is_file():
            from engram_cli.tables.gguf_bounds import check_gguf_bounds

            check_gguf_bounds(Path(model))
    return set_torch_threads(threads)
