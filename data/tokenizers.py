"""Tokenizers: byte-level (default, nothing to download), a BPE trained on the training split with
the `tokenizers` library, and a tokenizer loaded from a local ``tokenizer.json``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from arch.config import ConfigError


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus an end-of-document token 256."""

    vocab_size = 257
    eos_id = 256
    spec = {"kind": "byte"}

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (trained here or loaded from a local file) behind the same interface."""

    def __init__(self, tokenizer, spec: dict, eos_token: str = "<|endoftext|>"):
        self.tok = tokenizer
        self.spec = spec
        self.vocab_size = tokenizer.get_vocab_size()
        eos = tokenizer.token_to_id(eos_token)
        if eos is None:
            raise ConfigError(
                f"The tokenizer {spec} has no end-of-document token {eos_token!r}, which mixerlab puts between documents. "
                f"Add it to the tokenizer's special tokens (tokenizers: add_special_tokens([{eos_token!r}])), or use data.tokenizer=bpe."
            )
        self.eos_id = eos

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


def train_bpe(texts: Iterator[str], vocab_size: int, path: Path) -> HFTokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save it to ``path`` (atomically)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return HFTokenizer(tok, {"kind": "bpe", "vocab_size": vocab_size})


def tokenizer_file(path: str) -> Path:
    """The ``tokenizer.json`` that ``path`` names (the file, or a folder holding one); a `ConfigError`
    when there is none."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(
            f"data.tokenizer={path!r}: the tokenizer file {p} does not exist. Set data.tokenizer to 'byte', 'bpe', "
            "or the path of an existing tokenizer.json (or of a folder holding one)."
        )
    return p


def load_tokenizer_file(path: str) -> HFTokenizer:
    """Load ``tokenizer.json`` (or a directory holding one) saved by the `tokenizers` library."""
    from tokenizers import Tokenizer

    p = tokenizer_file(path)
    return HFTokenizer(Tokenizer.from_file(str(p)), {"kind": "file", "path": str(p.resolve()), "size": p.stat().st_size})
