"""Command line of `python -m eval.scaling`: read points or runs, fit per architecture, print or write the report.

Usage: ``python -m eval.scaling --points fig4.csv --drop-highest 5 --out results/``
or ``python -m eval.scaling --runs sweeps/gla sweeps/transformer --budget 1e21 --json``.
Bad input or a fit at the edge of the start grid prints ``error: ...`` on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

from eval.scaling.analysis import analyse
from eval.scaling.errors import GridBoundaryError, ScalingInputError
from eval.scaling.fit import ZERO_E_LOG, StartGrid
from eval.scaling.inputs import load_points, load_runs
from eval.scaling.optimizer import HUBER_DELTA, THETA_NAMES
from eval.scaling.report import markdown_table, report_dict, write_outputs


def _grid_override(grid: StartGrid, spec: str) -> StartGrid:
    """`grid` with one axis replaced as `--grid NAME=LOW:HIGH:STEP` says."""
    name, _, ranges = spec.partition("=")
    try:
        low, high, step = (float(v) for v in ranges.split(":"))
    except ValueError:
        raise ScalingInputError(
            f"--grid {spec!r}: expected NAME=LOW:HIGH:STEP, e.g. e=-1:2:0.5."
        ) from None
    if name not in THETA_NAMES or step <= 0 or high < low:
        raise ScalingInputError(
            f"--grid {spec!r}: NAME must be one of {', '.join(THETA_NAMES)}, with LOW <= HIGH "
            f"and STEP > 0."
        )
    return replace(grid, **{name: (low, high, step)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.scaling",
        description="Fit Chinchilla scaling laws (Approach 3 parametric with bootstrap intervals, "
        "Approach 2 IsoFLOP) to a sweep's final losses, one fit per architecture.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--points", metavar="FILE.csv",
                        help="CSV with params, tokens and/or flops, loss[, arch]")
    source.add_argument("--runs", nargs="+", metavar="DIR",
                        help="run directories or sweep roots holding metrics.json (searched recursively)")
    parser.add_argument("--params-key", choices=("total", "non_embedding"), default="total",
                        help="which parameter count of metrics.json is N (default: total)")
    parser.add_argument("--drop-highest", type=int, default=0, metavar="K",
                        help="drop the K highest-loss points of each architecture (Besiroglu et al.: 5)")
    parser.add_argument("--budget", type=float, metavar="C",
                        help="FLOPs at which to report N_opt, D_opt (default: largest C in the data)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="R",
                        help="bootstrap resamples (default 200; Besiroglu et al. use 4000; 0 disables)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--delta", type=float, default=HUBER_DELTA,
                        help="Huber delta on log-loss residuals (default 1e-3)")
    parser.add_argument("--budget-tolerance", type=float, default=0.1, metavar="DECADES",
                        help="runs whose log10 FLOPs lie within this of a budget's first run share "
                        "that budget (default 0.1; 0: exact match)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=LO:HI:STEP",
                        help="override one axis of the start grid (a, b, e, alpha, beta), "
                        "e.g. e=-1:2:0.5; repeatable")
    parser.add_argument("--json", action="store_true",
                        help="print the fit as JSON (and nothing else) on stdout")
    parser.add_argument("--fix-e", type=float, metavar="LOSS",
                        help="hold the irreducible loss E at LOSS (nats; 0: pure power laws) when the sweep "
                             "is too small to identify it (a free fit then runs E to 0, off the start grid)")
    parser.add_argument("--out", metavar="DIR", help="write table.md, fit.json and PNG plots here")
    args = parser.parse_args(argv)
    try:
        grid = StartGrid()
        for spec in args.grid:
            grid = _grid_override(grid, spec)
        if args.fix_e is not None:
            if not args.fix_e >= 0:
                raise ScalingInputError(f"--fix-e {args.fix_e}: the irreducible loss must be >= 0 nats.")
            e = math.log(args.fix_e) if args.fix_e > 0 else ZERO_E_LOG
            grid = replace(grid, e=(e, e, 1.0))
        points = load_points(args.points) if args.points else load_runs(args.runs, args.params_key)
        points = points.without_highest_losses(args.drop_highest)
        reports = analyse(
            points, budget=args.budget, n_bootstrap=args.bootstrap, seed=args.seed, level=args.level,
            delta=args.delta, grid=grid, tolerance_decades=args.budget_tolerance,
        )
    except (ScalingInputError, GridBoundaryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        write_outputs(reports, args.out)
    if args.json:
        summary = report_dict(reports)
        for warning in summary["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        print(json.dumps(summary, indent=2))
    else:
        print(markdown_table(reports), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
