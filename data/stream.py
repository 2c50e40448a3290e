"""A deterministic, resumable stream of training batches.

Global batch ``g`` holds samples ``g * B * world + [0, B * world)`` of an endless sequence that
visits every example once per epoch in a seeded random order (a fresh permutation each epoch).
Rank ``r`` takes its ``B`` consecutive samples of that global batch. The stream can start at any
batch, so resuming at optimizer step s (after s * accumulate batches) continues exactly where the
interrupted run was, and a run on 2 processes sees the same samples per step as one process with
twice the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info


class EpochPermutation:
    """Maps a global sample index to an example index: epoch e = i // n uses permutation seed + e."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(index)
        for epoch in index.div(self.n, rounding_mode="floor").unique().tolist():
            if epoch != self._epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
            sel = index.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm[index[sel] % self.n]
        return out


class BatchStream(IterableDataset):
    """Endless iterable of batches; use with ``DataLoader(stream, batch_size=None)``.

    make_batch(example_indices: LongTensor[B]) -> dict of tensors. With DataLoader workers, worker
    w produces batches w, w + n_workers, ..., which the DataLoader interleaves back in order.
    """

    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        make_batch: Callable[[torch.Tensor], dict],
        *,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.perm = EpochPermutation(n_examples, seed)
        self.batch_size, self.make_batch = batch_size, make_batch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def batch_indices(self, g: int) -> torch.Tensor:
        first = (g * self.world_size + self.rank) * self.batch_size
        return self.perm(torch.arange(first, first + self.batch_size))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        g = self.start_batch + worker
        while True:
            yield self.make_batch(self.batch_indices(g))
            g += n_workers


def stream_loader(trainer, n_examples: int, batch_size: int, make_batch, *, seed: int, num_workers: int | None = None):
    """The training DataLoader of a DataModule attached to ``trainer``: starts at the batch that
    follows the restored optimizer step, with this process's rank and the world size."""
    from torch.utils.data import DataLoader

    start = 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches
    rank, world = (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)
    stream = BatchStream(n_examples, batch_size, make_batch, seed=seed, start_batch=start, rank=rank, world_size=world)
    # page-locked host batches when the trainer trains on a GPU: their copy to the device can overlap
    on_gpu = trainer is not None and getattr(getattr(trainer, "strategy", None), "root_device", torch.device("cpu")).type == "cuda"
    if num_workers is None:  # sized to the machine: none beside CPU training, a few per GPU process
        num_workers = min(4, max(0, (os.cpu_count() or 1) // world - 1)) if on_gpu else 0
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False, pin_memory=on_gpu)
