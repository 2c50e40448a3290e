"""Rotary position embedding (RoFormer, Su et al. 2021). Channel pairs (i, i + D/2) of a head at
position n are rotated by the angle n theta_i, theta_i = base^(-2i/D):

    (x_i, x_{i+D/2}) -> (x_i cos(n theta_i) - x_{i+D/2} sin(n theta_i), x_i sin(n theta_i) + x_{i+D/2} cos(n theta_i))
"""

from __future__ import annotations

import functools

import torch

from arch.ops.backend import accumulation_dtype


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor | range, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of ``x`` by angle ``pos * base^(-2i/D)``.

    x: [B, T, H, D] with D even; positions: [T] integer positions, or a ``range`` (a forward pass's
    ``range(T)``), whose cos/sin tables are cached per (range, D, base, device, dtype). Computed in
    float32 and returned in x's dtype (float64 stays float64). q.k of two rotated vectors depends
    only on the difference of their positions, which is what makes `step` decoding match `forward`.
    """
    d = x.shape[-1]
    work = accumulation_dtype(x)
    if isinstance(positions, range):
        cos, sin = _cached_tables(positions.start, positions.stop, d, float(base), x.device, work)
    else:
        cos, sin = _tables(positions.to(work), d, base, work)
    x1, x2 = x.to(work).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def _tables(positions: torch.Tensor, d: int, base: float, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = base ** (-torch.arange(0, d, 2, device=positions.device, dtype=work) / d)
    angles = positions[:, None] * inv_freq[None, :]  # [T, D/2]
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


@functools.lru_cache(maxsize=64)
def _cached_tables(start: int, stop: int, d: int, base: float, device: torch.device, work: torch.dtype):
    # plain tensors even when first asked for inside inference mode (validation), so a later training
    # forward can save them for backward
    with torch.inference_mode(False), torch.no_grad():
        return _tables(torch.arange(start, stop, device=device, dtype=work), d, base, work)
