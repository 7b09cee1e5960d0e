"""`engram hash`: the engram.hash/1 JSON contract and its inputs."""

import json

import numpy as np
import pytest

from engram_cli.layout.store import save_layout


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory, v41_layout):
    d = tmp_path_factory.mktemp("layout")
    save_layout(v41_layout, d)
    return d


def test_json_contract_from_ids(cli, layout_dir, v41_layout):
    res = cli("hash", "--ids", "671,6102,294,8760", "--layout", str(layout_dir), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc) == ["schema", "variant", "layer_ids", "columns", "layers", "tokens", "compressed", "local_ids", "global_ids"]
    assert doc["schema"] == "engram.hash/1" and doc["variant"] == "deepseek-v4.1"
    assert doc["layer_ids"] == [1, 14]
    assert doc["columns"][:2] == [{"order": 2, "head": 0}, {"order": 2, "head": 1}]
    assert len(doc["columns"]) == 24 and doc["columns"][-1] == {"order": 4, "head": 7}
    g = np.asarray(doc["global_ids"])
    assert g.shape == (4, 2, 24)
    expected = v41_layout.hash(np.array([671, 6102, 294, 8760]))
    np.testing.assert_array_equal(g, expected.global_)
    np.testing.assert_array_equal(np.asarray(doc["local_ids"]), expected.local)
    assert doc["compressed"] == [int(x) for x in expected.compressed]


def test_text_file_and_preset_agree(cli, tmp_path, layout_dir):
    text = "The capital of France is Paris."
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    a = json.loads(cli("hash", "--text", text, "--json").stdout)  # default preset + bundled tokenizer
    b = json.loads(cli("hash", "--file", str(f), "--layout", str(layout_dir), "--json").stdout)
    assert a["tokens"] == [671, 6102, 294, 8760, 344, 11111, 16]
    assert a == b


def test_dead_tokens_and_sequence_starts(cli, layout_dir, v41_layout):
    ids = [671, 6102, 294, 8760, 344, 11111, 16]
    doc = json.loads(cli("hash", "--ids", ",".join(map(str, ids)), "--layout", str(layout_dir),
                         "--dead-token", "294", "--seq-start", "5", "--json").stdout)
    arr = np.array(ids)
    expected = v41_layout.hash(arr, seq_starts=[5], dead_mask=arr == 294)
    np.testing.assert_array_equal(np.asarray(doc["global_ids"]), expected.global_)
    assert doc["dead_tokens"] == [294] and doc["seq_starts"] == [5]
    plain = v41_layout.hash(arr)
    assert not np.array_equal(expected.global_[3], plain.global_[3])


def test_human_table(cli, layout_dir):
    res = cli("hash", "--text", "Paris", "--layout", str(layout_dir))
    assert res.exit_code == 0
    assert "layer 1" in res.stdout and "layer 14" in res.stdout and "4-gram" in res.stdout


def test_bad_inputs(cli, tmp_path, layout_dir):
    cases = [
        (["hash"], 2, "exactly one"),
        (["hash", "--ids", "1,x"], 2, "integers"),
        (["hash", "--ids", "1", "--text", "a"], 2, "exactly one"),
        (["hash", "--ids", "999999", "--layout", str(layout_dir)], 3, "outside"),
        (["hash", "--ids", "1", "--layout", str(tmp_path / "none")], 3, "not found"),
        (["hash", "--file", str(tmp_path / "none.txt")], 3, "not found"),
        (["hash", "--ids", "1", "--preset", "x"], 2, "is not one of"),  # an enum since the conventions change
        (["hash", "--ids", "1", "--seq-start", "5"], 2, "sequence start"),
    ]
    for args, code, needle in cases:
        res = cli(*args)
        assert res.exit_code == code, (args, res.output)
        assert needle in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.output
