"""Shared fixtures: offline environment, the bundled tokenizer's token map, a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def deepseek_tokenizer():
    from engram_cli.layout import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="session")
def deepseek_token_map(deepseek_tokenizer):
    from engram_cli.layout import build_token_map

    return build_token_map(deepseek_tokenizer)


@pytest.fixture(scope="session")
def v41_layout(deepseek_token_map):
    from engram_cli.layout import layout_from_preset

    return layout_from_preset("deepseek-v4.1-flash", deepseek_token_map)


@pytest.fixture()
def cli():
    """Invoke ``engram`` in-process: ``cli("hash", "--ids", "1,2")`` -> click Result."""
    from typer.testing import CliRunner

    from engram_cli.cli.app import app

    runner = CliRunner()

    def invoke(*args: str, **kwargs):
        return runner.invoke(app, list(args), catch_exceptions=False, **kwargs)

    return invoke


# Property tests draw the same examples on every run (CI must not pass or fail by chance);
# HYPOTHESIS_PROFILE=explore draws fresh ones.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("repeatable", derandomize=True)
_hyp_settings.register_profile("explore", derandomize=False)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
