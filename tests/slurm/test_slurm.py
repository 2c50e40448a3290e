"""A short CPU run submitted through slurm/submit.py to a real SLURM, requeued twice mid-run (once
by ``scontrol requeue``, once by the preemption signal mixerlab answers itself), resumes in the same
run directory and ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import runs as _helpers

ROOT = Path(__file__).resolve().parents[2]

TINY, scalars = _helpers.TINY, _helpers.scalars
RUN = ["trainer.max_steps=40", "trainer.val_check_interval=20", "callbacks.checkpoint.every_n_steps=5", "trainer.deterministic=true"]


def _checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def _wait(what: str, ready, slurm, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting until {what}\n{slurm.logs()}"
        time.sleep(0.2)


def _release(slurm, job: str, instances: int) -> None:
    """A requeued job waits on a begin time (about two minutes); start it now, once it is pending and
    its ``instances``-th run has ended on the node, plus two seconds. The begin time is there for the
    node's revocation of the old run's credential, which is kept at one-second resolution: a run
    released within that second is refused ("Killing non-startable batch job: Job credential revoked")."""
    _wait("the requeued job is pending", lambda: slurm.job(job)["JobState"] == "PENDING", slurm)
    log = slurm.folder / "slurmd.log"
    _wait(f"run {instances} of the job has ended", lambda: log.read_text().count(f"[{job}.batch] done with job") >= instances, slurm)
    time.sleep(2.0)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    _wait("the requeued job runs again", lambda: slurm.job(job)["JobState"] in ("RUNNING", "COMPLETED"), slurm)


@pytest.mark.slow
def test_a_requeued_job_resumes_in_its_run_directory_and_matches_an_uninterrupted_run(slurm, tmp_path):
    cache, env = tmp_path / "cache", {**slurm.env, "OMP_NUM_THREADS": "1"}
    common = [*TINY, *RUN, f"paths.cache={cache}", f"paths.runs={tmp_path / 'runs'}"]
    reference = subprocess.Popen(  # the uninterrupted run, alongside the job (one core each)
        [sys.executable, "train.py", *common, "name=reference"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    submitted = subprocess.run(
        [sys.executable, "slurm/submit.py", *common, "debug.step_delay_s=0.3",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=20"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.split()[2].rstrip(".")
    run_dir = tmp_path / "runs" / "transformer" / f"slurm-{job}"  # named from the job id
    last = run_dir / "checkpoints" / "last.ckpt"

    _wait("a checkpoint at step 10", lambda: _checkpoint_step(last) >= 10, slurm)
    slurm.run("scontrol", "requeue", job)  # a hard requeue: the processes are killed
    _release(slurm, job, 1)
    _wait("a checkpoint at step 25", lambda: _checkpoint_step(last) >= 25, slurm)
    slurm.run("scancel", "--signal=USR1", job)  # what SLURM sends before the time limit
    _release(slurm, job, 2)
    _wait("the job completes", lambda: slurm.job(job)["JobState"] == "COMPLETED", slurm)

    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    assert slurm.job(job)["Restarts"] == "2"
    log = next((tmp_path / "runs" / "slurm").glob(f"*-{job}.out")).read_text()
    assert log.count("Resuming from") == 2, log[-5000:]
    assert f"requeued SLURM job {job}" in log, log[-5000:]
    a, b = scalars(tmp_path / "runs" / "reference", "train/loss"), scalars(run_dir, "train/loss")
    assert sorted(b) == list(range(1, 41))  # the step count continued: no step repeated or skipped
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["steps"] == 40
    assert final["val/loss"] == json.loads((tmp_path / "runs" / "reference" / "metrics.json").read_text())["val/loss"]
