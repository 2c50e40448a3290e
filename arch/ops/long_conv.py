"""Causal long convolution with an explicit per-channel filter (Zoology's BaseConv long layer, H3, Hyena).

    y_t = sum_{j=0}^{min(t, L-1)} k[:, j] * u_{t-j}                 (u: [B, T, D], k: [D, L])

Only the first T taps of k reach a sequence of T tokens, so L >= T is allowed. The parallel form
multiplies spectra: a linear (not circular) convolution by zero-padding to n >= N + M - 1 points,
N the inputs convolved and M <= N the taps used, in O(N log N) per channel.

Papers: Fu et al. 2023 (H3, FFT convolution); Poli et al. 2023 (Hyena); Arora et al. 2023 (Zoology).
"""

from __future__ import annotations

import torch

from arch.ops.backend import accumulation_dtype


def _fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: lengths the FFT libraries transform fastest."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _window(u: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    """The earlier inputs of the state followed by u, as [B, n + T, D]."""
    if initial_state is None:
        return u
    return torch.cat([initial_state.transpose(1, 2).to(u.dtype), u], dim=1)


def _final_state(window: torch.Tensor, L: int) -> torch.Tensor:
    """The last min(n, L - 1) inputs of ``window`` [B, n, D], as [B, D, min(n, L - 1)]: all a later
    output can still see."""
    keep = min(window.shape[1], L - 1)
    return window[:, window.shape[1] - keep :].transpose(1, 2)


def long_conv(
    u: torch.Tensor, k: torch.Tensor, *, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution by FFT: y_t = sum_{j=0}^{min(t, L-1)} k[:, j] u_{t-j}.

    With the earlier inputs w = initial_state prepended (x = [w, u], N = n + T), every output is
    y = irfft(rfft(x, n_fft) * rfft(k[:, :N], n_fft), n_fft)[n : N] with n_fft >= 2N - 1, so no
    tap wraps around onto a later input. Transforms and products run in float32 (float64 inputs
    stay float64); y comes back in u's dtype.

    Args:
        u: [B, T, D]; k: [D, L], any L >= 1 (taps beyond the inputs are never used).
        initial_state: the inputs preceding u, [B, D, n] with n <= L - 1, oldest first (None: none).

    Returns:
        y [B, T, D], and the final state, the last min(n + T, L - 1) inputs [B, D, .]: running on
        u[:, :t] then on u[:, t:] from it equals one run on u (`long_conv_step` continues it).

    Papers: Fu et al. 2023 (H3, FFT convolution); Arora et al. 2023 (Zoology).
    """
    x = _window(u, initial_state)
    N, L = x.shape[1], k.shape[1]
    taps = min(N, L)
    n_fft = _fft_length(N + taps - 1)
    dtype = accumulation_dtype(u, k)
    u_f = torch.fft.rfft(x.to(dtype), n=n_fft, dim=1)  # [B, F, D]
    k_f = torch.fft.rfft(k[:, :taps].to(dtype).t(), n=n_fft, dim=0)  # [F, D]
    y = torch.fft.irfft(u_f * k_f, n=n_fft, dim=1)[:, N - u.shape[1] : N]
    return y.to(u.dtype), _final_state(x, L)


def long_conv_step(
    u: torch.Tensor, k: torch.Tensor, state: torch.Tensor, *, max_state: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode token of `long_conv`, as the direct sum y_t = sum_{j=0}^{n} k[:, j] u_{t-j} over
    the n <= L - 1 inputs held in ``state`` and the new one (O(n D), no transform).

    Args:
        u: [B, 1, D]; k: [D, L'], at least the n + 1 taps used (a filter computed on demand, e.g. an
            implicit one, need not be longer); state: the preceding inputs [B, D, n], oldest first.
        max_state: the most inputs the state keeps, L - 1 of the whole filter (default: k's L' - 1).

    Returns:
        y [B, 1, D] in u's dtype, and the state with u appended, cut to its last max_state inputs.
    """
    window = torch.cat([state.to(u.dtype), u.transpose(1, 2)], dim=2)  # [B, D, n + 1]
    n1 = window.shape[2]
    dtype = accumulation_dtype(u, k)
    y = (window.to(dtype) * k[:, :n1].flip(1).to(dtype)).sum(2)  # tap j meets input t - j
    keep = k.shape[1] - 1 if max_state is None else max_state
    return y.unsqueeze(1).to(u.dtype), _final_state(window.transpose(1, 2), keep + 1)


def long_conv_naive(
    u: torch.Tensor, k: torch.Tensor, *, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of `long_conv` (same signature): `long_conv_step` over every token,
    the direct O(T L) causal sum."""
    state = u.new_zeros(u.shape[0], u.shape[2], 0) if initial_state is None else initial_state
    outputs = []
    for t in range(u.shape[1]):
        y_t, state = long_conv_step(u[:, t : t + 1], k, state)
        outputs.append(y_t)
    return torch.cat(outputs, dim=1), state
