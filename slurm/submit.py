#!/usr/bin/env python
"""Submit one mixerlab training run to SLURM: ``python slurm/submit.py [--dry-run] OVERRIDE...``.

The overrides are train.py's (``trainer=ddp trainer.num_nodes=2 trainer.devices=8 model=gla``) plus
the cluster knobs of ``conf/hydra/launcher/slurm.yaml`` (``hydra.launcher.partition=gpu``), the same
keys a sweep uses. The run's config is composed here, so a wrong key fails before anything is
submitted; the job layout follows the trainer: ``--nodes`` = ``trainer.num_nodes`` and
``--ntasks-per-node`` = ``trainer.devices`` (one process per device, as Lightning expects under
SLURM). The script is rendered from ``slurm/train.sbatch`` and piped to ``sbatch``; ``--dry-run``
prints it instead. Unless ``name=`` is given, the run directory is
``<paths.runs>/<model name>/slurm-<job id>``: the job id survives a requeue, so a requeued job
finds its checkpoints and resumes.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().parent / "train.sbatch"
# sbatch options the template always sets; additional_parameters may not repeat them
TEMPLATE_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "signal", "requeue", "open-mode", "output"}


def compose(overrides: list[str]):
    """The run's config with its ``hydra`` node, the SLURM launcher's knobs included."""
    sys.path.insert(0, str(ROOT))
    from training.compose import compose as compose_config

    launcher = [] if any(o.startswith("hydra/launcher=") for o in overrides) else ["hydra/launcher=slurm"]
    return compose_config(launcher + overrides, return_hydra_config=True)


def _time(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def render(overrides: list[str], python: str | None = None) -> str:
    """The sbatch script of one run with these overrides. ``python``: the job's interpreter; by
    default ``python`` when setup lines (which usually activate an environment) are given, else
    the one running this script."""
    cfg = compose(overrides)
    knobs, trainer = cfg.hydra.launcher, cfg.trainer
    python = python or ("python" if knobs.get("setup") else sys.executable)
    nodes = int(trainer.get("num_nodes") or 1)
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:  # -1 / "auto": every GPU the launcher asks for
        devices = int(knobs.gpus_per_node or 1)
    gpus = 0 if trainer.get("accelerator") == "cpu" else devices
    train_overrides = [o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))]
    set_keys = {o.split("=", 1)[0].lstrip("+~") for o in train_overrides}
    extra = []
    if trainer.get("devices") != devices:
        extra.append(f"trainer.devices={devices}")
    if "name" not in set_keys:
        extra.append(f"name={cfg.model.name}/slurm-${{SLURM_JOB_ID}}")  # expanded by the job's shell

    resources = [("time", _time(int(knobs.timeout_min)))]
    resources += [("gpus-per-node", gpus)] if gpus else []
    resources += [("cpus-per-task", knobs.cpus_per_task), ("mem", f"{knobs.mem_gb}G" if knobs.mem_gb else None)]
    resources += [(k, knobs.get(k)) for k in ("partition", "account", "qos", "constraint")]
    resources += [(k, v) for k, v in (knobs.get("additional_parameters") or {}).items() if k not in TEMPLATE_OPTIONS]
    lines = [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in resources if v is not None and v is not False]
    log_dir = (ROOT / str(cfg.paths.runs)).resolve() / "slurm"
    values = {
        "job_name": str(cfg.name) if "name" in set_keys else str(cfg.model.name),
        "nodes": str(nodes),
        "tasks_per_node": str(devices),
        "resources": "\n".join(lines),
        "signal_delay_s": str(knobs.signal_delay_s),
        "log_dir": shlex.quote(str(log_dir)),
        "workdir": shlex.quote(str(ROOT)),
        "setup": "\n".join(knobs.get("setup") or []),
        "srun_options": f"--cpus-per-task={knobs.cpus_per_task} " if knobs.cpus_per_task else "",
        "python": shlex.quote(python),
        "overrides": " ".join([shlex.quote(o) for o in train_overrides] + [f'"{o}"' for o in extra]),
    }
    script = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m[1]], TEMPLATE.read_text())
    return re.sub(r"\n\n+", "\n", script).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See slurm/README.md.")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")
    parser.add_argument("--python", help="the interpreter the job runs (default: `python` after setup lines, else this one)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides and hydra.launcher.* cluster knobs")
    args = parser.parse_args(argv)
    script = render(args.overrides, args.python)
    if args.dry_run:
        print(script, end="")
        return 0
    log_dir = re.search(r"^#SBATCH --output=(.*)/%x-%j\.out$", script, re.M)[1]
    Path(shlex.split(log_dir)[0]).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"sbatch refused the job: {result.stderr.strip()}", file=sys.stderr)
        return result.returncode
    job = result.stdout.strip().split(";")[0]
    print(f"Submitted job {job}. Log: {shlex.split(log_dir)[0]}/<job name>-{job}.out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
