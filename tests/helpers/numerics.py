"""Numerical comparison helpers of the op tests: written once, imported as
``from tests.helpers.numerics import relative_error, cotangent, outputs_and_grads``."""

from __future__ import annotations

from collections.abc import Callable

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, computed in float64."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def cotangent(x: torch.Tensor) -> torch.Tensor:
    """Fixed random weights for x's shape, drawn in float64 from a generator seeded by x's size, so a
    float32 run and its float64 reference are weighted alike."""
    generator = torch.Generator().manual_seed(x.numel())
    return torch.randn(x.shape, dtype=torch.float64, generator=generator).to(x.dtype)


def outputs_and_grads(op: Callable, *inputs: torch.Tensor | None, **kwargs):
    """Run ``op(*inputs[:-1], initial_state=inputs[-1], **kwargs)``, an op returning (output, final
    state), and differentiate L = <output, cotangent> + <state, cotangent> with respect to every input
    that is not None (the initial state included). Returns (output, state, gradients)."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    out, state = op(*leaves[:-1], initial_state=leaves[-1], **kwargs)
    loss = (out * cotangent(out)).sum() + (state * cotangent(state)).sum()
    grads = torch.autograd.grad(loss, [x for x in leaves if x is not None], allow_unused=True, materialize_grads=True)
    return out, state, grads
