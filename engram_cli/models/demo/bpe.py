"""Demo v2 tokenizer: a byte-level BPE trained with ``tokenizers`` on the training text only.

Why a small (8,192-id) vocabulary: at d = 192 the tied embedding and the LM head cost
``2 * V * d`` parameters and ``6 * V * d`` FLOPs per trained token; GPT-2's 50,257 ids made them
most of v1's compute and most of its weights (6.4 M of 13.4 M parameters), and most of those
ids occur too rarely in a ~3 M-character corpus to be learned. 8,192 ids cut that cost by 6x,
which buys training steps, while every id still occurs often enough to train. It is a real
byte-level BPE (GPT-2's pre-tokenizer regex and byte alphabet, so no text is out of vocabulary)
and the Engram tokenizer compression works on it as on DeepSeek's.

Deterministic: the trainer sees the texts in a fixed order, and merges tie-break by pair
(``tests/unit/test_demo_train.py`` trains it twice and compares the files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 8192


def train_bpe(texts: Iterable[str], vocab_size: int = VOCAB_SIZE, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (``<|endoftext|>`` is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def save_tokenizer(tok, out_dir: Path) -> Path:
    """``tokenizer.json`` + ``tokenizer_config.json`` (a transformers fast tokenizer) in ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"
