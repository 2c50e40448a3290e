"""Per-call choice between a fused CUDA kernel and the pure-PyTorch path, the dtype every op
accumulates in, and the one process setting the pure-PyTorch path wants on CPU.

Every op takes ``backend="auto" | "torch" | <kernel name>``. ``"auto"`` uses the fused kernel only
when its package imports *and* the inputs live on CUDA; the decision is made from the tensors of
each call, never from a global flag, so the same model runs on CPU and GPU unchanged.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 32 * 2**20  # the most glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 2**30
MALLOC_TUNING_ENV = "MIXERLAB_MALLOC_TUNING"


@functools.cache
def keep_freed_memory() -> bool:
    """Let the C allocator keep freed blocks of up to 32 MiB for reuse instead of returning them to the
    system; returns whether the setting was applied. Called once by the entry points (train.py,
    whose runs eval.mqar launches, and eval.bench), never on import.

    PyTorch has no caching allocator on CPU, so every temporary comes from malloc. glibc serves blocks
    above a (dynamic) threshold with fresh mmap'd pages and gives the top of its heap back past a trim
    threshold: a scan that makes and frees tens of MiB of temporaries per call then pays a page fault
    for every 4 KiB it touches, every call. Raising both thresholds (mallopt M_MMAP_THRESHOLD to its
    32 MiB maximum, M_TRIM_THRESHOLD to 1 GiB) is the glibc form of what PyTorch's CPU performance
    guide gets from preloading jemalloc or tcmalloc; compare ``python -m eval.bench`` with and without
    MIXERLAB_MALLOC_TUNING=0 to see its effect on a machine (docs/performance.md). The cost is that up
    to 1 GiB of freed memory stays mapped in the process. Skipped (False) off Linux, when
    MIXERLAB_MALLOC_TUNING=0, when the user set glibc's own MALLOC_*_ variables, or when another
    allocator is preloaded.
    """
    if not sys.platform.startswith("linux") or os.environ.get(MALLOC_TUNING_ENV, "1") == "0":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


@functools.cache
def is_importable(module: str) -> bool:
    """True when ``module`` imports; a failing import of an optional kernel package is not an error."""
    try:
        importlib.import_module(module)
    except Exception:  # CUDA-only packages raise ImportError, OSError or RuntimeError without a GPU
        return False
    return True


def accumulation_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype recurrences and scans accumulate in: float64 when an input is float64, else float32
    (bfloat16 and float16 inputs included). States come back in it, so a forward and a decode step,
    or two halves of a sequence, hand states over without a cast. ``None`` entries are ignored."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def use_kernel(backend: str, kernel: str, module: str, *tensors: torch.Tensor) -> bool:
    """Decide whether an op should call the fused ``kernel`` (provided by ``module``).

    backend: ``"auto"`` (kernel iff importable and every tensor is on CUDA), ``"torch"`` (never),
    or ``kernel`` itself (always; raises a clear error when impossible).
    """
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend == "auto":
        return on_cuda and is_importable(module)
    if backend == kernel:
        if not is_importable(module):
            raise RuntimeError(
                f"backend={kernel!r} needs the optional package {module!r}, which does not import here. "
                f"Install the CUDA extras (pip install -e '.[cuda]') on a GPU machine, or use backend='torch'."
            )
        if not on_cuda:
            raise RuntimeError(f"backend={kernel!r} runs on CUDA tensors only; use backend='torch' on CPU.")
        return True
    raise ValueError(f"unknown backend {backend!r}: choose 'auto', 'torch' or {kernel!r}")
