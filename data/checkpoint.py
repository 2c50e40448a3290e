"""Checkpoints that survive kills, corruption and preemption.

- `AtomicCheckpointIO` writes ``<path>.tmp-<pid>``, fsyncs it, keeps the file it replaces as
  ``<stem>.previous.ckpt`` and renames the new one over ``path``: a kill during a save never leaves
  a broken ``last.ckpt``, and a damaged ``last.ckpt`` still has a good predecessor.
- `find_resume_checkpoint` picks the newest complete checkpoint of a run and says why it skipped one.
- `Preemption` owns the requeue of a SLURM job: on the signal it saves ``last.ckpt`` at the next
  optimizer-step boundary, runs ``scontrol requeue`` and stops; the requeued job starts in the same
  run directory and resumes from that checkpoint.
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
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger("mixerlab")

# what a Lightning training checkpoint holds; a file without one of these cannot resume a run
REQUIRED_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "loops")


class CheckpointError(RuntimeError):
    pass


def previous_path(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept: ``last.ckpt`` -> ``last.previous.ckpt``."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to ``<path>.tmp-<pid>``, fsync, keep the old ``path`` as `previous_path`, then rename the
    new file over ``path`` (atomic on POSIX filesystems). ``path`` exists at every instant once
    written: the previous file is kept through a hard link (a rename where links are unsupported)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        if not isinstance(get_filesystem(str(path)), type(get_filesystem("."))):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            keep, keep_tmp = previous_path(path), path.with_name(f"{previous_path(path).name}.tmp-{os.getpid()}")
            try:
                keep_tmp.unlink(missing_ok=True)
                os.link(path, keep_tmp)
                os.replace(keep_tmp, keep)
            except OSError:
                os.replace(path, keep)
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def check_checkpoint(path: Path) -> int:
    """The optimizer step a checkpoint file holds; `CheckpointError` if it is truncated, corrupt or
    not a training checkpoint. Memory-mapped: reads the archive's index, not the tensors."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch raises RuntimeError, pickle and zip errors, EOFError...
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete training checkpoint (missing {', '.join(missing)})")
    return int(ckpt["global_step"])


def find_resume_checkpoint(ckpt_dir: Path, *, cleanup: bool = False) -> Path | None:
    """The newest complete checkpoint of a run: ``last.ckpt``, else the one it replaced.

    A damaged ``last.ckpt`` is skipped with a warning (and, with ``cleanup``, renamed to
    ``last.ckpt.corrupt`` so that the next save does not keep it as the previous one); when no
    candidate is usable, `CheckpointError` names each file and what is wrong with it. ``cleanup``
    also removes temporary files of saves that were killed. Returns None for a fresh run.
    """
    last = ckpt_dir / "last.ckpt"
    candidates = [p for p in (last, previous_path(last)) if p.exists()]
    if cleanup:
        for tmp in ckpt_dir.glob("*.tmp-*"):
            tmp.unlink(missing_ok=True)
    problems = []
    for path in candidates:
        try:
            step = check_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            log.warning("Skipping a damaged checkpoint: %s.", err)
            continue
        if problems:
            log.warning("Resuming from the previous complete checkpoint %s (step %d) instead.", path, step)
            if cleanup and last.exists() and path != last:
                os.replace(last, last.with_name(last.name + ".corrupt"))
        return path
    if problems:
        raise CheckpointError(
            "No usable checkpoint to resume from: " + "; ".join(problems) + ". Remove the checkpoints/ folder "
            "(or set resume=false, or give the run another name=) to start the run from scratch."
        )
    return None


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
        self._flush_logs = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._flush_logs = True

    def on_train_batch_start(self, trainer, *args) -> None:
        # The step a checkpoint holds is sent to the loggers just after the save: write it (and
        # everything before it) to disk now, so that a kill -9 loses no step the checkpoint holds.
        if self._flush_logs:
            for logger in trainer.loggers:
                flush = getattr(logger.experiment, "flush", None)
                if callable(flush):
                    flush()
            self._flush_logs = False

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
        trainer.save_checkpoint(str(self.last))
        self.stopped_at = trainer.global_step
        job = slurm_job_id()
        why = signal.Signals(self.received).name if self.received else ("a requeue signal" if requeue else "SIGTERM")
        if requeue and self.requeue and job is not None and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.info("%s: saved %s at step %d and requeued SLURM job %s.", why, self.last, trainer.global_step, job)
            else:
                log.error("%s: saved %s at step %d, but `scontrol requeue %s` failed: %s", why, self.last, trainer.global_step, job, result.stderr.strip())
        elif trainer.is_global_zero:
            log.info("%s: saved %s at step %d; start the same run again to resume it.", why, self.last, trainer.global_step)
        trainer.should_stop = True
