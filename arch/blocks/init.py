"""Initialisation helpers shared by several blocks (one copy each; every helper draws its random
numbers in the order the blocks always did, so a seed gives the same parameters).

    depthwise conv     w, b ~ U(-1/sqrt(k), 1/sqrt(k))               (PyTorch's Conv1d default; BaseConv,
                                                                        Mamba, Mamba-2; Griffin's weight)
    softplus^-1        softplus^-1(y) = y + log(1 - exp(-y))          (Mamba's dt bias, Griffin's Lambda)
    dt bias            dt ~ logU[dt_min, dt_max] clamped at 1e-4, bias = softplus^-1(dt)   (Mamba, Mamba-2)
    S4D-real A         A_n = n, n = 1..N, stored as log A               (Mamba, H3)
    RWKV depth ratios  ratio_0_to_1 = l / (L - 1), ratio_1_to_almost0 = 1 - l / L   (RWKV-6, RWKV-7)
    RWKV channel ramp  n / d, n = 0..d-1                                (RWKV-6, RWKV-7)
    no weight decay    p._no_weight_decay = True on each exempt parameter  (every block with one)
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def init_depthwise_conv_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """PyTorch's Conv1d initialisation of a depthwise conv, weight [D, k] and bias [D] (drawn after
    the weight; skipped when None): U(-1/sqrt(k), 1/sqrt(k))."""
    bound = 1 / math.sqrt(weight.shape[-1])
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^-1(y) = y + log(1 - exp(-y)) = log(exp(y) - 1), for y > 0."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias(n: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """Mamba's dt bias [n]: softplus^-1(dt) with dt ~ logU[dt_min, dt_max] (one torch.rand draw),
    clamped below at 1e-4, so that softplus(bias) starts in [dt_min, dt_max]."""
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    return inverse_softplus(log_dt.exp().clamp(min=1e-4))


def s4d_real_log_A(channels: int, d_state: int) -> torch.Tensor:
    """log A of the S4D-real initialisation, A_n = n (n = 1..N) in every channel: [channels, N]."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(channels, -1)


def channel_ramp(d: int) -> torch.Tensor:
    """n / d for n = 0..d-1: RWKV's per-channel interpolation ramp used by its initialisation."""
    return torch.arange(d, dtype=torch.float32) / d


def depth_ratios(layer_idx: int, n_layers: int | None) -> tuple[float, float]:
    """(ratio_0_to_1, ratio_1_to_almost0) = (layer_idx / (n_layers - 1), 1 - layer_idx / n_layers) of
    the official RWKV initialisation; (1/2, 1/2) when the depth is unknown (a block on its own)."""
    if n_layers is None:
        return 0.5, 0.5
    return layer_idx / max(n_layers - 1, 1), 1 - layer_idx / n_layers


def no_weight_decay(*params: nn.Parameter) -> None:
    """Exempt ``params`` from weight decay, as the reference codes do for decay rates, time steps,
    gates' biases, token-shift mixes and the like (mamba_ssm's ``_no_weight_decay`` attribute): the
    optimiser setup (`training.task.LMTask.configure_optimizers`) honours the attribute on every
    parameter, beside its default rule (matrices decay; norms, biases and embeddings do not)."""
    for p in params:
        p._no_weight_decay = True
