"""HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion").

HGRN's gated linear RNN with the state expanded by an outer product, which makes it GLA's recurrence
with the input gate tied to the forget gate. Per head (key dim = expand_ratio, value dim d / H):

    f_t = beta + (1 - beta) * sigmoid(W_f x_t)       (forget gate per key dim, lower bound beta)
    k_t = 1 - f_t = (1 - beta) * sigmoid(-W_f x_t)   (input gate tied to the forget gate)
    q_t = swish(W_q x_t),  v_t = W_i x_t             (output gate / query, input)
    S_t = diag(f_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(Dk)
    out = out_proj(RMSNorm(o))                       (``output_gate``: RMSNorm(o) * silu(W_g x); off, as the reference)

The lower bound is learned across layers (fla-org/flash-linear-attention `fla/models/hgrn2/modeling_hgrn2.py`,
`fla/layers/hgrn2.py`): a table Z [n_layers, key_dim] of logits, initialised 0, and every forward

    P = softmax(Z, over layers) (at least fp32),   beta = cumsum(P, over layers) - P_0,   layer i uses beta_i

so beta_0 = 0, the bounds increase with depth and start at beta_i = i / n_layers. The table is one
parameter, as in fla's HGRN2Model: it lives in the model's layer-0 HGRN2 block (whose own bound is 0),
which computes the bounds once per forward (or decode step) and hands them to the later layers through
the model's per-forward ``shared`` dict (`arch.lm.Layer`); layer i reads row i, in training and in
``step`` alike. Rows of non-HGRN2 layers (a hybrid) take part in the softmax unused, as attention
layers' rows do in fla. Layer 0 never applies its bound (fla: ``layer_idx > 0``). A block used on its
own (no ``shared``) fixes its bound at the initial value layer_idx / n_layers (0 when the depth is
unknown); ``lower_bound`` set to a number fixes the bound of every layer and builds no table. The table
has no weight decay. Runs on `gated_linear_attention` with log_decay = log f. Decode state: S [B, H, Dk, Dv].

Probe contract (`arch.probe`): G = the heads, v = W_i x per head [B, T, H, Dv], and the implicit attention
GLA's with the forget gate f and the input gate 1 - f as the key:
A[t, s] = sum_d q_td (1 - f_sd) exp(F_td - F_sd) / sqrt(Dk) for s <= t, F_t = sum_{r<=t} log f_r
(`arch.ops.implicit.decayed_dot_product`). pre_projection is o above, before the RMSNorm; the head mask
scales o's heads before the RMSNorm (which normalises over all heads together). Both probe methods take
``shared`` as forward does: a later layer with learned bounds needs it to see the bounds its forward uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import no_weight_decay
from arch.ops import gated_linear_attention, gla_step
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


def lower_bounds(logits: torch.Tensor) -> torch.Tensor:
    """HGRN2's forget-gate lower bounds [n_layers, key_dim] from the table of logits Z of the same shape:
    cumsum(softmax(Z, dim 0)) - softmax(Z)[0], in at least fp32 (row 0 is 0, rows increase; Z = 0 gives i / n_layers)."""
    p = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(0)
    return p.cumsum(0) - p[0]


class HGRN2(nn.Module):
    """HGRN2 token mixer (module docstring)."""

    uses_shared = True  # the layer-0 block hands the learned lower bounds to the later layers (arch.lm.Layer)
    SHARED_KEY = "hgrn2_lower_bounds"

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        expand_ratio: int = 16,
        lower_bound: float | None = None,
        n_layers: int | None = None,
        output_gate: bool = False,
        norm_eps: float = 1e-6,
        chunk_size: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        if lower_bound is not None and not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"the forget gate's lower bound must lie in [0, 1), got {lower_bound}")
        self.n_heads, self.head_k, self.head_v = n_heads, expand_ratio, d_model // n_heads
        self.key_dim, self.value_dim = n_heads * expand_ratio, d_model
        self.layer_idx = layer_idx
        # the bound this block uses when no table reaches it: the fixed value, or the table's initial i / L
        self.lower_bound = lower_bound if lower_bound is not None else (layer_idx / n_layers if n_layers else 0.0)
        learned = lower_bound is None and n_layers is not None and layer_idx == 0
        self.lower_bound_logits = nn.Parameter(torch.zeros(n_layers, self.key_dim)) if learned else None
        self.learned_bound = lower_bound is None
        self.chunk_size, self.backend = chunk_size, backend
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.i_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False) if output_gate else None
        self.norm = nn.RMSNorm(self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)
        if self.lower_bound_logits is not None:
            no_weight_decay(self.lower_bound_logits)

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.lower_bound_logits is not None:
            nn.init.zeros_(self.lower_bound_logits)

    def bound(self, shared: dict | None) -> torch.Tensor | float:
        """This layer's lower bound beta: [key_dim] from the learned table, or a fixed number. The layer-0
        block puts the table's bounds into ``shared``; a later layer reads its row there."""
        if self.lower_bound_logits is not None and shared is not None:
            shared[self.SHARED_KEY] = lower_bounds(self.lower_bound_logits)
        if not (self.learned_bound and self.layer_idx > 0 and shared is not None):
            return self.lower_bound
        if self.SHARED_KEY not in shared:
            raise ValueError(
                f"HGRN2 layer {self.layer_idx} has no learned lower bounds: they come from the model's layer 0, which must be "
                "an HGRN2 block (it holds the table, as fla's HGRN2Model does); or set lower_bound to a number."
            )
        return shared[self.SHARED_KEY][self.layer_idx]

    def gates(self, x: torch.Tensor, beta: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(log f, k = 1 - f), each [B, T, H, Dk]: f = beta + (1 - beta) sigmoid(W_f x), beta a number or [key_dim]."""
        logits = self.f_proj(x).unflatten(-1, (self.n_heads, self.head_k))
        if isinstance(beta, float) and beta == 0.0:  # log f and 1 - f without cancellation
            return F.logsigmoid(logits), torch.sigmoid(-logits)
        beta = torch.as_tensor(beta, dtype=logits.dtype, device=logits.device)
        beta = beta.view(self.n_heads, self.head_k) if beta.ndim else beta
        log_f = torch.logaddexp(beta.log(), torch.log1p(-beta) + F.logsigmoid(logits))
        return log_f, (1 - beta) * torch.sigmoid(-logits)

    def _project(self, x: torch.Tensor, shared: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q = swish(W_q x), k = 1 - f [B, T, H, Dk], v = W_i x [B, T, H, Dv] and log f [B, T, H, Dk]."""
        q = F.silu(self.q_proj(x)).unflatten(-1, (self.n_heads, self.head_k))
        v = self.i_proj(x).unflatten(-1, (self.n_heads, self.head_v))
        log_f, k = self.gates(x, self.bound(shared))
        return q, k, v, log_f

    def _heads(self, x: torch.Tensor, state: torch.Tensor | None, shared: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """o [B, T, H, Dv] before the norm (chunked, or the recurrence for one decode token), and the state."""
        q, k, v, log_f = self._project(x, shared)
        scale = self.head_k**-0.5
        if state is None or x.shape[1] > 1:
            return gated_linear_attention(
                q, k, v, log_f, scale=scale, initial_state=state, chunk_size=self.chunk_size, backend=self.backend
            )
        return gla_step(q, k, v, log_f, state, scale)

    def _post(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out_proj(RMSNorm(o, head mask applied) [* silu(W_g x)]): o [B, T, H, Dv] -> [B, T, d_model]."""
        batch, length, _ = x.shape
        o = self.norm(apply_head_mask(o, self.head_mask).reshape(batch, length, self.value_dim))
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x))
        return self.out_proj(o)

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None, shared: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        o, state = self._heads(x, state, shared)
        return self._post(o, x), state

    def pre_projection(self, x: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before the norm (probe contract)."""
        return self._heads(x, None, shared)[0]

    def attention_matrix(self, x: torch.Tensor, shared: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] = sum_d q_td (1 - f_sd) exp(F_td - F_sd) / sqrt(Dk) (s <= t) and v [B, T, H, Dv] (probe contract)."""
        q, k, v, log_f = self._project(x, shared)
        return decayed_dot_product(q, k, log_f, scale=self.head_k**-0.5), v

    def forward(self, x: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        return self._mix(x, None, shared)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor, shared: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state, shared)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_k * self.head_v
