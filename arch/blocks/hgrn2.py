"""HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion").

HGRN's gated linear RNN with the state expanded by an outer product, which makes it GLA's recurrence
with the input gate tied to the forget gate. Per head (key dim = expand_ratio, value dim d / H):

    f_t = beta + (1 - beta) * sigmoid(W_f x_t)       (forget gate per key dim, lower bound beta)
    k_t = 1 - f_t                                    (input gate tied to the forget gate)
    q_t = swish(W_q x_t),  v_t = W_i x_t             (output gate / query, input)
    S_t = diag(f_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(Dk)
    out = out_proj(RMSNorm(o) * silu(W_g x))         (output gate optional)

The lower bound beta grows with depth in HGRN (learned per layer, initialised at layer_idx / n_layers);
here it is fixed at HGRN's initial value layer_idx / n_layers (the model passes n_layers; a block on
its own gets 0), or at ``lower_bound`` for every layer when that is set. It is not trained.
Runs on `gated_linear_attention` with log_decay = log f. Decode state: S [B, H, Dk, Dv].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.ops import gated_linear_attention, gla_step


class HGRN2(nn.Module):
    """HGRN2 token mixer (module docstring)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        expand_ratio: int = 16,
        lower_bound: float | None = None,
        n_layers: int | None = None,
        output_gate: bool = True,
        norm_eps: float = 1e-5,
        chunk_size: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.head_k, self.head_v = n_heads, expand_ratio, d_model // n_heads
        self.key_dim, self.value_dim = n_heads * expand_ratio, d_model
        self.lower_bound = lower_bound if lower_bound is not None else (layer_idx / n_layers if n_layers else 0.0)
        if not 0.0 <= self.lower_bound < 1.0:
            raise ValueError(f"the forget gate's lower bound must lie in [0, 1), got {self.lower_bound}")
        self.chunk_size, self.backend = chunk_size, backend
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.i_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False) if output_gate else None
        self.norm = nn.RMSNorm(self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log f, k = 1 - f), each [B, T, H, Dk]: f = beta + (1 - beta) sigmoid(W_f x)."""
        logits = self.f_proj(x).unflatten(-1, (self.n_heads, self.head_k))
        beta = self.lower_bound
        if beta == 0.0:  # log f and 1 - f without cancellation
            return F.logsigmoid(logits), torch.sigmoid(-logits)
        f = beta + (1 - beta) * torch.sigmoid(logits)
        return torch.log(f), (1 - beta) * torch.sigmoid(-logits)

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        q = F.silu(self.q_proj(x)).unflatten(-1, (self.n_heads, self.head_k))
        v = self.i_proj(x).unflatten(-1, (self.n_heads, self.head_v))
        log_f, k = self.gates(x)
        scale = self.head_k**-0.5
        if state is None or length > 1:
            o, state = gated_linear_attention(
                q, k, v, log_f, scale=scale, initial_state=state, chunk_size=self.chunk_size, backend=self.backend
            )
        else:
            o, state = gla_step(q, k, v, log_f, state, scale)
        o = self.norm(o.reshape(batch, length, self.value_dim))
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        return self.out_proj(o), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_k * self.head_v

