"""A litgpt `DataModule` over the token arrays `eval.litgpt_side` exports from mixerlab's data module.

This file is imported by litgpt's ``pretrain`` in litgpt's own environment (``--data
litgpt_data.ExportedTokens``), never by mixerlab: it needs ``litgpt``. Batches are windows of
``max_seq_length + 1`` tokens cut from the exported training stream exactly as mixerlab's text data
module cuts them (window i = tokens[i T : i T + T + 1]), shuffled, so both sides read the same
tokenizer's tokens in batches of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from litgpt.data import DataModule
from torch.utils.data import DataLoader, Dataset


class _Windows(Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = torch.from_numpy(tokens), seq_len
        self.n = (len(tokens) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1]


@dataclass
class ExportedTokens(DataModule):
    folder: str = "."
    seed: int = 0
    batch_size: int = field(default=1, init=False, repr=False)
    seq_len: int = field(default=-1, init=False, repr=False)

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int = -1) -> None:
        self.batch_size, self.seq_len = batch_size, max_seq_length

    def setup(self, stage: str = "") -> None:
        self.train = _Windows(np.load(f"{self.folder}/train.npy"), self.seq_len)
        self.val = _Windows(np.load(f"{self.folder}/val.npy"), self.seq_len)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=generator, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)
