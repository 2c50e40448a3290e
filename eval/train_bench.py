"""Training throughput of the framework against a bare PyTorch loop, in one process:

    python -m eval.bench train [train.py overrides] [--steps 175] [--warmup 20] [--profile N] [--repeats R]

(a) the framework: `training.run.train` on the composed config (LightningModule, Trainer, loggers and
callbacks as a real run; checkpoints and validation pushed past the timed steps), with a timer
callback; (b) a bare loop over the same model (`LMTask.model`, built with the same seed), the same
AdamW groups and schedule (`LMTask.configure_optimizers`), the same batches (the data module's
loader, no trainer), gradient clipping as configured: ``loss.backward(); clip; step; zero_grad``.

Printed per side: steady-state tokens/s (median over the steps after ``--warmup``), step time, peak
memory (CUDA: max allocated; CPU: the process's peak resident set so far) and MFU against
`training.peak` (FLOPs per token from `arch.flops`), then ``framework/bare: X.XXx`` (tokens/s).
Compile time and warm-up are excluded by the warm-up window. ``--repeats R`` runs the pair R times,
alternating, and reports the median tokens/s per side and the median of the R pairs' ratios: a
machine whose speed drifts (a shared VM: three bare runs in a row measured 2,799, 3,113 and 3,300
tokens/s) biases a single pair by as much as the drift.

Without overrides the model is issue #15's transformer: 4 layers, d_model 256, 4 heads, SwiGLU 672,
a 4096-token BPE of the embedded corpus, T = 512, micro-batch 8, fp32, AdamW.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch

DEFAULT = [
    "model=transformer",
    "data.tokenizer=bpe",
    "data.bpe_vocab_size=4096",
    "data.seq_len=512",
    "data.batch_size=8",
]


class StepTimer(pl.Callback):
    """Wall time at the end of every training batch, written to ``run_dir/step_times.json``."""

    def __init__(self, run_dir: str):
        self.path = Path(run_dir) / "step_times.json"
        self.times: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.path.write_text(json.dumps(self.times))


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def steady_step_s(times: Sequence[float], warmup: int) -> float:
    """Median seconds between consecutive steps after ``warmup`` steps (times: one per step, cumulative)."""
    intervals = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :])]
    if not intervals:
        raise SystemExit(
            f"error: a run logged {len(times)} steps, too few for a warm-up of {warmup}: --steps must exceed --warmup + 1."
        )
    return statistics.median(intervals)


def timed_overrides(steps: int) -> list[str]:
    """train.py overrides of a timed run: ``steps`` steps with validation and checkpoints pushed to the
    end, no progress bar, and `StepTimer` writing each step's end time."""
    return [
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"callbacks.checkpoint.every_n_steps={10 * steps}",
        "callbacks.progress=null",
        "+callbacks.step_timer._target_=eval.train_bench.StepTimer",
    ]


def bench_device(values: dict) -> torch.device:
    """Where both loops train: the device the trainer config picks (CUDA for gpu/cuda, and for auto when present)."""
    on_gpu = torch.cuda.is_available() and values["trainer"].get("accelerator") in ("gpu", "cuda", "auto")
    return torch.device("cuda" if on_gpu else "cpu")


def bench_precision(values: dict, device: torch.device) -> str:
    """The trainer's precision as `training.run` resolves it: bf16-mixed on a GPU, 32-true on a CPU, unless set."""
    return str(values["trainer"].get("precision") or ("bf16-mixed" if device.type == "cuda" else "32-true"))


def top_costs(prof, device: torch.device, n: int = 3) -> list[tuple[str, float, float]]:
    """The ``n`` operators with the most self time (device time on CUDA) in a finished
    `torch.profiler.profile`: (name, total self milliseconds, share of all operators' self time)."""
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [(e.key, getattr(e, key) / 1e3, getattr(e, key) / total) for e in events[:n]]


