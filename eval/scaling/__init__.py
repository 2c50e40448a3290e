"""Scaling-law fits for a sweep: Chinchilla Approaches 2 (IsoFLOP) and 3 (parametric), with bootstrap.

For runs of N parameters trained on D tokens with C training FLOPs and final loss L, one fit per
architecture gives the law L(N, D) = E + A / N^alpha + B / D^beta (Approach 3, Hoffmann et al.
2022; refit by Besiroglu et al. 2024), its bootstrap intervals, the compute-optimal N_opt and D_opt
at a budget, and the IsoFLOP parabolas and power laws N_opt ~ C^a, D_opt ~ C^b (Approach 2).

Modules, by role:

- `inputs`: `Points`, read from a CSV (`load_points`) or from runs' metrics.json (`load_runs`);
- `law`: the fitted law `ScalingLaw` and the compute-optimal allocation `compute_optimal`;
- `optimizer`: the Huber objective in log space and its vectorised Levenberg-Marquardt;
- `fit`: Approach 3, `fit_parametric` from the grid of starts `StartGrid`, giving `ParametricFit`;
- `bootstrap`: `bootstrap` intervals of the Approach-3 fit (`BootstrapResult`);
- `isoflop`: Approach 2, `fit_isoflop` (`IsoflopFit` of per-budget `BudgetFit` parabolas);
- `analysis`: `analyse`, all of the above per architecture (`ArchReport`);
- `report`: the JSON summary `report_dict`, the Markdown table, `write_outputs`;
- `plots`: the PNG plots; `cli`: `main`, the command line; `errors`: the two exceptions.

Names: `n_params` is N, `n_tokens` is D, `n_opt` and `d_opt` are N_opt and D_opt; `a`, `b`, `e` are
log A, log B, log E (entries of the optimiser's theta and axes of the start grid); the exponents of
N_opt ~ C^a and D_opt ~ C^b are `n_opt_exponent` and `d_opt_exponent`. The CLI flags, CSV columns,
JSON keys and table rows keep Chinchilla's names.

Usage: ``python -m eval.scaling --points fig4.csv --drop-highest 5 --out results/``
or ``python -m eval.scaling --runs sweeps/gla sweeps/transformer --budget 1e21 --json``.
"""

from eval.scaling.analysis import ArchReport, analyse
from eval.scaling.bootstrap import BootstrapResult, bootstrap
from eval.scaling.cli import main
from eval.scaling.errors import GridBoundaryError, ScalingInputError
from eval.scaling.fit import GRID_EDGE_FRACTION, MIN_POINTS, THETA_TO_LAW_NAME, ZERO_E_LOG, ParametricFit, StartGrid, fit_parametric
from eval.scaling.inputs import ALL_ARCHES, Points, load_points, load_runs
from eval.scaling.isoflop import BudgetFit, IsoflopFit, fit_isoflop, group_budgets
from eval.scaling.law import LAW_PARAMETER_NAMES, ScalingLaw, compute_optimal
from eval.scaling.optimizer import HUBER_DELTA, THETA_NAMES
from eval.scaling.plots import plot_extrapolation, plot_frontier, plot_isoflop
from eval.scaling.report import markdown_table, report_dict, write_outputs

__all__ = [
    "ALL_ARCHES",
    "GRID_EDGE_FRACTION",
    "HUBER_DELTA",
    "LAW_PARAMETER_NAMES",
    "MIN_POINTS",
    "THETA_NAMES",
    "THETA_TO_LAW_NAME",
    "ZERO_E_LOG",
    "ArchReport",
    "BootstrapResult",
    "BudgetFit",
    "GridBoundaryError",
    "IsoflopFit",
    "ParametricFit",
    "Points",
    "ScalingInputError",
    "ScalingLaw",
    "StartGrid",
    "analyse",
    "bootstrap",
    "compute_optimal",
    "fit_isoflop",
    "fit_parametric",
    "group_budgets",
    "load_points",
    "load_runs",
    "main",
    "markdown_table",
    "plot_extrapolation",
    "plot_frontier",
    "plot_isoflop",
    "report_dict",
    "write_outputs",
]
