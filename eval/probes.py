"""Probes: what a trained model's attention does, for every block that follows the probe contract
(`arch.probe`): the probabilities of softmax attention and the implicit attention of the linear and
recurrent blocks, the residual stream, and head ablations.

    python -m eval.probes run=runs/<name>                        # every probe, on the run's last checkpoint
    python -m eval.probes run=runs/<name>/checkpoints/last.ckpt probe=sink,entropy,massive
    python -m eval.probes run=runs/<name> init=true              # the same model at initialisation
    python -m eval.probes run=runs/<name> batch=16 seq_len=512 out=probes/<name>

Arguments (``key=value``): ``run`` (a run directory or a checkpoint, required), ``probe`` (a comma
list of the probes below, default all), ``batch`` (examples, default 16), ``seq_len`` (tokens per
example for text runs, default the run's; MQAR runs use their test examples), ``min_pos`` (the first
query position the sink measures average over, default 128, lowered to T/2 for shorter sequences),
``init`` (true: the run's model freshly initialised with its seed, weights not loaded), ``out`` (the
output folder, default <run>/probes), ``plots`` (true/false, default true).

Outputs in ``out``: ``probes.json`` (every number), ``probes.md`` (tables), ``attention_layer<i>.png``
(heat maps of example 0's attention per head) and ``metrics_vs_layer.png``.

For an implicit attention matrix, which is not a distribution (signed, rows not summing to 1), the
distribution measures (sink, hidden sinks, entropy, induction) use w[t, s] = |A[t, s]| / sum_s' |A[t, s']|,
as implicit-attention studies visualise it (Ali et al. 2024; Sieber et al. 2024, "Understanding the
differences in Foundation Models: Attention, State Space Models, and Recurrent Neural Networks").
For softmax attention w = A.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from arch.probe import IGNORE, PROBES, ProbeError, attention_maps, probe_model, row_weights

__all__ = ["IGNORE", "PROBES", "ProbeError", "main", "markdown", "plot", "probe_model"]


# ---------------------------------------------------------------- reports


def _summary(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) <= 8:
        return " ".join(f"{v:.3g}" for v in values)
    best = max(range(len(values)), key=lambda g: values[g])
    return f"mean {sum(values) / len(values):.3g}, max {values[best]:.3g} (group {best})"


def markdown(result: dict) -> str:
    """The tables of a probe result: per layer and head (or a summary for channel-wise blocks)."""
    lines = [
        f"# Probes: {result.get('source', '')}",
        "",
        f"{result['batch']} examples of {result['seq_len']} tokens; sink measures over queries t >= {result['min_pos']}.",
        "",
    ]
    keys = [
        k
        for k in ("sink_mass", "sink_ratio", "hidden_sink_share", "entropy_normalised", "retrieval", "retrieval_top1", "induction")
        if any(k in r for r in result["layers"].values())
    ]
    if keys:
        lines += ["| layer | mixer | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for i, row in result["layers"].items():
            lines.append(f"| {i} | {result['mixers'][int(i)]} | " + " | ".join(_summary(row.get(k, [])) for k in keys) + " |")
        lines.append("")
    if "massive" in result:
        lines += ["| layer | residual median | top |activation| (example, token, dim) | ratio to median |", "|---|---|---|---|"]
        for i, m in result["massive"].items():
            top = m["top"][0]
            lines.append(
                f"| {i} | {m['median']:.3g} | {top['value']:.3g} ({top['example']}, {top['token']}, {top['dim']}) | {top['ratio']:.1f} |"
            )
        lines.append("")
    if "effective_rank" in result:
        lines += ["| layer | effective rank of the residual stream |", "|---|---|"]
        lines += [f"| {i} | {r:.1f} |" for i, r in result["effective_rank"].items()] + [""]
    if "ablation" in result:
        ab = result["ablation"]
        lines += [
            f"Head ablation (loss {ab['loss']:.4f}, accuracy {ab['accuracy']:.4f} with every head):",
            "",
            "| layer | head | change in loss | change in accuracy |",
            "|---|---|---|---|",
        ]
        for i, rows in ab["layers"].items():
            for r in sorted(rows, key=lambda r: -r["delta_loss"])[:8]:
                lines.append(f"| {i} | {r['head']} | {r['delta_loss']:+.4f} | {r['delta_accuracy']:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def plot(model, ids: torch.Tensor, result: dict, out: Path) -> list[Path]:
    """Heat maps of example 0's attention per layer and head (|A| row-normalised; channel-wise blocks:
    the mean over channels), and the per-layer metrics against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    maps = attention_maps(model, ids[:1], [int(i) for i in result["layers"]])
    for i, a in maps.items():
        w = row_weights(a)[0]
        if w.shape[0] > 8:
            w, titles = w.mean(0, keepdim=True), [f"mean of {w.shape[0]} channels"]
        else:
            titles = [f"head {g}" for g in range(w.shape[0])]
        fig, axes = plt.subplots(1, len(titles), figsize=(3.2 * len(titles), 3.2), squeeze=False)
        for g, ax in enumerate(axes[0]):
            ax.imshow(w[g].float().clamp_min(1e-6).log10(), cmap="viridis", vmin=-4, vmax=0)
            ax.set(title=titles[g], xlabel="key position", ylabel="query position")
        fig.suptitle(f"layer {i} ({result['mixers'][i]}): log10 attention weight, example 0")
        fig.tight_layout()
        paths.append(out / f"attention_layer{i}.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    series = {}
    for key in ("sink_ratio", "entropy_normalised", "retrieval", "induction"):
        pts = [(int(i), max(r[key])) for i, r in result["layers"].items() if key in r]
        if pts:
            series[f"{key} (max over heads)"] = pts
    if "effective_rank" in result:
        series["effective rank"] = [(int(i), r) for i, r in result["effective_rank"].items()]
    if "massive" in result:
        series["max residual |activation| / median"] = [(int(i), m["top"][0]["ratio"]) for i, m in result["massive"].items()]
    if series:
        fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.2), squeeze=False)
        for ax, (name, pts) in zip(axes[0], series.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            ax.set(xlabel="layer", ylabel=name, title=name)
        fig.tight_layout()
        paths.append(out / "metrics_vs_layer.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------- loading a run


def load_run(run: Path, init: bool = False):
    """(model, resolved run config or None, checkpoint path) from a run directory or a checkpoint."""
    import yaml

    from arch.lm import LanguageModel
    from arch.weights import CheckpointError, check_weights_fit, read_model_weights

    run = Path(run)
    if not run.exists():
        raise ProbeError(f"run={run} does not exist; give a run directory (with checkpoints/last.ckpt) or a checkpoint file.")
    ckpt = run if run.is_file() else run / "checkpoints" / "last.ckpt"
    run_dir = run.parent.parent if run.is_file() and run.parent.name == "checkpoints" else (run if run.is_dir() else None)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if run_dir and (run_dir / "config.yaml").exists() else None
    try:
        weights, hparams = read_model_weights(ckpt)
    except CheckpointError as err:
        raise ProbeError(str(err).replace("init_from=", "run=")) from err
    model_cfg = hparams.get("model") or (config or {}).get("model")
    if not isinstance(model_cfg, dict):
        raise ProbeError(f"{ckpt} records no model config; probe a checkpoint written by train.py.")
    vocab = hparams.get("vocab_size") or model_cfg.get("vocab_size") or (config or {}).get("data", {}).get("vocab_size")
    torch.manual_seed(int((config or {}).get("seed", 0)))
    model = LanguageModel.from_config(model_cfg, vocab_size=vocab)
    if not init:
        check_weights_fit(weights, model, ckpt)
        model.load_state_dict(weights)
    return model.eval(), config, ckpt


def probe_batch(config: dict | None, vocab: int, batch: int, seq_len: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's own evaluation data: MQAR test examples (with their labels), or validation text."""
    from hydra.utils import instantiate

    from training.callbacks import probe_examples

    if config is None or "data" not in config:
        n = seq_len or 512
        return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(0)), None
    data = dict(config["data"])
    if seq_len is not None and "seq_len" in data:
        data["seq_len"] = seq_len  # text: windows of the asked length
    dm = instantiate(data)
    dm.setup("validate")
    ids, labels = probe_examples(dm.val_dataloader(), batch)
    if seq_len is not None and labels is None:
        ids = ids[:, :seq_len]
    return ids, labels


def _parse(argv: list[str]) -> dict:
    known = {
        "run": None,
        "probe": ",".join(PROBES),
        "batch": "16",
        "seq_len": None,
        "min_pos": "128",
        "init": "false",
        "out": None,
        "plots": "true",
    }
    args = dict(known)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise ProbeError(f"unknown argument {arg!r}; arguments are key=value with key in {', '.join(known)} (see --help).")
        args[key] = value
    if not args["run"]:
        raise ProbeError("run=<run directory or checkpoint> is required (see --help).")
    for key in ("batch", "seq_len", "min_pos"):
        if args[key] is not None and not (args[key].isdigit() and int(args[key]) > 0):
            raise ProbeError(f"{key}={args[key]!r} must be a positive integer.")
    for key in ("init", "plots"):
        if args[key] not in ("true", "false"):
            raise ProbeError(f"{key}={args[key]!r} must be true or false.")
    return args


def main(argv: list[str] | None = None) -> None:
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        probes = [p for p in args["probe"].split(",") if p]
        bad = sorted(set(probes) - set(PROBES))
        if bad:
            raise ProbeError(f"unknown probe(s) {bad}; choose from {', '.join(PROBES)}")
        model, config, ckpt = load_run(Path(args["run"]), init=args["init"] == "true")
        ids, labels = probe_batch(config, model.config.vocab_size, int(args["batch"]), int(args["seq_len"]) if args["seq_len"] else None)
        start = time.perf_counter()
        result = probe_model(model, ids, labels, probes, min_pos=int(args["min_pos"]))
        result["seconds"] = time.perf_counter() - start
        result["source"] = f"{ckpt}{' (at initialisation)' if args['init'] == 'true' else ''}"
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = Path(args["out"]) if args["out"] else run_dir / ("probes_init" if args["init"] == "true" else "probes")
        out.mkdir(parents=True, exist_ok=True)
        (out / "probes.json").write_text(json.dumps(result, indent=1, default=float))
        (out / "probes.md").write_text(markdown(result))
        if args["plots"] == "true":
            plot(model, ids, result, out)
    except ProbeError as err:
        print(f"eval.probes: {err}", file=sys.stderr)
        sys.exit(2)
    print(markdown(result))
    print(f"probe pass: {result['seconds']:.1f} s; written to {out}")


if __name__ == "__main__":
    main()
