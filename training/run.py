"""One training run: validate the composed config, then build data, model, callbacks, logger and
`lightning.Trainer`, train, and write the run directory.

One run = one directory: ``config.yaml``, ``tensorboard/``, ``checkpoints/last.ckpt`` and
``metrics.json``. Starting a run in a directory that holds ``checkpoints/last.ckpt`` resumes it
exactly (model, optimizer, schedule, step, data position), from the newest complete checkpoint.
On SLURM, `training.preemption.Preemption` saves and requeues the job on the pre-timeout signal.
Bad input stops the run with a one-paragraph error (exit code 2) before anything is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from arch.config import ConfigError, instantiate
from arch.flops import active_params
from arch.lm import LanguageModel
from arch.ops.backend import keep_freed_memory
from arch.weights import CheckpointError, check_weights_fit, read_model_weights
from training.callbacks import FlushLogs, StepDelay, StopAfterSteps, StopAtAccuracy
from training.checkpoint import AtomicCheckpointIO, find_resume_checkpoint
from training.compose import CONF_DIR
from training.config import RunConfig, validate
from training.console import header, setup_console
from training.preemption import Preemption
from training.task import LMTask, TrainingDiverged

log = logging.getLogger("mixerlab")


def resolve(cfg: DictConfig) -> dict:
    """The composed config as plain containers, every interpolation resolved."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"The config cannot be resolved: {err}. Set the missing value on the command line (key=value).") from err


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate ``cfg``, build data, model and trainer, train, and return the final metrics."""
    checked = validate(resolve(cfg), run_dir)
    run, values, datamodule = checked.config, checked.values, checked.datamodule
    if run.skip:  # a cell its experiment leaves out (e.g. an arm that only runs at some L)
        print(f"Run {run_dir} skipped: its config sets skip=true; nothing is trained or written.", flush=True)
        return {}
    finished = finished_metrics(run_dir, run.trainer.get("max_steps"), run.budget_flops)
    if finished is not None:  # a grid re-run skips the cells that are already done
        print(f"Run {run_dir} already finished {finished['steps']} steps; skipping (delete its metrics.json to retrain).")
        return finished

    setup_console()
    keep_freed_memory()  # CPU runs: reuse freed temporaries instead of faulting in fresh pages
    pl.seed_everything(run.seed, workers=True, verbose=False)
    vocab_size = datamodule.vocab_size  # prepares the data (tokenises and packs a corpus once, then reads the cache)
    if run.model.vocab_size is not None and run.model.vocab_size < vocab_size:
        raise ConfigError(
            f"model.vocab_size={run.model.vocab_size} is smaller than the tokenizer's {vocab_size}; remove it to use the tokenizer's."
        )
    vocab_size = run.model.vocab_size or vocab_size
    trainer_spec = dict(run.trainer)
    if run.budget_flops is not None:
        trainer_spec["max_steps"] = steps_for_budget(run.budget_flops, values["model"], values["data"], trainer_spec, vocab_size)
        values["trainer"]["max_steps"] = trainer_spec["max_steps"]  # config.yaml records the steps the run takes
        log.info("budget_flops=%.3g: %d steps", run.budget_flops, trainer_spec["max_steps"])
    max_steps = trainer_spec["max_steps"]
    task = LMTask(values["model"], vocab_size, values["optim"], values["schedule"], max_steps)
    compile_model(task.model, run.compile, trainer_spec.get("accelerator", "auto"))
    init_weights = None
    if run.init_from is not None:  # the weights must fit the model (vocabulary included) before anything is written
        init_weights = read_model_weights(Path(run.init_from))[0]
        try:
            check_weights_fit(init_weights, task.model, Path(run.init_from))
        except CheckpointError as err:
            raise ConfigError(str(err)) from err

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    preemption = Preemption(last)
    callbacks = [StepDelay(run.debug.step_delay_s)] if run.debug.step_delay_s > 0 else []
    callbacks += [preemption, FlushLogs(), *checked.callbacks]
    logger = instantiate(run.logger, "logger", save_dir=str(run_dir))
    if trainer_spec.get("precision") is None:
        gpu = trainer_spec.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        trainer_spec["precision"] = "bf16-mixed" if gpu else "32-true"
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # one srun task per device; requeue belongs to `Preemption`, not to Lightning's own handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    try:
        trainer = instantiate(
            trainer_spec,
            "trainer",
            default_root_dir=str(run_dir),
            logger=logger,
            callbacks=callbacks,
            plugins=plugins,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
        )
    except MisconfigurationException as err:
        raise ConfigError(f"The trainer config is not valid: {err} Fix the trainer.* values.") from err

    resume_from = find_resume_checkpoint(ckpt_dir, cleanup=trainer.is_global_zero) if run.resume else None
    ckpt_path = str(resume_from) if resume_from else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero and not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(values))
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    else:
        if init_weights is not None:  # a fresh run starts from these weights; a resumed one from its own checkpoint
            task.model.load_state_dict(init_weights)
            log.info("Model weights from %s", run.init_from)
        if trainer.is_global_zero:
            metric_keys = ["val/loss", "val/ppl"] + (["mqar/accuracy"] if getattr(datamodule, "is_recall", False) else [])
            log_hparams(logger, _flatten({k: values[k] for k in ("model", "data", "optim", "schedule", "trainer", "seed")}), metric_keys)
            params = {"params/total": task.model.num_params(), "params/non_embedding": task.model.num_params(non_embedding=True)}
            logger.log_metrics({**params, "params/active": active_params(task.model)}, step=0)
    if trainer.is_global_zero:
        _print_header(task.model, run, datamodule, max_steps, trainer, run_dir)
    started = time.time()
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    if preemption.stopped_at is not None:
        return {"preempted_at_step": preemption.stopped_at}
    accuracy_stop = next((c for c in callbacks if isinstance(c, StopAtAccuracy) and c.reached_at is not None), None)
    if any(isinstance(c, StopAfterSteps) for c in callbacks) and trainer.global_step < max_steps and accuracy_stop is None:
        return {"stopped_at_step": trainer.global_step}
    trainer.save_checkpoint(str(last), weights_only=False)
    if task.last_val_step != trainer.global_step:
        trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "mqar/"))}
    metrics.update(
        model=run.model.name,
        steps=trainer.global_step,
        tokens=task.tokens_seen,
        flops=task.tokens_seen * (task.flops_per_token or 0.0),
        params_total=task.model.num_params(),
        params_non_embedding=task.model.num_params(non_embedding=True),
        wall_time_s=time.time() - started,
        budget_flops=run.budget_flops,
    )
    if accuracy_stop is not None:
        metrics["reached_accuracy"] = accuracy_stop.threshold
    if hasattr(datamodule, "bytes_per_token"):
        metrics["val/bits_per_byte"] = datamodule.val_bits_per_byte(metrics["val/loss"])
        metrics["unigram_entropy"] = datamodule.unigram_entropy
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        report(metrics, run_dir)
    return metrics


def compile_model(model: LanguageModel, mode: str, accelerator: str) -> None:
    """``compile``: torch.compile the model or each layer in place (`nn.Module.compile`, so state-dict
    names do not change); ``auto`` compiles the layers when training on CUDA, nothing on CPU."""
    if mode == "auto":
        on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        mode = "layers" if on_gpu else "none"
    if mode == "model":
        model.compile()
    elif mode == "layers":
        for layer in model.layers:
            layer.compile()


def _print_header(model: LanguageModel, run: RunConfig, datamodule: Any, max_steps: int, trainer, run_dir: Path) -> None:
    from arch.flops import training_flops_per_token

    seq_len = getattr(datamodule, "seq_len", None) or max(getattr(s, "seq_len", 0) for s in getattr(datamodule, "train_slices", [])) or 1
    batch = getattr(datamodule, "batch_size", 1) * trainer.world_size * trainer.accumulate_grad_batches
    print(header(model, run.model.name, seq_len, batch * seq_len, max_steps, training_flops_per_token(model, seq_len), run_dir), flush=True)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d if isinstance(d, (int, float, str, bool)) else str(d)}


def log_hparams(logger, params: dict, metric_keys: list[str]) -> None:
    """Declare the run's hyperparameters and the metric tags to compare them by, for TensorBoard's
    HPARAMS tab. Written as the three hparams summaries directly: Lightning's log_hyperparams would
    also log a placeholder value under each metric tag, polluting the real curves."""
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment._get_file_writer()
    for summary in hparams(params, {k: 0.0 for k in metric_keys}):
        writer.add_summary(summary)


def report(metrics: dict, run_dir: Path) -> None:
    """The closing lines: steps, validation loss (bits/byte for text), MQAR accuracy, run directory."""
    lines = [f"Finished {metrics['steps']} steps ({metrics['tokens']:,} tokens) in {metrics['wall_time_s']:.0f} s."]
    if "reached_accuracy" in metrics:
        lines[0] += f" Stopped early: MQAR accuracy reached {metrics['reached_accuracy']}."
    if "val/loss" in metrics:
        bpb = f" ({metrics['val/bits_per_byte']:.3f} bits/byte)" if "val/bits_per_byte" in metrics else ""
        lines.append(f"Validation loss {metrics['val/loss']:.4f} nats/token{bpb}, perplexity {metrics['val/ppl']:.3f}.")
    if "unigram_entropy" in metrics:
        lines.append(f"Unigram entropy of the training corpus: {metrics['unigram_entropy']:.4f} nats/token.")
    if "mqar/accuracy" in metrics:
        slices = ", ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("mqar/acc_"))
        lines.append(f"MQAR accuracy {metrics['mqar/accuracy']:.4f}: {slices}")
    lines.append(f"Run directory: {run_dir}")
    lines.append(f"View the curves: tensorboard --logdir {run_dir}")
    print("\n".join(lines), flush=True)


def steps_for_budget(budget: float, model: dict, data: dict, trainer: dict, vocab_size: int) -> int:
    """Optimizer steps that spend ``budget`` training FLOPs (`arch.flops`, forward + backward) at the
    run's tokens per step: data.batch_size x data.seq_len per device, x devices x num_nodes x
    accumulate_grad_batches. The model is built on the meta device: nothing is allocated."""
    from arch.flops import training_flops_per_token

    if not isinstance(budget, (int, float)) or budget <= 0:
        raise ConfigError(f"budget_flops must be a positive number of FLOPs, got {budget!r}.")
    seq_len, batch = data.get("seq_len"), data.get("batch_size")
    counts = {
        "devices": trainer.get("devices", 1),
        "num_nodes": trainer.get("num_nodes", 1),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
    }
    if not (isinstance(seq_len, int) and isinstance(batch, int)):
        raise ConfigError(
            f"budget_flops needs the tokens of a step: data.seq_len and data.batch_size must be integers "
            f"(got {seq_len!r} and {batch!r}). Set them, or set trainer.max_steps and leave budget_flops null."
        )
    bad = {k: v for k, v in counts.items() if not (isinstance(v, int) and v > 0)}
    if bad:
        raise ConfigError(
            f"budget_flops needs the number of data-parallel replicas, but {bad} is not a positive count. "
            "Set trainer.devices (and num_nodes) to numbers, e.g. trainer.devices=8."
        )
    with torch.device("meta"):
        lm = LanguageModel.from_config(model, vocab_size=vocab_size)
    tokens_per_step = seq_len * batch * counts["devices"] * counts["num_nodes"] * counts["accumulate_grad_batches"]
    return max(1, round(budget / (training_flops_per_token(lm, seq_len) * tokens_per_step)))


def finished_metrics(run_dir: Path, max_steps: Any, budget_flops: float | None = None) -> dict | None:
    """The metrics of a run in ``run_dir`` that already trained ``max_steps`` steps (or spent
    ``budget_flops``, when that is set, or stopped on reaching its MQAR accuracy), else None."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if budget_flops is not None:
        return metrics if metrics.get("budget_flops") == budget_flops else None
    finished = metrics.get("steps") == max_steps or metrics.get("reached_accuracy") is not None
    return metrics if finished else None


def _fresh(run_dir: Path) -> bool:
    """True when the run directory holds nothing of an earlier run (only what Hydra just made)."""
    return not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()


def _remove_new_directory(run_dir: Path) -> None:
    """Remove a run directory that only this failed start created, and the empty parents Hydra made."""
    logging.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)
    parent, stop = run_dir.parent, Path.cwd().resolve()
    while parent.resolve() != stop and parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


ERRORS = ((ConfigError, "config error", 2), (TrainingDiverged, "training diverged", 1), (CheckpointError, "checkpoint error", 1))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """``python train.py [overrides]``: one run (or, with ``-m``, one job of a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = _fresh(run_dir)
    try:
        metrics = train(cfg, run_dir)
    except (ConfigError, TrainingDiverged, CheckpointError) as err:
        if fresh and isinstance(err, ConfigError):
            _remove_new_directory(run_dir)
        kind, code = next((k, c) for t, k, c in ERRORS if isinstance(err, t))
        print(f"mixerlab: {kind}: {err}", file=sys.stderr, flush=True)
        sys.exit(code)
    return metrics.get("val/loss")
