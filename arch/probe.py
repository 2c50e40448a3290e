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
        multiplies each group's output in forward and step (None: no mask): o, or, in a block that
        normalises each head on its own (GLA, RetNet, RWKV's GroupNorm, differential attention's head
        norm), the head's normalised output, since that norm would undo any scaling of o. Masking
        every group removes the mixer's contribution (up to biases). A float mask may require grad
        (head importance by gradient, Michel et al. 2019). Set it with `set_head_mask`.

G is the block's groups: heads for softmax attention and per-head linear/recurrent blocks (linear
attention, GLA, RetNet, HGRN2, RWKV, Mamba-2), channels for channel-wise recurrences (Mamba, RG-LRU,
H3's SSM), then Dv = 1. Each block's docstring says what its G and v are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

PROBES = ("sink", "entropy", "massive", "retrieval", "induction", "rank", "ablation")
IGNORE = -100  # the label of a position that is not scored
MAX_ABLATED_GROUPS = 32  # above this many groups (channel-wise blocks), ablation masks the whole mixer


class ProbeError(ValueError):
    """Bad probe arguments or an unreadable run; the message says what to change."""


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


class Captured(list):
    """The mixer inputs of one forward (a list of [B, T, d_model], one per layer) with ``shared``: per
    layer, the dict a mixer that reads other layers' values was given (None for the others)."""

    shared: list


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor) -> tuple[Captured, torch.Tensor]:
    """One forward of a `LanguageModel`: the input of every layer's mixer (after its norm), and the
    residual stream [L + 1, B, T, d_model] (the embeddings, then the output of every layer, before the
    final norm)."""
    inputs, shared = Captured(), []
    stream: list[torch.Tensor] = []

    def record(module, args, kwargs):
        inputs.append(args[0])
        shared.append(kwargs.get("shared"))

    hooks = [model.layers[0].register_forward_pre_hook(lambda module, args: stream.append(args[0]))]
    for layer in model.layers:
        hooks.append(layer.mixer.register_forward_pre_hook(record, with_kwargs=True))
        hooks.append(layer.register_forward_hook(lambda module, args, out: stream.append(out)))
    try:
        model(input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    inputs.shared = shared
    return inputs, torch.stack(stream)


def matrix_of(model: nn.Module, inputs: Captured, i: int, examples: slice = slice(None), tokens: slice = slice(None)) -> torch.Tensor:
    """Layer i's attention matrix A [b, G, T, T] for the chosen examples (and leading tokens) of a `capture`."""
    mixer, shared = model.layers[i].mixer, inputs.shared[i]
    if not probeable(mixer):
        raise ProbeError(f"layer {i}'s mixer ({type(mixer).__name__}) has no attention_matrix: it cannot be probed")
    x = inputs[i][examples, tokens]
    return (mixer.attention_matrix(x) if shared is None else mixer.attention_matrix(x, shared=shared))[0]


@torch.no_grad()
def attention_maps(model: nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
    """{layer: A [B, G, T, T]} for the chosen layers (default: every layer whose mixer follows the probe
    contract), from the mixers' inputs of one forward."""
    inputs, _ = capture(model, input_ids)
    chosen = [i for i, layer in enumerate(model.layers) if probeable(layer.mixer)] if layers is None else layers
    return {i: matrix_of(model, inputs, i) for i in chosen}


# ---------------------------------------------------------------- metrics on one attention matrix


def row_weights(a: torch.Tensor) -> torch.Tensor:
    """w [B, G, T, T]: |A| with each row normalised to sum 1 (A itself for softmax probabilities)."""
    w = a.abs().double()
    return w / w.sum(-1, keepdim=True).clamp_min(1e-30)


def sink_mass(w: torch.Tensor, min_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First-token sink ("When Attention Sink Emerges in Language Models: An Empirical View", Gu et al.
    2024; Xiao et al. 2024): the attention weight on token 0, averaged over queries t >= min_pos and
    examples; returns (mass [G], mass relative to uniform [G]: the mean of w[t, 0] * (t + 1), 1 when
    token 0 gets what a uniform row would give it, t + 1 when it takes everything)."""
    t = torch.arange(w.shape[-1], device=w.device)
    rows = w[..., min_pos:, 0]  # [B, G, T - min_pos]
    return rows.mean((0, 2)), (rows * (t[min_pos:] + 1)).mean((0, 2))


def hidden_sinks(w: torch.Tensor, min_pos: int, factor: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden sinks ("Unveiling and Harnessing Hidden Attention Sinks", Yu et al. 2024): tokens other
    than the first that draw more than ``factor`` times the uniform share 1/(t + 1) on average over the
    queries t >= max(s + 1, min_pos) after them. Returns (their share of the attention of queries
    t >= min_pos [G], their number per example [G]), averaged over examples."""
    b, g, n, _ = w.shape
    t = torch.arange(n, device=w.device, dtype=w.dtype)
    rel = w[..., min_pos:, :] * (t[min_pos:, None] + 1)  # [B, G, Tq, Tk]: weight relative to uniform
    later = (torch.arange(n, device=w.device)[None, :] < torch.arange(min_pos, n, device=w.device)[:, None]).to(w.dtype)
    received = (rel * later).sum(-2) / later.sum(0).clamp_min(1)  # [B, G, Tk]
    sinks = received > factor
    sinks[..., 0] = False
    share = (w[..., min_pos:, :] * sinks[..., None, :]).sum(-1).mean((0, 2))
    return share, sinks.sum(-1).double().mean(0)


def entropy(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention entropy -sum_s w log w in nats, averaged over queries t >= 1 and examples [G], and the
    same divided by log(t + 1), the entropy of a uniform row (1: uniform, 0: one key)."""
    h = -(w * w.clamp_min(1e-30).log()).sum(-1)[..., 1:]  # [B, G, T - 1]
    norm = torch.log(torch.arange(2, w.shape[-1] + 1, device=w.device, dtype=w.dtype))
    return h.mean((0, 2)), (h / norm).mean((0, 2))


def copy_sources(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each query t with a label: the position s <= t whose token equals the label and whose
    previous token equals token t (the last such s), the token a copying head should attend to; -1
    where there is none. MQAR: the matching key's value; a repeated sequence: the token after the
    current token's previous occurrence (induction, Olsson et al. 2022)."""
    b, n = ids.shape
    prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], 1)  # token s - 1 at s
    match = (ids[:, None, :] == labels[:, :, None]) & (prev[:, None, :] == ids[:, :, None])  # [B, t, s]
    match &= torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
    match &= (labels != IGNORE)[:, :, None]
    s = torch.arange(n, device=ids.device)
    return torch.where(match.any(-1), (match * s).amax(-1), torch.full_like(ids, -1))


def retrieval_score(a: torch.Tensor, sources: torch.Tensor, copied: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Retrieval-head score ("Retrieval Head Mechanistically Explains Long-Context Factuality", Wu et
    al. 2024): per head, the fraction of queries with a copy source at which the head copy-pastes:
    its most-attended token is that source and (with ``copied`` [B, T], whether the model's own
    prediction at t is the label) the model outputs that token, as the paper counts a token
    "copy-pasted" only when it is generated. Returns ([G], the number of queries with a source)."""
    has = sources >= 0
    top = a.abs().argmax(-1)  # [B, G, T]
    hit = (top == sources[:, None, :]) & has[:, None, :]
    if copied is not None:
        hit &= copied[:, None, :]
    n = int(has.sum())
    return hit.sum((0, 2)).double() / max(n, 1), n


def induction_score(w: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Induction score (Olsson et al. 2022, "In-context Learning and Induction Heads"): the mean
    attention weight a query puts on its copy source, over the queries that have one [G]."""
    has = sources >= 0
    picked = w.gather(-1, sources.clamp_min(0)[:, None, :, None].expand(-1, w.shape[1], -1, 1))[..., 0]
    return (picked * has[:, None, :]).sum((0, 2)) / has.sum().clamp_min(1)


def effective_rank(h: torch.Tensor) -> float:
    """Effective rank (Roy and Vetterli 2007) of h [N, D]: exp of the entropy of its normalised
    singular values; between 1 and min(N, D)."""
    s = torch.linalg.svdvals(h.double())
    p = s / s.sum().clamp_min(1e-30)
    return float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum()))


def massive_activations(x: torch.Tensor, top: int = 5) -> dict:
    """Massive activations ("Massive Activations in Large Language Models", Sun et al. 2024): in x
    [B, T, D] (one layer's residual stream, or its queries/keys flattened over heads), the largest
    magnitudes with their (example, token, dimension) and their ratio to the median magnitude; Sun et
    al. call an activation massive when it is over 100 in magnitude and about 1000x the median."""
    mag = x.abs().double()
    median = float(mag.median())
    values, flat = mag.flatten().topk(min(top, mag.numel()))
    b, t, d = x.shape
    entries = [
        {
            "example": int(i // (t * d)),
            "token": int(i // d % t),
            "dim": int(i % d),
            "value": float(v),
            "ratio": float(v) / max(median, 1e-30),
        }
        for v, i in zip(values, flat)
    ]
    return {"median": median, "top": entries}


# ---------------------------------------------------------------- inputs


def induction_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeated random sequences [r, r] (r: seq_len // 2 distinct tokens drawn uniformly when the
    vocabulary allows, so every copy source is unique), labels on the second copy: the next token of
    the first."""
    g = torch.Generator().manual_seed(seed)
    half = seq_len // 2
    if vocab >= half:
        r = torch.rand(batch, vocab, generator=g).argsort(-1)[:, :half]
    else:
        r = torch.randint(0, vocab, (batch, half), generator=g)
    ids = torch.cat([r, r], 1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, half:-1] = ids[:, half + 1 :]
    return ids, labels


def needle_batch(ids: torch.Tensor, vocab: int, needle: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text with a planted needle: a random segment of ``needle`` tokens (at most T / 8) written in the
    first half of each example and again at the end; labels on the second copy (the copy a retrieval
    head serves)."""
    g = torch.Generator().manual_seed(seed)
    ids = ids.clone()
    b, n = ids.shape
    if n < 16:
        raise ProbeError(f"the needle probe needs seq_len >= 16; got {n}")
    needle = min(needle, n // 8)
    labels = torch.full_like(ids, IGNORE)
    for i in range(b):
        seg = torch.randint(0, vocab, (needle,), generator=g)
        at = int(torch.randint(1, n // 2 - needle, (1,), generator=g))
        ids[i, at : at + needle] = seg
        ids[i, n - needle :] = seg
        labels[i, n - needle : n - 1] = seg[1:]
    return ids, labels


# ---------------------------------------------------------------- a whole pass


def _groups(model, inputs: Captured, i: int) -> int:
    """G of layer i's attention matrix, from a two-token prefix of one example."""
    return matrix_of(model, inputs, i, slice(0, 1), slice(0, 2)).shape[1]


def _chunks(model, inputs: Captured, i: int, budget_bytes: float = 2.5e8) -> int:
    """Examples per attention_matrix call so that one [b, G, T, T] float64 copy stays near the budget
    (a channel-wise block has hundreds of groups)."""
    groups = _groups(model, inputs, i)
    per = 8 * inputs[i].shape[1] ** 2 * groups
    return max(1, min(inputs[i].shape[0], int(budget_bytes // per)))


def _layer_maps(model, inputs: Captured, i: int, chunk: int):
    """Yield (example slice, A [b, G, T, T]) of layer i, a few examples at a time."""
    for start in range(0, inputs[i].shape[0], chunk):
        sl = slice(start, start + chunk)
        yield sl, matrix_of(model, inputs, i, sl)


def _loss_and_accuracy(model, stream: torch.Tensor, inputs: Captured, start: int, labels: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy on the labelled positions of a forward resumed at layer ``start`` from the
    captured residual stream (the layers before it are unchanged by a mask on a later layer)."""
    x = stream[start]
    shared = {} if start == 0 else dict(next((s for s in inputs.shared if s is not None), None) or {})
    for layer in model.layers[start:]:
        x = layer(x, shared)
    h = model.norm(x)
    valid = labels != IGNORE
    logits = model.head(h[valid])
    loss = torch.nn.functional.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels[valid])
    return float(loss), float((logits.argmax(-1) == labels[valid]).double().mean())


def _shifted(ids: torch.Tensor) -> torch.Tensor:
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:]
    return labels


@torch.no_grad()
def probe_model(model, ids: torch.Tensor, labels: torch.Tensor | None, probes=PROBES, min_pos: int = 128, vocab: int | None = None) -> dict:
    """Run the chosen probes on a `LanguageModel` (eval mode) over ``ids`` [B, T] (``labels``: MQAR's
    query labels, or None for text: next tokens). Returns a JSON-ready dict."""
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise ProbeError(f"unknown probe(s) {unknown}; choose from {', '.join(PROBES)}")
    model.eval()
    b, n = ids.shape
    min_pos = min(min_pos, n // 2)
    vocab = vocab or model.config.vocab_size
    layers = [i for i, layer in enumerate(model.layers) if probeable(layer.mixer)]
    out: dict = {
        "batch": b,
        "seq_len": n,
        "min_pos": min_pos,
        "layers": {},
        "mixers": [type(layer.mixer).__name__ for layer in model.layers],
    }
    out["unprobed_layers"] = [i for i in range(len(model.layers)) if i not in layers]
    inputs, stream = capture(model, ids)
    sources = None
    if "retrieval" in probes:
        r_ids, r_labels = (ids, labels) if labels is not None else needle_batch(ids, vocab)
        r_inputs, r_stream = capture(model, r_ids) if labels is None else (inputs, stream)
        sources = copy_sources(r_ids, r_labels)
        copied = model.head(model.norm(r_stream[-1])).argmax(-1) == r_labels  # the model outputs the label
        out["retrieval_queries"] = int((sources >= 0).sum())
        out["retrieval_model_accuracy"] = float(copied[sources >= 0].double().mean()) if out["retrieval_queries"] else 0.0
    if "induction" in probes:
        i_ids, i_labels = induction_batch(b, n, vocab)
        i_inputs, i_sources = capture(model, i_ids)[0], copy_sources(i_ids, i_labels)
    for i in layers:
        mixer, row = model.layers[i].mixer, {}
        chunk = _chunks(model, inputs, i)
        sums: dict[str, torch.Tensor] = {}

        def add(key, value, weight):
            sums[key] = sums.get(key, 0) + value * weight

        if {"sink", "entropy"} & set(probes):
            for sl, a in _layer_maps(model, inputs, i, chunk):
                w, k = row_weights(a), a.shape[0]
                if "sink" in probes:
                    mass, rel = sink_mass(w, min_pos)
                    share, count = hidden_sinks(w, min_pos)
                    add("sink_mass", mass, k), add("sink_ratio", rel, k), add("hidden_sink_share", share, k), add("hidden_sinks", count, k)
                if "entropy" in probes:
                    h, hn = entropy(w)
                    add("entropy", h, k), add("entropy_normalised", hn, k)
        if "retrieval" in probes:
            hits, attended = 0, 0
            for sl, a in _layer_maps(model, r_inputs, i, chunk):
                score, count = retrieval_score(a, sources[sl], copied[sl])
                hits = hits + score * count
                attended = attended + retrieval_score(a, sources[sl])[0] * count
            row["retrieval"] = (hits / max(out["retrieval_queries"], 1)).tolist()
            row["retrieval_top1"] = (attended / max(out["retrieval_queries"], 1)).tolist()
        if "induction" in probes:
            total, count = 0, int((i_sources >= 0).sum())
            for sl, a in _layer_maps(model, i_inputs, i, chunk):
                total = total + induction_score(row_weights(a), i_sources[sl]) * int((i_sources[sl] >= 0).sum())
            row["induction"] = (total / max(count, 1)).tolist()
        for key, value in sums.items():
            row[key] = (value / b).tolist()
        if "massive" in probes and hasattr(mixer, "queries_keys"):
            q, k = mixer.queries_keys(inputs[i])
            row["massive_q"], row["massive_k"] = massive_activations(q.flatten(2)), massive_activations(k.flatten(2))
        out["layers"][i] = row
    if "massive" in probes:
        out["massive"] = {i: massive_activations(stream[i + 1]) for i in range(len(model.layers))}
    if "rank" in probes:
        out["effective_rank"] = {i: effective_rank(stream[i + 1].flatten(0, 1)) for i in range(len(model.layers))}
    if "ablation" in probes:
        ab_labels = labels if labels is not None else _shifted(ids)
        base_loss, base_acc = _loss_and_accuracy(model, stream, inputs, 0, ab_labels)
        out["ablation"] = {"loss": base_loss, "accuracy": base_acc, "layers": {}}
        for i in layers:
            groups = _groups(model, inputs, i)
            # a channel-wise block has hundreds of groups: ablate the whole mixer instead of each channel
            masks = [("all", torch.zeros(groups, dtype=torch.float64))] if groups > MAX_ABLATED_GROUPS else []
            for g in range(groups if not masks else 0):
                mask = torch.ones(groups, dtype=torch.float64)
                mask[g] = 0
                masks.append((g, mask))
            rows = []
            for g, mask in masks:
                with head_masks(model, {i: mask}):
                    loss, acc = _loss_and_accuracy(model, stream, inputs, i, ab_labels)
                rows.append({"head": g, "delta_loss": loss - base_loss, "delta_accuracy": acc - base_acc})
            out["ablation"]["layers"][i] = rows
    return out
