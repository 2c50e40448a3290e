#!/usr/bin/env python
"""Pretrain a language model composed from blocks: ``python train.py model=gla data=mqar``.

Hydra composes ``conf/``; everything is validated before anything is built or written, then a
LightningModule (`LMTask`) trains the `arch.lm.LanguageModel` on a DataModule from `data/` with a
`lightning.Trainer` (CPU, GPU, DDP, FSDP). One run = one directory: ``config.yaml``,
``tensorboard/``, ``checkpoints/last.ckpt`` and ``metrics.json``; starting a run in a directory
that holds ``checkpoints/last.ckpt`` resumes it exactly (model, optimizer, schedule, step, data
position), from the newest complete checkpoint. On SLURM, `data.checkpoint.Preemption` saves and
requeues the job on the pre-timeout signal (see slurm/README.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from arch.config import ConfigError, from_mapping, instantiate

log = logging.getLogger("mixerlab")

# One id per process: with the start time it names run directories, so two runs started in the
# same second never share one (DDP children get the parent's directory passed explicitly).
_RUN_UID = uuid.uuid4().hex[:6]
OmegaConf.register_new_resolver("uid", lambda: _RUN_UID, replace=True)
# ${div:a,b} = a / b, for settings that scale with another, e.g. a learning rate per width:
# optim.lr: ${div:0.192,${model.d_model}} (3e-3 at d_model 64, 1.5e-3 at 128)
OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b), replace=True)

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


@dataclass
class OptimConfig:
    """AdamW; weight decay applies to matrices only (not norms, biases or embeddings)."""

    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``, or WSD: constant, then a
    (1 - sqrt) cooldown to ``min_lr_ratio * lr`` over the last ``cooldown_fraction`` of the steps
    (Hägele et al. 2024)."""

    name: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    cooldown_fraction: float = 0.2


@dataclass
class CallbacksConfig:
    checkpoint_every_n_steps: int = 200
    progress_bar: bool = True
    stop_after_steps: int | None = None  # end the process early (as a preemption would); resume continues
    # MQAR: end training at the first validation whose mqar/accuracy reaches this (Zoology stops at 0.99);
    # the run counts as finished, and a grid re-run skips it
    stop_at_accuracy: float | None = None
    step_delay_s: float = 0.0  # sleep after each batch: lets tests interrupt a tiny run mid-way


@dataclass
class RunConfig:
    """The top level of ``conf/config.yaml``."""

    model: dict
    data: dict
    trainer: dict
    optim: dict
    schedule: dict
    callbacks: dict
    logger: dict
    paths: dict
    name: str
    seed: int = 0
    resume: bool = True
    mfu_peak_flops: float | None = None  # device peak for train/mfu; None: looked up for known GPUs
    budget_flops: float | None = None  # training FLOPs of the run; when set, it decides trainer.max_steps


def lr_factor(step: int, total: int, s: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.name == "constant":
        return 1.0
    if s.name == "cosine":
        progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    cooldown = max(1, int(s.cooldown_fraction * total))
    start = total - cooldown
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / cooldown)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * (1 - math.sqrt(progress))


def _lightning():
    import lightning.pytorch as pl

    return pl


class TrainingDiverged(RuntimeError):
    pass


