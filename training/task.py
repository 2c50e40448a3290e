"""`LMTask`: the LightningModule of every run: next-token cross-entropy (+ the model's auxiliary
losses) on an `arch.lm.LanguageModel`, AdamW, linear warmup then cosine / WSD / constant.

It is built from plain configs (the ``model``, ``optim`` and ``schedule`` groups) and saves them
as its hyperparameters, so ``LMTask.load_from_checkpoint("run/checkpoints/last.ckpt")`` gives
back the trained model with no other input.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from arch.config import from_mapping
from arch.flops import training_flops_per_token
from arch.lm import LanguageModel
from training.config import OptimConfig, ScheduleConfig


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the message says what to change."""


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


def split_weight_decay(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(decayed, not decayed) parameters: AdamW's weight decay applies to matrices, except embeddings
    and the parameters a block marked ``_no_weight_decay`` (`arch.blocks.init.no_weight_decay`:
    decay rates, time steps, token-shift mixes...); vectors (norms, biases) never decay."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        exempt = p.ndim < 2 or id(p) in embeddings or getattr(p, "_no_weight_decay", False)
        (no_decay if exempt else decay).append(p)
    return decay, no_decay


class LMTask(pl.LightningModule):
    """Next-token cross-entropy (+ auxiliary losses) on `LanguageModel`, AdamW (weight decay by
    `split_weight_decay`), warmup + cosine/WSD.

    ``model``: the ``model`` config mapping; ``vocab_size``: the embedding's rows (the run passes
    ``model.vocab_size`` when a preset sets it, else the tokenizer's); ``optim`` / ``schedule``: their config mappings (defaults when
    omitted); ``max_steps``: the schedule's length.
    """

    def __init__(self, model: dict, vocab_size: int, optim: dict | None = None, schedule: dict | None = None, max_steps: int = 1):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.model = LanguageModel.from_config(model, vocab_size=vocab_size)
        self.optim_config = from_mapping(OptimConfig, optim or {}, "optim")
        self.schedule_config = from_mapping(ScheduleConfig, schedule or {}, "schedule")
        self.max_steps = max_steps
        self.tokens_seen = 0
        self.last_val_step = -1
        self.flops_per_token: float | None = None
        self._val: dict[int, torch.Tensor] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids, labels = batch["input_ids"], batch["labels"]
        total, loss, aux = self.model.objective(ids, labels)
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"The training loss became {total.item()} at step {self.global_step}. Lower optim.lr, raise "
                f"schedule.warmup_steps or keep trainer.gradient_clip_val set; the checkpoints already written are untouched."
            )
        if self.flops_per_token is None:
            self.flops_per_token = training_flops_per_token(self.model, ids.shape[1])
        self.tokens_seen += ids.numel() * self.trainer.world_size
        metrics = {
            "step": float(self.global_step + 1),  # x-axis: optimizer steps completed (Lightning's logger reads this key)
            "train/tokens": float(self.tokens_seen),
            "train/flops": self.tokens_seen * self.flops_per_token,
            "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        metrics.update({f"train/{k}": v for k, v in aux.items()})
        metrics.update({f"train/{k}": v.detach() for k, v in self.model.block_stats().items()})
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
        datamodule = self.trainer.datamodule
        names = getattr(datamodule, "val_slices", None) or ["val"]
        stats = torch.stack([self._val.get(i, torch.zeros(4, dtype=torch.float64, device=self.device)) for i in range(len(names))])
        stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        self._val = {}
        loss = (stats[:, 0].sum() / stats[:, 1].sum().clamp_min(1)).item()
        metrics = {"step": float(self.global_step), "val/loss": loss, "val/ppl": math.exp(min(loss, 50))}
        self.last_val_step = self.global_step
        if getattr(datamodule, "is_recall", False):
            accs = stats[:, 2] / stats[:, 3].clamp_min(1)
            metrics["mqar/accuracy"] = (stats[:, 2].sum() / stats[:, 3].sum().clamp_min(1)).item()
            metrics.update({f"mqar/acc_{n}": a.item() for n, a in zip(names, accs)})
        self.log_dict(metrics, sync_dist=True)  # already reduced: identical on every rank

    def configure_optimizers(self):
        decay, no_decay = split_weight_decay(self.model)
        o = self.optim_config
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=tuple(o.betas), eps=o.eps,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, self.max_steps, self.schedule_config))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
