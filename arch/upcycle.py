"""BAM upcycling (Zhang et al. 2024, "BAM! Just Like That: Simple and Efficient Parameter Upcycling for
Mixture of Experts"): N dense checkpoints of the same shape become one mixture model.

    python -m arch.upcycle --parents A.ckpt B.ckpt --out bam.ckpt [--kv separate|shared] [--ffn-top-k 2] [--seed 0]

- each parent's SwiGLU feed-forward becomes one expert of an MoE (`arch.blocks.moe`), top-k routed;
- each parent's attention becomes one expert of an MoA (`arch.blocks.moa`) with all of that attention's
  parameters (``--kv separate``, BAM's best variant) or with the parents' K/V projections averaged
  into one shared K/V (``--kv shared``, BAM's inference-efficient variant); attention experts are
  soft-routed (every expert, softmax weights), as BAM's "soft variant of MoA";
- every other parameter (embedding, norms, head) is the parents' average; routers are freshly
  initialised (``--seed``).

Parents of one seed branched by continued training (BAM's recipe) are what make the average
meaningful. The model keeps the parents' layer form: with ``model.parallel`` (the `bam_dense` preset)
attention and feed-forward experts read the same normed input, as in the paper. The output is a
checkpoint in a run's layout (``state_dict`` with ``model.`` keys, ``hyper_parameters``), and the
command prints the `train.py` line whose composed model is exactly the upcycled one:

    python train.py model=bam init_from=bam.ckpt [model overrides]

With N identical parents the upcycled model computes the parent's function (expert weights sum to 1).
Everything here, the command line included, uses only `arch` (checkpoints through `arch.weights`);
the printed command writes out every model key, so it composes this model whatever the `bam`
preset's values are.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from arch.config import ConfigError
from arch.lm import LanguageModel

ATTENTION, SWIGLU = "arch.blocks.attention.Attention", "arch.blocks.mlp.SwiGLU"


def upcycled_config(parent: dict, n: int, kv: str = "separate", ffn_top_k: int = 2) -> dict:
    """The mixture's ``model`` config from a dense parent's: its one attention block becomes ``moa``
    (n experts, soft routing) and its SwiGLU ``mlp`` becomes ``moe`` (n experts, top ``ffn_top_k``)."""
    if n < 2:
        raise ConfigError(f"Upcycling needs at least 2 parents, got {n}.")
    if not 1 <= ffn_top_k <= n:
        raise ConfigError(f"--ffn-top-k must be between 1 and the number of parents ({n}), got {ffn_top_k}.")
    if kv not in ("separate", "shared"):
        raise ConfigError(f"--kv must be 'separate' or 'shared', got {kv!r}.")
    blocks = parent.get("blocks", {})
    mixers = set(parent.get("layers", [])) | set((parent.get("overrides") or {}).values())
    if len(mixers) != 1 or blocks.get(next(iter(mixers)), {}).get("_target_") != ATTENTION:
        raise ConfigError(f"Upcycling takes parents whose every layer is one attention block; these have layers {sorted(mixers)}.")
    if not isinstance(parent.get("mlp"), str) or blocks.get(parent["mlp"], {}).get("_target_") != SWIGLU:
        raise ConfigError(f"Upcycling takes parents whose feed-forward is one SwiGLU block; these have mlp={parent.get('mlp')!r}.")
    attn, mlp = _complete(blocks[next(iter(mixers))]), _complete(blocks[parent["mlp"]])
    # an MoA expert is plain multi-head attention: any other attention option (a window, biases, QK-norm,
    # gates, another score or position...) would be dropped or misread, so it is refused
    plain = _complete({"_target_": ATTENTION})
    kept = {"_target_", "n_heads", "n_kv_heads", "head_dim", "rope_base", "backend"}
    departures = sorted(k for k, v in attn.items() if k not in kept and v != plain.get(k) and not (k == "position" and v == "none"))
    if departures or mlp["bias"]:
        named = ", ".join(f"{k}={attn[k]!r}" for k in departures) + ("" if not mlp["bias"] else ", feed-forward bias=True")
        raise ConfigError(f"Upcycling takes plain attention and bias-free SwiGLU parents; these set {named.strip(', ')}.")
    d = parent["d_model"]
    n_heads = attn["n_heads"]
    moa = {
        "_target_": "arch.blocks.moa.MoA",
        "n_experts": n,
        "top_k": n,
        "expert_heads": n_heads,
        "head_dim": attn["head_dim"] or d // n_heads,  # Attention's own default head size
        "n_kv_heads": attn["n_kv_heads"] or n_heads,
        "kv": kv,
        "position": attn["position"],
        "rope_base": attn["rope_base"],
        "normalize": True,
    }
    hidden = mlp["hidden"] or _swiglu_hidden(d, mlp["multiple_of"])
    moe = {"_target_": "arch.blocks.moe.MoE", "n_experts": n, "top_k": ffn_top_k, "hidden": hidden}
    child = copy.deepcopy(parent)
    child.update(name="bam", layers=["moa"], overrides=None, mlp="moe", blocks={"moa": moa, "moe": moe})
    return child


def _swiglu_hidden(d_model: int, multiple_of: int) -> int:
    from arch.blocks.mlp import _round

    return _round(8 * d_model / 3, multiple_of)


def upcycle(parents: list[dict[str, torch.Tensor]], child: LanguageModel, kv: str = "separate") -> dict[str, torch.Tensor]:
    """The child's state dict from the parents' (`LanguageModel` state dicts of one shape): attention
    and feed-forward experts from each parent in order, routers from ``child`` (fresh), the rest
    averaged."""
    keys = list(parents[0])
    for i, p in enumerate(parents[1:], 1):
        if list(p) != keys or any(p[k].shape != parents[0][k].shape for k in keys):
            raise ConfigError(f"Parent {i + 1} does not have the shape of parent 1: upcycling needs N checkpoints of one model config.")
    out: dict[str, torch.Tensor] = {}
    for name, value in child.state_dict().items():
        stem = name.rsplit(".", 2)
        if ".router." in name:
            out[name] = value.clone()
        elif name.endswith("mixer.q_proj.weight"):
            out[name] = torch.cat([p[name] for p in parents], 0)
        elif name.endswith("mixer.out_proj.weight"):
            out[name] = torch.cat([p[name] for p in parents], 1)
        elif name.endswith("mixer.kv_proj.weight"):
            group = [p[name] for p in parents]
            out[name] = torch.cat(group, 0) if kv == "separate" else torch.stack(group).mean(0)
        elif name.endswith(("mlp.in_proj.weight", "mlp.out_proj.weight")):
            out[name] = torch.stack([p[name].T for p in parents])  # Linear [out, in] -> expert [in, out]
        elif name in parents[0]:
            out[name] = torch.stack([p[name].float() for p in parents]).mean(0).to(parents[0][name].dtype)
        else:
            raise ConfigError(f"Upcycling does not know where {name} (of {stem[0]}) comes from in the parents.")
        if out[name].shape != value.shape:
            raise ConfigError(f"Upcycled {name} has shape {tuple(out[name].shape)}, the mixture wants {tuple(value.shape)}.")
    return out


def _flatten(values: Any, prefix: str) -> dict[str, Any]:
    if isinstance(values, dict) and values:
        return {k: v for key, sub in values.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: values}


def _override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, list):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    if isinstance(value, float) and math.isfinite(value):
        return f"{key}={value!r}"
    return f"{key}={value}"


def _complete(spec: dict) -> dict:
    """A block spec with every argument of its class written out (the class defaults where unset)."""
    import inspect

    from arch.config import locate

    params = inspect.signature(locate(spec["_target_"], "upcycle").__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "d_model", "layer_idx") and p.default is not p.empty}
    return {**defaults, **spec}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os
    import sys
    from pathlib import Path

    from arch.weights import CheckpointError, read_model_weights

    parser = argparse.ArgumentParser(
        prog="python -m arch.upcycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parents", nargs="+", type=Path, required=True, help="N >= 2 dense checkpoints of one model config")
    parser.add_argument("--out", type=Path, required=True, help="the upcycled checkpoint to write")
    parser.add_argument("--kv", choices=["separate", "shared"], default="separate", help="attention experts' K/V (default: separate)")
    parser.add_argument("--ffn-top-k", type=int, default=2, help="feed-forward experts per token (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh routers")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    try:
        if args.out.exists():
            raise ConfigError(f"--out {args.out} exists; choose another path (nothing is overwritten).")
        loaded = [read_model_weights(p) for p in args.parents]
        configs = [h.get("model") for _, h in loaded]
        if any(c != configs[0] for c in configs[1:]) or not isinstance(configs[0], dict):
            raise ConfigError(
                "The parents were trained with different model configs (or a checkpoint has none); upcycle N runs of one preset."
            )
        vocab = loaded[0][1].get("vocab_size")
        child_cfg = upcycled_config(configs[0], len(loaded), args.kv, args.ffn_top_k)
        child_cfg["blocks"] = {name: _complete(spec) for name, spec in child_cfg["blocks"].items()}
        torch.manual_seed(args.seed)
        child = LanguageModel.from_config(child_cfg, vocab_size=vocab)
        state = upcycle([w for w, _ in loaded], child, args.kv)
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    # every key of the model written out (++: set whether or not the bam preset has it), so the composed
    # model is this one whatever the preset says
    overrides = [_override(f"++{k}", v) for k, v in _flatten(child_cfg, "model").items() if k not in ("model.vocab_size", "model.name")]
    hparams = {**loaded[0][1], "model": child_cfg}
    tmp = args.out.with_name(args.out.name + ".tmp")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "hyper_parameters": hparams}, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(loaded)} parents -> {child.num_params():,} parameters")
    print("continue training with:\n  python train.py " + " ".join(["model=bam", *overrides, f"init_from={args.out}"]))


if __name__ == "__main__":
    main()
