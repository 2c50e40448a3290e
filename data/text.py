"""Language-modelling data: the embedded corpus (default), local files, or a `datasets` dataset,
tokenised once into a cached packed file and served as windows of ``seq_len + 1`` tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from arch.config import Bounds, check_bounds
from data.corpus import Corpus, DataError, cache_key, dataset_corpus, load_packed, pack, stdlib_corpus
from data.stream import stream_loader
from data.tokenizers import ByteTokenizer, load_tokenizer_file, tokenizer_file, train_bpe


class _Windows(Dataset):
    """Non-overlapping windows of a token file: input = w[:-1], labels = w[1:]."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: torch.Tensor) -> dict:
        rows = np.stack([self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in indices.tolist()])
        w = torch.from_numpy(rows.astype(np.int64))
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in self.batch(torch.tensor([i])).items()}


class TextDataModule(pl.LightningDataModule):
    """Next-token prediction on packed text.

    source: 'stdlib' (the Python standard library's sources, always present), 'files' (``paths``:
    .txt / .jsonl / .parquet files or globs) or 'hf' (``dataset``: a dataset name, or a local folder
    saved with ``save_to_disk``). tokenizer: 'byte', 'bpe' (trained on the train split with
    ``bpe_vocab_size`` tokens) or the path of a ``tokenizer.json``.
    """

    val_slices = ["val"]

    def __init__(
        self,
        source: Literal["stdlib", "files", "hf"] = "stdlib",
        paths: list[str] | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        split: str = "train",
        text_column: str = "text",
        tokenizer: str = "byte",
        bpe_vocab_size: int = 4096,
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.02,
        val_batches: int = 20,
        max_files: int | None = None,
        num_workers: int | None = None,
        seed: int = 0,
        cache_dir: str = "~/.cache/mixerlab",
    ):
        super().__init__()
        for key, value, bounds in (
            ("seq_len", seq_len, Bounds(gt=0)), ("batch_size", batch_size, Bounds(gt=0)), ("val_batches", val_batches, Bounds(gt=0)),
            ("val_fraction", val_fraction, Bounds(gt=0, lt=1)), ("bpe_vocab_size", bpe_vocab_size, Bounds(gt=256)),
            ("max_files", max_files, Bounds(gt=0)), ("num_workers", num_workers, Bounds(ge=0)),
        ):
            check_bounds("data", key, value, bounds)
        if tokenizer not in ("byte", "bpe"):
            tokenizer_file(tokenizer)  # a missing file is a config error now, not after the corpus is read
        if source == "files" and not paths:
            raise DataError("data.source=files needs data.paths: a list of local files or glob patterns.")
        if source == "hf" and not dataset:
            raise DataError("data.source=hf needs data.dataset: a dataset name or a local dataset folder.")
        self.cache_dir = Path(cache_dir).expanduser()
        if source == "stdlib":
            self.corpus: Corpus = stdlib_corpus(val_fraction, max_files)
        else:
            self.corpus = dataset_corpus(
                val_fraction,
                paths=paths if source == "files" else None,
                dataset=dataset if source == "hf" else None,
                dataset_config=dataset_config,
                split=split,
                text_column=text_column,
                cache_dir=str(self.cache_dir / "datasets"),
            )
        self.tokenizer_name, self.bpe_vocab_size = tokenizer, bpe_vocab_size
        self.seq_len, self.batch_size, self.val_batches = seq_len, batch_size, val_batches
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.meta: dict | None = None

    def _load_tokenizer(self):
        if self.tokenizer_name == "byte":
            return ByteTokenizer()
        if self.tokenizer_name == "bpe":
            path = self.cache_dir / "tokenizers" / f"bpe-{cache_key(self.corpus.fingerprint, {'vocab': self.bpe_vocab_size})}.json"
            if path.exists():
                tok = load_tokenizer_file(str(path))
                tok.spec = {"kind": "bpe", "vocab_size": self.bpe_vocab_size}
                return tok
            path.parent.mkdir(parents=True, exist_ok=True)
            return train_bpe(self.corpus.documents("train"), self.bpe_vocab_size, path)
        return load_tokenizer_file(self.tokenizer_name)

    @property
    def packed_dir(self) -> Path:
        return self.cache_dir / "packed" / cache_key(self.corpus.fingerprint, self.tokenizer.spec)

    def prepare_data(self) -> None:
        """Train/load the tokenizer and pack the corpus unless the cache already holds it."""
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        pack(self.corpus, self.tokenizer, self.packed_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        self.prepare_data()
        self.meta, tokens = load_packed(self.packed_dir)
        self.train_windows = _Windows(tokens["train"], self.seq_len)
        self.val_windows = _Windows(tokens["val"], self.seq_len)
        if len(self.train_windows) < 1 or len(self.val_windows) < 1:
            raise DataError(
                f"The corpus is too small for data.seq_len={self.seq_len} (train {len(tokens['train'])}, val {len(tokens['val'])} tokens); "
                "lower seq_len or add data."
            )

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return self.tokenizer.vocab_size

    @property
    def bytes_per_token(self) -> float:
        return self.meta["val"]["bytes"] / self.meta["val"]["tokens"]

    @property
    def unigram_entropy(self) -> float:
        return self.meta["unigram_entropy"]

    def train_dataloader(self) -> DataLoader:
        return stream_loader(
            self.trainer, len(self.train_windows), self.batch_size, self.train_windows.batch, seed=self.seed, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        # the first val_batches * batch_size windows, in order: the same tokens at every evaluation
        n = min(len(self.val_windows), self.val_batches * self.batch_size)
        subset = torch.utils.data.Subset(self.val_windows, range(n))
        return DataLoader(subset, batch_size=self.batch_size, shuffle=False)

    def val_bits_per_byte(self, loss_nats: float) -> float:
        return loss_nats / math.log(2) / self.bytes_per_token
