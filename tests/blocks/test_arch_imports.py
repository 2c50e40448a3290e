"""The model package stands alone: importing every module of arch pulls in nothing from the data,
training or evaluation code, nor Lightning (a model can be built and counted without them)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, pkgutil, sys
import arch
for module in pkgutil.walk_packages(arch.__path__, "arch."):
    importlib.import_module(module.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & {"data", "training", "eval", "lightning", "train"})))
"""


def test_arch_imports_nothing_from_data_training_eval_or_lightning():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
