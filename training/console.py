"""What a run prints: each message once, no advertising, the SLURM hint only under SLURM, and a
header that says what is being trained.

Lightning's loggers hand their records to the root logger (Hydra's job logging configures it: one
console handler and the run's log file), instead of printing them a second time themselves.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

# substrings of Lightning messages that say nothing about the run (advertising, absent hardware,
# the end of training, which the run's own report states)
NOISE = ("💡 Tip:", "litlogger", "litmodels", "TPU available:", "HPU available:", "`Trainer.fit` stopped:")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def setup_console() -> None:
    """Route Lightning's messages through the root logger once, drop advertising, and silence
    warnings that do not apply here (the ``srun`` hint outside a SLURM job, library deprecations)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    root = logging.getLogger()
    if not root.handlers:  # outside Hydra (a script, a notebook): one plain console handler
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def header(model, model_name: str, seq_len: int, tokens_per_step: int, max_steps: int, flops_per_token: float, run_dir: Path) -> str:
    """A few lines that say what this run trains: model, parameters, FLOPs per token (`arch.flops`),
    decode state, batch and run directory."""
    layers = model.config.layer_names()
    pattern = ", ".join(dict.fromkeys(layers))
    lines = [
        f"mixerlab: {model_name}: {model.config.n_layers} layers ({pattern}), d_model {model.config.d_model}",
        f"  parameters {_count(model.num_params())} ({_count(model.num_params(non_embedding=True))} without embeddings); "
        f"training FLOPs {_count(flops_per_token)}/token at T={seq_len} (forward + backward)",
        f"  decode state {_count(model.state_size(seq_len))} numbers per sequence at T={seq_len}",
        f"  {max_steps} steps of {tokens_per_step:,} tokens ({_count(max_steps * tokens_per_step)} tokens, "
        f"{_count(max_steps * tokens_per_step * flops_per_token)}FLOPs)",
        f"  run directory: {run_dir}",
    ]
    return "\n".join(lines)
