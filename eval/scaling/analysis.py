"""One analysis per architecture: the Approach-3 fit, its bootstrap and the Approach-2 IsoFLOP fit."""

from __future__ import annotations

from dataclasses import dataclass

from eval.scaling.bootstrap import BootstrapResult, bootstrap
from eval.scaling.errors import GridBoundaryError, ScalingInputError
from eval.scaling.fit import ParametricFit, StartGrid, fit_parametric
from eval.scaling.inputs import Points
from eval.scaling.isoflop import IsoflopFit, fit_isoflop
from eval.scaling.optimizer import HUBER_DELTA


@dataclass(frozen=True)
class ArchReport:
    """Everything fitted for one architecture; `budget` is the FLOPs at which N_opt, D_opt are reported."""

    arch: str
    points: Points
    parametric: ParametricFit
    budget: float
    bootstrap: BootstrapResult | None
    isoflop: IsoflopFit | None
    warnings: list[str]


def analyse(
    points: Points,
    *,
    budget: float | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
    delta: float = HUBER_DELTA,
    grid: StartGrid = StartGrid(),
    tolerance_decades: float = 0.1,
) -> list[ArchReport]:
    """Fit Approaches 3 and 2 (and bootstrap Approach 3) separately for each architecture.

    `budget` (FLOPs) is where compute-optimal N and D are reported; default: the largest C in the
    data. Approach 2 is skipped with a warning when the runs do not form an IsoFLOP design.
    """
    budget = float(points.flops.max()) if budget is None else float(budget)
    reports = []
    for arch in points.arches():
        subset = points.subset(points.arch == arch)
        try:
            fit = fit_parametric(subset.n_params, subset.n_tokens, subset.loss, delta=delta, grid=grid)
        except ScalingInputError as err:
            raise ScalingInputError(f"architecture {arch!r}: {err}") from None
        except GridBoundaryError as err:
            raise GridBoundaryError(f"architecture {arch!r}: {err}") from None
        warnings = []
        boot = None
        if n_bootstrap > 0:
            boot = bootstrap(
                subset.n_params, subset.n_tokens, subset.loss, fit, budget=budget,
                n_resamples=n_bootstrap, seed=seed, level=level, delta=delta, grid=grid,
            )
            if boot.n_at_grid_edge:
                warnings.append(
                    f"{boot.n_at_grid_edge} of {n_bootstrap} bootstrap fits lie at the edge of the "
                    f"start grid (kept in the intervals)"
                )
        try:
            isoflop = fit_isoflop(
                subset.n_params, subset.flops, subset.loss,
                n_tokens=None if subset.tokens_from_flops else subset.n_tokens,
                tolerance_decades=tolerance_decades,
            )
            warnings.extend(isoflop.warnings)
        except ScalingInputError as err:
            isoflop = None
            warnings.append(f"Approach 2 skipped: {err}")
        reports.append(ArchReport(arch, subset, fit, budget, boot, isoflop, warnings))
    return reports
