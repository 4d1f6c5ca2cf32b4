"""Byte-level BPE trained with the `tokenizers` library, saved for `AutoTokenizer.from_pretrained`.

Special tokens follow Pythia: `<|endoftext|>` = 0 (end of document, also bos/unk), `<|padding|>` = 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dynamics.files import atomic_path

EOD = "<|endoftext|>"
PAD = "<|padding|>"
EOD_ID, PAD_ID = 0, 1


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> None:
    """Train a byte-level BPE on `texts` and save it (atomically) as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD, PAD],  # ids 0 and 1, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOD) == EOD_ID and tok.token_to_id(PAD) == PAD_ID
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOD, eos_token=EOD, unk_token=EOD, pad_token=PAD
    )
    with atomic_path(out_dir) as tmp:
        wrapped.save_pretrained(tmp)
