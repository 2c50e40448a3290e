"""What `python train.py` prints: every message once, no advertising, no SLURM hint outside SLURM,
a header naming the model, its parameters, FLOPs per token and decode state, and one progress bar
in optimizer steps."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.runs import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_debug_run_prints_each_line_once_with_a_header(tmp_path):
    overrides = [o for o in TINY if not o.startswith(("callbacks.progress", "trainer="))]
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "trainer=debug",
            *overrides,
            f"paths.runs={tmp_path / 'runs'}",
            f"paths.cache={tmp_path / 'cache'}",
            "name=console",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1"}.items() if not k.startswith("SLURM_")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress-bar redraws end in carriage returns; the last state of each bar is its line
    lines = [part.split("\r")[-1].strip() for part in (proc.stdout + proc.stderr).splitlines()]
    lines = [line for line in lines if line]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated
    text = "\n".join(lines)
    for noise in ("Tip:", "litlogger", "srun", "Total Flops", "Traceback", "LeafSpec"):
        assert noise not in text, (noise, text)
    assert re.search(r"mixerlab: transformer: 2 layers \(attention\), d_model 32", text), text
    assert re.search(r"parameters [\d.]+k .* training FLOPs [\d.]+[kM]/token at T=32", text), text
    assert "decode state" in text and f"run directory: {tmp_path / 'runs' / 'console'}" in text
    assert re.search(r"4/4 \[.*step.*loss=", text), text  # the bar counts optimizer steps out of max_steps
    assert "Finished 4 steps" in text
