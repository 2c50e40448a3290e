"""Resuming after the worst interruptions: kill -9 mid-run, kill -9 during a checkpoint write, and a
damaged last.ckpt. Each resumed run must reproduce the uninterrupted run's loss at every step."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import TINY, scalars
from training.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
N = 6
RUN = [
    f"trainer.max_steps={3 * N}",
    f"trainer.val_check_interval={N}",
    f"callbacks.checkpoint.every_n_steps={N}",
    "trainer.deterministic=true",
]

# a train.py whose checkpoint writes from step 2N on stop half-way (the test kills it there)
HANGING_SAVE = f"""
import sys, time, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("global_step", 0) >= {2 * N}:
        f.write(b"PK\\x03\\x04 half a checkpoint"); f.flush(); time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = ["train.py"] + sys.argv[1:]
from training.run import main
main()
"""


def _start(tmp_path: Path, name: str, *extra: str, program: list[str] | None = None) -> subprocess.Popen:
    args = [*TINY, *RUN, f"paths.cache={tmp_path / 'cache'}", f"paths.runs={tmp_path / 'runs'}", f"name={name}", *extra]
    return subprocess.Popen(
        (program or [sys.executable, "train.py"]) + args,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]


def _wait_for(ready, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def _reads(path: Path) -> bytes:
    """The first 64 bytes of a checkpoint being written (the whole file may be a real checkpoint)."""
    try:
        with path.open("rb") as f:
            return f.read(64)
    except FileNotFoundError:  # renamed over last.ckpt meanwhile
        return b""


def _same_curves(a_dir: Path, b_dir: Path) -> None:
    a, b = scalars(a_dir, "train/loss"), scalars(b_dir, "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 3 * N + 1))  # no step repeated or skipped
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # bit-identical on CPU
    assert scalars(a_dir, "val/loss") == scalars(b_dir, "val/loss")


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_matches_the_uninterrupted_run(tmp_path):
    reference = _start(tmp_path, "whole")
    killed = _start(tmp_path, "killed", "debug.step_delay_s=0.3")
    last = tmp_path / "runs/killed/checkpoints/last.ckpt"
    _wait_for(lambda: _step(last) == N, killed, f"the checkpoint of step {N}")
    time.sleep(0.15)  # into step N + 1, whose start wrote step N's metrics to disk
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert _step(last) == N
    _finish(_start(tmp_path, "killed"))  # same name: same run directory, resumed automatically
    _finish(reference)
    _same_curves(tmp_path / "runs/whole", tmp_path / "runs/killed")


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_resumes(tmp_path):
    reference = _start(tmp_path, "whole")
    killed = _start(tmp_path, "killed", program=[sys.executable, "-c", HANGING_SAVE])
    ckpts = tmp_path / "runs/killed/checkpoints"
    # the hanging write itself, not step N's real one (a loaded machine can be caught mid-way through that)
    _wait_for(
        lambda: any(_reads(p).endswith(b"half a checkpoint") for p in ckpts.glob("last.ckpt.tmp-*")),
        killed,
        "a checkpoint write at step 2N",
    )
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert _step(ckpts / "last.ckpt") == N  # the interrupted write never replaced it
    _finish(_start(tmp_path, "killed"))
    _finish(reference)
    assert not list(ckpts.glob("*.tmp-*"))  # the half-written file was cleaned up
    _same_curves(tmp_path / "runs/whole", tmp_path / "runs/killed")


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, run_tiny, caplog):
    common = ["trainer.max_steps=8", "trainer.val_check_interval=4", "callbacks.checkpoint.every_n_steps=3", "trainer.deterministic=true"]
    whole = run_tiny(tmp_path / "whole", *common)
    assert run_tiny(tmp_path / "split", *common, "+callback@callbacks.stop_after=stop_after_steps", "callbacks.stop_after.steps=5") == {
        "stopped_at_step": 5
    }
    ckpts = tmp_path / "split/checkpoints"
    assert _step(ckpts / "last.ckpt") == 5 and _step(ckpts / "last.previous.ckpt") == 3
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="mixerlab"):
        resumed = run_tiny(tmp_path / "split", *common)
    assert "Skipping a damaged checkpoint" in caplog.text and "last.previous.ckpt (step 3)" in caplog.text
    assert (ckpts / "last.ckpt.corrupt").exists()
    a, b = scalars(tmp_path / "whole", "train/loss"), scalars(tmp_path / "split", "train/loss")
    assert sorted(b) == list(range(1, 9)) and [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    assert resumed["val/loss"] == whole["val/loss"]


def test_no_usable_checkpoint_is_a_clear_error(tmp_path, run_tiny):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, ckpts / "last.previous.ckpt")
    with pytest.raises(CheckpointError, match=r"No usable checkpoint.*cannot be read.*missing optimizer_states.*resume=false"):
        run_tiny(tmp_path, "trainer.max_steps=2")
