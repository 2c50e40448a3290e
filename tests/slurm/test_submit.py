"""The submission path without a cluster: sbatch scripts rendered by slurm/submit.py, and a Hydra
sweep through the submitit launcher (local executor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import runs as _helpers

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(*overrides: str) -> str:
    proc = subprocess.run(
        [sys.executable, "slurm/submit.py", "--dry-run", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_two_node_run_gets_one_task_per_gpu_a_preemption_signal_and_a_job_named_run_directory():
    script = _dry_run(
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=8",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        "hydra.launcher.timeout_min=1440",
    )
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --time=24:00:00",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
    ):
        assert line in script.splitlines(), line
    srun = script.splitlines()[-1]
    assert srun.startswith("srun ") and "trainer.num_nodes=2 trainer.devices=8" in srun
    assert '"name=transformer/slurm-${SLURM_JOB_ID}"' in srun


def test_devices_all_takes_the_gpu_count_of_the_launcher_and_cpu_runs_ask_for_no_gpu():
    script = _dry_run("trainer=fsdp", "hydra.launcher.gpus_per_node=4", "name=big")
    assert "#SBATCH --ntasks-per-node=4" in script and "trainer.devices=4" in script and "#SBATCH --job-name=big" in script
    assert "gpus-per-node" not in _dry_run("trainer=cpu")


@pytest.mark.slow
def test_a_submitit_sweep_completes_every_job_in_its_own_run_directory(tmp_path):
    overrides = [
        *_helpers.TINY,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"paths.cache={tmp_path / 'cache'}",
        f"paths.runs={tmp_path / 'runs'}",
        "optim.lr=1e-3,3e-3",
    ]
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=local", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "runs" / "multirun").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    seen = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == 2 and (run / "checkpoints" / "last.ckpt").exists()
        cfg = (run / "config.yaml").read_text()
        seen.add(cfg.split("lr: ")[1].split()[0])
    assert seen == {"0.001", "0.003"}
