"""RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic
Recurrence"): time mixing and channel mixing.

Time mixing, with token shift dx_t = x_{t-1} - x_t and data-dependent interpolation (ddlerp):

    m_* = mu_* + lora_*(x_t + dx_t * mu_x),   lora_*(y) = tanh(y A) B_*      (* in w, k, v, r, g)
    x_* = x_t + dx_t * m_*
    r, k, v, g = W_r x_r, W_k x_k, W_v x_v, W_g x_g                        (heads of head_dim)
    w_t = -exp(w0 + tanh(x_w A_w) B_w)                                     (log-decay, per channel)
    o_t = r_t (S_{t-1} + diag(u) k_t^T v_t),   S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t
    out = out_proj(GroupNorm_per_head(o) * silu(g))

Probe contract of the time mix (`arch.probe`): G = the heads, v = W_v x_v per head [B, T, H, Dv], and
the implicit attention A[t, s] = sum_d r_td k_sd exp(w_{s+1,d} + ... + w_{t-1,d}) for s < t (the decays
strictly between s and t: the state is read before the current token's decay) and
A[t, t] = sum_d r_td u_d k_td, the bonus (`arch.ops.implicit.decayed_dot_product`, ``exclusive``).
pre_projection is o above, before the group norm; the head mask scales each head after the group norm
(a per-head norm would undo any scaling of o).

Channel mixing (squared-ReLU, token shifted):

    k = relu(W_k (x_t + dx_t * mu_k))^2,   out = sigmoid(W_r (x_t + dx_t * mu_r)) * out_proj(k)

How the two fit the layer: RWKV's block is x + TimeMix(LN(x)), then x + ChannelMix(LN(x)) — exactly
two of our pre-norm residual layers with no MLP sublayer. Because the channel mix reads the previous
token it is a sequence mixer with a decode state (the last token), not a position-wise MLP, so both
are blocks and a preset alternates them: ``layers: [rwkv6, rwkv6_channel]``, ``mlp: null``,
``n_layers`` = 2 x the RWKV depth. The language model needs nothing new.

Initialisation is the official x060 recipe (BlinkDL/RWKV-LM RWKV-v5/src/model.py, whose
``generate_init_weight`` overrides every projection matrix). Per RWKV layer l of L, with ramps
ddd_n = n / C and n' = n / (C - 1), ratio_0_to_1 = l / (L - 1), ratio_1_to_almost0 = 1 - l / L
(`arch.blocks.init.depth_ratios`):

    mu_x = mu_w = mu_k = 1 - ddd^r1,  mu_v = 1 - ddd^r1 - 0.3 r0,  mu_r = mu_g = 1 - ddd^(r1 / 2)
    w0 = -6 + 5 n'^(0.7 + 1.3 r0),    u_n = r0 (1 - n') + 0.1 ((n + 1) mod 3 - 1)
    LoRA: first factors 0, second U(-0.01, 0.01);  ln_x weight ((1 + l) / L)^0.7
    W_r, W_v orthogonal (gain 1), W_k, W_g orthogonal (gain 0.1), W_out 0
    channel mix: mu_k = mu_r = 1 - ddd^(r1^p) (p = 1; RWKV-7's p = 4), W_k orthogonal (gain 1), W_r = W_out = 0

With time and channel mixes as alternate layers, one RWKV layer spans two model layers: the presets
set ``layer_span: 2`` so that l = layer_idx // 2 and L = n_layers // 2 (`arch.blocks.init.rwkv_depth`).
The language model passes ``n_layers`` to every block that takes it; a block built on its own uses
1/2 for both ratios and ln_x weight 1. Weight decay, as the reference's optimiser groups: only the
projection matrices W_r, W_k, W_v, W_g, W_out (and the channel mix's) decay; the token-shift mixes,
LoRA factors, w0, u and ln_x are exempt (`arch.blocks.init.no_weight_decay`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import channel_ramp, depth_ratios, no_weight_decay, orthogonal_or_zero_, rwkv_depth, rwkv_group_norm_scale
from arch.ops import rwkv6
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


def token_shift(x: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t of x [B, T, D]; ``last`` [B, D] is the token before x (zeros when None)."""
    previous = x.new_zeros(x.shape[0], 1, x.shape[-1]) if last is None else last.unsqueeze(1).to(x.dtype)
    return torch.cat([previous, x[:, :-1]], dim=1)


