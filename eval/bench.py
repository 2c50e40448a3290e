"""Forward+backward time and peak memory of sequence-mixing ops, per sequence length.

    python -m eval.bench [--device cpu|cuda] [--T 512 2048 8192] [--ops gla,rwkv6] [--dtype float32]
    python -m eval.bench ... --write-docs      # also writes the table to docs/performance.md

Prints a Markdown table (op, backend, T, fwd+bwd ms, CPU ms, peak MiB) at B=2, H=4, head dim 64: every fast path
next to its token-by-token ``*_naive`` recurrence and, as the reference row, softmax attention
(`torch.nn.functional.scaled_dot_product_attention`, ``is_causal=True``) of the same shape.

Time: median over repeats after one warm-up call of ``autograd.grad(sum of outputs, inputs)``, as wall
time and as this process's CPU time (on a shared machine wall time also counts waiting for a core); a case
whose time, extrapolated linearly from its previous T, exceeds ``--budget-s`` prints "skipped".
Peak memory: bytes allocated by PyTorch during one fwd+bwd call above what was live before it (the
inputs). On CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the allocation and free events recorded
by the PyTorch profiler (``profile_memory=True``), summed in time order. The profiler keeps every op
event (gigabytes for a 4096-step Python loop), so on CPU memory is measured only for cases whose call
takes under ``--memory-max-s``; the others print "-". On Linux the benchmark, like train.py, first lets
the C allocator keep freed blocks (`arch.ops.backend.keep_freed_memory`; the header says whether it
did): every row, naive twins included, runs under the same setting.

To benchmark another op, append a `BenchCase` to `CASES` (its name, how to make inputs for
(B, T, device, dtype), and the callable); the driver needs no change. Blocks: ``--blocks all`` (or
names) adds one row per sequence mixer of ``conf/block/`` at d_model 256 with its YAML defaults,
timing the whole block forward and backward, parameter gradients included; a new block file is
picked up without code changes.

Training: ``python -m eval.bench train [train.py overrides]`` times the framework's training loop
against a bare PyTorch loop over the same model and batches (`eval.train_bench`);
``python -m eval.bench litgpt --litgpt-python ENV/bin/python`` times train.py against litgpt's
``pretrain`` on the same model and tokens, eager and compiled (`eval.litgpt_side`).

MoE against dense: ``python -m eval.bench moe [--tokens 4096] [--d-model 256] [--experts 8] [--top-k 2]``
times one MoE layer (`arch.blocks.moe`, dropless, default options) forward and backward, parameter
gradients included, next to a dense SwiGLU whose hidden size is top_k times an expert's, so both have
the same active parameters (the router's d x E aside), and prints the ratio ``moe/dense``.

Measured numbers live in docs/performance.md, not in docstrings: ``--write-docs`` writes the table
there with the command that produced it, so the page is regenerated rather than edited by hand.
Timings depend on the machine, its load, the thread count and the allocator setting.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arch.ops import (
    causal_attention,
    causal_conv1d,
    causal_conv1d_naive,
    diagonal_recurrence,
    diagonal_recurrence_naive,
    gated_linear_attention,
    gated_linear_attention_naive,
    linear_attention,
    linear_attention_naive,
    rwkv6,
    rwkv6_naive,
    rwkv7,
    rwkv7_naive,
    selective_scan,
    selective_scan_naive,
    taylor_feature_map,
)
from arch.ops.attention import sliding_window_attention_naive
from arch.ops.backend import MALLOC_TUNING_ENV, is_importable, keep_freed_memory

H, D, FEATURE_DIM = 4, 64, 16  # heads, head dim; Based's feature dim before the Taylor map
D_INNER, D_STATE = 256, 16  # Mamba's S6 channels and state size per channel
Setup = Callable[[int, int, torch.device, torch.dtype], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class BenchCase:
    """One row family of the table: ``run(*setup(B, T, device, dtype))`` is timed forward+backward.

    op: the name ``--ops`` selects; backend: how it is computed ("chunked", "naive", "fla", ...);
    baseline: always shown whatever ``--ops`` says; kernel: a package needed on CUDA (None: none).
    """

    op: str
    backend: str
    setup: Setup
    run: Callable[..., Any]
    baseline: bool = False
    kernel: str | None = None


def _leaves(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().requires_grad_() for t in tensors)


def attention_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    return _leaves(*(torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(3)))


def gla_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    log_decay = F.logsigmoid(torch.randn(B, T, H, D, device=device, dtype=dtype)) / 16  # GLA's gate normaliser
    return (*attention_inputs(B, T, device, dtype), *_leaves(log_decay))


def rwkv6_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    log_decay = -torch.exp(torch.randn(B, T, H, D, device=device, dtype=dtype) - 2)
    bonus = torch.randn(H, D, device=device, dtype=dtype)
    return (*attention_inputs(B, T, device, dtype), *_leaves(log_decay, bonus))


def based_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    q, k = (torch.randn(B, T, H, FEATURE_DIM, device=device, dtype=dtype) for _ in range(2))
    return _leaves(q, k, torch.randn(B, T, H, D, device=device, dtype=dtype))


def conv_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    x = torch.randn(B, T, H * D, device=device, dtype=dtype)
    return _leaves(x, torch.randn(H * D, 4, device=device, dtype=dtype), torch.randn(H * D, device=device, dtype=dtype))


def selective_scan_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    u = torch.randn(B, T, D_INNER, device=device, dtype=dtype)
    delta = F.softplus(torch.randn(B, T, D_INNER, device=device, dtype=dtype) - 4)
    A = -torch.exp(torch.empty(D_INNER, D_STATE, device=device).uniform_(0, math.log(16)))  # fp32, as mamba_ssm wants
    B_, C_ = (torch.randn(B, T, D_STATE, device=device, dtype=dtype) for _ in range(2))
    return _leaves(u, delta, A, B_, C_)


def diagonal_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    log_a = F.logsigmoid(torch.randn(B, T, H * D, device=device, dtype=dtype) + 4)  # RG-LRU-like decays near 1
    return _leaves(log_a, torch.randn(B, T, H * D, device=device, dtype=dtype))


def rwkv7_inputs(B: int, T: int, device: torch.device, dtype: torch.dtype) -> Sequence[torch.Tensor]:
    r, k, v = attention_inputs(B, T, device, dtype)
    log_decay = -torch.exp(-0.5 - 3 * torch.rand(B, T, H, D, device=device, dtype=dtype))
    kk = F.normalize(torch.randn(B, T, H, D, device=device, dtype=dtype), dim=-1)
    rate = torch.sigmoid(torch.randn(B, T, H, 1, device=device, dtype=dtype))
    return (r, *_leaves(log_decay), k, v, *_leaves(-kk, kk * rate))


SWA_WINDOW = 128  # sliding-window rows: W = 128, against full causal SDPA's row


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)


def based(op: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    return lambda q, k, v: op(taylor_feature_map(q), taylor_feature_map(k), v, **kwargs)


CASES: list[BenchCase] = [
    BenchCase("sdpa", "sdpa", attention_inputs, sdpa, baseline=True),
    BenchCase("sdpa", "flash_attn", attention_inputs, lambda *x: causal_attention(*x, backend="flash_attn"), kernel="flash_attn"),
    BenchCase("gla", "chunked", gla_inputs, lambda *x: gated_linear_attention(*x, backend="torch")),
    BenchCase("gla", "fla", gla_inputs, lambda *x: gated_linear_attention(*x, backend="fla"), kernel="fla"),
    BenchCase("gla", "naive", gla_inputs, gated_linear_attention_naive),
    BenchCase("swa", "blocked", attention_inputs, lambda *x: causal_attention(*x, window=SWA_WINDOW, backend="torch")),
    BenchCase("swa", "naive", attention_inputs, lambda *x: sliding_window_attention_naive(*x, window=SWA_WINDOW)),
    BenchCase("rwkv6", "chunked", rwkv6_inputs, lambda *x: rwkv6(*x, backend="torch")),
    BenchCase("rwkv6", "fla", rwkv6_inputs, lambda *x: rwkv6(*x, backend="fla"), kernel="fla"),
    BenchCase("rwkv6", "naive", rwkv6_inputs, rwkv6_naive),
    BenchCase("based", "chunked", based_inputs, based(linear_attention, backend="torch")),
    BenchCase("based", "naive", based_inputs, based(linear_attention_naive)),
    BenchCase("short_conv", "conv1d", conv_inputs, lambda *x: causal_conv1d(*x, backend="torch")),
    BenchCase(
        "short_conv", "causal_conv1d", conv_inputs,
        lambda *x: causal_conv1d(*x, backend="causal_conv1d"), kernel="causal_conv1d",
    ),
    BenchCase("short_conv", "naive", conv_inputs, causal_conv1d_naive),
    BenchCase("selective_scan", "chunked", selective_scan_inputs, lambda *x: selective_scan(*x, backend="torch")),
    BenchCase(
        "selective_scan", "mamba_ssm", selective_scan_inputs,
        lambda *x: selective_scan(*x, backend="mamba_ssm"), kernel="mamba_ssm",
    ),
    BenchCase("selective_scan", "naive", selective_scan_inputs, selective_scan_naive),
    BenchCase("diagonal_recurrence", "chunked", diagonal_inputs, diagonal_recurrence),
    BenchCase("diagonal_recurrence", "naive", diagonal_inputs, diagonal_recurrence_naive),
    BenchCase("rwkv7", "chunked", rwkv7_inputs, rwkv7),
    BenchCase("rwkv7", "naive", rwkv7_inputs, rwkv7_naive),
]


BLOCK_D_MODEL = 256
BLOCK_CONF = Path(__file__).resolve().parents[1] / "conf" / "block"
PERFORMANCE_DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def block_cases() -> list[BenchCase]:
    """One case per sequence mixer in conf/block/: inputs are x [B, T, 256] and the block's parameters."""
    from omegaconf import OmegaConf

    from arch.config import instantiate, locate

    cases = []
    for path in sorted(BLOCK_CONF.glob("*.yaml")):
        spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not hasattr(locate(spec["_target_"], path.stem), "step"):
            continue  # channel mixers are position-wise: nothing to compare across T
        built: dict[str, torch.nn.Module] = {}

        def setup(B: int, T: int, device: torch.device, dtype: torch.dtype, spec=spec, name=path.stem, built=built):
            block = instantiate(spec, f"block.{name}", d_model=BLOCK_D_MODEL, layer_idx=1).to(device, dtype)
            built["block"] = block
            x = torch.randn(B, T, BLOCK_D_MODEL, device=device, dtype=dtype, requires_grad=True)
            return (x, *block.parameters())

        cases.append(BenchCase(f"block:{path.stem}", "module", setup, lambda x, *params, built=built: built["block"](x)))
    return cases


