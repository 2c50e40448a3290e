"""MQAR recall grids: run a grid of training runs through Hydra multirun, collect them, and report.

    python -m eval.mqar experiment=zoology_fig2_cpu            # run (skips finished cells) + report
    python -m eval.mqar experiment=zoology_fig2_cpu hydra/launcher=slurm   # the same grid on SLURM
    python -m eval.mqar --collect-only --root runs/mqar/zoology_fig2_cpu   # report only

The grid (presets x d_model x (L, K) slices x learning rates) is the experiment's
``hydra.sweeper.params``; every cell trains in its own directory named by its overrides, so a
re-run finds the finished cells (``metrics.json``) and skips them. As in the papers, each cell
(model, d_model, L, K) keeps its best learning rate (or training recipe: the table names the run's
learning rate and sequences per batch). Outputs: ``mqar.csv``, ``mqar.md``,
``accuracy_vs_d_model.png`` (Zoology Fig. 2 style) and ``accuracy_vs_state.png`` (Based Fig. 2
style, x = numbers a decode holds per sequence at that L).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def grid_root(overrides: list[str]) -> Path:
    """The sweep directory of an experiment (``hydra.sweep.dir``), composed the way train.py would."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from training.compose import compose

    parsed = OverridesParser.create().parse_overrides(overrides)
    single = [o.input_line for o in parsed if not o.is_sweep_override() and not o.input_line.startswith("hydra/")]
    cfg = compose(single, return_hydra_config=True)
    return Path(OmegaConf.select(cfg, "hydra.sweep.dir"))


def run_grid(overrides: list[str]) -> int:
    """Launch ``train.py -m`` with the experiment's sweep; finished cells return at once."""
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *overrides]
    print("Running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _state_size(config: dict, seq_len: int) -> int:
    from arch.lm import LanguageModel

    model = LanguageModel.from_config(config["model"], vocab_size=config["model"].get("vocab_size") or config["data"]["vocab_size"])
    return model.state_size(seq_len)


def _batch_size(config: dict) -> int:
    """Training sequences per batch, as the run's data module resolved them (``data.batch_tokens``
    turns into batch_tokens // longest training L). Constructing the module generates no data."""
    from hydra.utils import instantiate

    return int(instantiate(config["data"]).batch_size)


def collect(root: Path) -> list[dict]:
    """One row per (finished run, test slice): model, d_model, lr, batch, seq_len, kv_pairs, accuracy,
    state_size."""
    rows = []
    for metrics_path in sorted(root.rglob("metrics.json")):
        run_dir = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        batch = _batch_size(config)
        for key, acc in metrics.items():
            if not key.startswith("mqar/acc_L"):
                continue
            seq_len, kv = (int(part[1:]) for part in key[len("mqar/acc_") :].split("_"))
            rows.append(
                {
                    "model": config["model"]["name"],
                    "d_model": config["model"]["d_model"],
                    "lr": config["optim"]["lr"],
                    "batch": batch,
                    "seq_len": seq_len,
                    "kv_pairs": kv,
                    "accuracy": acc,
                    "state_size": _state_size(config, seq_len),
                    "run": str(run_dir),
                }
            )
    return rows


def best_per_cell(rows: list[dict]) -> list[dict]:
    """Keep, for each (model, d_model, seq_len, kv_pairs), the run (learning rate, batch) with the best accuracy."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["model"], row["d_model"], row["seq_len"], row["kv_pairs"])
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    return [best[k] for k in sorted(best)]


def markdown(best: list[dict]) -> str:
    """Accuracy table: one row per (model, d_model), one column per (L, K) slice."""
    slices = sorted({(r["seq_len"], r["kv_pairs"]) for r in best})
    cells = {(r["model"], r["d_model"], r["seq_len"], r["kv_pairs"]): r for r in best}
    header = "| model | d_model | " + " | ".join(f"L={length} K={k}" for length, k in slices) + " |"
    lines = [header, "|" + "---|" * (2 + len(slices))]
    for model, d in sorted({(r["model"], r["d_model"]) for r in best}):
        vals = []
        for length, k in slices:
            r = cells.get((model, d, length, k))
            vals.append("" if r is None else f"{r['accuracy']:.3f} (lr {r['lr']:.2g}, batch {r['batch']})")
        lines.append(f"| {model} | {d} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot(best: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["seq_len"] for r in best})
    models = sorted({r["model"] for r in best})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.4), squeeze=False, sharey=True)
    for ax, seq_len in zip(axes[0], lengths):
        for model in models:
            pts = sorted((r["d_model"], r["accuracy"]) for r in best if r["model"] == model and r["seq_len"] == seq_len)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=model)
        kv = sorted({r["kv_pairs"] for r in best if r["seq_len"] == seq_len})
        ax.set_title(f"L = {seq_len}, K = {', '.join(map(str, kv))}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model dimension d_model")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("MQAR accuracy (fraction of queries)")
    axes[0][-1].legend(title="model", fontsize=8)
    fig.suptitle("MQAR accuracy vs model dimension (best run per cell)")
    fig.tight_layout()
    by_d = out / "accuracy_vs_d_model.png"
    fig.savefig(by_d, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    longest = max(lengths)
    for family in sorted({family_of(m) for m in models}):  # one line per family through its sizes
        pts = sorted((r["state_size"], r["accuracy"]) for r in best if family_of(r["model"]) == family and r["seq_len"] == longest)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=family)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"decode state at L = {longest} (numbers per sequence)")
    ax.set_ylabel("MQAR accuracy (fraction of queries)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Recall vs state size")
    ax.legend(title="model", fontsize=8)
    fig.tight_layout()
    by_state = out / "accuracy_vs_state.png"
    fig.savefig(by_state, dpi=120)
    plt.close(fig)
    return [by_d, by_state]


def family_of(model: str) -> str:
    """The family of a model name ``family/variant`` (e.g. ``mamba/d_state16``): the recall-vs-state
    plot draws one line per family through its variants; a name without ``/`` is its own family."""
    return model.split("/", 1)[0]


def report(root: Path, out: Path) -> str:
    rows = collect(root)
    if not rows:
        raise SystemExit(f"No finished MQAR runs (metrics.json with mqar/acc_* values) under {root}; run the grid first.")
    best = best_per_cell(rows)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "mqar.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["model"], r["d_model"], r["seq_len"], r["lr"])))
    table = markdown(best)
    (out / "mqar.md").write_text(table)
    plot(best, out)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.mqar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides naming the grid, e.g. experiment=zoology_fig2_cpu")
    parser.add_argument("--root", type=Path, help="the grid's run directory (default: the experiment's hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, help="where tables and plots go (default: ROOT/report)")
    parser.add_argument("--collect-only", action="store_true", help="do not train; report the runs already under ROOT")
    args = parser.parse_args(argv)
    if not args.collect_only:
        if not args.overrides:
            parser.error("name the grid (e.g. experiment=zoology_fig2_cpu) or pass --collect-only --root DIR")
        code = run_grid(args.overrides)
        if code != 0:
            print(f"Some grid cells failed (exit {code}); reporting the finished ones.", file=sys.stderr)
    root = args.root or grid_root(args.overrides)
    print(report(root, args.out or root / "report"))


if __name__ == "__main__":
    main()
