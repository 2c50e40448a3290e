"""Cross-entropy of a linear head without the [tokens, vocab] logits: mean_i -log softmax(h_i W^T)[y_i].

`linear_cross_entropy` walks the tokens in chunks of ``chunk_size`` rows. For each chunk it forms the
chunk's logits (in float32), its log-sum-exp and loss, and at once the gradients of the mean loss
with respect to the chunk's hidden states and to W (softmax minus one-hot, over the number of
tokens), which it keeps; backward scales them by the incoming gradient. So no more than one chunk of
logits exists at a time, and the FLOPs are those of the unfused head and loss (forward 2 N V d,
gradients 4 N V d), with nothing recomputed (the approach of Liger-Kernel's fused linear
cross-entropy, written here for PyTorch's own ops).

The unfused form for comparison: ``F.cross_entropy(h @ W.T, y)`` materialises the logits, their
log-softmax and its gradient, three [N, V] float32 tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int, grads: bool) -> torch.Tensor:
        # ``grads``: whether the caller records gradients (grad mode is always off in here, and
        # needs_input_grad does not see an outer no_grad)
        n = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)
        need_h, need_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        # one logits buffer for every chunk, softmax and its gradient formed in place in it: no fresh
        # [chunk, V] temporaries per chunk, so the speed does not hang on the allocator's reuse of them
        buf = torch.empty((min(chunk_size, n), weight.shape[0]), dtype=acc, device=h.device)
        same = h.dtype == acc and weight.dtype == acc
        for start in range(0, n, chunk_size):
            hc, yc = h[start : start + chunk_size], labels[start : start + chunk_size]
            logits = buf[: hc.shape[0]]
            if same:
                torch.mm(hc, weight.T, out=logits)
            else:
                logits.copy_(hc @ weight.T)
            target = logits.gather(1, yc[:, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            expd = logits.sub_(top).exp_()  # exp(logit - max), in place
            norm = expd.sum(dim=-1)
            total += (top.squeeze(1) + norm.log() - target).sum()  # log-sum-exp minus the target logit
            if need_h or need_w:
                grad = expd.mul_((1.0 / (norm * n))[:, None])  # softmax / n
                grad[torch.arange(len(yc), device=h.device), yc] -= 1.0 / n
                grad = grad.to(h.dtype)
                if need_h:
                    if same:
                        torch.mm(grad, weight, out=grad_h[start : start + chunk_size])
                    else:
                        grad_h[start : start + chunk_size] = grad @ weight
                if need_w:
                    if same:
                        grad_w.addmm_(grad.T, hc)
                    else:
                        grad_w += (grad.T @ hc).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n  # float32 at least, as the unfused loss over float32 logits

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * grad_out).to(ctx.dtypes[0])
        gw = None if grad_w is None else (grad_w * grad_out).to(ctx.dtypes[1])
        return gh, gw, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``labels``: h [N, d], weight [V, d], labels [N]
    (every label valid), computed ``chunk_size`` rows at a time (module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if h.shape[0] == 0:
        return F.cross_entropy(h @ weight.T, labels)  # nan, as the unfused loss over no tokens
    return _LinearCrossEntropy.apply(h, weight, labels, chunk_size, torch.is_grad_enabled())
