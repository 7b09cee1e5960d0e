"""Hypothesis fuzz of the other parsers that read untrusted files: task JSONL and GGUF headers.
Whatever bytes they are given, they return a result or raise the project's BadInputError
(exit 3), never another exception; plus a truncated model folder (exit 3, one line)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram_cli.errors import BadInputError

LINE = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b'{"task": "t", "output_type": "multiple_choice"}', b'{"context": "a", "choices": ["x", "y"], "gold": 0}',
                     b'{"context": "a", "answers": "x"}', b'{"text": "abc"}', b'{"until": 5, "output_type": "generate_until"}',
                     b'{"context": 3, "choices": [1], "gold": "0"}', b'[]', b'null', b'{"context": "a", "choices": ["x", "y"], "gold": 9}',
                     b'{"output_type": "generate_until", "max_gen_toks": -3}', b'{"context": "a", "context_span": [5, 1]}']))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=5))
def test_task_files(lines):
    from engram_cli.analysis.tasks import load_task

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "t.jsonl"
        f.write_bytes(b"\n".join(lines))
        try:
            load_task(f)
        except BadInputError as exc:
            assert "\n" not in exc.message


def _gguf_bytes() -> bytes:
    import numpy as np
    from gguf import GGUFValueType, GGUFWriter

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.gguf"
        w = GGUFWriter(str(p), "deepseek41")
        w.add_uint32("deepseek41.engram.max_ngram_size", 3)
        w.add_array("deepseek41.engram.layer_ids", [1, 2])
        # one-byte elements: with a flipped count the gguf reader reads to the end, then loops on empty slices
        w.add_key_value("deepseek41.engram.flags", [1, 0, 1], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT8)
        w.add_tensor("blk.1.engram_embd.weight", np.zeros((8, 16), np.int8))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return p.read_bytes()


GOOD = _gguf_bytes()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(cut=st.integers(0, len(GOOD)))
def test_gguf_headers(cut):
    from engram_cli.tables.gguf_read import read_gguf

    data = GOOD[:cut]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.gguf"
        p.write_bytes(bytes(data))
        try:
            read_gguf(p)
        except BadInputError as exc:
            assert "\n" not in exc.message


FLIP_SWEEP = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))  # a runaway count fails fast, not the machine
from engram_cli.errors import BadInputError
from engram_cli.tables.gguf_read import read_gguf
good = Path(sys.argv[1]).read_bytes()
p = Path(sys.argv[2])
refused = 0
for i in range(int(sys.argv[3])):
    for v in (0xFF, 0x7F, 0x01):
        data = bytearray(good)
        data[i] = v
        p.write_bytes(bytes(data))
        try:
            read_gguf(p)
        except BadInputError as exc:
            assert "\\n" not in exc.message and exc.message.startswith(p.name), exc.message
            refused += 1
print(refused)
"""


def test_gguf_header_byte_flips_are_refused_in_bounded_memory(tmp_path):
    """Every byte of the header set to 0xFF, 0x7F or 0x01 (counts and lengths among them) reads
    or is refused with one line, under a 3 GiB address-space limit and in bounded time: the
    gguf package alone loops over a flipped array count (it took > 11 GB)."""
    src, out = tmp_path / "good.gguf", tmp_path / "flip.gguf"
    src.write_bytes(GOOD)
    head = GOOD.index(b"blk.1.engram_embd.weight") + 64  # keys and the tensor info
    r = subprocess.run([sys.executable, "-c", FLIP_SWEEP, str(src), str(out), str(head)], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > head  # most flips are refused, not read as something else


def test_truncated_model_is_exit_3(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models_helpers import save_tiny_reference, tiny_suites
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    model = save_tiny_reference(tmp_path / "m", vocab_size=80)
    weights = next(model.glob("*.safetensors"))
    os.truncate(weights, weights.stat().st_size // 2)
    res = CliRunner().invoke(app, ["ablate", str(model), "--tasks", str(tiny_suites(tmp_path / "s")), "--device", "cpu",
                                   "--no-controls"])
    assert res.exit_code == 3, res.output
    assert "cannot load model" in res.stderr and "Traceback" not in res.output
