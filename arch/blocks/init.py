"""Initialisation helpers shared by several blocks (one copy each; every helper draws its random
numbers in the order the blocks always did, so a seed gives the same parameters).

    depthwise conv     w, b ~ U(-1/sqrt(k), 1/sqrt(k))               (PyTorch's Conv1d default; BaseConv,
                                                                        Mamba, Mamba-2; Griffin's weight)
    softplus^-1        softplus^-1(y) = y + log(1 - exp(-y))          (Mamba's dt bias, Griffin's Lambda)
    dt bias            dt ~ logU[dt_min, dt_max] clamped at 1e-4, bias = softplus^-1(dt)   (Mamba, Mamba-2)
    S4D-real A         A_n = n, n = 1..N, stored as log A               (Mamba)
    RWKV depth ratios  ratio_0_to_1 = l / (L - 1), ratio_1_to_almost0 = 1 - l / L   (RWKV-6, RWKV-7)
    RWKV depth         (l, L) = (layer_idx // span, n_layers // span): the RWKV layer of a model layer
    RWKV channel ramp  n / d, n = 0..d-1                                (RWKV-6, RWKV-7)
    RWKV LoRA rank     max(32, round(factor sqrt(C) / 32) * 32)          (RWKV-7)
    RWKV projections   orthogonal with gain s, or zeros when s = 0     (RWKV-6, RWKV-7: generate_init_weight)
    RWKV ln_x scale    ((1 + l) / L)^0.7                                (RWKV-6, RWKV-7: generate_init_weight)
    depthwise conv N   w ~ N(0, scale / k), b = 0                       (Griffin's Conv1D, variance scale 0.01)
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


def rwkv_depth(layer_idx: int, n_layers: int | None, span: int = 1) -> tuple[int, int | None]:
    """(l, L): the RWKV layer index and count of model layer ``layer_idx`` of ``n_layers`` when one RWKV
    layer spans ``span`` model layers (2 when time and channel mixes alternate as layers: layers
    2l and 2l + 1 are RWKV layer l). L is None when the depth is unknown."""
    return layer_idx // span, None if n_layers is None else n_layers // span


def rwkv_lora_rank(d_model: int, factor: float) -> int:
    """RWKV-7's suggested low-rank width max(32, round(factor sqrt(C) / 32) * 32) (factor 2.5 for the
    decay and in-context learning rate, 1.7 for the value residual, 5 for the output gate)."""
    return max(32, int(round(factor * math.sqrt(d_model) / 32) * 32))


@torch.no_grad()
def orthogonal_or_zero_(weight: torch.Tensor, gain: float) -> None:
    """RWKV's ``generate_init_weight`` rule for a projection matrix: orthogonal with ``gain``, zeros
    when the gain is 0."""
    if gain == 0:
        nn.init.zeros_(weight)
    else:
        nn.init.orthogonal_(weight, gain=gain)


def rwkv_group_norm_scale(layer: int, n_layers: int | None) -> float:
    """RWKV's ln_x (per-head GroupNorm) weight ((1 + l) / L)^0.7 of RWKV layer l of L; 1 (the GroupNorm
    default) when the depth is unknown."""
    return 1.0 if n_layers is None else ((1 + layer) / n_layers) ** 0.7


@torch.no_grad()
def init_depthwise_conv_normal_(weight: torch.Tensor, bias: torch.Tensor | None, variance_scale: float) -> None:
    """w ~ N(0, variance_scale / k) for a depthwise conv weight [D, k], bias 0 (recurrentgemma's Conv1D:
    std = sqrt(0.01 / k), 0.05 at k = 4)."""
    nn.init.normal_(weight, std=math.sqrt(variance_scale / weight.shape[-1]))
    if bias is not None:
        nn.init.zeros_(bias)


def no_weight_decay(*params: nn.Parameter) -> None:
    """Exempt ``params`` from weight decay, as the reference codes do for decay rates, time steps,
    gates' biases, token-shift mixes and the like (mamba_ssm's ``_no_weight_decay`` attribute): the
    optimiser setup (`training.task.LMTask.configure_optimizers`) honours the attribute on every
    parameter, beside its default rule (matrices decay; norms, biases and embeddings do not)."""
    for p in params:
        p._no_weight_decay = True
