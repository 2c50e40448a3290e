"""One script to run whenever a GPU is available: are the fused CUDA paths right, and how fast does
every preset train?

    python -m eval.gpu_check [--presets all|a,b] [--seq-len 2048] [--batch 8] [--steps 5]

1. Kernels: for every op of `eval.bench` with a fused backend (flash-attn, flash-linear-attention,
   mamba-ssm, causal-conv1d), the kernel and the pure-PyTorch path run forward and backward on the same
   random inputs (bf16 for the kernel, float32 for the reference); the table gives the largest error of
   outputs and gradients relative to the reference's largest value, and ok / MISMATCH (above 5e-2),
   or why the row was skipped (package not installed, no CUDA).
2. Presets: one optimizer step of each model preset (AdamW, bf16 autocast on CUDA, the block backends
   on ``auto``), median of ``--steps`` after two warm-up steps: step time, tokens/s and MFU (FLOPs from
   `arch.flops`, peak from `training.peak`).

On a CPU (``--device cpu``) the kernel rows say why they were skipped and the preset rows run on the
CPU (use a short ``--seq-len``): that is how the tests exercise the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Sequence

import torch

from arch.ops.backend import is_importable

MISMATCH = 5e-2


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A leaf copy of an input in ``dtype`` (matrices only: vectors such as Mamba's A stay float32)."""
    return x.detach().to(dtype if x.is_floating_point() and x.dim() > 1 else x.dtype).requires_grad_(x.requires_grad)


def kernel_rows(device: torch.device, T: int) -> list[str]:
    from eval.bench import CASES, forward_backward  # noqa: F401  (the cases and their inputs)

    rows = ["| op | kernel | output error | gradient error | verdict |", "| --- | --- | ---: | ---: | --- |"]
    for case in (c for c in CASES if c.kernel is not None):
        reference = next(c for c in CASES if c.op == case.op and c.kernel is None and c.backend != "naive")
        if not is_importable(case.kernel):
            rows.append(f"| {case.op} | {case.kernel} | - | - | skipped: {case.kernel} not installed |")
            continue
        if device.type != "cuda":
            rows.append(f"| {case.op} | {case.kernel} | - | - | skipped: needs CUDA |")
            continue
        torch.manual_seed(0)
        inputs = reference.setup(2, T, device, torch.float32)
        outs, grads = [], []
        for c, dtype in ((case, torch.bfloat16), (reference, torch.float32)):
            leaves = [_cast(x, dtype) for x in inputs]
            out = c.run(*leaves)
            out = out[0] if isinstance(out, tuple) else out
            weights = torch.randn(out.shape, generator=torch.Generator(device=device).manual_seed(1), device=device)
            grad = torch.autograd.grad((out.float() * weights).sum(), [x for x in leaves if x.requires_grad], allow_unused=True)
            outs.append(out)
            grads.append(grad)
        out_err = _relative(outs[0], outs[1])
        grad_err = max(_relative(a, b) for a, b in zip(*grads) if a is not None and b is not None)
        verdict = "ok" if max(out_err, grad_err) <= MISMATCH else "MISMATCH"
        rows.append(f"| {case.op} | {case.kernel} | {out_err:.2e} | {grad_err:.2e} | {verdict} |")
    return rows


def preset_rows(presets: list[str], device: torch.device, T: int, batch: int, steps: int) -> list[str]:
    from omegaconf import OmegaConf

    from arch.flops import training_flops_per_token
    from arch.lm import LanguageModel
    from training.compose import compose
    from training.peak import peak_flops
    from training.task import split_weight_decay

    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    peak = peak_flops(None, device, precision, None if device.type == "cuda" else "~/.cache/mixerlab")
    rows = ["| preset | params | step ms | tokens/s | MFU |", "| --- | ---: | ---: | ---: | ---: |"]
    for preset in presets:
        try:
            values = OmegaConf.to_container(compose([f"model={preset}"]).model, resolve=True)
            vocab = values.get("vocab_size") or 4096
            torch.manual_seed(0)
            model = LanguageModel.from_config(values, vocab_size=vocab).to(device)
            decay, no_decay = split_weight_decay(model)
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
            ids = torch.randint(0, vocab, (batch, T + 1), device=device)
            times = []
            for _ in range(steps + 2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model.objective(ids[:, :-1], ids[:, 1:])[0]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            step = statistics.median(times[2:])
            tps = batch * T / step
            mfu = f"{100 * tps * training_flops_per_token(model, T) / peak:.1f}%" if peak else "-"
            rows.append(f"| {preset} | {model.num_params():,} | {1e3 * step:.1f} | {tps:,.0f} | {mfu} |")
            del model, opt
        except Exception as err:  # one failing preset must not hide the others' numbers
            rows.append(f"| {preset} | - | - | - | FAILED: {type(err).__name__}: {str(err)[:120]} |")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from training.compose import CONF_DIR

    all_presets = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    parser = argparse.ArgumentParser(prog="python -m eval.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--presets", default="all", help=f"'all' or comma-separated, from {','.join(all_presets)}")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset, after 2 warm-up steps")
    parser.add_argument("--kernel-seq-len", type=int, default=1024, help="T of the kernel checks")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    presets = all_presets if args.presets == "all" else args.presets.split(",")
    unknown = sorted(set(presets) - set(all_presets))
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {all_presets}")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}\n")
    print("\n".join(kernel_rows(device, args.kernel_seq_len)) + "\n")
    print(f"One training step per preset: batch {args.batch} x T {args.seq_len}, median of {args.steps}\n")
    print("\n".join(preset_rows(presets, device, args.seq_len, args.batch, args.steps)))


if __name__ == "__main__":
    main()