def forward_backward(case: BenchCase, inputs: Sequence[torch.Tensor]) -> None:
    out = case.run(*inputs)
    outputs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().sum() for o in outputs if o.requires_grad)
    # allow_unused: a block alone may leave parameters out (RWKV-7's value residual needs the model's first layer)
    torch.autograd.grad(loss, [x for x in inputs if x.requires_grad], allow_unused=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(case: BenchCase, inputs: Sequence[torch.Tensor], repeats: int, budget_s: float) -> tuple[float, float]:
    """Median fwd+bwd wall and process-CPU milliseconds after a warm-up call; fewer repeats when slow."""
    device = inputs[0].device
    wall, cpu = [], []
    for _ in range(repeats + 1):
        _synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        forward_backward(case, inputs)
        _synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if sum(wall) > budget_s:
            break
    return 1e3 * statistics.median(wall[1:] or wall), 1e3 * statistics.median(cpu[1:] or cpu)


def peak_mib(case: BenchCase, inputs: Sequence[torch.Tensor]) -> float:
    """Peak bytes allocated during one fwd+bwd call above what was live before it, in MiB."""
    device = inputs[0].device
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward(case, inputs)
        _synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward(case, inputs)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def runnable(case: BenchCase, device: torch.device) -> bool:
    return case.kernel is None or (device.type == "cuda" and is_importable(case.kernel))


def performance_doc(command: str, header: str, table: list[str]) -> str:
    """docs/performance.md: the command that produced the table, what the numbers depend on, the table."""
    return "\n".join([
        "# Performance of the sequence-mixing ops",
        "",
        "Generated by `eval.bench`; do not edit by hand. This table came from",
        "",
        f"    {command}",
        "",
        "Run the same command (it ends in `--write-docs`) to regenerate it on another machine, or change the",
        "lengths, ops and blocks (`python -m eval.bench --help`). Forward+backward time of one call",
        "(`autograd.grad` of the summed outputs), median over the repeats after a warm-up call: wall",
        "milliseconds, and this process's CPU milliseconds (on a shared machine wall time also counts",
        "waiting for a core). Peak memory is what PyTorch allocated during one call above its inputs",
        '("-" where it was not measured). **The numbers depend on the machine**: its CPU or GPU, its load',
        "while the benchmark ran (nothing here says it was idle), the thread count and the allocator setting",
        "below. Compare rows of one table; remeasure before comparing with another machine.",
        "",
        f"Run: {header}; torch {torch.__version__}, {os.cpu_count()} CPUs visible.",
        "",
        *table,
        "",
    ])


def moe_main(argv: Sequence[str]) -> None:
    """``python -m eval.bench moe``: an MoE layer against the dense SwiGLU of the same active parameters."""
    from arch.blocks.mlp import SwiGLU
    from arch.blocks.moe import MoE
    from arch.flops import active_params

    parser = argparse.ArgumentParser(prog="python -m eval.bench moe", description=moe_main.__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = keep_freed_memory()
    torch.manual_seed(0)
    moe = MoE(args.d_model, n_experts=args.experts, top_k=args.top_k)
    dense = SwiGLU(args.d_model, hidden=args.top_k * moe.hidden)
    for p in (*moe.parameters(), *dense.parameters()):  # the language model's init: N(0, 0.02)
        torch.nn.init.normal_(p, std=0.02)
    print(f"tokens={args.tokens} d_model={args.d_model} experts={args.experts} top_k={args.top_k} expert hidden={moe.hidden} "
          f"threads={torch.get_num_threads()} allocator: {'freed blocks kept' if tuned else 'C library defaults'}\n")
    print("| layer | params | active params | fwd+bwd ms | CPU ms |\n| --- | ---: | ---: | ---: | ---: |")
    times = {}
    for name, layer in (("dense SwiGLU", dense), ("MoE (dropless)", moe)):
        def setup(B, T, device, dtype, layer=layer):
            return (torch.randn(1, args.tokens, args.d_model, requires_grad=True), *layer.parameters())

        case = BenchCase(name, "module", setup, lambda x, *params, layer=layer: layer(x))
        ms, cpu_ms = time_ms(case, case.setup(1, args.tokens, torch.device("cpu"), torch.float32), args.repeats, 120.0)
        times[name] = ms
        total = sum(p.numel() for p in layer.parameters())
        print(f"| {name} | {total:,} | {active_params(layer):,} | {ms:.1f} | {cpu_ms:.1f} |")
    print(f"\nmoe/dense: {times['MoE (dropless)'] / times['dense SwiGLU']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["moe"]:
        return moe_main(argv[1:])
    if argv[:1] == ["train"]:
        from eval.train_bench import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["litgpt"]:
        from eval.litgpt_side import main as litgpt_main

        return litgpt_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192], help="sequence lengths")
    ops = sorted({c.op for c in CASES if not c.baseline})
    parser.add_argument("--ops", default=",".join(ops), help=f"comma-separated, from {','.join(ops)}")
    blocks = block_cases()
    parser.add_argument("--blocks", default="", help=f"'all' or comma-separated, from {','.join(c.op[6:] for c in blocks)}")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    parser.add_argument("--budget-s", type=float, default=60.0, help="time allowed per (case, T)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--memory-max-s", type=float, default=2.0,
                        help="on CPU, measure memory only for calls shorter than this (profiler cost)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is steadier "
                        "on a shared machine, where spinning threads wait for busy cores")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the table, with this command, to docs/performance.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = keep_freed_memory()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    selected = set(args.ops.split(","))
    unknown = selected - set(ops)
    if unknown:
        parser.error(f"unknown ops {sorted(unknown)}; choose from {ops}")
    cases = [c for c in CASES if (c.baseline or c.op in selected) and runnable(c, device)]
    wanted = {c.op[6:] for c in blocks} if args.blocks == "all" else set(filter(None, args.blocks.split(",")))
    if wanted - {c.op[6:] for c in blocks}:
        parser.error(f"unknown blocks {sorted(wanted - {c.op[6:] for c in blocks})}")
    cases += [c for c in blocks if c.op[6:] in wanted]

    allocator = "freed blocks kept (keep_freed_memory)" if tuned else "C library defaults"
    header = (f"device={device} dtype={args.dtype} B={args.batch} H={H} D={D} threads={torch.get_num_threads()} "
              f"allocator: {allocator}; {MALLOC_TUNING_ENV}=0 for the defaults")
    print(header + "\n")
    table = ["| op | backend | T | fwd+bwd ms | CPU ms | peak MiB |", "| --- | --- | ---: | ---: | ---: | ---: |"]

    def emit(row: str) -> None:
        table.append(row)
        print(row, flush=True)

    for row in table:
        print(row)
    for case in cases:
        last: tuple[int, float] | None = None  # (T, ms) of the previous length, to extrapolate from
        for T in sorted(args.T):
            if last is not None and last[1] / 1e3 * T / last[0] > args.budget_s:
                emit(f"| {case.op} | {case.backend} | {T} | skipped | skipped | skipped |")
                continue
            torch.manual_seed(0)
            inputs = case.setup(args.batch, T, device, dtype)
            ms, cpu_ms = time_ms(case, inputs, args.repeats, args.budget_s)
            skip_memory = args.no_memory or (device.type == "cpu" and ms / 1e3 > args.memory_max_s)
            memory = "-" if skip_memory else f"{peak_mib(case, inputs):.1f}"
            emit(f"| {case.op} | {case.backend} | {T} | {ms:.1f} | {cpu_ms:.1f} | {memory} |")
            last = (T, ms)
    if args.write_docs:
        command = shlex.join(["python", "-m", "eval.bench", *argv])
        PERFORMANCE_DOC.parent.mkdir(exist_ok=True)
        PERFORMANCE_DOC.write_text(performance_doc(command, header, table))
        print(f"\nwrote {PERFORMANCE_DOC.relative_to(PERFORMANCE_DOC.parents[1])}")


if __name__ == "__main__":
    main()
