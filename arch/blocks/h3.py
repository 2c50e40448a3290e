"""H3 (Fu et al. 2023, "Hungry Hungry Hippos: Towards Language Modeling with State Space Models"),
as in the authors' code (HazyResearch/H3 src/models/ssm/{h3,ss_kernel,ss_kernel_diag,ss_kernel_shift,dplr}.py,
``mode='diag', measure='diag-lin'``). Per token, with heads of head_dim P (H = d_model / P heads):

    q, k, v = W_q x, W_k x, W_v x
    k~_t = sum_{j<N_s} kappa_j k_{t-j} + D_s ⊙ k_t        shift SSM: x_t = shift(x_{t-1}) + B_s k_t, out C_s x_t,
                                                           i.e. an N_s-tap causal conv, kappa_j = sum_m B_s[m] C_s[m+j]
    u_t = k~_t v_t^T per head, [H, P, P] channels       (P = 1: elementwise k~ ⊙ v)
    s_t = Ā ⊙ s_{t-1} + B̄ u_t                          diagonal SSM, N/2 complex modes per channel
    y_t = 2 Re(sum_n C_n s_{t,n}) + D ⊙ u_t
    o_t = q_t y_t per head  -> out_proj

Probe contract (`arch.probe`): G = the H heads (the d_model channels at the default P = 1), Dv = P,
v = W_v x per head [B, T, H, P], and A[h, t, s] = (q_t . k~_s)_h (K_h[t - s] + D_h [t = s]) for s <= t,
K_h[l] = 2 Re sum_n C_n B̄_n Ā_n^l the diagonal SSM's kernel: the exact linear map o_t = sum_s A[t, s] v_s
the block computes from the values (o: the q-multiplied output, before out_proj). The map from u = k~ v^T
through the SSM alone (before q) would be the fixed Toeplitz K + D, the same for every input, over H P^2
channels; with q and k~ in it A is H3's data-dependent attention, a linear attention q k~^T weighted by the
SSM's kernel, and it stays exact per head for any P (the sum over q's P entries is inside the head).

The diagonal SSM is S4D-Lin with the bilinear discretisation, per head h and mode n = 0..N/2-1
(its parameters are shared by the P x P channels of a head, as the reference's kernel is):

    A_n = -exp(log_A_real) + i A_imag,   init Re A = -1/2, Im A = pi n
    Δ = exp(log_dt),  log_dt ~ U[ln dt_min, ln dt_max]
    Ā = (1 + ΔA/2) / (1 - ΔA/2),   B̄ = B Δ / (1 - ΔA/2),   B = 1 (complex), C ~ complex randn

(the reference's convolution kernel K_l = 2 Re sum_n C_n B̄_n Ā_n^l is the impulse response of this
recurrence). The shift SSM has B_s = e_1 and C_s ~ kaiming_uniform(a=sqrt 5) at initialisation, so
kappa = C_s; both stay trainable, as in the reference. D, D_s ~ randn. Δ, A, B and B_s carry no
weight decay (the reference's ``OptimModule.register``); C, C_s, D, D_s are ordinary parameters.

The complex recurrence runs on the shared real scan (`arch.ops.diagonal_recurrence`) in a rotating
frame: with Ā = r e^{iθ} constant in time and t counted from the call's first token (g_0 = s_0, the
state it continues from), g_t = e^{-iθt} s_t obeys g_t = r g_{t-1} + e^{-iθt} B̄ u_t,
a real decay acting on the real and imaginary parts alike, and y_t = 2 Re(sum_n C_n e^{iθ_n t} g_{t,n}).
The phases θt are reduced mod 2π in float64, so the rotations stay exact to rounding at any length.

Decode state: the shift conv's last N_s - 1 keys [B, d_model, N_s - 1] and the diagonal state s_T
as (re, im) pairs [B, H, P P, N/2, 2] (2 real numbers per complex one); N_s = d_state unless
``shift_len`` is set (an option the reference does not have). Departures from the reference, none of
which changes the function, only the arithmetic: the forward is a recurrent scan rather than an FFT
convolution with the kernel K (O(T N) work and a [B, T, H P P, N] activation instead of O(T log T));
W_q, W_k, W_v are one fused Linear (same initialisation distribution); the heads' outputs are
concatenated head-major (the reference interleaves them: a fixed permutation of out_proj's inputs);
the shift conv runs in the input's dtype (the reference's FFT runs in float32; the diagonal SSM here
accumulates in float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arch.blocks.init import no_weight_decay
from arch.ops import causal_conv1d, diagonal_recurrence
from arch.ops.backend import accumulation_dtype
from arch.probe import apply_head_mask


class H3(nn.Module):
    """H3 mixer (module docstring). ``head_dim`` 1 is the paper's default (channels are elementwise);
    ``d_state`` N is the diagonal SSM's real state size (N/2 complex modes) and, unless ``shift_len``
    says otherwise, the shift SSM's number of taps, as in the reference.

    Probe (`arch.probe`): G = heads (channels at head_dim 1), v = W_v x [B, T, H, P], A[t, s] =
    (q_t . k~_s) (K[t - s] + D [t = s]) with K the diagonal SSM's kernel; o = q y per head, before out_proj.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        head_dim: int = 1,
        d_state: int = 64,
        shift_len: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
    ):
        super().__init__()
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        if d_state % 2:
            raise ValueError(f"d_state={d_state} must be even (N/2 complex modes)")
        self.d_model, self.n_heads, self.head_dim, self.d_state = d_model, d_model // head_dim, head_dim, d_state
        self.modes, self.shift_len = d_state // 2, d_state if shift_len is None else shift_len
        self.channels = self.n_heads * head_dim * head_dim
        self.dt_min, self.dt_max, self.backend = dt_min, dt_max, backend
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.shift_B = nn.Parameter(torch.empty(d_model, self.shift_len))
        self.shift_C = nn.Parameter(torch.empty(d_model, self.shift_len))
        self.shift_D = nn.Parameter(torch.empty(d_model))
        self.log_dt = nn.Parameter(torch.empty(self.n_heads))
        self.log_A_real = nn.Parameter(torch.empty(self.n_heads, self.modes))
        self.A_imag = nn.Parameter(torch.empty(self.n_heads, self.modes))
        self.B = nn.Parameter(torch.empty(self.n_heads, self.modes, 2))  # complex, as (re, im)
        self.C = nn.Parameter(torch.empty(self.n_heads, self.modes, 2))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.out_proj = nn.Linear(d_model, d_model)
        self.head_mask: torch.Tensor | None = None  # [n_heads], `arch.probe`
        no_weight_decay(self.shift_B, self.log_dt, self.log_A_real, self.A_imag, self.B)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.shift_B.zero_()[:, 0] = 1.0
        nn.init.kaiming_uniform_(self.shift_C, a=math.sqrt(5))
        self.shift_D.normal_()
        self.log_dt.uniform_(math.log(self.dt_min), math.log(self.dt_max))
        self.log_A_real.fill_(math.log(0.5))
        self.A_imag.copy_(math.pi * torch.arange(self.modes, dtype=torch.float32).expand(self.n_heads, -1))
        self.B.copy_(torch.tensor([1.0, 0.0]))
        self.C.normal_(std=0.5**0.5)  # torch.randn(cfloat): real and imaginary parts N(0, 1/2)
        self.D.normal_()

    def shift_kernel(self) -> torch.Tensor:
        """Taps of the shift SSM plus its skip, in `causal_conv1d`'s order (last tap = current token):
        w[:, K-1-j] = kappa_j = sum_m B_s[m] C_s[m+j], and D_s added to the current tap. [d_model, K]."""
        K = self.shift_len
        windows = nn.functional.pad(self.shift_C, (0, K - 1)).unfold(-1, K, 1)  # [d, K, K]: C_s[j : j+K]
        kappa = (windows * self.shift_B.unsqueeze(1)).sum(-1)
        return (kappa + nn.functional.pad(self.shift_D.unsqueeze(-1), (0, K - 1))).flip(-1)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā, B̄), complex [H, N/2]: the bilinear discretisation of S4D-Lin (module docstring)."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dt = torch.exp(self.log_dt).unsqueeze(-1)
        denominator = 1 - dt * A / 2
        return (1 + dt * A / 2) / denominator, torch.view_as_complex(self.B) * dt / denominator

    def _diagonal_ssm(self, u: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """y_t = 2 Re(sum_n C_n s_{t,n}) with s_t = Ā s_{t-1} + B̄ u_t, in the rotating frame of the module
        docstring. u [B, T, H, P P] -> y (without D u) [B, T, H, P P] in the accumulation dtype and s_T
        [B, H, P P, N/2, 2]."""
        batch, length = u.shape[:2]
        acc = accumulation_dtype(u, self.C)
        A_bar, B_bar = self.discretize()
        log_r, theta = torch.log(A_bar).real, torch.angle(A_bar)
        t = torch.arange(1, length + 1, dtype=torch.float64, device=u.device)
        phase = torch.remainder(theta.double() * t[:, None, None], 2 * math.pi).to(theta.dtype)  # [T, H, N/2]
        rotation = torch.polar(torch.ones_like(phase), phase)  # e^{iθt}
        b_in = torch.view_as_real(B_bar * rotation.conj()).to(acc)  # [T, H, N/2, 2]
        C_t = 2 * torch.view_as_complex(self.C) * rotation
        c_out = torch.stack([C_t.real, -C_t.imag], -1).to(acc)  # 2 Re(C_t g) = sum over (re, im) of c_out ⊙ g
        b = u.to(acc)[..., None, None] * b_in[:, :, None]  # [B, T, H, P P, N/2, 2]
        g, g_last = diagonal_recurrence(log_r.to(acc)[:, None, :, None].expand_as(b), b, initial_state=state)
        y = (g * c_out[:, :, None]).sum((-2, -1))
        s_last = torch.view_as_complex(g_last.contiguous()) * rotation[-1][:, None]
        return y, torch.view_as_real(s_last).to(acc)

    def _qkv(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k~ (after the shift SSM), v [B, T, H, P] and the new shift state."""
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        k, shift_state = causal_conv1d(
            k, self.shift_kernel(), initial_state=None if state is None else state["shift"], backend=self.backend
        )
        heads = (self.n_heads, self.head_dim)
        q, k, v = (t.unflatten(-1, heads) for t in (q, k, v))
        return q, k, v, shift_state

    def _pre_projection(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """o = q_t y_t per head [B, T, H, P] (before out_proj) and the new state."""
        q, k, v, shift_state = self._qkv(x, state)
        u = (k.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2)  # [B, T, H, P P]
        y, ssm_state = self._diagonal_ssm(u, None if state is None else state["ssm"])
        y = (y + self.D.to(y.dtype)[:, None] * u).to(x.dtype)
        o = (q.unsqueeze(-2) @ y.unflatten(-1, (self.head_dim, self.head_dim))).squeeze(-2)
        return o, {"shift": shift_state, "ssm": ssm_state}

    def _mix(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        o, new_state = self._pre_projection(x, state)
        return self.out_proj(apply_head_mask(o, self.head_mask).flatten(2)), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, P]: q_t times the diagonal SSM's output per head, before out_proj."""
        return self._pre_projection(x, None)[0]

    def ssm_kernel(self, length: int) -> torch.Tensor:
        """K[h, l] = 2 Re sum_n C_n B̄_n Ā_n^l, l = 0..length-1 [H, length]: the diagonal SSM's impulse
        response (without D), in the accumulation dtype, the phases lθ reduced mod 2π in float64."""
        acc = accumulation_dtype(self.C)
        A_bar, B_bar = self.discretize()
        log_r, theta = torch.log(A_bar).real, torch.angle(A_bar)
        lags = torch.arange(length, dtype=torch.float64, device=self.C.device)
        phase = torch.remainder(theta.double()[..., None] * lags, 2 * math.pi).to(theta.dtype)  # [H, N/2, T]
        powers = torch.polar(torch.exp(log_r[..., None] * lags.to(log_r.dtype)), phase)  # Ā^l
        C_B = torch.view_as_complex(self.C) * B_bar
        return (2 * (C_B[..., None] * powers).sum(-2).real).to(acc)

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, H, T, T], v [B, T, H, P]), materialised (probing only):
        A[h, t, s] = (q_t . k~_s)_h (K_h[t - s] + D_h [t = s]) for s <= t (module docstring)."""
        q, k, v, _ = self._qkv(x, None)
        length = x.shape[1]
        acc = accumulation_dtype(x, self.C)
        lag = torch.arange(length, device=x.device)
        lag = lag[:, None] - lag  # t - s
        kernel = self.ssm_kernel(length).to(acc)[:, lag.clamp(min=0)] + torch.diag_embed(self.D.to(acc)[:, None].expand(-1, length))
        kernel = kernel.masked_fill(lag < 0, 0)  # [H, T, T]
        scores = torch.einsum("bthi,bshi->bhts", q.to(acc), k.to(acc))
        return scores * kernel, v

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        acc = accumulation_dtype(torch.empty(0, dtype=dtype))
        return {
            "shift": torch.zeros(batch_size, self.d_model, self.shift_len - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.n_heads, self.head_dim**2, self.modes, 2, device=device, dtype=acc),
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        """Shift keys d_model (N_s - 1), and H P^2 N/2 complex numbers counted as 2 real numbers each."""
        return self.d_model * (self.shift_len - 1) + self.channels * self.d_state
