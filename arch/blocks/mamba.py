"""Mamba (S6) block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

    x, z   = in_proj(h)                                   (each d_inner = expand * d_model)
    u      = silu(causal_conv1d_k(x))                     (depthwise, k = d_conv)
    dt, B, C = x_proj(u)                                  (dt_rank, N, N)
    delta  = softplus(dt_proj(dt))                        (dt_proj carries the dt bias)
    s_t    = exp(delta_t A) s_{t-1} + delta_t B_t u_t,    A = -exp(A_log)  [d_inner, N]
    o_t    = C_t s_t + D u_t                              (the probe's pre-projection output)
    y_t    = o_t * silu(z_t)
    out    = out_proj(y)

Probe contract (`arch.probe`; Ali et al. 2024, "The Hidden Attention of Mamba Models"): G = the d_inner
channels, Dv = 1, v = u (the scan's input, after the conv and SiLU), and
A[c, t, s] = C_t . (prod_{l=s+1..t} exp(delta_{l,c} A_c)) (delta_{s,c} B_s) for s <= t, plus D_c on the
diagonal (the skip), so that o_t = sum_s A[t, s] u_s; the head mask scales o's channels before the gate.

Decode state: the last d_conv - 1 inputs of the convolution [B, d_inner, d_conv - 1] and the scan
state [B, d_inner, N]. ``forward`` and ``step`` share one code path (`_mix`), the ops continuing
from a state when one is given.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import dt_bias, init_depthwise_conv_, no_weight_decay, s4d_real_log_A
from arch.ops import causal_conv1d, selective_scan
from arch.ops.backend import accumulation_dtype
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


class Mamba(nn.Module):
    """Mamba (S6) mixer; see the module docstring for the equations.

    Initialisation (paper, Sec. 3.6 and App. E): A_n = n for n = 1..N in every channel (S4D-real),
    D = 1, dt bias = softplus^-1(dt) with dt ~ logU[dt_min, dt_max], dt_proj weight ~ U(+-dt_rank^-1/2),
    the depthwise conv as PyTorch's Conv1d (U(+-1/sqrt(d_conv))). ``init: zoology`` instead takes the
    initialisation Zoology's language model applies to its Mamba layers (the Based Fig. 2 runs): every
    Linear N(0, init_std) from the language model, every bias 0 (dt bias included: delta starts near
    softplus(0) = 0.69), A and D as above.

    Probe (`arch.probe`): G = d_inner channels, v = u (after the conv and SiLU), Dv = 1, A = Mamba's hidden
    attention C_t (prod_{l=s+1..t} exp(delta_l A)) B_s delta_s plus D on the diagonal; o before the z gate.
    """

    # mamba_ssm's `_init_weights` keeps PyTorch's default Linear init (out_proj: Kaiming-uniform over
    # sqrt(residual branches)); the language model honours this flag instead of its N(0, init_std)
    default_linear_init = True

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conv_bias: bool = True,
        bias: bool = False,
        init: Literal["mamba_ssm", "zoology"] = "mamba_ssm",
        backend: str = "auto",
    ):
        super().__init__()
        if init not in ("mamba_ssm", "zoology"):
            raise ValueError(f"Mamba init must be 'mamba_ssm' or 'zoology', got {init!r}")
        # zoology: the initialisation Zoology's language model gives its Mamba layers (Based Fig. 2),
        # whose `_init_weights` redraws every Linear as N(0, init_std) and zeroes every bias, the dt
        # bias included (delta starts at softplus(0) = 0.69 instead of logU[dt_min, dt_max])
        self.init = init
        self.default_linear_init = init == "mamba_ssm"
        self.d_inner = int(expand * d_model)
        self.d_state, self.d_conv, self.backend = d_state, d_conv, backend
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.dt_min, self.dt_max = dt_min, dt_max
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner)) if conv_bias else None
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        no_weight_decay(self.A_log, self.D)  # as mamba_ssm's Mamba
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.head_mask: torch.Tensor | None = None  # [d_inner], `arch.probe`
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_depthwise_conv_(self.conv_weight, self.conv_bias)
        self.A_log.copy_(s4d_real_log_A(self.d_inner, self.d_state))
        self.D.fill_(1.0)
        if self.init == "zoology":  # dt_proj keeps the language model's N(0, init_std) weight
            self.dt_proj.bias.zero_()
            return
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        self.dt_proj.bias.copy_(dt_bias(self.d_inner, self.dt_min, self.dt_max))

    def _inputs(self, h: torch.Tensor, state: dict | None):
        """The scan's inputs: u, delta [B, T, d_inner], B, C [B, T, N], the gate z and the new conv state."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        u, conv_state = causal_conv1d(
            x, self.conv_weight, self.conv_bias, activation="silu",
            initial_state=None if state is None else state["conv"], backend=self.backend,
        )
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return u, F.softplus(self.dt_proj(dt)), B, C, z, conv_state

    def _pre_projection(self, h: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """o [B, T, d_inner, 1] (the scan's output with the D skip, before the gate), z and the new state."""
        u, delta, B, C, z, conv_state = self._inputs(h, state)
        o, ssm_state = selective_scan(
            u, delta, -torch.exp(self.A_log), B, C, self.D,
            initial_state=None if state is None else state["ssm"], backend=self.backend,
        )
        return o.unsqueeze(-1), z, {"conv": conv_state, "ssm": ssm_state}

    def _mix(self, h: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        o, z, new_state = self._pre_projection(h, state)
        o = apply_head_mask(o, self.head_mask).squeeze(-1)
        acc = accumulation_dtype(o)  # the gate in the scan's precision, as `selective_scan` applies it
        y = (o.to(acc) * F.silu(z.to(acc))).to(o.dtype)
        return self.out_proj(y), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, d_inner, 1]: the selective scan's output (with the D skip) before the SiLU(z) gate."""
        return self._pre_projection(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, d_inner, T, T], v = u [B, T, d_inner, 1]), materialised (probing only, O(d_inner T^2) memory):
        A[c, t, s] = sum_n C_t[n] exp(sum_{l=s+1..t} delta_{l,c} A_{c,n}) B_s[n] delta_{s,c} + D_c [t = s]."""
        u, delta, B, C, _, _ = self._inputs(x, None)
        acc = accumulation_dtype(u)
        delta = delta.to(acc)
        channels = (*delta.shape, self.d_state)  # every channel a "head" of N state dims sharing B and C
        log_decay = delta.unsqueeze(-1) * -torch.exp(self.A_log.to(acc))  # [B, T, d_inner, N]
        a = decayed_dot_product(C.unsqueeze(2).expand(channels), B.unsqueeze(2).expand(channels), log_decay)
        delta_c = delta.transpose(1, 2)  # [B, d_inner, T]
        a = a * delta_c.unsqueeze(-2) + torch.diag_embed(self.D.to(acc)[:, None].expand_as(delta_c))
        return a, u.unsqueeze(-1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.d_conv - 1 + self.d_state)