def build_task(model: dict, optim: dict, schedule: dict, vocab_size: int, max_steps: int, peak_flops: float | None = None):
    """The LightningModule of a run (validated configs in, module out)."""
    pl = _lightning()
    from arch.lm import LanguageModel
    from eval.flops import training_flops_per_token

    class LMTask(pl.LightningModule):
        """Next-token cross-entropy (+ auxiliary losses) on `LanguageModel`, AdamW, warmup + cosine/WSD."""

        def __init__(self):
            super().__init__()
            self.model = LanguageModel.from_config(model, vocab_size=vocab_size)
            self.optim, self.schedule = from_mapping(OptimConfig, optim, "optim"), from_mapping(ScheduleConfig, schedule, "schedule")
            self.max_steps, self.peak_flops = max_steps, peak_flops
            self.tokens_seen = 0
            self.last_val_step = -1
            self.flops_per_token: float | None = None
            self._last_time: float | None = None
            self._val: dict[int, torch.Tensor] = {}

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            ids, labels = batch["input_ids"], batch["labels"]
            loss = self.model.loss(ids, labels)
            aux = self.model.aux_losses()
            total = loss + sum(aux.values()) if aux else loss
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"The training loss became {total.item()} at step {self.global_step}. Lower optim.lr, raise "
                    f"schedule.warmup_steps or keep trainer.gradient_clip_val set; the checkpoints already written are untouched."
                )
            if self.flops_per_token is None:
                self.flops_per_token = training_flops_per_token(self.model, ids.shape[1])
            n_tokens = ids.numel() * self.trainer.world_size
            self.tokens_seen += n_tokens
            now = time.perf_counter()
            metrics = {
                "step": float(self.global_step + 1),  # x-axis: optimizer steps completed (Lightning's logger reads this key)
                "train/tokens": float(self.tokens_seen),
                "train/flops": self.tokens_seen * self.flops_per_token,
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            }
            metrics.update({f"train/{k}": v for k, v in aux.items()})
            if self._last_time is not None:
                tps = n_tokens / (now - self._last_time)
                metrics["train/tokens_per_sec"] = tps
                if self.peak_flops:
                    metrics["train/mfu"] = tps * self.flops_per_token / (self.peak_flops * self.trainer.world_size)
            self._last_time = now
            self.log_dict(metrics, on_step=True, prog_bar=False, batch_size=ids.shape[0])
            # averaged over processes, so the curve is the global batch's loss, as on one process
            self.log("train/loss", loss, on_step=True, sync_dist=self.trainer.world_size > 1, batch_size=ids.shape[0])
            self.log("loss", loss, prog_bar=True, logger=False)
            return total

        def on_before_optimizer_step(self, optimizer) -> None:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            self.log_dict({"step": float(self.global_step + 1), "train/grad_norm": norm}, on_step=True)

        def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
            ids, labels = batch["input_ids"], batch["labels"]
            h = self.model.hidden_states(ids)
            mask = labels != -100
            logits = self.model.head(h[mask]).float()
            loss_sum = torch.nn.functional.cross_entropy(logits, labels[mask], reduction="sum")
            correct = torch.zeros_like(labels, dtype=torch.float32)
            correct[mask] = (logits.argmax(-1) == labels[mask]).float()
            per_seq_n = mask.sum(1)
            has = per_seq_n > 0
            per_seq_acc = correct.sum(1)[has] / per_seq_n[has]
            stats = torch.stack([loss_sum, mask.sum().float(), per_seq_acc.sum(), has.sum().float()]).double()
            self._val[dataloader_idx] = self._val.get(dataloader_idx, 0) + stats

        def on_validation_epoch_end(self) -> None:
            names = self.trainer.datamodule.val_slices
            stats = torch.stack([self._val.get(i, torch.zeros(4, dtype=torch.float64, device=self.device)) for i in range(len(names))])
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
            self._val = {}
            loss = (stats[:, 0].sum() / stats[:, 1].sum().clamp_min(1)).item()
            metrics = {"step": float(self.global_step), "val/loss": loss, "val/ppl": math.exp(min(loss, 50))}
            self.last_val_step = self.global_step
            if getattr(self.trainer.datamodule, "is_recall", False):
                accs = stats[:, 2] / stats[:, 3].clamp_min(1)
                metrics["mqar/accuracy"] = (stats[:, 2].sum() / stats[:, 3].sum().clamp_min(1)).item()
                metrics.update({f"mqar/acc_{n}": a.item() for n, a in zip(names, accs)})
            self.log_dict(metrics, sync_dist=True)  # already reduced: identical on every rank

        def configure_optimizers(self):
            embeddings = {id(m.weight) for m in self.model.modules() if isinstance(m, torch.nn.Embedding)}
            decay, no_decay = [], []
            for p in self.model.parameters():
                (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
            o = self.optim
            opt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=o.lr, betas=tuple(o.betas), eps=o.eps,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, self.max_steps, self.schedule))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_save_checkpoint(self, checkpoint: dict) -> None:
            checkpoint["tokens_seen"] = self.tokens_seen

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            self.tokens_seen = checkpoint.get("tokens_seen", 0)

    return LMTask()


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


