"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), generated locally.

An example of length L with K key-value pairs: the context k1 v1 ... kK vK (keys from
[1, V/2), values from [V/2, V), K distinct of each), then (L - 2K)/2 query slots; key i is placed
at position 2K + 2 g_i, where the slots g_1, g_2, ... are drawn without replacement with
probability proportional to a (g + 1)^(a - 1) (power_a = 0.01: queries cluster early). The label
at each query position is the queried key's value (the model must emit v_i while reading k_i);
every other label is -100. Token 0 is filler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from arch.config import Bounds, ConfigError, bounded, check_bounds, from_mapping
from data.stream import stream_loader


@dataclass
class MQARSlice:
    """One (sequence length, kv pairs) setting with its number of examples."""

    seq_len: int = bounded(gt=0)
    num_kv_pairs: int = bounded(gt=0)
    num_examples: int = bounded(gt=0)

    @property
    def name(self) -> str:
        return f"L{self.seq_len}_K{self.num_kv_pairs}"


def check_mqar(vocab_size: int, seq_len: int, num_kv_pairs: int) -> None:
    """The generator's requirements: L even, V > L, 4K <= L."""
    if seq_len % 2 or vocab_size <= seq_len or 4 * num_kv_pairs > seq_len:
        raise ConfigError(
            f"MQAR slice L={seq_len}, K={num_kv_pairs} with vocab {vocab_size} is invalid: it needs an even L, "
            f"vocab_size > L and 4K <= L."
        )


def _distinct(n: int, low: int, high: int, k: int, gen: torch.Generator, block: int = 4096) -> torch.Tensor:
    """[n, k] tokens from [low, high), k distinct per row, uniformly (top-k of uniform noise), in blocks of rows to bound memory."""
    return torch.cat([torch.rand(min(block, n - i), high - low, generator=gen).topk(k, dim=1).indices + low for i in range(0, n, block)])


