"""House rules a green run must keep: one meaning per option name, layers and no import cycles,
small modules and functions, presets in step with the layout engine."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
import typer

from engram_cli.cli.app import app

PKG = Path(__file__).resolve().parents[2] / "engram_cli"
MAX_MODULE_LINES = 430  # "about 400"
MAX_FUNCTION_LINES = 80
# Allowed engram_cli sub-package imports per layer (ARCHITECTURE.md: arrows point down).
BOTTOM = {"errors", "progress", "fsutil", "reports", "jsonio", "pathguard", "compiled", "numba_bits", "__init__", "__main__"}
ALLOWED = {
    "cli": {"cli", "analysis", "analysis.stats", "offload", "models", "tables", "layout", "inspect"},
    "analysis": {"analysis", "analysis.stats", "models", "layout"},
    "offload": {"offload", "tables", "layout", "models", "analysis.stats"},
    "inspect": {"inspect", "tables", "layout"},
    "models": {"models", "tables", "layout"},
    "tables": {"tables", "layout"},
    "layout": {"layout"},
    "data": set(),
}
# Option names whose meaning is command-specific by design (checked to stay few).
COMMAND_SPECIFIC = {"-t",  # hash --text, ablate --tasks: short forms of command-specific options
                    "--dtype",  # hidden old spelling of --model-dtype (ablate) and --table-dtype (shard): why they were renamed
                    "--positions", "--tasks", "--texts", "--limit", "--mode", "--layers", "--rank", "--ranks", "--policy",
                    "--from", "--to", "--verify", "--source", "--spans", "--compare", "--top"}


def _walk(cmd, path=()):
    if isinstance(cmd, typer.core.TyperGroup) or hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, path + (name,))
    else:
        yield path, cmd


def _options():
    root = typer.main.get_command(app)
    seen = defaultdict(list)
    for path, cmd in _walk(root):
        for p in cmd.params:
            if getattr(p, "param_type_name", "") != "option":
                continue
            meaning = (p.help, repr(p.type_descriptor.annotation), p.hidden)
            for opt in p.opts:
                seen[opt].append((" ".join(path), meaning, tuple(p.opts)))
    return seen


def test_an_option_name_means_one_thing_everywhere():
    for opt, uses in _options().items():
        if opt in COMMAND_SPECIFIC:
            continue
        meanings = {m for _, m, _ in uses}
        assert len(meanings) == 1, (opt, [(c, m) for c, m, _ in uses])
        spellings = {names for _, _, names in uses}
        assert len(spellings) == 1, (opt, spellings)  # -o always comes with --output, etc.


def test_old_spellings_are_hidden_aliases():
    for opt, uses in _options().items():
        if opt in ("--out",):
            assert all(m[2] for _, m, _ in uses), uses  # hidden
    out_cmds = {c for c, _, _ in _options().get("--output", [])}
    assert {"build-vocab", "ablate", "shard convert"} <= out_cmds


def test_presets_enum_matches_layout_engine():
    from engram_cli.cli.options import Preset
    from engram_cli.layout.config import PRESETS

    assert {p.value for p in Preset} == set(PRESETS)


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        yield (name[: -len(".__init__")] if name.endswith(".__init__") else name), p


def _imports(path: Path, names: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("engram_cli"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in names else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("engram_cli")}
    return {m for m in out if m in names}


def _graph():
    mods = dict(_modules())
    return {n: _imports(p, set(mods)) - {n} for n, p in mods.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    if mod == "engram_cli.analysis.stats":
        return "analysis.stats"  # statistics live in one module that offload may use too
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down():
    bad = []
    for mod, deps in _graph().items():
        layer = _layer(mod)
        if layer == "__main__":
            continue  # `python -m engram_cli` runs the CLI
        if layer in BOTTOM:
            allowed = BOTTOM
        else:
            allowed = ALLOWED.get(layer, set()) | BOTTOM
        bad += [(mod, d) for d in deps if _layer(d) not in allowed]
    assert not bad, bad


def test_no_import_cycles_even_lazy_ones():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("name,path", list(_modules()))
def test_modules_and_functions_stay_small(name, path):
    src = path.read_text(encoding="utf-8")
    assert src.count("\n") <= MAX_MODULE_LINES, f"{name}: {src.count(chr(10))} lines"
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.body[0].lineno + 1  # the body: a Typer command's signature is its option list
            assert n <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {n} lines"


def test_no_click_import():
    for name, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "click" for a in node.names), name
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "click", name
