"""SLURM preemption: `Preemption` owns the requeue of a job. On the signal it saves ``last.ckpt`` at
the next optimizer-step boundary, runs ``scontrol requeue`` and stops; the requeued job starts in
the same run directory and resumes from that checkpoint (see slurm/README.md).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger("mixerlab")


def slurm_job_id() -> str | None:
    """The id that ``scontrol requeue`` takes for this job: ``<array job>_<task>`` in a job array."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(pl.Callback):
    """The one owner of checkpoint-and-requeue.

    The signal handler only records the signal (SIGUSR1 from our sbatch template, SIGUSR2 from
    submitit, which asks SLURM for that one; ours replaces submitit's handler, and Lightning's own
    requeue is off). At the next optimizer-step boundary the ranks agree (any rank signalled means
    all stop), save ``last`` (all ranks, as a checkpoint of a sharded model needs), then rank 0
    requeues the job when running under SLURM, and training stops. A SIGTERM (scancel, a requeue
    by an administrator, a preemption with a grace time) also saves ``last``, without requeueing:
    SLURM decides whether that job comes back.
    """

    def __init__(self, last: Path, signals: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2), requeue: bool = True):
        self.last, self.signals, self.requeue = last, signals, requeue
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._step = -1
        self._previous: dict = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_fit_start(self, trainer, pl_module) -> None:
        self._step = trainer.global_step
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self._step:  # inside a gradient accumulation: not a resumable point
            return
        self._step = trainer.global_step
        flags = torch.tensor([self.received is not None, trainer.received_sigterm], dtype=torch.float32)
        if trainer.world_size > 1:  # one small all-reduce per step: signals reach ranks at different times
            flags = trainer.strategy.reduce(flags.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        requeue, terminate = bool(flags[0] > 0), bool(flags[1] > 0)
        if not (requeue or terminate) or trainer.should_stop:
            return
        trainer.save_checkpoint(str(self.last), weights_only=False)
        self.stopped_at = trainer.global_step
        job = slurm_job_id()
        why = signal.Signals(self.received).name if self.received else ("a requeue signal" if requeue else "SIGTERM")
        if requeue and self.requeue and job is not None and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.info("%s: saved %s at step %d and requeued SLURM job %s.", why, self.last, trainer.global_step, job)
            else:
                log.error(
                    "%s: saved %s at step %d, but `scontrol requeue %s` failed: %s",
                    why,
                    self.last,
                    trainer.global_step,
                    job,
                    result.stderr.strip(),
                )
        elif trainer.is_global_zero:
            log.info("%s: saved %s at step %d; start the same run again to resume it.", why, self.last, trainer.global_step)
        trainer.should_stop = True
