"""The report of an analysis: the JSON summary, the side-by-side Markdown table, and the --out folder.

The JSON keys ("exponent_params", "a", "b", "k_params", "params_opt", ...) and the table's row
labels are public output and keep their names: "params" there is N, "tokens" D, and "a", "b"
are Chinchilla's exponents of N_opt ~ C^a and D_opt ~ C^b (`n_opt_exponent`, `d_opt_exponent`).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.scaling.analysis import ArchReport
from eval.scaling.law import LAW_PARAMETER_NAMES
from eval.scaling.plots import plot_extrapolation, plot_frontier, plot_isoflop


def report_dict(reports: list[ArchReport]) -> dict:
    """JSON-ready summary: per architecture, fitted parameters, intervals, compute-optimal point,
    Approach-2 exponents and flags, and warnings."""
    fits = {}
    for report in reports:
        fit = report.parametric
        law = fit.law
        n_opt, d_opt = law.compute_optimal(report.budget)
        entry = {
            "n_points": fit.n_points,
            "parametric": {
                **law.as_dict(),
                "objective": fit.objective,
                "n_starts": fit.n_starts,
                "exponent_params": law.n_opt_exponent,
                "exponent_tokens": law.d_opt_exponent,
                "fixed": list(fit.fixed),
            },
            "compute_optimal": {
                "budget_flops": report.budget,
                "params": float(n_opt),
                "tokens": float(d_opt),
                "tokens_per_param": float(d_opt / n_opt),
                "loss": float(law.loss(n_opt, d_opt)),
            },
            "bootstrap": None,
            "isoflop": None,
            "warnings": report.warnings,
        }
        if report.bootstrap is not None:
            boot = report.bootstrap
            entry["bootstrap"] = {
                "n_resamples": len(boot.samples),
                "seed": boot.seed,
                "level": boot.level,
                "n_at_grid_edge": boot.n_at_grid_edge,
                "intervals": {name: list(bounds) for name, bounds in boot.intervals().items()},
            }
        if report.isoflop is not None:
            iso = report.isoflop
            entry["isoflop"] = {
                "a": iso.n_opt_exponent,
                "b": iso.d_opt_exponent,
                "a_plus_b": iso.n_opt_exponent + iso.d_opt_exponent,
                "a_plus_b_off_one": iso.sum_off_one,
                "biased": iso.biased,
                "k_params": iso.n_opt_factor,
                "k_tokens": iso.d_opt_factor,
                "budgets": [
                    {
                        "flops": budget.flops,
                        "n_points": len(budget.members),
                        "params_opt": budget.n_opt,
                        "tokens_opt": budget.d_opt,
                        "loss_opt": budget.loss_opt,
                        "outside_sampled_range": budget.outside_sampled_range,
                    }
                    for budget in iso.budgets
                ],
            }
        fits[report.arch] = entry
    return {
        "law": "L(N, D) = E + A / N^alpha + B / D^beta",
        "fits": fits,
        "warnings": [f"{r.arch}: {w}" for r in reports for w in r.warnings],
    }


def _number(value: float) -> str:
    return f"{value:.4g}"


def _table_column(entry: dict) -> list[tuple[str, str]]:
    """(row label, cell) pairs of one architecture's entry of `report_dict`."""
    fit, optimum = entry["parametric"], entry["compute_optimal"]
    boot, iso = entry["bootstrap"], entry["isoflop"]

    def with_interval(name: str, value: float) -> str:
        if name in fit["fixed"]:
            return f"{_number(value)} (fixed)"
        if boot is None:
            return _number(value)
        low, high = boot["intervals"][name]
        return f"{_number(value)} [{_number(low)}, {_number(high)}]"

    budget = optimum["budget_flops"]
    return [
        ("points", str(entry["n_points"])),
        *((name, with_interval(name, fit[name])) for name in LAW_PARAMETER_NAMES),
        ("Huber objective (sum)", f"{fit['objective']:.4e}"),
        ("a = beta/(alpha+beta), N_opt ~ C^a", _number(fit["exponent_params"])),
        ("b = alpha/(alpha+beta), D_opt ~ C^b", _number(fit["exponent_tokens"])),
        (f"N_opt at C={budget:.3g} [params]", with_interval("N_opt", optimum["params"])),
        (f"D_opt at C={budget:.3g} [tokens]", with_interval("D_opt", optimum["tokens"])),
        ("D_opt / N_opt [tokens/param]", _number(optimum["tokens_per_param"])),
        ("loss at optimum [nats/token]", _number(optimum["loss"])),
        *(
            (f"Approach 2: {key.replace('_plus_', ' + ')}", "n/a" if iso is None else _number(iso[key]))
            for key in ("a", "b", "a_plus_b")
        ),
    ]


def markdown_table(reports: list[ArchReport]) -> str:
    """Side-by-side Markdown table (one column per architecture), followed by the warnings."""
    summary = report_dict(reports)
    columns = [_table_column(entry) for entry in summary["fits"].values()]
    lines = [
        "| quantity | " + " | ".join(summary["fits"]) + " |",
        "| --- |" + " --- |" * len(columns),
        *(
            f"| {cells[0][0]} | " + " | ".join(cell for _, cell in cells) + " |"
            for cells in zip(*columns)
        ),
    ]
    levels = {r.bootstrap.level for r in reports if r.bootstrap is not None}
    if levels:
        lines.append(f"\nBrackets: {100 * levels.pop():g}% bootstrap percentile intervals.")
    if summary["warnings"]:
        lines.append("\nWarnings:")
        lines.extend(f"- {warning}" for warning in summary["warnings"])
    return "\n".join(lines) + "\n"


def write_outputs(reports: list[ArchReport], out_dir: str | Path) -> list[Path]:
    """Write table.md, fit.json, frontier.png, extrapolation.png and isoflop_<arch>.png to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / name for name in ("table.md", "fit.json", "frontier.png", "extrapolation.png")]
    written[0].write_text(markdown_table(reports))
    written[1].write_text(json.dumps(report_dict(reports), indent=2) + "\n")
    plot_frontier(reports, written[2])
    plot_extrapolation(reports, written[3])
    for report in reports:
        if report.isoflop is not None:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in report.arch)
            written.append(out_dir / f"isoflop_{safe}.png")
            plot_isoflop(report, written[-1])
    return written
