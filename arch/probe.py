"""Seeing inside a model: the probe contract of the sequence mixers, head masks, and capture helpers
that `eval.probes` and the probe callback (`training.callbacks`) build on.

The probe contract, beside the block contract (`arch/blocks/__init__.py`). A mixer that can be probed
implements:

    attention_matrix(x) -> (A [B, G, T, T], v [B, T, G, Dv])
        A materialised for probing only (an eager O(T^2) path; training never calls it): the
        attention probabilities of a softmax block, or the implicit attention of a linear or recurrent
        block, with o[:, t, g] = sum_s A[:, g, t, s] v[:, s, g] (`mix`). A[t, s] = 0 for s > t.
    pre_projection(x) -> o [B, T, G, Dv]
        the block's own (fast) path up to the point where the groups are mixed back together
        (before output normalisation, gating and the output projection); its forward is
        post(pre_projection(x)), so the identity o = mix(A, v) checks the probe against the model.
    head_mask: torch.Tensor [G] | None
        multiplies each group of o in forward and step (None: no mask). A float mask may require
        grad (head importance by gradient). Set it with `set_head_mask`.

G is the block's groups: heads for softmax attention and per-head linear/recurrent blocks (linear
attention, GLA, RetNet, HGRN2, RWKV, Mamba-2), channels for channel-wise recurrences (Mamba, RG-LRU,
H3's SSM), then Dv = 1. Each block's docstring says what its G and v are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def apply_head_mask(o: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """o [B, T, G, Dv] with group g scaled by mask[g] (o itself when mask is None)."""
    if mask is None:
        return o
    return o * mask.to(o.dtype)[:, None]


def mix(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o [B, T, G, Dv] = sum_s A[:, g, t, s] v[:, s, g]: what an attention matrix does to its values."""
    return torch.einsum("bgts,bsgd->btgd", a.to(v.dtype), v)


def probeable(mixer: nn.Module) -> bool:
    return callable(getattr(mixer, "attention_matrix", None)) and callable(getattr(mixer, "pre_projection", None))


def set_head_mask(model: nn.Module, masks: dict[int, torch.Tensor] | None) -> None:
    """Set each layer's mixer head mask ({layer index: mask [G]}); None (or a layer left out) clears it.
    A layer whose mixer cannot be masked is a clear error."""
    masks = masks or {}
    for i, layer in enumerate(model.layers):
        mixer = layer.mixer
        if i in masks and not hasattr(mixer, "head_mask"):
            raise ValueError(f"layer {i}'s mixer ({type(mixer).__name__}) has no head mask: it does not follow the probe contract")
        if hasattr(mixer, "head_mask"):
            mixer.head_mask = masks.get(i)


@contextmanager
def head_masks(model: nn.Module, masks: dict[int, torch.Tensor]):
    """``set_head_mask`` for the duration of a ``with`` block, then no masks."""
    set_head_mask(model, masks)
    try:
        yield model
    finally:
        set_head_mask(model, None)


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward of a `LanguageModel`: the input of every layer's mixer (after its norm), a list
    of [B, T, d_model], and the residual stream [L + 1, B, T, d_model] (the embeddings, then the
    output of every layer, before the final norm)."""
    inputs: list[torch.Tensor] = []
    stream: list[torch.Tensor] = []
    hooks = [model.layers[0].register_forward_pre_hook(lambda module, args: stream.append(args[0]))]
    for layer in model.layers:
        hooks.append(layer.mixer.register_forward_pre_hook(lambda module, args: inputs.append(args[0])))
        hooks.append(layer.register_forward_hook(lambda module, args, out: stream.append(out)))
    try:
        model(input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, torch.stack(stream)


@torch.no_grad()
def attention_maps(model: nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
    """{layer: A [B, G, T, T]} for the chosen layers (default: every layer whose mixer follows the probe
    contract), from the mixers' inputs of one forward."""
    inputs, _ = capture(model, input_ids)
    chosen = [i for i, layer in enumerate(model.layers) if probeable(layer.mixer)] if layers is None else layers
    out = {}
    for i in chosen:
        mixer = model.layers[i].mixer
        if not probeable(mixer):
            raise ValueError(f"layer {i}'s mixer ({type(mixer).__name__}) has no attention_matrix: it cannot be probed")
        out[i] = mixer.attention_matrix(inputs[i])[0]
    return out