def _peak_flops(configured: float | None) -> float | None:
    if configured is not None or not torch.cuda.is_available():
        return configured
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate ``cfg``, build data, model and trainer, train, and return the final metrics."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"The config cannot be resolved: {err}. Set the missing value on the command line (key=value).") from err
    run = from_mapping(RunConfig, values, "config")
    callbacks_cfg = from_mapping(CallbacksConfig, run.callbacks, "callbacks")
    from_mapping(OptimConfig, run.optim, "optim")
    from_mapping(ScheduleConfig, run.schedule, "schedule")
    finished = _finished_metrics(run_dir, run.trainer.get("max_steps"), run.budget_flops)
    if finished is not None:  # a grid re-run skips the cells that are already done
        print(f"Run {run_dir} already finished {finished['steps']} steps; skipping (delete its metrics.json to retrain).")
        return finished

    pl = _lightning()
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from arch.ops.backend import keep_freed_memory
    from data.checkpoint import AtomicCheckpointIO, Preemption, find_resume_checkpoint

    keep_freed_memory()  # CPU runs: reuse freed temporaries instead of faulting in fresh pages

    pl.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = instantiate(run.data, "data")
    vocab_size = datamodule.vocab_size
    model_vocab = run.model.get("vocab_size")
    if model_vocab is not None and model_vocab < vocab_size:
        raise ConfigError(f"model.vocab_size={model_vocab} is smaller than the tokenizer's {vocab_size}; remove it to use the tokenizer's.")
    trainer_spec = dict(run.trainer)
    if run.budget_flops is not None:
        trainer_spec["max_steps"] = steps_for_budget(run.budget_flops, run.model, run.data, trainer_spec, model_vocab or vocab_size)
        log.info("budget_flops=%.3g: %d steps", run.budget_flops, trainer_spec["max_steps"])
    max_steps = trainer_spec.get("max_steps", -1)
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be a positive int (the schedule needs it), got {max_steps!r}.")
    task = build_task(run.model, run.optim, run.schedule, model_vocab or vocab_size, max_steps, _peak_flops(run.mfu_peak_flops))

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    preemption = Preemption(last)
    callbacks = [
        pl.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="step{step}", auto_insert_metric_name=False, save_last=True, save_top_k=0,
            every_n_train_steps=callbacks_cfg.checkpoint_every_n_steps,
        )
    ]
    if callbacks_cfg.step_delay_s > 0:  # before `preemption`, which then sees a signal that came during the sleep
        callbacks.append(pl.callbacks.LambdaCallback(on_train_batch_end=lambda *_: time.sleep(callbacks_cfg.step_delay_s)))
    callbacks.append(preemption)
    if callbacks_cfg.stop_after_steps is not None:
        callbacks.append(stop_after(callbacks_cfg.stop_after_steps, last))
    accuracy_stop = None
    if callbacks_cfg.stop_at_accuracy is not None:
        threshold = callbacks_cfg.stop_at_accuracy
        if not getattr(datamodule, "is_recall", False):
            raise ConfigError("callbacks.stop_at_accuracy needs an MQAR dataset (data=mqar), whose validation measures mqar/accuracy; remove it for language-model data.")
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ConfigError(f"callbacks.stop_at_accuracy must be an accuracy in (0, 1], e.g. 0.99; got {threshold!r}.")
        accuracy_stop = stop_at_accuracy(float(threshold))
        callbacks.append(accuracy_stop)
    logger = instantiate(run.logger, "logger", save_dir=str(run_dir))
    if trainer_spec.get("precision") is None:
        gpu = trainer_spec.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        trainer_spec["precision"] = "bf16-mixed" if gpu else "32-true"
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # one srun task per device; requeue belongs to `Preemption`, not to Lightning's own handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(
        trainer_spec, "trainer",
        default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, plugins=plugins,
        enable_progress_bar=callbacks_cfg.progress_bar, use_distributed_sampler=False,
    )

    resume_from = find_resume_checkpoint(ckpt_dir, cleanup=trainer.is_global_zero) if run.resume else None
    ckpt_path = str(resume_from) if resume_from else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero and not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(values))
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    elif trainer.is_global_zero:
        metric_keys = ["val/loss", "val/ppl"] + (["mqar/accuracy"] if getattr(datamodule, "is_recall", False) else [])
        log_hparams(logger, _flatten({k: values[k] for k in ("model", "data", "optim", "schedule", "trainer", "seed")}), metric_keys)
        logger.log_metrics({"params/total": task.model.num_params(), "params/non_embedding": task.model.num_params(non_embedding=True)}, step=0)
    started = time.time()
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    if preemption.stopped_at is not None:
        return {"preempted_at_step": preemption.stopped_at}
    reached = accuracy_stop is not None and accuracy_stop.reached_at is not None
    if callbacks_cfg.stop_after_steps is not None and trainer.global_step < max_steps and not reached:
        return {"stopped_at_step": trainer.global_step}
    trainer.save_checkpoint(str(last))
    if task.last_val_step != trainer.global_step:
        trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "mqar/"))}
    metrics.update(
        model=run.model.get("name"), steps=trainer.global_step, tokens=task.tokens_seen,
        flops=task.tokens_seen * (task.flops_per_token or 0.0), params_total=task.model.num_params(),
        params_non_embedding=task.model.num_params(non_embedding=True), wall_time_s=time.time() - started,
        budget_flops=run.budget_flops,
    )
    if reached:
        metrics["reached_accuracy"] = accuracy_stop.threshold
    if hasattr(datamodule, "bytes_per_token"):
        metrics["val/bits_per_byte"] = datamodule.val_bits_per_byte(metrics["val/loss"])
        metrics["unigram_entropy"] = datamodule.unigram_entropy
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        _report(metrics, run_dir)
    return metrics


