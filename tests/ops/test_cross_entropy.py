"""The chunked linear cross-entropy equals the unfused head + F.cross_entropy in float64, loss and
gradients, for chunks that do and do not divide the tokens; it keeps the input dtypes of the gradients."""

import pytest
import torch
import torch.nn.functional as F

from arch.ops.cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_unfused_in_float64(chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 30, (50,))
    expected = F.cross_entropy(h @ w.T, y)
    got = linear_cross_entropy(h, w, y, chunk)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(3 * got, [h, w]), torch.autograd.grad(3 * expected, [h, w])):
        torch.testing.assert_close(a, b)


def test_gradient_dtypes_follow_the_inputs_and_the_loss_is_float32():
    h = torch.randn(8, 4, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    loss = linear_cross_entropy(h.float(), w, torch.randint(0, 5, (8,)), 3)
    assert loss.dtype == torch.float32
    loss.backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


def test_model_loss_with_and_without_chunks_agree_and_mask_unlabelled_positions():
    from arch.lm import LanguageModel

    blocks = {"attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 2}, "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"}}
    torch.manual_seed(0)
    chunked = LanguageModel.from_config({"d_model": 16, "n_layers": 1, "vocab_size": 40, "blocks": blocks, "loss_chunk_size": 5}).double()
    plain = LanguageModel.from_config({"d_model": 16, "n_layers": 1, "vocab_size": 40, "blocks": blocks, "loss_chunk_size": None}).double()
    plain.load_state_dict(chunked.state_dict())
    ids = torch.randint(0, 40, (2, 9))
    for labels in (torch.randint(0, 40, (2, 9)), torch.where(torch.rand(2, 9) < 0.5, -100, torch.randint(0, 40, (2, 9)))):
        torch.testing.assert_close(chunked.loss(ids, labels), plain.loss(ids, labels))
        g1 = torch.autograd.grad(chunked.loss(ids, labels), list(chunked.parameters()))
        g2 = torch.autograd.grad(plain.loss(ids, labels), list(plain.parameters()))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


def test_without_grad_mode_the_loss_is_the_same_and_no_gradient_is_formed(monkeypatch):
    torch.manual_seed(1)
    h, w = torch.randn(20, 8, requires_grad=True), torch.randn(12, 8, requires_grad=True)
    y = torch.randint(0, 12, (20,))
    with torch.no_grad():
        calls = []
        real_div = torch.Tensor.div_
        monkeypatch.setattr(torch.Tensor, "div_", lambda self, *a: calls.append(1) or real_div(self, *a))
        loss = linear_cross_entropy(h, w, y, 7)
        monkeypatch.undo()
    assert not calls  # the softmax-minus-one-hot gradient was never formed
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.T, y).detach())
