"""Module-level Lightning callbacks. The ``callbacks`` config group names them as ``_target_``
mappings (``conf/callbacks/default.yaml``), so a run can leave one out (``callbacks.progress=null``)
or add its own (``+callbacks.mine._target_=my_module.MyCallback``); the framework adds
`training.preemption.Preemption`, `FlushLogs` and, in tests, `StepDelay` itself.

A callback whose signature names ``dirpath`` (the run's checkpoint folder) or ``run_dir`` gets it
from the framework.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from arch.config import ConfigError
from training.peak import peak_flops


class Checkpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt`` every ``every_n_steps`` optimizer steps (the file a run resumes from;
    `training.checkpoint.AtomicCheckpointIO` keeps the one it replaces)."""

    def __init__(self, dirpath: str, every_n_steps: int = 200):
        if not isinstance(every_n_steps, int) or every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be a positive number of steps, got {every_n_steps!r}")
        super().__init__(
            dirpath=dirpath,
            filename="step{step}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_steps,
        )


class StopAtAccuracy(pl.Callback):
    """End training after the first validation whose ``mqar/accuracy`` is >= ``threshold``
    (Zoology's early stop); ``reached_at`` is then that step, and the run counts as finished."""

    def __init__(self, threshold: float = 0.99):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be an accuracy in (0, 1], e.g. 0.99; got {threshold!r}")
        self.threshold, self.reached_at = float(threshold), None

    def check_datamodule(self, datamodule) -> None:
        if not getattr(datamodule, "is_recall", False):
            raise ConfigError(
                "callbacks.stop_at_accuracy needs an MQAR dataset (data=mqar), whose validation measures mqar/accuracy; "
                "remove it for language-model data."
            )

    def on_validation_end(self, trainer, *args) -> None:
        accuracy = trainer.callback_metrics.get("mqar/accuracy")
        if trainer.sanity_checking or accuracy is None or float(accuracy) < self.threshold:
            return
        self.reached_at = trainer.global_step
        trainer.should_stop = True


class StopAfterSteps(pl.Callback):
    """End the process after ``steps`` optimizer steps, once ``<dirpath>/last.ckpt`` holds that step:
    a stand-in for preemption in tests and short sessions (the run is not finished; starting it
    again resumes it)."""

    def __init__(self, dirpath: str, steps: int):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"steps must be a positive number of optimizer steps, got {steps!r}")
        self.last, self.steps = Path(dirpath) / "last.ckpt", steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps and not trainer.should_stop:
            trainer.save_checkpoint(str(self.last), weights_only=False)
            trainer.should_stop = True


class StepDelay(pl.Callback):
    """Sleep ``seconds`` after each batch (``debug.step_delay_s``): lets tests interrupt a tiny run
    mid-way. Added before `Preemption`, which then sees a signal that came during the sleep."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


class FlushLogs(pl.Callback):
    """The step a checkpoint holds is sent to the loggers just after the save: write it (and
    everything before it) to disk at the next batch, so that a kill -9 loses no logged step that a
    checkpoint holds."""

    def __init__(self) -> None:
        self._pending = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer, *args) -> None:
        if self._pending:
            for logger in trainer.loggers:
                flush = getattr(logger.experiment, "flush", None)
                if callable(flush):
                    flush()
            self._pending = False


class Throughput(pl.Callback):
    """``train/tokens_per_sec`` between consecutive optimizer steps, and ``train/mfu`` = tokens/s x
    training FLOPs per token (`arch.flops`) / (peak x devices). The peak (`training.peak`):
    ``peak_flops`` when given, else a known GPU's data-sheet peak at the trainer's precision, else on
    a CPU this machine's float32 matmul peak, measured once and cached under ``cache_dir``."""

    def __init__(self, peak_flops: float | None = None, cache_dir: str | None = None):
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be > 0 (FLOP/s per device) or null, got {peak_flops!r}")
        self.peak_flops, self.cache_dir = peak_flops, cache_dir
        self._last: float | None = None
        self._peak: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._peak = peak_flops(self.peak_flops, pl_module.device, str(trainer.precision), self.cache_dir)
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        n_tokens = batch["input_ids"].numel() * trainer.world_size
        if self._last is not None:
            tps = n_tokens / (now - self._last)
            metrics = {"step": float(trainer.global_step), "train/tokens_per_sec": tps}
            fpt = getattr(pl_module, "flops_per_token", None)
            if self._peak and fpt:
                metrics["train/mfu"] = tps * fpt / (self._peak * trainer.world_size)
            pl_module.log_dict(metrics, on_step=True, batch_size=batch["input_ids"].shape[0])
            pl_module.last_tokens_per_sec = tps
        self._last = now


