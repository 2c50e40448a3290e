"""The run's config, typed: `RunConfig` and its nested dataclasses, and `validate`, which checks
every group, every block's keyword arguments and every value range, and builds the model on the
meta device, before any data is prepared and before anything is written.

The dataclasses here are the single source of the defaults of ``optim``, ``schedule`` and
``debug`` (`training.compose` generates their config nodes from them); the model's schema is
`arch.lm.ModelConfig`. Components built from a ``_target_`` mapping (data modules, the trainer,
the logger, callbacks) are checked against their class's signature.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from arch.config import ConfigError, bounded, build, check_spec, from_mapping, locate, signature_fields
from arch.lm import LanguageModel, ModelConfig
from arch.weights import CheckpointError, read_model_weights


@dataclass
class OptimConfig:
    """AdamW; weight decay applies to matrices only (not norms, biases, embeddings, or parameters a
    block exempts: `training.task.split_weight_decay`)."""

    lr: float = bounded(3e-3, gt=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = bounded(0.1, ge=0)
    eps: float = bounded(1e-8, gt=0)

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas is {self.betas!r}, but AdamW needs two values in [0, 1), e.g. optim.betas=[0.9,0.95].")


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``, or WSD: constant, then a
    (1 - sqrt) cooldown to ``min_lr_ratio * lr`` over the last ``cooldown_fraction`` of the steps
    (Hägele et al. 2024), or constant."""

    name: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = bounded(100, ge=0)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    cooldown_fraction: float = bounded(0.2, ge=0, le=1)

    def __post_init__(self) -> None:
        if self.name == "wsd" and self.cooldown_fraction <= 0:
            raise ConfigError("schedule.name=wsd needs schedule.cooldown_fraction > 0 (the share of steps that cool down), e.g. 0.2.")


@dataclass
class PathsConfig:
    """Where runs and caches go (``conf/paths/default.yaml``: environment variables, then defaults)."""

    runs: str  # run directories go under it
    cache: str  # tokenised corpora and trained tokenizers


@dataclass
class DebugConfig:
    """Knobs for tests and debugging, never needed by a real run."""

    step_delay_s: float = bounded(0.0, ge=0)  # sleep after each batch: lets tests interrupt a tiny run mid-way


@dataclass
class RunConfig:
    """The top level of ``conf/config.yaml``, validated."""

    model: ModelConfig
    data: dict  # a `_target_` mapping: the DataModule
    trainer: dict  # lightning.pytorch.Trainer arguments
    optim: OptimConfig
    schedule: ScheduleConfig
    callbacks: dict  # {name: `_target_` mapping of a lightning Callback, or null to leave it out}
    logger: dict  # a `_target_` mapping: a Lightning logger
    paths: PathsConfig
    debug: DebugConfig
    name: str
    seed: int = 0
    resume: bool = True
    budget_flops: float | None = bounded(None, gt=0)  # training FLOPs of the run; when set, it decides trainer.max_steps
    init_from: str | None = None  # a checkpoint whose model weights start the run (fresh optimizer and schedule)
    compile: Literal["auto", "none", "model", "layers"] = "auto"  # torch.compile; auto: layers on CUDA, none on CPU
    skip: bool = False  # a grid cell its experiment leaves out: validated, then nothing is trained or written (train.run)


# What the framework passes to components itself: never set in their configs.
TRAINER_SUPPLIED = ("default_root_dir", "logger", "callbacks", "plugins", "enable_progress_bar", "enable_model_summary",
                    "use_distributed_sampler")
LOGGER_SUPPLIED = ("save_dir",)
CALLBACK_OFFERED = ("dirpath", "run_dir", "cache_dir")  # given to callbacks whose signature names them


@dataclass
class Validated:
    """A validated run: the typed config, the plain values (what config.yaml records), the data
    module (constructed, nothing prepared) and the configured callbacks (constructed)."""

    config: RunConfig
    values: dict
    datamodule: Any
    callbacks: list


def _group(values: dict, key: str) -> Any:
    if key not in values:
        raise ConfigError(f"The config has no '{key}' group. Compose it from conf/config.yaml, which lists every group.")
    return values[key]