def bare_loop(values: dict, datamodule, steps: int, device: torch.device, profile: int = 0):
    from training.task import LMTask

    pl.seed_everything(values["seed"], workers=True, verbose=False)
    vocab = values["model"].get("vocab_size") or datamodule.vocab_size
    task = LMTask(values["model"], vocab, values["optim"], values["schedule"], steps)
    model = task.model.to(device)
    config = task.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    clip = values["trainer"].get("gradient_clip_val")
    datamodule.setup("fit")
    times, bf16 = [], bench_precision(values, device) == "bf16-mixed"
    batches = iter(datamodule.train_dataloader())
    prof = None
    for i in range(steps + profile):
        if i == steps:  # the profiled steps come after the timed ones, so they do not move the timings
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
            prof = torch.profiler.profile(activities=activities)
            prof.__enter__()
        batch = next(batches)
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.objective(ids, labels)[0]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
    if prof is not None:
        prof.__exit__(None, None, None)
    return times[:steps], model, (top_costs(prof, device) if prof is not None else None)


def main(argv: Sequence[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from arch.flops import training_flops_per_token
    from training.compose import compose
    from training.config import validate
    from training.peak import peak_flops
    from training.run import resolve, train

    parser = argparse.ArgumentParser(
        prog="python -m eval.bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: the transformer of issue #15)")
    parser.add_argument("--steps", type=int, default=175)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the median (warm-up, compilation)")
    parser.add_argument("--bare-first", action="store_true", help="run the bare loop before the framework")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the two loops this many times, alternating; the ratio is the median of the pairs' ratios")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the bare loop's timed steps, profile N more and print its three costliest operators")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    overrides = DEFAULT + args.overrides
    timed = timed_overrides(args.steps)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([*overrides, *timed, f"paths.runs={tmp}"])
        values = resolve(cfg)
        seq_len, batch = values["data"]["seq_len"], values["data"]["batch_size"]

        device = bench_device(values)

        def framework(r: int):
            run_dir = Path(tmp) / f"framework{r}"
            train(cfg, run_dir)
            results.setdefault("framework", []).append((json.loads((run_dir / "step_times.json").read_text()), _peak_memory_mib(device)))

        def bare(r: int):
            datamodule = validate(resolve(cfg), Path(tmp) / f"bare{r}").datamodule
            profile = args.profile if r == args.repeats - 1 else 0
            times, model, costs = bare_loop(values, datamodule, args.steps, device, profile=profile)
            results.setdefault("bare", []).append((times, _peak_memory_mib(device)))
            results["costs"] = costs
            results["flops_per_token"] = training_flops_per_token(model, seq_len)  # the same model on both sides

        if args.repeats < 1:
            raise SystemExit(f"error: --repeats must be at least 1, got {args.repeats}.")
        for r in range(args.repeats):
            for side in (bare, framework) if args.bare_first else (framework, bare):
                side(r)
    peak = peak_flops(None, device, bench_precision(values, device), OmegaConf.to_container(cfg.paths, resolve=True)["cache"])
    print(f"\n{' '.join(overrides)}: {args.steps} steps, median over steps {args.warmup + 1}-{args.steps}, "
          f"T={seq_len}, batch {batch}, {torch.get_num_threads()} threads\n")
    print("| loop | tokens/s | step ms | peak memory MiB | MFU |\n| --- | ---: | ---: | ---: | ---: |")
    tps = {}
    for side in ("framework", "bare"):
        tps[side] = [seq_len * batch / steady_step_s(times, args.warmup) for times, _ in results[side]]
        median = statistics.median(tps[side])
        mfu = median * results["flops_per_token"] / peak if peak else float("nan")
        memory = max(m for _, m in results[side])
        print(f"| {side} | {median:,.0f} | {1e3 * seq_len * batch / median:.1f} | {memory:,.0f} | {100 * mfu:.1f}% |")
    ratios = [f / b for f, b in zip(tps["framework"], tps["bare"])]
    if args.repeats > 1:
        print(f"\ntokens/s per repeat: framework {', '.join(f'{t:,.0f}' for t in tps['framework'])}; "
              f"bare {', '.join(f'{t:,.0f}' for t in tps['bare'])}; ratios {', '.join(f'{x:.2f}' for x in ratios)}")
        print("(with repeats the rows show the median over repeats and the ratio the median of each pair's ratio)")
    print(f"\nframework/bare: {statistics.median(ratios):.2f}x")
    if results.get("costs"):
        print(f"\nTop operators by self time over {args.profile} profiled bare steps:\n")
        print("| operator | ms per step | share of self time |\n| --- | ---: | ---: |")
        for name, ms, share in results["costs"]:
            print(f"| {name} | {ms / args.profile:.1f} | {100 * share:.1f}% |")