class RWKV6TimeMix(nn.Module):
    """RWKV-6 time mixing (module docstring). Decode state: the last token [B, d_model] and the wkv
    state [B, H, head_dim, head_dim]."""

    MIXED = ("w", "k", "v", "r", "g")
    PROJECTION_GAINS = {"r_proj": 1.0, "k_proj": 0.1, "v_proj": 1.0, "g_proj": 0.1, "out_proj": 0.0}  # generate_init_weight

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        head_dim: int = 64,
        mix_rank: int = 32,
        decay_rank: int = 64,
        gn_eps: float = 64e-5,
        backend: str = "auto",
        layer_span: int = 1,
        n_layers: int | None = None,
    ):
        super().__init__()
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        self.n_heads, self.head_dim, self.backend = d_model // head_dim, head_dim, backend
        layer, depth = rwkv_depth(layer_idx, n_layers, layer_span)
        self.depth, self.group_norm_scale = depth_ratios(layer, depth), rwkv_group_norm_scale(layer, depth)
        self.mu_x = nn.Parameter(torch.empty(d_model))
        self.mu = nn.Parameter(torch.empty(len(self.MIXED), d_model))
        self.mix_down = nn.Linear(d_model, len(self.MIXED) * mix_rank, bias=False)
        self.mix_up = nn.Parameter(torch.empty(len(self.MIXED), mix_rank, d_model))
        self.decay_down = nn.Linear(d_model, decay_rank, bias=False)
        self.decay_up = nn.Linear(decay_rank, d_model, bias=True)  # its bias is w0
        self.bonus = nn.Parameter(torch.empty(self.n_heads, head_dim))
        self.r_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.group_norm = nn.GroupNorm(self.n_heads, d_model, eps=gn_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)
        decayed = {f"{name}.weight" for name in self.PROJECTION_GAINS}
        no_weight_decay(*(p for name, p in self.named_parameters() if name not in decayed))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for name, gain in self.PROJECTION_GAINS.items():
            orthogonal_or_zero_(getattr(self, name).weight, gain)
        self.group_norm.weight.fill_(self.group_norm_scale)
        nn.init.zeros_(self.group_norm.bias)
        d = self.mu.shape[-1]
        ramp = channel_ramp(d)
        ratio_0_to_1, ratio_1_to_almost0 = self.depth
        full, half = 1 - ramp**ratio_1_to_almost0, 1 - ramp ** (0.5 * ratio_1_to_almost0)
        self.mu_x.copy_(full)
        self.mu.copy_(torch.stack([full, full, full - 0.3 * ratio_0_to_1, half, half]))  # w, k, v, r, g
        nn.init.zeros_(self.mix_down.weight)
        nn.init.uniform_(self.mix_up, -0.01, 0.01)
        nn.init.zeros_(self.decay_down.weight)
        nn.init.uniform_(self.decay_up.weight, -0.01, 0.01)
        n = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
        self.decay_up.bias.copy_(-6 + 5 * n ** (0.7 + 1.3 * ratio_0_to_1))
        zigzag = ((torch.arange(d) + 1) % 3 - 1).float() * 0.1
        self.bonus.copy_((ratio_0_to_1 * (1 - n) + zigzag).view_as(self.bonus))

    def log_decay(self, x_w: torch.Tensor) -> torch.Tensor:
        """w_t = -exp(w0 + tanh(x_w A_w) B_w) [B, T, d_model], the per-channel log-decay."""
        return -torch.exp(self.decay_up(torch.tanh(self.decay_down(x_w))))

    def _project(self, x: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """r, k [B, T, H, Dk], v [B, T, H, Dv], the log-decay w [B, T, H, Dk] and the gate's input x_g [B, T, d_model]
        (token shift from ``last``, the token before x: zeros when None)."""
        dx = token_shift(x, last) - x
        lora = torch.tanh(self.mix_down(x + dx * self.mu_x)).unflatten(-1, (len(self.MIXED), -1))
        m = self.mu + torch.einsum("btfr,frd->btfd", lora, self.mix_up)  # [B, T, 5, D]
        xw, xk, xv, xr, xg = (x.unsqueeze(2) + dx.unsqueeze(2) * m).unbind(2)
        heads = (self.n_heads, self.head_dim)
        r, k, v = (proj(t).unflatten(-1, heads) for proj, t in ((self.r_proj, xr), (self.k_proj, xk), (self.v_proj, xv)))
        return r, k, v, self.log_decay(xw).unflatten(-1, heads), xg

    def _heads(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """o [B, T, H, Dv] before the group norm, the gate's input x_g and the new state."""
        r, k, v, log_decay, xg = self._project(x, None if state is None else state["last"])
        o, wkv = rwkv6(r, k, v, log_decay, self.bonus, initial_state=None if state is None else state["wkv"], backend=self.backend)
        return o, xg, {"last": x[:, -1], "wkv": wkv}

    def _post(self, o: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        """out_proj(head mask * GroupNorm(o) * silu(W_g x_g)): o [B, T, H, Dv] -> [B, T, d_model]."""
        batch, length, d = xg.shape
        # the mask after the per-head norm: a head's norm would undo any scaling of its o
        o = self.group_norm(o.reshape(batch * length, d)).view(o.shape)
        o = apply_head_mask(o, self.head_mask).flatten(2)
        return self.out_proj(o * F.silu(self.g_proj(xg)))

    def _mix(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        o, xg, state = self._heads(x, state)
        return self._post(o, xg), state

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before the group norm (probe contract)."""
        return self._heads(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T]: sum_d r_td k_sd exp(w_{s+1,d} + ... + w_{t-1,d}) for s < t, sum_d r_td u_d k_td
        on the diagonal; and v [B, T, H, Dv] (probe contract)."""
        r, k, v, log_decay, _ = self._project(x, None)
        return decayed_dot_product(r, k, log_decay, exclusive=True, bonus=self.bonus), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "last": torch.zeros(batch_size, self.n_heads * self.head_dim, device=device, dtype=dtype),
            "wkv": torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_dim * (1 + self.head_dim)


class RWKV6ChannelMix(nn.Module):
    """RWKV channel mixing (module docstring), a sequence mixer whose decode state is the last token
    [B, d_model]. ``receptance=False`` drops the sigmoid(W_r .) gate and ``depth_power=4`` takes the
    shift mix 1 - ddd^(r1^4): RWKV-7's channel mix."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        expansion: float = 3.5,
        receptance: bool = True,
        depth_power: float = 1.0,
        layer_span: int = 1,
        n_layers: int | None = None,
    ):
        super().__init__()
        hidden = int(expansion * d_model)
        self.depth, self.depth_power = depth_ratios(*rwkv_depth(layer_idx, n_layers, layer_span)), depth_power
        self.mu_k = nn.Parameter(torch.empty(d_model))
        self.k_proj = nn.Linear(d_model, hidden, bias=False)
        self.out_proj = nn.Linear(hidden, d_model, bias=False)
        self.mu_r = nn.Parameter(torch.empty(d_model)) if receptance else None
        self.r_proj = nn.Linear(d_model, d_model, bias=False) if receptance else None
        no_weight_decay(*(p for p in (self.mu_k, self.mu_r) if p is not None))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        ramp = channel_ramp(self.mu_k.shape[0]) ** (self.depth[1] ** self.depth_power)  # ratio_1_to_almost0^p
        self.mu_k.copy_(1 - ramp)
        orthogonal_or_zero_(self.k_proj.weight, 1.0)
        orthogonal_or_zero_(self.out_proj.weight, 0.0)
        if self.mu_r is not None:
            self.mu_r.copy_(1 - ramp)
            orthogonal_or_zero_(self.r_proj.weight, 0.0)

    def _mix(self, x: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dx = token_shift(x, last) - x
        out = self.out_proj(torch.relu(self.k_proj(x + dx * self.mu_k)).square())
        if self.r_proj is not None:
            out = torch.sigmoid(self.r_proj(x + dx * self.mu_r)) * out
        return out, x[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.mu_k.shape[0], device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.mu_k.shape[0]
