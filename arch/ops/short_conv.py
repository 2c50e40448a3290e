"""Depthwise causal short convolution (H3, Hyena, Based's BaseConv, Mamba's pre-scan conv).

    y_t = act(sum_{j=0}^{K-1} w[:, j] * x_{t-K+1+j} + b)

Papers: Fu et al. 2023 (H3); Arora et al. 2024 (Based); Gu & Dao 2023 (Mamba).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arch.ops.backend import use_kernel


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unknown activation {activation!r}: choose None or 'silu'")


def _history(x: torch.Tensor, K: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    """The last K-1 inputs before x, as [B, K-1, D] (zeros when no state is given)."""
    if initial_state is None:
        return x.new_zeros(x.shape[0], K - 1, x.shape[-1])
    return initial_state.transpose(1, 2).to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution: y_t = act(sum_j w[:, j] * x_{t-K+1+j} + b).

    Args:
        x: [B, T, D]; weight: [D, K]; bias: [D] or None.
        activation: None or "silu".
        initial_state: the K-1 inputs preceding x, [B, D, K-1] (zeros when None).
        backend: "auto" (the causal-conv1d package on CUDA when importable and the shape is one it
            supports: 2 <= K <= 4, D % 8 == 0), "torch" or "causal_conv1d".

    Returns:
        y [B, T, D] in x's dtype, and the final state (the last K-1 inputs) [B, D, K-1]: running on
        x[:, :t] then on x[:, t:] from it equals one run on x, and T = 1 is the decode step.

    Papers: Fu et al. 2023 (H3); Arora et al. 2024 (Based); Gu & Dao 2023 (Mamba).
    """
    D, K = weight.shape
    kernel = use_kernel(backend, "causal_conv1d", "causal_conv1d", x, weight)
    if kernel and (backend != "auto" or (2 <= K <= 4 and D % 8 == 0)):
        from causal_conv1d import causal_conv1d_fn

        # channel-last [B, D, T] views, the layout in which the kernel takes and returns states
        state = None if initial_state is None else initial_state.transpose(1, 2).contiguous().transpose(1, 2)
        y, final_state = causal_conv1d_fn(
            x.transpose(1, 2),
            weight,
            bias,
            initial_states=state,
            return_final_states=True,
            activation=activation,
        )
        return y.transpose(1, 2), final_state
    padded = torch.cat([_history(x, K, initial_state), x], dim=1)  # [B, K-1+T, D]
    y = F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1).to(x.dtype), bias, groups=D)
    return _activate(y.transpose(1, 2), activation), padded[:, padded.shape[1] - (K - 1) :].transpose(1, 2)


def causal_conv1d_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of `causal_conv1d` (same signature; backend ignored).

    y_t = act(sum_j w[:, j] * x_{t-K+1+j} + b) with a rolling window of the last K inputs.
    """
    K = weight.shape[1]
    window = _history(x, K, initial_state)  # [B, K-1, D]
    outputs = []
    for t in range(x.shape[1]):
        window = torch.cat([window, x[:, t : t + 1]], dim=1)  # [B, K, D]
        y_t = (window * weight.t()).sum(1)
        outputs.append(y_t if bias is None else y_t + bias)
        window = window[:, 1:]
    return _activate(torch.stack(outputs, dim=1), activation), window.transpose(1, 2)
