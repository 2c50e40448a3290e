"""H3 (Fu et al. 2023, "Hungry Hungry Hippos: Towards Language Modeling with State Space Models").

    q, k, v = W_q x, W_k x, W_v x                                  (heads of head_dim P)
    k~ = SSM_shift(k)   = causal_conv1d_K(k)                       (a shift SSM is a learned K-tap conv)
    u  = k~ v^T per head, [H, P, P] channels                       (P = 1: elementwise k~ * v)
    s_t = a ⊙ s_{t-1} + (1 - a) ⊙ u_t,   y_t = sum_n C_n s_{t,n} + D ⊙ u_t   (SSM_diag, N states/channel)
    o  = q y per head  -> out_proj

SSM_diag is S4D-real with a = exp(-dt * A_n), A_n = n (1..N), dt ~ logU[dt_min, dt_max] per channel.
Its input matrix B is folded into C (for a diagonal SSM of a scalar input only B_n C_n matters) and
the input is scaled by 1 - a (the zero-order hold of B = A), so every state is an exponential
moving average of u. Decode state: the shift conv's last K-1 keys [B, H P, K-1] and the diagonal
state [B, H P P, N].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arch.blocks.init import s4d_real_log_A
from arch.ops import causal_conv1d, diagonal_recurrence


class H3(nn.Module):
    """H3 mixer (module docstring). ``head_dim`` 1 is the paper's default (channels are elementwise)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        head_dim: int = 1,
        d_state: int = 16,
        shift_len: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        self.n_heads, self.head_dim, self.d_state, self.shift_len = d_model // head_dim, head_dim, d_state, shift_len
        self.channels = self.n_heads * head_dim * head_dim
        self.dt_min, self.dt_max, self.backend = dt_min, dt_max, backend
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.shift_weight = nn.Parameter(torch.empty(d_model, shift_len))
        self.log_dt = nn.Parameter(torch.empty(self.channels))
        self.A_log = nn.Parameter(torch.empty(self.channels, d_state))
        self.C = nn.Parameter(torch.empty(self.channels, d_state))
        self.D = nn.Parameter(torch.empty(self.channels))
        self.out_proj = nn.Linear(d_model, d_model)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.shift_weight, std=self.shift_len**-0.5)
        self.log_dt.uniform_(math.log(self.dt_min), math.log(self.dt_max))
        self.A_log.copy_(s4d_real_log_A(self.channels, self.d_state))
        nn.init.normal_(self.C, std=self.d_state**-0.5)
        nn.init.ones_(self.D)

    def _mix(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        k, conv_state = causal_conv1d(
            k, self.shift_weight, initial_state=None if state is None else state["shift"], backend=self.backend
        )
        heads = (self.n_heads, self.head_dim)
        q, k, v = (t.unflatten(-1, heads) for t in (q, k, v))
        u = (k.unsqueeze(-1) * v.unsqueeze(-2)).flatten(2)  # [B, T, H P P]
        log_a = -torch.exp(self.log_dt).unsqueeze(-1) * torch.exp(self.A_log)  # [channels, N]
        s, ssm_state = diagonal_recurrence(
            log_a.expand(batch, length, -1, -1), -torch.expm1(log_a) * u.unsqueeze(-1),
            initial_state=None if state is None else state["ssm"],
        )
        y = (s * self.C).sum(-1) + self.D * u
        o = (q.unsqueeze(-2) @ y.unflatten(-1, (*heads, self.head_dim))).flatten(2)
        return self.out_proj(o), {"shift": conv_state, "ssm": ssm_state}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "shift": torch.zeros(batch_size, self.n_heads * self.head_dim, self.shift_len - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.channels, self.d_state, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_dim * (self.shift_len - 1) + self.channels * self.d_state