def generate_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate MQAR examples: (input_ids [N, L] int64, labels [N, L] int64 with -100 off queries)."""
    check_mqar(vocab_size, seq_len, num_kv_pairs)
    gen = torch.Generator().manual_seed(seed)
    n, k, half = num_examples, num_kv_pairs, vocab_size // 2
    keys = _distinct(n, 1, half, k, gen)
    values = _distinct(n, half, vocab_size, k, gen)
    slots = (seq_len - 2 * k) // 2
    # Sequential weighted sampling without replacement == ordering by Gumbel-perturbed log weights,
    # so key i (in context order) goes to the i-th drawn slot, as in the reference generator.
    g = torch.arange(slots, dtype=torch.float64)
    log_w = torch.log(torch.tensor(power_a, dtype=torch.float64)) + (power_a - 1) * torch.log(g + 1)
    gumbel = -torch.log(-torch.log(torch.rand(n, slots, generator=gen, dtype=torch.float64).clamp_min(1e-300)))
    drawn = (log_w + gumbel).topk(k, dim=1).indices  # [N, K], in draw order
    if random_non_queries:
        inputs = torch.randint(0, vocab_size, (n, seq_len), generator=gen)
    else:
        inputs = torch.zeros(n, seq_len, dtype=torch.long)
    inputs[:, 0 : 2 * k : 2] = keys
    inputs[:, 1 : 2 * k : 2] = values
    query_pos = 2 * k + 2 * drawn
    if random_non_queries:  # the token after each query position must not hand out the answer either
        inputs[:, 2 * k + 1 :: 2] = torch.randint(0, vocab_size, (n, slots), generator=gen)
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((n, seq_len), -100, dtype=torch.long)
    labels.scatter_(1, query_pos, values)
    return inputs, labels


def parse_slice(name: str) -> tuple[int, int]:
    """'L64_K4' -> (64, 4)."""
    import re

    match = re.fullmatch(r"L(\d+)_K(\d+)", name)
    if not match:
        raise ConfigError(f"data.slice={name!r} is not of the form 'L<seq_len>_K<kv_pairs>', e.g. 'L64_K4'.")
    return int(match[1]), int(match[2])


class MQARDataModule(pl.LightningDataModule):
    """Train on a mixture of (L, K) slices, validate on each test slice separately.

    ``slice='L128_K8'`` is shorthand for one training and one test slice of that setting (with
    ``num_train_examples`` / ``num_test_examples``): a single scalar, so a Hydra sweep can range
    over (L, K) pairs (``data.slice=L64_K4,L128_K8``).

    Training examples are padded to the longest training L with filler 0 and label -100.
    Test slices are generated from a different seed than training, so they are fresh examples.

    ``batch_tokens`` (instead of ``batch_size``) sets the training batch to that many tokens at the
    longest training L (batch_tokens // L sequences), so that a sweep over L keeps the tokens per step,
    and the labelled queries per step, comparable: Zoology also uses larger batches for shorter L.
    """

    is_recall = True

    def __init__(
        self,
        vocab_size: int = 8192,
        train_slices: list[Any] | None = None,
        test_slices: list[Any] | None = None,
        slice: str | None = None,
        num_train_examples: int = 100_000,
        num_test_examples: int = 3_000,
        power_a: float = 0.01,
        random_non_queries: bool = False,
        batch_size: int = 64,
        batch_tokens: int | None = None,
        eval_batch_size: int = 256,
        num_workers: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        for key, value, bounds in (
            ("vocab_size", vocab_size, Bounds(gt=0)),
            ("batch_size", batch_size, Bounds(gt=0)),
            ("eval_batch_size", eval_batch_size, Bounds(gt=0)),
            ("num_train_examples", num_train_examples, Bounds(gt=0)),
            ("num_test_examples", num_test_examples, Bounds(gt=0)),
            ("power_a", power_a, Bounds(gt=0)),
            ("num_workers", num_workers, Bounds(ge=0)),
        ):
            check_bounds("data", key, value, bounds)
        if slice is not None:
            if train_slices or test_slices:
                raise ConfigError(
                    "data.slice and data.train_slices/test_slices both set: use one (slice='L64_K4' trains and tests on that one setting)."
                )
            seq_len, num_kv_pairs = parse_slice(slice)
            train_slices = [{"seq_len": seq_len, "num_kv_pairs": num_kv_pairs, "num_examples": num_train_examples}]
            test_slices = [{"seq_len": seq_len, "num_kv_pairs": num_kv_pairs, "num_examples": num_test_examples}]
        train_slices = train_slices or [{"seq_len": 64, "num_kv_pairs": 4, "num_examples": 100_000}]
        test_slices = test_slices or [{"seq_len": 64, "num_kv_pairs": 4, "num_examples": 1_000}]
        self.train_slices = [from_mapping(MQARSlice, dict(s), f"data.train_slices[{i}]") for i, s in enumerate(train_slices)]
        self.test_slices = [from_mapping(MQARSlice, dict(s), f"data.test_slices[{i}]") for i, s in enumerate(test_slices)]
        for s in self.train_slices + self.test_slices:
            check_mqar(vocab_size, s.seq_len, s.num_kv_pairs)
        if batch_tokens is not None:
            longest = max(s.seq_len for s in self.train_slices)
            if not isinstance(batch_tokens, int) or batch_tokens < longest:
                raise ConfigError(
                    f"data.batch_tokens={batch_tokens!r} must be an int of at least the longest training length ({longest}); "
                    f"or set it to null and use data.batch_size."
                )
            batch_size = batch_tokens // longest
        self.vocab_size, self.power_a, self.random_non_queries = vocab_size, power_a, random_non_queries
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.val_slices = [s.name for s in self.test_slices]
        self.train_data = None

    def _make(self, s: MQARSlice, seed: int):
        return generate_mqar(s.num_examples, s.seq_len, s.num_kv_pairs, self.vocab_size, self.power_a, self.random_non_queries, seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        width = max(s.seq_len for s in self.train_slices)
        inputs, labels = [], []
        for i, s in enumerate(self.train_slices):
            x, y = self._make(s, seed=2 * (self.seed * 1000 + i))
            inputs.append(torch.nn.functional.pad(x, (0, width - s.seq_len), value=0))
            labels.append(torch.nn.functional.pad(y, (0, width - s.seq_len), value=-100))
        self.train_data = (torch.cat(inputs), torch.cat(labels))
        # odd seeds for test slices, even for training: the two never share a random stream
        self.test_data = [self._make(s, seed=2 * (self.seed * 1000 + i) + 1) for i, s in enumerate(self.test_slices)]

    def _train_batch(self, idx: torch.Tensor) -> dict:
        return {"input_ids": self.train_data[0][idx], "labels": self.train_data[1][idx]}

    def train_dataloader(self) -> DataLoader:
        return stream_loader(
            self.trainer, len(self.train_data[0]), self.batch_size, self._train_batch, seed=self.seed, num_workers=self.num_workers
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(TensorDataset(x, y), batch_size=self.eval_batch_size, shuffle=False, collate_fn=_collate) for x, y in self.test_data
        ]


def _collate(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    x, y = zip(*rows)
    return {"input_ids": torch.stack(x), "labels": torch.stack(y)}
