import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.runs import TINY, scalars

TRAIN = str(Path(__file__).resolve().parents[2] / "train.py")


def run_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, TRAIN, *TINY, *overrides], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_cpu_processes_train_log_once_and_match_one_process_with_the_same_global_batch(tmp_path):
    common = ["trainer.max_steps=8", "trainer.val_check_interval=4", f"paths.cache={tmp_path / 'cache'}", "trainer.deterministic=true"]
    run_cli(tmp_path, "trainer=ddp_cpu", "name=ddp", "data.batch_size=4", "data.val_batches=4", *common)  # same 16 val windows
    run_cli(tmp_path, "name=single", "data.batch_size=8", *common)
    ddp, single = tmp_path / "runs/ddp", tmp_path / "runs/single"
    assert len(list((ddp / "tensorboard").glob("events.*"))) == 1  # only rank 0 writes
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["tokens"] == 8 * 2 * 4 * 32
    a, b = scalars(ddp, "train/loss"), scalars(single, "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    assert abs(m["val/loss"] - json.loads((single / "metrics.json").read_text())["val/loss"]) < 1e-4
