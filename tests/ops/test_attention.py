"""Causal attention against its naive twin (explicit masked softmax) in float64, forward and backward:
full, sliding window through SDPA's mask (T <= 2W), and the blocked O(T W) local path (T > 2W), with
GQA and lengths that are not whole blocks."""

import pytest
import torch

from arch.ops import causal_attention
from arch.ops.attention import local_attention, sliding_window_attention_naive
from tests.helpers.numerics import cotangent


def grads(fn, q, k, v):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    return out, torch.autograd.grad((out * cotangent(out)).sum(), leaves)


@pytest.mark.parametrize("t,window", [(20, None), (20, 16), (50, 8), (64, 16), (37, 5), (33, 1)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_windowed_attention_equals_masked_full_attention(t, window, heads, kv_heads):
    torch.manual_seed(0)
    q = torch.randn(2, t, heads, 8, dtype=torch.float64)
    k, v = (torch.randn(2, t, kv_heads, 8, dtype=torch.float64) for _ in range(2))
    out, g = grads(lambda *x: causal_attention(*x, window=window, backend="torch"), q, k, v)
    ref, g_ref = grads(lambda *x: sliding_window_attention_naive(*x, window=window), q, k, v)
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_the_blocked_path_is_taken_beyond_two_windows_and_matches_sdpa_masking():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 40, 2, 4, dtype=torch.float64) for _ in range(3))
    blocked = local_attention(q, k, v, window=6)
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    mask = (j <= i) & (i - j < 6)
    sdpa = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(blocked, sdpa)
