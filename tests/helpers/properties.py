"""Property checks shared by every block and op test: written once, applied to all."""

from __future__ import annotations

import torch


def perturbed(block: torch.nn.Module) -> torch.nn.Module:
    """``block`` with 0.05 * randn added to every parameter (zero-initialised parts would hide bugs), in
    eval mode."""
    for p in block.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return block.eval()


def build_block(name: str, d_model: int, layer_idx: int = 1, **overrides) -> torch.nn.Module:
    """The block config conf/block/<name>.yaml with ``overrides``, in float64, seed 0, `perturbed`."""
    from omegaconf import OmegaConf

    from arch.config import instantiate
    from training.compose import CONF_DIR

    spec = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "block" / f"{name}.yaml"), resolve=True), **overrides}
    torch.manual_seed(0)
    return perturbed(instantiate(spec, f"block.{name}", d_model=d_model, layer_idx=layer_idx).double())


def state_numel(state) -> int:
    """Numbers held in a decode state (all tensors in a nested dict/list/tuple)."""
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    return 0


def decode(block, x: torch.Tensor):
    """Run ``block.step`` token by token over x [B, T, D]; returns outputs [B, T, D] and the final state."""
    state = block.init_state(x.shape[0], x.device, x.dtype)
    outs = []
    for t in range(x.shape[1]):
        y, state = block.step(x[:, t : t + 1], state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


def assert_causal(block, d_model: int, T: int = 24, t0: int = 11, dtype=torch.float64) -> None:
    """Changing inputs after position t0 leaves outputs up to t0 unchanged, and changes a later one."""
    x = torch.randn(2, T, d_model, dtype=dtype)
    x2 = x.clone()
    x2[:, t0 + 1 :] = torch.randn_like(x2[:, t0 + 1 :])
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, : t0 + 1], y2[:, : t0 + 1], rtol=1e-10, atol=1e-10)
    assert (y[:, t0 + 1 :] - y2[:, t0 + 1 :]).abs().max() > 1e-6, "outputs after t0 ignore their inputs"


def assert_decode_matches_forward(block, d_model: int, T: int = 24, dtype=torch.float64) -> None:
    """``step`` token by token reproduces ``forward``; the state holds exactly ``state_size(T)`` numbers."""
    x = torch.randn(2, T, d_model, dtype=dtype)
    with torch.no_grad():
        full = block(x)
        stepped, state = decode(block, x)
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)
    assert state_numel(state) == 2 * block.state_size(T), (state_numel(state), block.state_size(T))


def assert_model_decode_matches_forward(model, ids: torch.Tensor, **tolerances) -> None:
    """A `LanguageModel` decoding ``ids`` [B, T] token by token (``step`` from ``init_state``)
    gives the logits of its parallel forward."""
    full = model(ids)
    state, steps = model.init_state(ids.shape[0]), []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, **tolerances)
