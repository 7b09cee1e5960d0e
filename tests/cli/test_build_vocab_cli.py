"""`engram build-vocab` end to end, and its bad-input contract."""

import json
import subprocess
import sys

from engram_cli.layout import load_layout


def test_default_run_writes_layout_atomically(cli, tmp_path):
    out = tmp_path / "layout"
    res = cli("build-vocab", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "engram.build-vocab/1"
    assert doc["vocab_size"] == 129_280 and doc["compressed_vocab_size"] == 99_092
    assert doc["reduction_pct"] == 23.35
    assert doc["largest_classes"][0]["size"] == 163
    assert [layer["rows"] for layer in doc["layers"]] == [384_006_168, 384_016_682]
    assert [layer["table_bytes"] for layer in doc["layers"]] == [101_377_628_352, 101_380_404_048]
    assert all(c["ok"] for c in doc["validation"])
    assert sorted(p.name for p in out.iterdir()) == ["engram_layout.json", "token_map.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    layout = load_layout(out)
    assert layout.token_map.shape == (129_280,)
    assert layout.tokenizer["fingerprint"] == doc["tokenizer"]["fingerprint"]


def test_human_output_and_formats(cli, tmp_path):
    res = cli("build-vocab", "-o", str(tmp_path / "n"), "--format", "npy")
    assert res.exit_code == 0
    assert "99,092" in res.stdout and "23.35" in res.stdout and "MISMATCH" not in res.stdout
    assert (tmp_path / "n" / "token_map.npy").is_file()
    res = cli("build-vocab", "-o", str(tmp_path / "n"), "--format", "json")
    assert res.exit_code == 2 and "not empty" in res.stderr
    res = cli("build-vocab", "-o", str(tmp_path / "n"), "--format", "json", "--force")
    assert res.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["engram_layout.json", "token_map.json"]
    assert len(json.loads((tmp_path / "n" / "token_map.json").read_text())) == 129_280


def test_config_mismatch_is_exit_3_with_both_numbers(cli, tmp_path):
    from engram_cli.layout import PRESETS

    cfg = dict(PRESETS["deepseek-v4.1-flash"], engram_num_embeddings=[384_006_000, 384_016_682])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"text_config": cfg}))
    out = tmp_path / "o"
    res = cli("build-vocab", "--config", str(path), "-o", str(out))
    assert res.exit_code == 3
    assert "384,006,168" in res.stderr and "384,006,000" in res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_one_line_errors(cli, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    no_engram = tmp_path / "config.json"
    no_engram.write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    cases = [
        (["build-vocab", str(tmp_path / "missing.json")], 3, "not found"),
        (["build-vocab", str(junk)], 3, "not a tokenizer.json"),
        (["build-vocab", "--config", str(no_engram)], 3, "no Engram fields"),
        (["build-vocab", "--preset", "nope"], 2, "is not one of"),  # an enum since the conventions change
        (["build-vocab", "--format", "xml"], 2, "xml"),
        (["build-vocab", "--preset", "deepseek-v4.1-flash", "--config", str(no_engram)], 2, "either"),
    ]
    for args, code, needle in cases:
        res = cli(*args, "-o", str(tmp_path / "out"))
        assert res.exit_code == code, (args, res.output)
        assert needle in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.output
        assert not (tmp_path / "out").exists()


def test_qwen_config_needs_no_tokenizer(cli, tmp_path):
    from tests.tiny_models import tiny_qwen4_exp_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_qwen4_exp_config().to_dict()))
    res = cli("build-vocab", "--config", str(path), "-o", str(tmp_path / "q"), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["variant"] == "qwen4-exp" and doc["compressed_vocab_size"] == 512
    assert load_layout(tmp_path / "q").token_map is None


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from engram_cli.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['--version'])\n"
        "assert 'engram' in r.output\n"
        "bad = [m for m in ('torch', 'transformers', 'safetensors', 'numpy', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_engram_debug_shows_traceback(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_DEBUG", "1")
    res = cli("build-vocab", str(tmp_path / "missing.json"))
    assert res.exit_code == 3
    assert "Traceback" in res.stderr
