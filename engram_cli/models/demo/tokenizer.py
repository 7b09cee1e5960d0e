"""The demo model's tokenizer: GPT-2's byte-level BPE (50,257 ids), from ``openai-whisper``.

Why GPT-2: it is a real, widely used byte-level BPE (the same family as DeepSeek's, so the
Engram tokenizer compression behaves the same way), it is MIT-licensed, and it installs
offline from a 0.8 MB PyPI sdist (``pip install --no-deps openai-whisper==20250625``), whose
``whisper/assets/gpt2.tiktoken`` holds the 50,256 ranks. Its 50k vocabulary keeps the tied
embedding at ~6.4M parameters for d=128, so the bundled model fits the 30 MB budget with
Engram tables larger than the backbone; DeepSeek's 129k vocabulary would not.

The file is converted once (``transformers``' TikTokenConverter, verified id-for-id against
tiktoken in shared/reference/assets.md) and shipped as ``tokenizer.json`` in the model folder,
so loading the model never needs whisper.
"""

from __future__ import annotations

from pathlib import Path

from engram_cli.models.demo.wikitext import package_dir

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOS_TOKEN = "<|endoftext|>"


def write_gpt2_tokenizer(out_dir: Path) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` for GPT-2 into ``out_dir``."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = package_dir("whisper") / "assets" / "gpt2.tiktoken"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=GPT2_PATTERN,
                            extra_special_tokens=[EOS_TOKEN]).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"