def stop_at_accuracy(threshold: float):
    """A callback that ends training after the first validation whose mqar/accuracy is >= ``threshold``
    (Zoology's early stop); ``reached_at`` is then that step."""
    pl = _lightning()

    class StopAtAccuracy(pl.Callback):
        def __init__(self) -> None:
            self.threshold, self.reached_at = threshold, None

        def on_validation_end(self, trainer, *args) -> None:
            accuracy = trainer.callback_metrics.get("mqar/accuracy")
            if trainer.sanity_checking or accuracy is None or float(accuracy) < self.threshold:
                return
            self.reached_at = trainer.global_step
            trainer.should_stop = True

    return StopAtAccuracy()


def stop_after(steps: int, last: Path):
    """A callback that ends training after ``steps`` optimizer steps, once ``last.ckpt`` holds
    that step: a stand-in for preemption in tests and short sessions."""
    pl = _lightning()

    class StopAfterSteps(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= steps and not trainer.should_stop:
                trainer.save_checkpoint(str(last))
                trainer.should_stop = True

    return StopAfterSteps()


def _report(metrics: dict, run_dir: Path) -> None:
    lines = [f"Finished {metrics['steps']} steps ({metrics['tokens']:,} tokens) in {metrics['wall_time_s']:.0f} s."]
    if "reached_accuracy" in metrics:
        lines[0] += f" Stopped early: MQAR accuracy reached {metrics['reached_accuracy']}."
    if "val/loss" in metrics:
        bpb = f" ({metrics['val/bits_per_byte']:.3f} bits/byte)" if "val/bits_per_byte" in metrics else ""
        lines.append(f"Validation loss {metrics['val/loss']:.4f} nats/token{bpb}, perplexity {metrics['val/ppl']:.3f}.")
    if "unigram_entropy" in metrics:
        lines.append(f"Unigram entropy of the training corpus: {metrics['unigram_entropy']:.4f} nats/token.")
    if "mqar/accuracy" in metrics:
        lines.append(f"MQAR accuracy {metrics['mqar/accuracy']:.4f}: " + ", ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("mqar/acc_")))
    lines.append(f"Run directory: {run_dir}")
    lines.append(f"View the curves: tensorboard --logdir {run_dir}")
    print("\n".join(lines), flush=True)


def steps_for_budget(budget: float, model: dict, data: dict, trainer: dict, vocab_size: int) -> int:
    """Optimizer steps that spend ``budget`` training FLOPs (eval.flops, forward + backward) at the
    run's tokens per step: data.batch_size x data.seq_len per device, x devices x num_nodes x
    accumulate_grad_batches. The model is built on the meta device: nothing is allocated."""
    from arch.lm import LanguageModel
    from eval.flops import training_flops_per_token

    if not isinstance(budget, (int, float)) or budget <= 0:
        raise ConfigError(f"budget_flops must be a positive number of FLOPs, got {budget!r}.")
    seq_len, batch = data.get("seq_len"), data.get("batch_size")
    counts = {"devices": trainer.get("devices", 1), "num_nodes": trainer.get("num_nodes", 1),
              "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1)}
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


def _finished_metrics(run_dir: Path, max_steps: Any, budget_flops: float | None = None) -> dict | None:
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


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from data.checkpoint import CheckpointError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = _fresh(run_dir)
    try:
        metrics = train(cfg, run_dir)
    except (ConfigError, TrainingDiverged, CheckpointError) as err:
        if fresh and isinstance(err, ConfigError):
            _remove_new_directory(run_dir)
        kind = next(k for t, k in ((ConfigError, "config error"), (TrainingDiverged, "training diverged"), (CheckpointError, "checkpoint error")) if isinstance(err, t))
        print(f"mixerlab: {kind}: {err}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    return metrics.get("val/loss")


if __name__ == "__main__":
    # Run the importable module `train`, not this `__main__` copy: launchers that pickle the task
    # (submitit) then refer to `train.main` by name, and the job imports the module.
    import train as _train

    _train.main()
