"""Bootstrap of the Approach-3 fit: percentile intervals of E, A, B, alpha, beta, N_opt and D_opt.

Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt", arXiv 2404.10102) resample the
points with replacement 4000 times and refit; here every resample is refitted at once, from the
full-data fit's distinct local minima, by the vectorised Levenberg-Marquardt of
`eval.scaling.optimizer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eval.scaling.errors import GridBoundaryError
from eval.scaling.fit import ParametricFit, StartGrid, check_within_grid, irreducible_loss, log_data
from eval.scaling.law import LAW_PARAMETER_NAMES, compute_optimal
from eval.scaling.optimizer import HUBER_DELTA, levenberg_marquardt


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap of an Approach-3 fit: `samples` [R, 5] of the law's (E, A, B, alpha, beta), and the
    compute-optimal `n_opt` (N_opt), `d_opt` (D_opt) [R] at `budget` FLOPs."""

    samples: np.ndarray
    budget: float
    n_opt: np.ndarray
    d_opt: np.ndarray
    level: float
    seed: int
    n_at_grid_edge: int

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        """Central percentile interval at `level` of bootstrap values [R]."""
        tail = 50.0 * (1.0 - self.level)
        low, high = np.percentile(values, [tail, 100.0 - tail])
        return float(low), float(high)

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Intervals of E, A, B, alpha, beta, N_opt and D_opt."""
        out = {name: self.interval(self.samples[:, i]) for i, name in enumerate(LAW_PARAMETER_NAMES)}
        out["N_opt"] = self.interval(self.n_opt)
        out["D_opt"] = self.interval(self.d_opt)
        return out


def bootstrap(
    n_params,
    n_tokens,
    loss,
    fit: ParametricFit,
    *,
    budget: float,
    n_resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    delta: float = HUBER_DELTA,
    grid: StartGrid = StartGrid(),
    chunk: int = 256,
) -> BootstrapResult:
    """Bootstrap the Approach-3 fit of arrays N, D, L [n] (Besiroglu et al. 2024 use 4000 resamples).

    Each resample draws n points with replacement (numpy generator seeded by `seed`) and is refitted
    from the full-data fit's distinct local minima (`fit.minima`), all resamples at once by the
    vectorised Levenberg-Marquardt; the grid search is not repeated per resample. Resampled fits
    at the edge of `grid` are kept and counted in `n_at_grid_edge`.
    """
    x, y, t = log_data(n_params, n_tokens, loss)
    n = x.shape[1]
    indices = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    starts = fit.minima
    k = len(starts)
    thetas = np.empty((n_resamples, 5))
    for begin in range(0, n_resamples, chunk):
        rows = indices[begin : begin + chunk]
        count = len(rows)
        x_rows, y_rows, t_rows = (np.repeat(v[0][rows], k, axis=0) for v in (x, y, t))
        theta, objective = levenberg_marquardt(
            np.tile(starts, (count, 1)), x_rows, y_rows, t_rows, delta, fixed=grid.fixed
        )
        best = np.argmin(objective.reshape(count, k), axis=1)
        thetas[begin : begin + count] = theta.reshape(count, k, 5)[np.arange(count), best]
    at_edge = 0
    for theta in thetas:
        try:
            check_within_grid(theta, grid)
        except GridBoundaryError:
            at_edge += 1
    a, b, e, alpha, beta = thetas.T
    samples = np.stack([irreducible_loss(e), np.exp(a), np.exp(b), alpha, beta], axis=1)  # LAW_PARAMETER_NAMES order
    n_opt, d_opt = compute_optimal(samples[:, 1], samples[:, 2], alpha, beta, budget)
    return BootstrapResult(samples, float(budget), n_opt, d_opt, level, seed, at_edge)