class Progress(pl.Callback):
    """One progress bar in optimizer steps out of ``max_steps``, with the loss, tokens/s and the last
    validation loss (Lightning's own bar counts batches of an epoch and prints validation bars)."""

    def __init__(self, refresh_s: float = 0.5):
        self.refresh_s = refresh_s
        self._bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        if not trainer.is_global_zero:
            return
        self._bar = tqdm(
            total=trainer.max_steps,
            initial=trainer.global_step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=self.refresh_s,
            disable=os.environ.get("MIXERLAB_PROGRESS", "1") == "0",
        )

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self._bar is None:
            return
        info = {}
        loss = trainer.callback_metrics.get("loss")
        if loss is not None:
            info["loss"] = f"{float(loss):.3f}"
        tps = getattr(pl_module, "last_tokens_per_sec", None)
        if tps:
            info["tok/s"] = f"{tps:,.0f}"
        val = trainer.callback_metrics.get("val/loss")
        if val is not None and math.isfinite(float(val)):
            info["val"] = f"{float(val):.3f}"
        self._bar.set_postfix(info, refresh=False)
        if trainer.global_step >= trainer.max_steps:  # the last state is drawn once, by close()
            self._bar.n = trainer.global_step
            self.on_train_end(trainer, pl_module)
        else:
            self._bar.update(trainer.global_step - self._bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


def probe_examples(loader, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``batch`` examples of a validation loader (the first one of a list): token ids and,
    where some positions are unlabelled (-100, MQAR's queries), their labels; None for text, whose
    next-token labels the probes make themselves."""
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    rows = []
    for b in loader:
        rows.append(b)
        if sum(r["input_ids"].shape[0] for r in rows) >= batch:
            break
    ids = torch.cat([r["input_ids"] for r in rows])[:batch]
    labels = torch.cat([r["labels"] for r in rows])[:batch] if "labels" in rows[0] else None
    return ids, labels if labels is not None and (labels == -100).any() else None


class Probes(pl.Callback):
    """Probe scalars (`eval.probes`) logged to TensorBoard under ``probe/<metric>/layer<i>`` every
    ``every_n_steps`` optimizer steps (and before the first), on a fixed probe batch: the first
    ``batch`` validation examples (MQAR: with their query labels), cut to ``seq_len`` tokens when set.
    ``probes``: a list among sink, entropy, massive, rank, retrieval, induction (default the first
    four; ablation is left to the evaluator: one forward per head). Per layer it logs the mean over heads and, for
    sink_ratio, retrieval and induction, the max. Runs on global rank 0 only, in eval mode, without
    gradients; training resumes in train mode."""

    LOGGED = ("sink", "entropy", "massive", "rank", "retrieval", "induction")

    def __init__(
        self,
        every_n_steps: int = 100,
        probes: list[str] | None = None,
        batch: int = 4,
        seq_len: int | None = None,
        min_pos: int = 128,
    ):
        chosen = ["sink", "entropy", "massive", "rank"] if probes is None else list(probes)
        bad = sorted(set(chosen) - set(self.LOGGED))
        if bad or not chosen:
            raise ConfigError(f"callbacks.probes.probes={probes!r}: choose a list among {', '.join(self.LOGGED)} (got {bad or 'none'}).")
        if every_n_steps < 1 or batch < 1 or min_pos < 1 or (seq_len is not None and seq_len < 8):
            raise ConfigError("callbacks.probes: every_n_steps, batch and min_pos must be >= 1 and seq_len >= 8 or null.")
        self.every_n_steps, self.probes, self.batch, self.seq_len, self.min_pos = every_n_steps, chosen, batch, seq_len, min_pos
        self._ids = self._labels = None
        self._last_step: int | None = None
        self.seconds = 0.0  # time spent probing, for the overhead measurement
        self.passes = 0
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
        ids, labels = probe_examples(loader, self.batch)
        if self.seq_len is not None:
            ids = ids[:, : self.seq_len]
            labels = None if labels is None else labels[:, : self.seq_len]
        self._ids, self._labels = ids.to(pl_module.device), None if labels is None else labels.to(pl_module.device)
        self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def _probe(self, trainer, pl_module) -> None:
        from arch.probe import probe_model

        step = trainer.global_step
        if not trainer.is_global_zero or self._ids is None or step == self._last_step:
            return
        self._last_step = step
        start = time.perf_counter()
        model = pl_module.model
        was_training = model.training
        try:
            result = probe_model(model, self._ids, self._labels, self.probes, min_pos=self.min_pos)
        finally:
            model.train(was_training)
        scalars = {}
        for i, row in result["layers"].items():
            for key, values in row.items():
                if isinstance(values, list) and values:
                    scalars[f"probe/{key}/layer{i}"] = sum(values) / len(values)
                    if key in ("sink_ratio", "retrieval", "induction"):
                        scalars[f"probe/{key}_max/layer{i}"] = max(values)
                elif isinstance(values, dict) and "top" in values:
                    scalars[f"probe/{key}_ratio/layer{i}"] = values["top"][0]["ratio"]
        for i, m in result.get("massive", {}).items():
            scalars[f"probe/massive_ratio/layer{i}"] = m["top"][0]["ratio"]
        for i, r in result.get("effective_rank", {}).items():
            scalars[f"probe/effective_rank/layer{i}"] = r
        logger = trainer.logger
        if logger is not None:
            logger.log_metrics(scalars, step=step)
        self.seconds += time.perf_counter() - start
        self.passes += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.passes:
            total = time.perf_counter() - self._start
            print(
                f"Probes: {self.passes} passes took {self.seconds:.1f} s, {100 * self.seconds / max(total, 1e-9):.1f}% of the "
                f"{total:.0f} s of training.",
                file=sys.stderr,
            )
