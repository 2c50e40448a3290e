"""Linear attention block: every feature map equals explicit (normalised) kernel attention computed
token pair by token pair; Based's Taylor kernel is 1 + q.k/sqrt(d) + (q.k)^2/(2d)."""

import pytest
import torch
import torch.nn.functional as F

from arch.blocks.linear_attention import LinearAttention
from tests.helpers.properties import assert_causal, assert_decode_matches_forward

D = 32


def explicit_kernel_attention(block: LinearAttention, x: torch.Tensor, kernel) -> torch.Tensor:
    """o_t = sum_{s<=t} K(q_t, k_s) v_s / (sum_{s<=t} K(q_t, k_s) + eps) per head, by an explicit T x T matrix."""
    H, f = block.n_heads, block.feature_dim
    q = block.q_proj(x).unflatten(-1, (H, f)).transpose(1, 2)  # [B, H, T, f]
    k = block.k_proj(x).unflatten(-1, (H, f)).transpose(1, 2)
    v = block.v_proj(x).unflatten(-1, (H, block.head_dim)).transpose(1, 2)
    T = x.shape[1]
    A = kernel(q, k) * torch.ones(T, T, dtype=x.dtype).tril()  # [B, H, T, T]
    o = A @ v
    if block.normalize:
        o = o / (A.sum(-1, keepdim=True) + block.eps)
    return block.out_proj(o.transpose(1, 2).flatten(2))


def taylor_kernel(q, k):
    d = q.shape[-1]
    dot = q @ k.transpose(-1, -2)
    return 1 + dot / d**0.5 + dot**2 / (2 * d)


KERNELS = {
    "taylor": taylor_kernel,
    "elu": lambda q, k: (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2),
    "relu": lambda q, k: F.relu(q) @ F.relu(k).transpose(-1, -2),
    "identity": lambda q, k: q @ k.transpose(-1, -2),
}


@pytest.mark.parametrize(
    "feature_map,normalize", [(m, n) for m in sorted(KERNELS) for n in (True, False) if not (m == "identity" and n)]
)
def test_linear_attention_equals_explicit_kernel_attention(feature_map, normalize):
    torch.manual_seed(0)
    block = LinearAttention(D, n_heads=4, feature_dim=8, feature_map=feature_map, normalize=normalize).double()
    x = torch.randn(2, 70, D, dtype=torch.float64)  # 70: more than one chunk of 64
    torch.testing.assert_close(block(x), explicit_kernel_attention(block, x, KERNELS[feature_map]), rtol=1e-9, atol=1e-9)


def test_based_taylor_attention_is_the_normalised_second_order_exp_kernel():
    torch.manual_seed(0)
    block = LinearAttention(D, n_heads=2, feature_dim=16, feature_map="taylor").double()
    assert block.feature_size == 1 + 16 + 256
    x = torch.randn(1, 20, D, dtype=torch.float64)
    torch.testing.assert_close(block(x), explicit_kernel_attention(block, x, taylor_kernel), rtol=1e-10, atol=1e-10)


def test_identity_feature_map_refuses_normalisation():
    with pytest.raises(ValueError, match="normalize"):
        LinearAttention(D, feature_map="identity", normalize=True)


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_other_feature_maps_keep_the_contract_and_state_size(feature_map):
    torch.manual_seed(0)
    block = LinearAttention(D, n_heads=4, feature_dim=8, head_dim=6, feature_map=feature_map).double()
    assert block.state_size(10**6) == 4 * 8 * (6 + 1)  # (S, z): independent of length
    assert_causal(block, D)
    assert_decode_matches_forward(block, D, T=9)
