"""Per-call choice between a fused CUDA kernel and the pure-PyTorch path.

Every op takes ``backend="auto" | "torch" | <kernel name>``. ``"auto"`` uses the fused kernel only
when its package imports *and* the inputs live on CUDA; the decision is made from the tensors of
each call, never from a global flag, so the same model runs on CPU and GPU unchanged.
"""

from __future__ import annotations

import functools
import importlib

import torch


@functools.cache
def is_importable(module: str) -> bool:
    """True when ``module`` imports; a failing import of an optional kernel package is not an error."""
    try:
        importlib.import_module(module)
    except Exception:  # CUDA-only packages raise ImportError, OSError or RuntimeError without a GPU
        return False
    return True


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