def validate(values: dict, run_dir: Path) -> Validated:
    """Check the whole resolved config (plain containers) of a run in ``run_dir`` and return it
    typed; `ConfigError` on the first problem. Builds the data module (cheap: nothing is tokenised
    or generated), the configured callbacks, and the model on the meta device (nothing is
    allocated); writes nothing."""
    sub = {k: v for k, v in values.items() if k not in ("model", "optim", "schedule", "paths", "debug")}
    placeholders = {k: {} for k in ("model", "optim", "schedule", "paths", "debug")}
    run = from_mapping(RunConfig, {**sub, **placeholders}, "config")
    run.model = from_mapping(ModelConfig, _group(values, "model"), "model")
    run.optim = from_mapping(OptimConfig, _group(values, "optim"), "optim")
    run.schedule = from_mapping(ScheduleConfig, _group(values, "schedule"), "schedule")
    run.paths = from_mapping(PathsConfig, _group(values, "paths"), "paths")
    run.debug = from_mapping(DebugConfig, _group(values, "debug"), "debug")

    _check_trainer(run)
    check_spec(run.logger, "logger", supplied=LOGGER_SUPPLIED)
    offered = {"dirpath": str(run_dir / "checkpoints"), "run_dir": str(run_dir), "cache_dir": str(run.paths.cache)}
    callbacks = []
    for name, cls, kwargs, wanted in check_callbacks(run.callbacks):
        callbacks.append(build(cls, kwargs, f"callbacks.{name}", **{k: offered[k] for k in wanted}))
    with torch.device("meta"):
        model = LanguageModel(dataclasses.replace(run.model, vocab_size=run.model.vocab_size or 256))
    _check_no_empty_parameters(model, run.model)
    if run.init_from is not None:  # a missing or unreadable file is refused before anything is written
        try:
            read_model_weights(Path(run.init_from))
        except CheckpointError as err:
            raise ConfigError(str(err)) from err
    cls, kwargs, extra = check_spec(run.data, "data")
    datamodule = build(cls, kwargs, "data", **extra)
    for callback in callbacks:  # a callback that needs a kind of data says so now (e.g. an MQAR accuracy)
        check = getattr(callback, "check_datamodule", None)
        if callable(check):
            check(datamodule)
    return Validated(run, values, datamodule, callbacks)


def _check_no_empty_parameters(model: LanguageModel, config: ModelConfig) -> None:
    """A size of 0 (an expansion, a state or head size) builds without complaint in PyTorch and
    trains a block that computes nothing: name the block config that produced it."""
    names = config.layer_names()
    for name, p in model.named_parameters():
        if p.numel() == 0:
            parts = name.split(".")
            where = "model"
            if parts[0] == "layers":
                block = names[int(parts[1])] if parts[2] == "mixer" else config.mlp_names()[int(parts[1])]
                where = f"model.blocks.{block}"
            raise ConfigError(
                f"'{where}' builds parameter {name} with shape {tuple(p.shape)}: one of its sizes is 0. "
                f"Check the sizes set in {where} (expansions, state, head and rank sizes must be positive)."
            )


def _check_trainer(run: RunConfig) -> None:
    check_spec(run.trainer, "trainer", supplied=TRAINER_SUPPLIED)
    max_steps = run.trainer.get("max_steps", -1)
    if run.budget_flops is None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0):
        raise ConfigError(f"trainer.max_steps must be a positive int (the schedule needs it), got {max_steps!r}; or set budget_flops.")
    for key in ("val_check_interval", "log_every_n_steps", "accumulate_grad_batches"):
        value = run.trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
            raise ConfigError(f"trainer.{key} is {value!r}, but it must be > 0.")
    clip = run.trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and (clip < 0 or not math.isfinite(clip)):
        raise ConfigError(f"trainer.gradient_clip_val is {clip!r}, but it must be >= 0 (0 or null: no clipping).")


# keys of the former flat callbacks schema, and where each setting lives now
RENAMED = {
    "checkpoint_every_n_steps": "callbacks.checkpoint.every_n_steps",
    "progress_bar": "callbacks.progress (callbacks.progress=null turns the bar off)",
    "stop_at_accuracy": "a callback: +callback@callbacks.stop=stop_at_accuracy callbacks.stop.threshold=0.99",
    "stop_after_steps": "a callback: +callback@callbacks.stop_after=stop_after_steps callbacks.stop_after.steps=N",
    "step_delay_s": "debug.step_delay_s",
}


def check_callbacks(callbacks: Any) -> list[tuple[str, type, dict, list[str]]]:
    """The configured callbacks as (name, class, arguments, the framework-offered arguments its
    signature names), each checked against its signature;
    null entries are left out. Any importable `lightning.pytorch.Callback` subclass may be named (a
    user's own callback included), unlike other components, whose targets are restricted."""
    import lightning.pytorch as pl

    if not isinstance(callbacks, dict):
        raise ConfigError(f"'callbacks' must be a mapping of name -> {{_target_: ..., ...}}, got {callbacks!r}.")
    checked = []
    for name, spec in callbacks.items():
        if spec is None:
            continue
        where = f"callbacks.{name}"
        if not isinstance(spec, dict) or "_target_" not in spec:
            moved = f" This setting is now {RENAMED[name]}." if name in RENAMED else ""
            raise ConfigError(
                f"'{where}' is {spec!r}, but each entry of 'callbacks' is a callback: a mapping with a '_target_' class and "
                f"its arguments (e.g. callbacks.checkpoint.every_n_steps=500), or null to leave it out.{moved}"
            )
        cls = _locate_callback(spec["_target_"], where)
        if not (isinstance(cls, type) and issubclass(cls, pl.Callback)):
            raise ConfigError(f"'{where}._target_' is {spec['_target_']!r}, which is not a lightning.pytorch.Callback subclass.")
        fields = signature_fields(cls)[0]
        offered = [n for n in CALLBACK_OFFERED if n in fields]
        _, kwargs, _ = check_spec(spec, where, supplied=offered, cls=cls)
        checked.append((name, cls, kwargs, offered))
    return checked


def _locate_callback(target: Any, where: str) -> type:
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(
            f"'{where}._target_' is {target!r}: give the full import path of a callback class, e.g. training.callbacks.Throughput."
        )
    return locate(target, where, restricted=False)
