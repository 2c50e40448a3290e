"""Diagonal linear recurrences with input-dependent transitions: RG-LRU, H3 and Mamba's S6.

Two ops, each with a token-by-token `*_naive` oracle beside the fast pure-PyTorch form:

- `diagonal_recurrence`: h_t = exp(log_a_t) * h_{t-1} + b_t (elementwise), the one diagonal scan of
  the project (Griffin/Hawk RG-LRU, De et al. 2024; H3's diagonal SSM, Fu et al. 2023).
- `selective_scan`: Mamba's S6 (Gu & Dao 2023), x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t,
  y_t = C_t x_t + D u_t, on the same chunked engine; fused `mamba_ssm` kernel on CUDA.

Both accumulate in `accumulation_dtype` (float32, float64 for float64 inputs) and only ever
exponentiate non-positive numbers (products of decays <= 1), so log-decays of -20 per step are as
safe as -0.01. RWKV-7's diagonal-plus-low-rank update lives in `arch.ops.rwkv7`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from arch.ops.backend import accumulation_dtype, use_kernel

_LOG2E = math.log2(math.e)  # exp(x) = exp2(x * log2 e): exp2 is the cheaper of the two on CPU
_RECOMPUTE_EVERY = 4  # the scan keeps its state every 4 steps of a chunk; the backward recomputes between


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, T, F] -> [C, B, n, F], position-major and contiguous, zero-padded to n*C tokens: the scans
    loop over the C chunk positions, and a contiguous [B, n, F] slice per step multiplies faster than
    a strided one."""
    batch, length, features = x.shape
    n_chunks = -(-length // chunk_size)
    x = F.pad(x, (0, 0, 0, n_chunks * chunk_size - length)).view(batch, n_chunks, chunk_size, features)
    return x.permute(2, 0, 1, 3).contiguous()


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """[C, B, n, F] -> [B, T, F], dropping the padding."""
    return x.permute(1, 2, 0, 3).flatten(1, 2)[:, :length]


def _decay_into(out: torch.Tensor, delta_rows: torch.Tensor, A2, position: int) -> torch.Tensor:
    """exp(delta_t A) at one chunk position, for every chunk at once, written into ``out``
    (delta_rows [C, B, n, 1, D]; A2 = A log2 e, [N, D])."""
    return torch.mul(delta_rows[position], A2, out=out).exp2_()


def _add_outer(state: torch.Tensor, column: torch.Tensor | None, row: torch.Tensor) -> torch.Tensor:
    """state += column row in place, per chunk (column [B, n, N, 1] or None for N = 1; row [B, n, 1, D])."""
    return state.add_(row) if column is None else state.addcmul_(column, row)


class _StructuredDiagonalScan(torch.autograd.Function):
    """h_t = exp(delta_t ⊗ A) ⊙ h_{t-1} + x_t ⊗ k_t,  y_t = h_t c_t  (h_t in R^{D x N}).

    delta, x [B, T, D]; A [D, N]; k, c [B, T, N]; h0 [B, D, N] -> y [B, T, D], h_T [B, D, N].
    Mamba's S6 is (delta, A, delta*u, B, C). A, k and c all None is the plain diagonal recurrence
    (N = 1, delta = log a, y = h).

    Two-level chunked scan (chunks of C tokens, n = T/C chunks): every loop runs over chunk positions
    or over chunks, each step vectorised across the other axis; decays and inputs are formed per step
    and no [B, T, D, N] tensor is ever made. The backward is the adjoint scan run in reverse rather than
    autograd through 2*sqrt(T) small steps:
      1. inside all chunks at once, from a zero state: the chunk-local end states;
      2. across chunks: S_{j+1} = exp(A * sum_{t in j} delta_t) ⊙ S_j + local_end_j;
      3. inside all chunks again, from S_j: every y_t, keeping h_t every _RECOMPUTE_EVERY positions.
    Backward: g_t = dL/dh_t = exp(delta_{t+1} A) ⊙ g_{t+1} + dy_t c_t^T by the same three steps in
    reverse, recomputing h_t from the kept states _RECOMPUTE_EVERY positions at a time; dL/d(delta_t A) =
    g_t ⊙ exp(delta_t A) ⊙ h_{t-1}. (Saving all of h, a [B, T, D, N] tensor, would cost more in
    freshly mapped pages than the recomputation of one multiply-add per state and step.)
    Internally states are laid out [N, D] so that every contraction is a row vector times a matrix,
    the fast batched-matmul case on CPU.
    """

    @staticmethod
    def forward(ctx, delta, A, x, k, c, h0, chunk_size):
        batch, length, dim = delta.shape
        chunk_size = min(chunk_size, length)
        deltas, xs = _to_chunks(delta, chunk_size), _to_chunks(x, chunk_size)  # [C, B, n, D]
        ks, cs = (None if t is None else _to_chunks(t, chunk_size) for t in (k, c))  # [C, B, n, N]
        n_chunks = deltas.shape[2]
        delta_rows, x_rows = deltas.unsqueeze(-2), xs.unsqueeze(-2)  # per-step views, made once
        k_columns, c_rows = (None if t is None else t.unsqueeze(dim) for t, dim in ((ks, -1), (cs, -2)))
        # [N, D], contiguous: a broadcast multiply by A.t()'s transposed strides is much slower on CPU
        A2 = _LOG2E if A is None else (A.t() * _LOG2E).contiguous()
        decay = delta.new_empty(batch, n_chunks, 1 if A is None else A.shape[1], dim)

        def step(state: torch.Tensor, position: int) -> torch.Tensor:  # h_t from h_{t-1}, in place
            state.mul_(_decay_into(decay, delta_rows, A2, position))
            return _add_outer(state, None if ks is None else k_columns[position], x_rows[position])

        # 1. chunk-local end states
        local = torch.zeros_like(decay)
        for position in range(chunk_size):
            step(local, position)

        # 2. the state entering every chunk
        chunk_decay = torch.exp2(deltas.sum(0).unsqueeze(-2) * A2)  # [B, n, N, D]
        starts = delta.new_empty(batch, n_chunks + 1, *decay.shape[2:])  # entering chunk j; [:, n] = h_T
        starts[:, 0] = h0.transpose(-1, -2)
        for j in range(n_chunks):
            torch.addcmul(local[:, j], chunk_decay[:, j], starts[:, j], out=starts[:, j + 1])

        # 3. inside all chunks from their entering states: y_t, keeping h every _RECOMPUTE_EVERY steps
        h = starts[:, :n_chunks].clone()
        checkpoints = []
        y = delta.new_empty(chunk_size, batch, n_chunks, dim)
        for position in range(chunk_size):
            if position % _RECOMPUTE_EVERY == 0:
                checkpoints.append(h.clone())
            step(h, position)
            if cs is None:
                y[position] = h.squeeze(-2)
            else:
                torch.matmul(c_rows[position], h, out=y[position].unsqueeze(-2))

        ctx.save_for_backward(deltas, A, xs, ks, cs, chunk_decay, *checkpoints)
        ctx.length = length
        return _from_chunks(y, length), starts[:, n_chunks].transpose(-1, -2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_final):
        deltas, A, xs, ks, cs, chunk_decay, *checkpoints = ctx.saved_tensors
        need_delta, need_A, need_x, need_k, need_c, need_h0, _ = ctx.needs_input_grad
        chunk_size, n_chunks = deltas.shape[0], deltas.shape[2]
        dys = _to_chunks(dy, chunk_size)
        delta_rows, x_rows, dy_rows = deltas.unsqueeze(-2), xs.unsqueeze(-2), dys.unsqueeze(-2)
        k_columns, k_rows, c_columns = (None if t is None else t.unsqueeze(dim) for t, dim in ((ks, -1), (ks, -2), (cs, -1)))
        A_t = None if A is None else A.t().contiguous()
        A2 = _LOG2E if A is None else A_t * _LOG2E
        decay = torch.empty_like(checkpoints[0])

        def add_output_grad(adjoint: torch.Tensor, position: int) -> torch.Tensor:
            return _add_outer(adjoint, None if cs is None else c_columns[position], dy_rows[position])

        # 1. chunk-local adjoint of the state entering each chunk, from the chunk's own outputs
        local = torch.zeros_like(decay)
        for position in reversed(range(chunk_size)):
            add_output_grad(local, position).mul_(_decay_into(decay, delta_rows, A2, position))

        # 2. adjoint of each chunk's last state from everything after it
        ends = torch.empty_like(decay)
        carry = dh_final.transpose(-1, -2).contiguous()
        for j in reversed(range(n_chunks)):
            ends[:, j] = carry
            carry = torch.addcmul(local[:, j], chunk_decay[:, j], carry)

        # 3. exact adjoint at every position, and the gradients it induces; h_t is recomputed from the
        # forward's checkpoints, _RECOMPUTE_EVERY steps at a time, into buffers reused across sub-blocks
        hs = [torch.empty_like(decay) for _ in range(_RECOMPUTE_EVERY)]
        decays = [torch.empty_like(decay) for _ in range(_RECOMPUTE_EVERY)]
        grad = ends
        d_delta = torch.empty_like(deltas) if need_delta else None
        d_x = torch.empty_like(xs) if need_x else None
        d_k = torch.empty_like(ks) if need_k else None
        d_c = torch.empty_like(cs) if need_c else None
        d_A = torch.zeros_like(decay) if need_A else None
        d_log_decay = torch.empty_like(decay)
        for block in reversed(range(len(checkpoints))):
            first = block * _RECOMPUTE_EVERY
            steps = min(_RECOMPUTE_EVERY, chunk_size - first)
            h = checkpoints[block]
            for i in range(steps):
                h = torch.mul(h, _decay_into(decays[i], delta_rows, A2, first + i), out=hs[i])
                _add_outer(h, None if ks is None else k_columns[first + i], x_rows[first + i])
            for i in reversed(range(steps)):
                position = first + i
                add_output_grad(grad, position)
                if need_c:
                    torch.matmul(dy_rows[position], hs[i].transpose(-1, -2), out=d_c[position].unsqueeze(-2))
                if need_x:
                    if ks is None:
                        d_x[position] = grad.squeeze(-2)
                    else:
                        torch.matmul(k_rows[position], grad, out=d_x[position].unsqueeze(-2))
                if need_k:
                    torch.matmul(x_rows[position], grad.transpose(-1, -2), out=d_k[position].unsqueeze(-2))
                grad.mul_(decays[i])  # now the part of dL/dh_{t-1} that flows through h_t
                previous = hs[i - 1] if i > 0 else checkpoints[block]
                if A is None:  # delta is log a itself: dL/dlog a_t = g_t ⊙ a_t ⊙ h_{t-1}
                    if need_delta:
                        torch.mul(grad, previous, out=d_delta[position].unsqueeze(-2))
                    continue
                torch.mul(grad, previous, out=d_log_decay)
                if need_A:
                    d_A.addcmul_(d_log_decay, delta_rows[position])
                if need_delta:
                    torch.sum(d_log_decay.mul_(A_t), dim=-2, out=d_delta[position])

        length = ctx.length
        return (
            _from_chunks(d_delta, length) if need_delta else None,
            d_A.sum((0, 1)).t() if need_A else None,
            _from_chunks(d_x, length) if need_x else None,
            _from_chunks(d_k, length) if need_k else None,
            _from_chunks(d_c, length) if need_c else None,
            carry.transpose(-1, -2) if need_h0 else None,
            None,
        )


def diagonal_recurrence(
    log_a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal linear recurrence h_t = exp(log_a_t) * h_{t-1} + b_t (elementwise), chunked.

    Shapes: log_a, b [B, T, *F] (any feature shape, e.g. [B, T, D] or [B, T, H, D]), log_a <= 0;
    initial_state [B, *F] or None (zeros). Returns h [B, T, *F] in b's dtype and the final state
    [B, *F] in float32 (float64 for float64 inputs), the state a decode step continues from.

    The shared scan of the diagonal RNNs: Griffin/Hawk's RG-LRU (De et al. 2024, log a_t =
    -8 gate_a softplus(Lambda), b_t = sqrt(1 - a_t^2) gate_x x_t), H3's diagonal SSM (Fu et al. 2023).
    Pure PyTorch, two-level chunked scan with a reverse-scan backward (see `_StructuredDiagonalScan`):
    Python loops of chunk_size + T/chunk_size steps, memory O(T) (h itself plus one state per chunk).
    """
    acc = accumulation_dtype(b)
    batch, length, *features = b.shape
    h0 = b.new_zeros(batch, math.prod(features), dtype=acc) if initial_state is None else initial_state.to(acc)
    h, final = _StructuredDiagonalScan.apply(
        log_a.to(acc).flatten(2), None, b.to(acc).flatten(2), None, None, h0.reshape(batch, -1, 1), chunk_size
    )
    return h.reshape(b.shape).to(b.dtype), final.reshape(batch, *features)


def diagonal_recurrence_naive(
    log_a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token oracle of `diagonal_recurrence` (same shapes and dtypes)."""
    acc = accumulation_dtype(b)
    h = b.new_zeros(b.shape[:1] + b.shape[2:], dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for log_a_t, b_t in zip(log_a.to(acc).unbind(1), b.to(acc).unbind(1)):
        h = torch.exp(log_a_t) * h + b_t
        outputs.append(h)
    return torch.stack(outputs, 1).to(b.dtype), h


def _selective_scan_mamba_ssm(u, delta, A, B, C, D, z):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def channels_first(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.transpose(1, 2).contiguous()

    y, final = selective_scan_fn(
        channels_first(u), channels_first(delta), A.float(), channels_first(B), channels_first(C),
        None if D is None else D.float(), channels_first(z), delta_softplus=False, return_last_state=True,
    )
    return y.transpose(1, 2), final


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan (S6; Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces", Alg. 2), per channel d and state index n:

        x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t,    y_t = C_t x_t + D u_t,    y_t *= silu(z_t)

    Shapes: u, delta [B, T, Din] (delta already positive, e.g. softplus(W x + bias)); A [Din, N]
    (negative); B, C [B, T, N]; D [Din] or None; z [B, T, Din] or None; initial_state [B, Din, N] or
    None. Returns y [B, T, Din] in u's dtype and the final state [B, Din, N] (float32, float64 for
    float64 inputs).

    backend: "auto" uses `mamba_ssm`'s fused CUDA kernel (selective_scan_fn, layout [B, Din, T]) when
    it imports and the tensors are on CUDA, unless an initial state or float64 is given (the kernel
    takes neither), in which case the pure-PyTorch scan runs; "mamba_ssm" insists on the kernel;
    "torch" never uses it. The PyTorch form is the chunked diagonal scan of `diagonal_recurrence` with
    log a = delta ⊗ A and b = (delta u) ⊗ B, whose per-step decays and inputs are formed inside the
    scan rather than materialised as [B, T, Din, N] tensors.
    """
    if use_kernel(backend, "mamba_ssm", "mamba_ssm", u, delta, A, B, C, D, z, initial_state):
        if initial_state is None and u.dtype != torch.float64:
            return _selective_scan_mamba_ssm(u, delta, A, B, C, D, z)
        if backend != "auto":
            raise ValueError("backend='mamba_ssm' takes neither initial_state nor float64; use backend='torch'")
    acc = accumulation_dtype(u)
    u32, delta32 = u.to(acc), delta.to(acc)
    h0 = u32.new_zeros(u.shape[0], *A.shape) if initial_state is None else initial_state.to(acc)
    y, final = _StructuredDiagonalScan.apply(
        delta32, A.to(acc), delta32 * u32, B.to(acc), C.to(acc), h0, chunk_size
    )
    return _skip_and_gate(y, u32, D, z).to(u.dtype), final


def _skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token oracle of `selective_scan` (same shapes and dtypes; PyTorch only)."""
    acc = accumulation_dtype(u)
    u32, delta32, A32 = u.to(acc), delta.to(acc), A.to(acc)
    x = u32.new_zeros(u.shape[0], *A.shape) if initial_state is None else initial_state.to(acc)
    outputs = []
    for u_t, delta_t, B_t, C_t in zip(u32.unbind(1), delta32.unbind(1), B.to(acc).unbind(1), C.to(acc).unbind(1)):
        x = torch.exp(delta_t[:, :, None] * A32) * x + (delta_t * u_t)[:, :, None] * B_t[:, None, :]
        outputs.append((x @ C_t[:, :, None]).squeeze(-1))
    return _skip_and_gate(torch.stack(outputs, 1), u32, D, z).to(u.dtype), x
