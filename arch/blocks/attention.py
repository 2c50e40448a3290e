"""Causal multi-head softmax attention (Vaswani et al. 2017) with GQA/MQA (Ainslie et al. 2023;
Shazeer 2019), rotary positions (Su et al. 2021), an optional sliding window (Longformer, Mistral),
and options from the attention-variant literature, each off by default (the block is then plain
attention, parameter for parameter):

    qk_norm          q, k <- RMSNorm(q), RMSNorm(k) per head, learned scale (QK-norm; "Rope to Nope and
                     Back Again"), before RoPE
    rope_fraction    RoPE on the first rope_fraction of each head's channel pairs, none on the rest
                     ("Towards Economical Inference", partial RoPE)
    kv_shift         k_t <- a1 k_t + a2 k_{t-1}, v_t <- b1 v_t + b2 v_{t-1} (k_{-1} = 0), learned scalars
                     per K/V head, a1, b1 ~ U(0, 1), a2 = 1 - a1, b2 = 1 - b1 ("KV Shifting Attention
                     Enhances Language Modeling", eq. 4-6); applied to the projections, before RoPE
    temperature      per_head: logits_h <- exp(s_h) logits_h, s_h learned, 0 at init (a learned temperature
                     per head, as "Length Generalization of Causal Transformers without Position
                     Encoding" scales each head's logits)
                     query_position: q_th <- tau_th q_th, tau_th = 1 + tanh(w_h . x_t) + beta_h log(1 + t),
                     a temperature from the query token and its position t (0-based) (Zhang et al. 2024,
                     "Selective Attention: Enhancing Transformer through Principled Context Control":
                     the token term and the log-position term that counters attention dilution);
                     w_h = 0, beta_h = 0 at init, so training starts from plain attention
    forget_gate      logits_ts += sum_{l = s+1..t} log f_l, f_t = sigmoid(w_h . x_t + b_h) per head
                     (the Forgetting Transformer, Lin et al. 2025; W ~ N(0, 0.02), b = 0)
    output_gate      o <- sigmoid(x W_g) * o before the output projection (gated attention)
    score            sigmoid: weights sigmoid(q.k / sqrt(d) + sigmoid_bias), not normalised over the keys
                     (Gu et al. 2024, "When Attention Sink Emerges"; an explicit [T, T] path)
    sink             learnable: softmax with a learned sink logit per head in the denominator,
                     o_t = sum_s e^(l_ts) v_s / (e^(sink_h) + sum_s e^(l_ts)) (a key bias that absorbs
                     attention mass; sink_h = 0 at init); not with a window
    score            differential (Ye et al. 2025, "Differential Transformer"; DiffCLIP): each head has two
                     query/key maps and a value of twice the head dim, o = (softmax(q1 k1^T) -
                     lambda softmax(q2 k2^T)) v, lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init
                     (vectors ~ N(0, 0.1), lambda_init = 0.8 - 0.6 exp(-0.3 layer_idx)); then RMSNorm
                     over the head's 2 head_dim outputs times (1 - lambda_init). head_dim defaults to
                     d_model / (2 n_heads), so q, k and v keep d_model's width
    position         cope (Golovneva et al. 2024): no RoPE; logits += z_ij, the query's dot product with
                     a learned position table (``cope_positions`` entries, zeros at init) read at
                     p_ij = sum_{t=j..i} sigmoid(logit_it), interpolated (`arch.ops.attention.cope_bias`)
    selective        earlier tokens mask later ones (Leviathan et al. 2024, "Selective Attention Improves
                     Transformer"): S = ReLU of head 0's logits (none for the first token or a query's
                     own token), every head's logits at query i lowered by sum_{i' < i} S_i'j;
                     parameter-free. The decode state adds the accumulated mask per cached token
    selective_budget K: selective attention's context pruning (the paper's memory budget): the decode
                     cache holds at most K tokens; when a new token would exceed it, the cached token with
                     the largest accumulated mask F (the one selection has hidden most) is dropped for good
                     (never the first token nor the current one). forward applies the same drops as a mask
                     (`arch.ops.attention.selective_keep`), so training sees what decoding will and step
                     equals forward; the paper prunes at inference only. state_size counts the K kept
    mta_kernel       [c_q, c_k]: multi-token attention (Golovneva et al. 2025): the scaled scores, zeroed
                     above the diagonal, convolved per head over the c_q - 1 previous queries and c_k
                     keys centred on each key, before the causal mask and softmax; identity-initialised.
    mta_head_mix     the scores mixed across heads by a learned H x H matrix (identity at init)
    qkv_conv         K: q, k, v each filtered by a depthwise causal convolution of K taps over time
                     (localized filtering, Yuan 2.0's LFA; RCMHA), initialised to the identity (the
                     current tap 1, earlier taps 0) so training starts from plain attention

q = x W_q, k = x W_k, v = x W_v (n_kv_heads K/V heads shared by groups of query heads), RoPE on q and
k, o = softmax(q k^T / sqrt(d_head) + causal/window mask) v, y = o W_out.

window: each token attends to itself and the ``window - 1`` previous tokens (None = all).
The decode state is the K/V cache, truncated to the window; with kv_shift also the previous token's
unshifted k and v, with forget_gate the cumulative log forget gate of every cached token and of the
current position.

The probe contract (`arch.probe`): G = the query heads (n_heads); v [B, T, n_heads, maps * head_dim] the
values each query head reads (K/V heads repeated for GQA, after kv_shift); A [B, n_heads, T, T] the
weights the block's own path applies to v: the softmax probabilities with the causal/window mask and
the forget-gate bias (a learnable sink's zero value takes the rest of each row, which then sums to
< 1), sigmoid's weights, differential's p1 - lambda p2, and the CoPE / selective / MTA paths' own
probabilities. pre_projection is o [B, T, n_heads, maps * head_dim] before differential's head norm,
the output gate and the output projection; the head mask scales o's heads in forward and step (with
score: differential, after the head norm, which would undo any scaling of o).
`queries_keys` gives the q and k that enter the scores.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import no_weight_decay
from arch.ops import causal_attention, causal_conv1d, rotary_embedding
from arch.ops.attention import (
    apply_weights,
    cope_weights,
    explicit_scores,
    mta_attention,
    mta_weights,
    per_query_head,
    selection_scores,
    selective_weights,
    sigmoid_weights,
    softmax_weights,
)
from arch.probe import apply_head_mask


class Attention(nn.Module):
    """Softmax attention and its options (module docstring)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        position: Literal["rope", "none", "cope"] = "rope",
        rope_base: float = 10000.0,
        window: int | None = None,
        bias: bool = False,
        backend: str = "auto",
        qk_norm: bool = False,
        rope_fraction: float = 1.0,
        kv_shift: bool = False,
        temperature: Literal["none", "per_head", "query_position"] = "none",
        forget_gate: bool = False,
        output_gate: bool = False,
        qkv_conv: int | None = None,
        score: Literal["softmax", "sigmoid", "differential"] = "softmax",
        sigmoid_bias: float = 0.0,
        sink: Literal["none", "learnable"] = "none",
        cope_positions: int = 64,
        selective: bool = False,
        selective_budget: int | None = None,
        mta_kernel: list[int] | None = None,
        mta_head_mix: bool = False,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if score == "differential" and (kv_shift or forget_gate or temperature != "none" or sink != "none"):
            raise ValueError("score: differential has two key maps per head: kv_shift, forget_gate, temperature, sink do not apply")
        self.maps = 2 if score == "differential" else 1  # query/key maps per head; the value is maps x head_dim wide
        self.head_dim = head_dim or d_model // (self.maps * n_heads)
        if not 0 < rope_fraction <= 1:
            raise ValueError(f"rope_fraction must be in (0, 1], got {rope_fraction}")
        self.rope_dim = 2 * round(rope_fraction * self.head_dim / 2)
        if position == "rope" and (self.head_dim % 2 or self.rope_dim == 0):
            raise ValueError(f"RoPE needs an even head_dim and rope_fraction * head_dim >= 2, got {self.head_dim}, {rope_fraction}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if qkv_conv is not None and qkv_conv < 2:
            raise ValueError(f"qkv_conv is the filter's number of taps (>= 2) or null, got {qkv_conv}")
        if score not in ("softmax", "sigmoid", "differential") or sink not in ("none", "learnable"):
            raise ValueError(
                f"score must be 'softmax', 'sigmoid' or 'differential' and sink 'none' or 'learnable', got {score!r}, {sink!r}"
            )
        if sink == "learnable" and (score == "sigmoid" or window is not None):
            raise ValueError("sink: learnable adds a softmax denominator term: it needs score: softmax and no window")
        if score == "sigmoid" and forget_gate:
            raise ValueError("forget_gate biases softmax logits; with score: sigmoid it is not defined here")
        # CoPE, selective attention and MTA each compute the whole score map on their own path: one at a
        # time, over plain softmax scores, without a window, forget gate or sink
        paths = {
            "position: cope": position == "cope",
            "selective": selective,
            "multi-token attention": mta_kernel is not None or mta_head_mix,
        }
        own_path = [name for name, on in paths.items() if on]
        if own_path and (len(own_path) > 1 or score != "softmax" or window is not None or forget_gate or sink != "none"):
            raise ValueError(
                f"{' and '.join(own_path)}: each has its own score path and needs score: softmax, no window, forget_gate or sink, "
                "and none of the others among position: cope, selective and multi-token attention"
            )
        if selective_budget is not None and (not selective or selective_budget < 2):
            raise ValueError(
                f"selective_budget prunes selective attention's context: it needs selective: true and >= 2 "
                f"(the first token and the current one are always held), got selective={selective}, budget={selective_budget}"
            )
        if mta_kernel is not None and (len(mta_kernel) != 2 or min(mta_kernel) < 1):
            raise ValueError(f"mta_kernel is [query taps, key taps], each >= 1, got {mta_kernel}")
        if temperature not in ("none", "per_head", "query_position"):
            raise ValueError(f"temperature must be 'none', 'per_head' or 'query_position', got {temperature!r}")
        self.position, self.rope_base, self.window, self.backend = position, rope_base, window, backend
        width = self.maps * self.head_dim
        self.q_proj = nn.Linear(d_model, n_heads * width, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * self.n_kv_heads * width, bias=bias)
        self.out_proj = nn.Linear(n_heads * width, d_model, bias=bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.kv_shift = nn.Parameter(torch.empty(2, 2, self.n_kv_heads)) if kv_shift else None  # [k|v, current|previous, head]
        if self.kv_shift is not None:
            no_weight_decay(self.kv_shift)  # mixing weights, not a projection
        self.log_temperature = nn.Parameter(torch.zeros(n_heads)) if temperature == "per_head" else None
        # query_position: the token term's weights w [H, d_model] (a projection, decayed) and beta [H]
        self.temperature_proj = nn.Linear(d_model, n_heads, bias=False) if temperature == "query_position" else None
        self.temperature_position = nn.Parameter(torch.zeros(n_heads)) if temperature == "query_position" else None
        if self.temperature_position is not None:
            no_weight_decay(self.temperature_position)
        self.forget_proj = nn.Linear(d_model, n_heads, bias=True) if forget_gate else None
        self.g_proj = nn.Linear(d_model, n_heads * width, bias=False) if output_gate else None
        channels = (n_heads + 2 * self.n_kv_heads) * width
        self.qkv_conv = nn.Parameter(torch.empty(channels, qkv_conv)) if qkv_conv else None  # [channels, taps]
        if self.maps == 2:
            self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
            self.lambdas = nn.Parameter(torch.empty(4, self.head_dim))  # lq1, lk1, lq2, lk2
            no_weight_decay(self.lambdas)
            self.diff_norm = nn.RMSNorm(2 * self.head_dim, eps=1e-5)
        else:
            self.lambdas = self.diff_norm = None
        self.score, self.sigmoid_bias = score, sigmoid_bias
        self.sink = nn.Parameter(torch.zeros(n_heads)) if sink == "learnable" else None
        self.selective, self.selective_budget = selective, selective_budget
        self.mta_kernel = nn.Parameter(torch.empty(n_heads, *mta_kernel)) if mta_kernel is not None else None
        self.mta_head_mix = nn.Parameter(torch.empty(n_heads, n_heads)) if mta_head_mix else None
        for p in (self.mta_kernel, self.mta_head_mix):
            if p is not None:
                no_weight_decay(p)  # convolution and mixing weights around the identity
        self.cope_table = nn.Parameter(torch.zeros(self.head_dim, cope_positions)) if position == "cope" else None
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)
        self.init_weights()

    def init_weights(self) -> None:
        if self.kv_shift is not None:
            with torch.no_grad():
                current = torch.rand(2, self.n_kv_heads)
                self.kv_shift[:, 0] = current
                self.kv_shift[:, 1] = 1 - current
        if self.log_temperature is not None:
            nn.init.zeros_(self.log_temperature)
        if self.temperature_proj is not None:
            nn.init.zeros_(self.temperature_proj.weight)
            nn.init.zeros_(self.temperature_position)
        if self.forget_proj is not None:
            nn.init.zeros_(self.forget_proj.bias)
        if self.sink is not None:
            nn.init.zeros_(self.sink)
        if self.lambdas is not None:
            nn.init.normal_(self.lambdas, std=0.1)
        if self.cope_table is not None:
            nn.init.zeros_(self.cope_table)
        if self.mta_kernel is not None:  # identity: the current query, the centre key
            with torch.no_grad():
                self.mta_kernel.zero_()
                self.mta_kernel[:, -1, (self.mta_kernel.shape[2] - 1) // 2] = 1.0
        if self.mta_head_mix is not None:
            with torch.no_grad():
                self.mta_head_mix.copy_(torch.eye(self.n_heads))
        if self.qkv_conv is not None:
            with torch.no_grad():
                self.qkv_conv.zero_()
                self.qkv_conv[:, -1] = 1.0

    def _rope(self, x: torch.Tensor, positions) -> torch.Tensor:
        if self.rope_dim == self.head_dim:
            return rotary_embedding(x, positions, self.rope_base)
        rotated, rest = x.split([self.rope_dim, self.head_dim - self.rope_dim], -1)
        return torch.cat([rotary_embedding(rotated, positions, self.rope_base), rest], -1)

    def _project(self, x: torch.Tensor, conv_state: torch.Tensor | None = None):
        """q, k, v [B, T, heads, head_dim] and, with qkv_conv, the filter's final state (else None)."""
        b, t, _ = x.shape
        q, kv = self.q_proj(x), self.kv_proj(x)
        if self.qkv_conv is not None:
            filtered, conv_state = causal_conv1d(torch.cat([q, kv], -1), self.qkv_conv, initial_state=conv_state, backend="torch")
            q, kv = filtered.split([q.shape[-1], kv.shape[-1]], -1)
        q = q.view(b, t, self.n_heads * self.maps, self.head_dim)
        k, v = kv.split(kv.shape[-1] // 2, -1)
        k = k.view(b, t, self.n_kv_heads * self.maps, self.head_dim)
        v = v.view(b, t, self.n_kv_heads, self.maps * self.head_dim)
        return q, k, v, conv_state

    def _shift(self, k: torch.Tensor, v: torch.Tensor, prev_k: torch.Tensor, prev_v: torch.Tensor):
        """KV shifting: mix each token's k, v with the previous token's (prev_*: the token before the first)."""
        w = self.kv_shift.to(k.dtype)[..., None]  # [2, 2, Hkv, 1]
        k_prev, v_prev = torch.cat([prev_k, k[:, :-1]], 1), torch.cat([prev_v, v[:, :-1]], 1)
        return w[0, 0] * k + w[0, 1] * k_prev, w[1, 0] * v + w[1, 1] * v_prev

    def _finish_qk(self, q: torch.Tensor, k: torch.Tensor, positions, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm, RoPE and the query temperature (``x``, the block's input, for temperature:
        query_position)."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.position == "rope":
            q, k = self._rope(q, positions), self._rope(k, positions)
        if self.log_temperature is not None:
            q = q * self.log_temperature.exp().to(q.dtype)[:, None]
        if self.temperature_proj is not None:
            q = q * self.query_temperature(x, positions).to(q.dtype)[..., None]
        return q, k

    def query_temperature(self, x: torch.Tensor, positions) -> torch.Tensor:
        """temperature: query_position's tau [B, T, H] = 1 + tanh(w_h . x_t) + beta_h log(1 + t)."""
        if isinstance(positions, range):
            t = torch.arange(positions.start, positions.stop, device=x.device)
        else:
            t = positions.to(x.device)
        log_t = torch.log1p(t.to(torch.promote_types(x.dtype, torch.float32)))
        return 1 + torch.tanh(self.temperature_proj(x)) + log_t[:, None] * self.temperature_position

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor | range):
        """q, k, v of a whole sequence (no kv_shift: that needs the previous token, see forward/step)."""
        q, k, v, _ = self._project(x)
        q, k = self._finish_qk(q, k, positions, x)
        return q, k, v

    def lambda_(self) -> torch.Tensor:
        """The differential weight exp(lq1.lk1) - exp(lq2.lk2) + lambda_init."""
        lq1, lk1, lq2, lk2 = self.lambdas.float()
        return torch.exp((lq1 * lk1).sum()) - torch.exp((lq2 * lk2).sum()) + self.lambda_init

    def _explicit_path(self) -> bool:
        """Whether the block's own path is explicit [T, T] weights (else SDPA / flash-attn)."""
        mta = self.mta_kernel is not None or self.mta_head_mix is not None
        return self.selective or mta or self.cope_table is not None or self.score == "sigmoid"

    def _with_sink(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        """sink: learnable as a zero key and value in front whose logit is the sink: k, v with 1 + Tk
        positions and the logit bias [B, H, Tq, 1 + Tk]."""
        zero = k.new_zeros(k.shape[0], 1, *k.shape[2:])
        k, v = torch.cat([zero, k], 1), torch.cat([zero, v], 1)
        column = torch.zeros(*q.shape[:1], self.n_heads, q.shape[1], k.shape[1], dtype=q.dtype, device=q.device)
        column[..., 0] = self.sink.to(q.dtype)[:, None]
        return k, v, column if bias is None else column + F.pad(bias, (1, 0))

    def _weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The weights A [B, H, Tq, Tk] the block applies to its per-query-head values (the queries are
        the last Tq positions of the keys): the explicit paths' own, and the SDPA paths' written out."""
        if self.selective:
            return selective_weights(q, k, budget=self.selective_budget)
        if self.mta_kernel is not None or self.mta_head_mix is not None:
            return mta_weights(q, k, self.mta_kernel, self.mta_head_mix)
        if self.maps == 2:  # heads ordered [head, map]
            q1, q2 = q.unflatten(2, (self.n_heads, 2)).unbind(3)
            k1, k2 = k.unflatten(2, (self.n_kv_heads, 2)).unbind(3)
            p1, p2 = softmax_weights(q1, k1, window=self.window), softmax_weights(q2, k2, window=self.window)
            return p1 - self.lambda_().to(p1.dtype) * p2
        if self.cope_table is not None:
            return cope_weights(q, k, self.cope_table)
        if self.score == "sigmoid":
            return sigmoid_weights(q, k, bias=self.sigmoid_bias, window=self.window)
        if self.sink is not None:  # the sink's column dropped: its value is zero
            k, _, bias = self._with_sink(q, k, k, bias)
            return softmax_weights(q, k, bias=bias)[..., 1:]
        return softmax_weights(q, k, window=self.window, bias=bias)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """o [B, Tq, H, maps * head_dim], the block's own path: explicit weights, or SDPA / flash-attn."""
        if self._explicit_path():
            return apply_weights(self._weights(q, k, bias), v)
        if self.maps == 2:  # heads ordered [head, map]
            q1, q2 = q.unflatten(2, (self.n_heads, 2)).unbind(3)
            k1, k2 = k.unflatten(2, (self.n_kv_heads, 2)).unbind(3)
            o1 = causal_attention(q1, k1, v, window=self.window, backend="torch")
            o2 = causal_attention(q2, k2, v, window=self.window, backend="torch")
            return o1 - self.lambda_().to(o1.dtype) * o2
        if self.sink is not None:
            k, v, bias = self._with_sink(q, k, v, bias)
        return causal_attention(q, k, v, window=self.window, bias=bias, backend=self.backend)

    def _log_forget(self, x: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(self.forget_proj(x).to(torch.promote_types(x.dtype, torch.float32)))  # [B, T, H]

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = o.flatten(2)
        if self.g_proj is not None:
            o = o * torch.sigmoid(self.g_proj(x))
        return self.out_proj(o)

    def _post(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """y from o [B, T, H, maps * head_dim]: differential's per-head norm, the head mask (after that
        norm, which would undo any scaling of a head), then `_output`."""
        if self.maps == 2:
            o = self.diff_norm(o) * (1 - self.lambda_init)
        return self._output(x, apply_head_mask(o, self.head_mask))

    def _inputs(self, x: torch.Tensor):
        """What the scores of a whole sequence read: q [B, T, n_heads * maps, head_dim], k [B, T,
        n_kv_heads * maps, head_dim] (heads ordered [head, map]), v [B, T, n_kv_heads, maps * head_dim]
        and the forget gate's logit bias [B, H, T, T] (else None)."""
        positions = range(x.shape[1])
        q, k, v, _ = self._project(x)
        if self.kv_shift is not None:
            zero = k.new_zeros(k.shape[0], 1, *k.shape[2:])
            k, v = self._shift(k, v, zero, zero)
        q, k = self._finish_qk(q, k, positions, x)
        bias = None
        if self.forget_proj is not None:
            cum = self._log_forget(x).cumsum(1).transpose(1, 2)  # [B, H, T]: F_t
            bias = cum[..., :, None] - cum[..., None, :]  # F_t - F_s = sum_{l=s+1..t} log f_l
        return q, k, v, bias

    def queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The q [B, T, n_heads * maps, head_dim] and k [B, T, n_kv_heads * maps, head_dim] that enter the
        scores (after qkv_conv, kv_shift, QK-norm, RoPE and the temperature; before the 1 / sqrt(head_dim)
        scale; K heads not repeated for GQA; differential's heads ordered [head, map])."""
        q, k, _, _ = self._inputs(x)
        return q, k

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, n_heads, maps * head_dim] (module docstring), by the block's own (fast) path."""
        return self._attend(*self._inputs(x))

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, n_heads, T, T] and v [B, T, n_heads, maps * head_dim] (module docstring), explicit."""
        q, k, v, bias = self._inputs(x)
        return self._weights(q, k, bias), per_query_head(v, self.n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._post(x, self.pre_projection(x))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        state = {
            "k": torch.zeros(batch_size, 0, self.n_kv_heads * self.maps, self.head_dim, device=device, dtype=dtype),
            "v": torch.zeros(batch_size, 0, self.n_kv_heads, self.maps * self.head_dim, device=device, dtype=dtype),
            "pos": 0,
        }
        if self.kv_shift is not None:
            state["prev_k"] = torch.zeros(batch_size, 1, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
            state["prev_v"] = state["prev_k"].clone()
        if self.selective:
            state["select"] = torch.zeros(batch_size, 0, device=device, dtype=dtype)
        if self.mta_kernel is not None and self.mta_kernel.shape[1] > 1:
            state["past_q"] = torch.zeros(batch_size, self.mta_kernel.shape[1] - 1, self.n_heads, self.head_dim, device=device, dtype=dtype)
        if self.qkv_conv is not None:
            state["conv"] = torch.zeros(batch_size, self.qkv_conv.shape[0], self.qkv_conv.shape[1] - 1, device=device, dtype=dtype)
        if self.forget_proj is not None:
            acc = torch.promote_types(dtype or torch.float32, torch.float32)
            state["cum"] = torch.zeros(batch_size, self.n_heads, 0, device=device, dtype=acc)
            state["now"] = torch.zeros(batch_size, self.n_heads, 1, device=device, dtype=acc)
        return state

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        new = {"pos": state["pos"] + 1}
        q, k, v, conv = self._project(x, state.get("conv"))
        if conv is not None:
            new["conv"] = conv
        if self.kv_shift is not None:
            new["prev_k"], new["prev_v"] = k, v
            k, v = self._shift(k, v, state["prev_k"], state["prev_v"])
        q, k = self._finish_qk(q, k, torch.tensor([state["pos"]], device=x.device), x)
        k = torch.cat([state["k"], k], dim=1)
        v = torch.cat([state["v"], v], dim=1)
        bias = None
        if self.forget_proj is not None:
            now = state["now"] + self._log_forget(x).transpose(1, 2)  # [B, H, 1]: F_t
            cum = torch.cat([state["cum"], now], -1)  # F of every cached token
            if self.window is not None:
                cum = cum[..., -self.window :]
            new["now"], new["cum"] = now, cum
            bias = (now - cum)[:, :, None, :]  # [B, H, 1, Tk]
        if self.window is not None:
            k, v = k[:, -self.window :], v[:, -self.window :]
        if self.selective:
            return self._post(x, self._selective_step(q, k, v, state, new)), new
        new["k"], new["v"] = k, v
        if "past_q" in state:  # multi-token attention reads the previous queries' scores
            o = mta_attention(q, k, v, self.mta_kernel, self.mta_head_mix, past_q=state["past_q"])
            new["past_q"] = torch.cat([state["past_q"], q], 1)[:, 1:]
            return self._post(x, o), new
        return self._post(x, self._attend(q, k, v, bias)), new

    def _selective_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: dict, new: dict) -> torch.Tensor:
        """One query against the cache, its logits lowered by the mask the earlier queries accumulated;
        with a budget, the most-masked cached token dropped first when the cache would exceed it."""
        mask = F.pad(state["select"], (0, 1))  # nothing accumulated yet for the new token
        if self.selective_budget is not None and mask.shape[1] > self.selective_budget:
            candidates = mask.clone()
            candidates[:, 0] = candidates[:, -1] = float("-inf")  # the first token and the current one stay
            held = torch.ones_like(mask, dtype=torch.bool)
            held[torch.arange(mask.shape[0], device=mask.device), candidates.argmax(-1)] = False
            b, n = mask.shape
            k, v, mask = k[held].view(b, n - 1, *k.shape[2:]), v[held].view(b, n - 1, *v.shape[2:]), mask[held].view(b, n - 1)
        new["k"], new["v"] = k, v
        logits, vv = explicit_scores(q, k, v, None)  # [B, H, 1, Tk]
        new["select"] = mask + selection_scores(logits[:, 0])[:, 0]
        weights = (logits - mask[:, None, None]).softmax(-1)
        return torch.einsum("bhts,bshd->bthd", weights, vv)

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.window is None else min(seq_len, self.window)
        if self.selective_budget is not None:
            cached = min(seq_len, self.selective_budget)
        size = 2 * self.n_kv_heads * self.maps * self.head_dim * cached
        if self.kv_shift is not None:
            size += 2 * self.n_kv_heads * self.head_dim
        if self.forget_proj is not None:
            size += self.n_heads * (cached + 1)
        if self.selective:
            size += cached  # the accumulated mask of every cached token
        if self.mta_kernel is not None:
            size += (self.mta_kernel.shape[1] - 1) * self.n_heads * self.head_dim  # the previous queries
        if self.qkv_conv is not None:
            size += self.qkv_conv.numel() - self.qkv_conv.shape[0]  # the last taps - 1 inputs per channel
        return size
