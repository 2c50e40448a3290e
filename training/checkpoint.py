"""Checkpoints that survive kills and corruption.

- `AtomicCheckpointIO` writes ``<path>.tmp-<pid>``, fsyncs it, keeps the file it replaces as
  ``<stem>.previous.ckpt`` and renames the new one over ``path``: a kill during a save never leaves
  a broken ``last.ckpt``, and a damaged ``last.ckpt`` still has a good predecessor.
- `find_resume_checkpoint` picks the newest complete checkpoint of a run and says why it skipped one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from arch.weights import CheckpointError

log = logging.getLogger("mixerlab")

# what a Lightning training checkpoint holds; a file without one of these cannot resume a run
REQUIRED_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "loops")


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
