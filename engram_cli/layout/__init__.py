"""The addressing contract: tokenizer compression, primes, offsets, multipliers and hashing."""

from engram_cli.layout.config import PRESETS, detect_variant, layout_from_config, layout_from_preset, read_config
from engram_cli.layout.hashing import HashIds
from engram_cli.layout.layout import VARIANTS, EngramLayout
from engram_cli.layout.store import LAYOUT_FILE, load_layout, save_layout
from engram_cli.layout.tokenizer import TokenMap, build_token_map, load_tokenizer

__all__ = [
    "EngramLayout",
    "HashIds",
    "LAYOUT_FILE",
    "PRESETS",
    "TokenMap",
    "VARIANTS",
    "build_token_map",
    "detect_variant",
    "layout_from_config",
    "layout_from_preset",
    "load_layout",
    "load_tokenizer",
    "read_config",
    "save_layout",
]
