"""Rotary position embedding (RoFormer, Su et al. 2021). Channel pairs (i, i + D/2) of a head at
position n are rotated by the angle n theta_i, theta_i = base^(-2i/D):

    (x_i, x_{i+D/2}) -> (x_i cos(n theta_i) - x_{i+D/2} sin(n theta_i), x_i sin(n theta_i) + x_{i+D/2} cos(n theta_i))
"""

from __future__ import annotations

import torch

from arch.ops.backend import accumulation_dtype


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of ``x`` by angle ``pos * base^(-2i/D)``.

    x: [B, T, H, D] with D even; positions: [T] integer positions. Computed in float32 and
    returned in x's dtype (float64 stays float64). q.k of two rotated vectors depends only on the
    difference of their positions, which is what makes `step` decoding match `forward`.
    """
    d = x.shape[-1]
    work = accumulation_dtype(x)
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=work) / d)
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x.to(work).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
