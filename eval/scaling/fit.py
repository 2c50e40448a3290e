"""Approach 3: the parametric fit of L(N, D) = E + A / N^alpha + B / D^beta to a sweep's final losses.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Sec. 3.3; refit by
Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102. The law is
fitted in log space, with A = e^a, B = e^b, E = e^e, by minimising the *sum* over points of

    Huber_delta( LSE(a - alpha log N, b - beta log D, e) - log L ),   delta = 1e-3,

from every start of the grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25} (4500 starts), keeping the best (here every start is screened by a
vectorised Levenberg-Marquardt and the best local minima are polished with scipy L-BFGS-B; see
`fit_parametric`; the objective and optimisers are in `eval.scaling.optimizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from eval.scaling.errors import GridBoundaryError, ScalingInputError
from eval.scaling.law import ScalingLaw
from eval.scaling.optimizer import HUBER_DELTA, THETA_NAMES, distinct, levenberg_marquardt, objective_and_gradient

GRID_EDGE_FRACTION = 0.01
MIN_POINTS = len(THETA_NAMES) + 1
ZERO_E_LOG = -100.0  # e = log E at or below this is E = 0 (`--fix-e 0`: pure power laws)
THETA_TO_LAW_NAME = dict(zip(THETA_NAMES, ("A", "B", "E", "alpha", "beta")))  # theta entry -> law's name


@dataclass(frozen=True)
class StartGrid:
    """Ranges (low, high, step) of the optimiser's starts; default: Chinchilla's 4500-point grid."""

    a: tuple[float, float, float] = (0.0, 25.0, 5.0)
    b: tuple[float, float, float] = (0.0, 25.0, 5.0)
    e: tuple[float, float, float] = (-1.0, 1.0, 0.5)
    alpha: tuple[float, float, float] = (0.0, 2.0, 0.5)
    beta: tuple[float, float, float] = (0.0, 2.0, 0.5)

    def axis(self, name: str) -> np.ndarray:
        low, high, step = getattr(self, name)
        return np.arange(low, high + step / 2, step)

    @property
    def fixed(self) -> np.ndarray:
        """bool [5] over theta: an axis with low == high holds that log-parameter fixed in the fit
        (e.g. `--fix-e`: the irreducible loss, when the sweep is too small to identify it)."""
        return np.array([getattr(self, name)[0] == getattr(self, name)[1] for name in THETA_NAMES])

    def starts(self) -> np.ndarray:
        """All grid points as theta = (a, b, e, alpha, beta), shape [S, 5]."""
        mesh = np.meshgrid(*(self.axis(name) for name in THETA_NAMES), indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)


def irreducible_loss(e):
    """E = exp(e), with e <= ZERO_E_LOG read as exactly 0 (scalar or array)."""
    return np.where(np.asarray(e) <= ZERO_E_LOG, 0.0, np.exp(e))


@dataclass(frozen=True)
class ParametricFit:
    """Approach-3 fit. theta = (a, b, e, alpha, beta); `law` is the fitted ScalingLaw; `minima` [K, 5]
    are the best distinct local optima found from the grid (best first), `minima_objective` [K] their
    objectives."""

    theta: np.ndarray
    objective: float
    n_points: int
    n_starts: int
    minima: np.ndarray
    minima_objective: np.ndarray
    fixed: tuple[str, ...] = ()  # names (of LAW_PARAMETER_NAMES) held at their grid value

    @property
    def law(self) -> ScalingLaw:
        """The fitted law: E = e^e (0 at or below ZERO_E_LOG), A = e^a, B = e^b, alpha, beta."""
        a, b, e, alpha, beta = self.theta
        return ScalingLaw(E=float(irreducible_loss(e)), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta))

    @property
    def params(self) -> dict[str, float]:
        """Former name of `law.as_dict()`: {"E", "A", "B", "alpha", "beta"} (kept for existing callers)."""
        return self.law.as_dict()

    def loss(self, n_params, n_tokens):
        """L(N, D) of the fitted law; see `ScalingLaw.loss`."""
        return self.law.loss(n_params, n_tokens)

    def compute_optimal(self, flops):
        """(N_opt, D_opt) at budget(s) C of the fitted law; see `eval.scaling.law.compute_optimal`."""
        return self.law.compute_optimal(flops)


def check_within_grid(theta: np.ndarray, grid: StartGrid) -> None:
    """Raise GridBoundaryError if a fitted log-parameter is outside [lo + m, hi - m], m = 1% of hi - lo.

    A best solution at or beyond the edge of the start grid means the grid did not bracket the
    optimum (or the data leave that parameter unconstrained, e.g. an exponent collapsing to 0).
    """
    for name, value in zip(THETA_NAMES, theta):
        low, high, step = getattr(grid, name)
        if low == high:  # held fixed
            continue
        margin = GRID_EDGE_FRACTION * (high - low)
        if low + margin <= value <= high - margin:
            continue
        if name in ("alpha", "beta") and value < low + margin:
            advice = (f"An exponent at or below {low + margin:.4g} means the data do not constrain that "
                      f"term: check the range of model sizes and token counts.")
        else:
            wider = (low - 2 * step, high) if value < low + margin else (low, high + 2 * step)
            advice = (f"Widen the grid, e.g. --grid {name}={wider[0]:g}:{wider[1]:g}:{step:g} "
                      f"(StartGrid({name}=({wider[0]:g}, {wider[1]:g}, {step:g}))), and check the data.")
        raise GridBoundaryError(
            f"the best Approach-3 fit has {name} = {value:.4g}, at or beyond the edge of its start "
            f"grid [{low:g}, {high:g}] (allowed: [{low + margin:.4g}, {high - margin:.4g}]), so the "
            f"grid probably did not bracket the optimum. {advice} Full fit (a, b, e, alpha, beta) = "
            f"{np.array2string(theta, precision=4)}."
        )


def log_data(n_params, n_tokens, loss):
    """(ln N, ln D, ln L), each of shape [1, n], from arrays of equal length n."""
    n_params, n_tokens, loss = (np.asarray(v, dtype=float).reshape(-1) for v in (n_params, n_tokens, loss))
    if not len(n_params) == len(n_tokens) == len(loss):
        raise ScalingInputError(
            f"N, D and L must have the same length, got {len(n_params)}, {len(n_tokens)}, {len(loss)}."
        )
    return np.log(n_params)[None], np.log(n_tokens)[None], np.log(loss)[None]


def fit_parametric(
    n_params,
    n_tokens,
    loss,
    *,
    delta: float = HUBER_DELTA,
    grid: StartGrid = StartGrid(),
    check_grid: bool = True,
    screen_iterations: int = 20,
    survivors: float = 0.1,
    n_polish: int = 5,
) -> ParametricFit:
    """Approach 3: fit L(N, D) = E + A/N^alpha + B/D^beta to arrays N, D, L of shape [n].

    Minimises sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) (A = e^a,
    B = e^b, E = e^e; Hoffmann et al. 2022, Sec. 3.3 and App. D.2; Besiroglu et al. 2024) from
    every start of `grid`. All starts run `screen_iterations` steps of a vectorised
    Levenberg-Marquardt on the reweighted Huber loss; the best `survivors` fraction continue to
    convergence; the `n_polish` best distinct local minima are polished with scipy L-BFGS-B
    (analytic gradient) and the best is kept (`survivors=1` runs every start to convergence).
    Raises GridBoundaryError (when `check_grid`) if that best fit lies at the edge of the grid,
    ScalingInputError if there are fewer than 6 points. A `grid` axis with low == high holds that
    parameter fixed (see `StartGrid.fixed`).
    """
    x, y, t = log_data(n_params, n_tokens, loss)
    n = x.shape[1]
    if n < MIN_POINTS or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        raise ScalingInputError(
            f"Approach 3 fits 5 parameters (E, A, B, alpha, beta) and needs at least {MIN_POINTS} "
            f"points spanning at least 2 model sizes and 2 token counts; got {n} points with "
            f"{len(np.unique(x))} sizes and {len(np.unique(y))} token counts."
        )
    starts, fixed = grid.starts(), grid.fixed
    theta, objective = levenberg_marquardt(starts, x, y, t, delta, max_iter=screen_iterations, fixed=fixed)
    kept = np.argsort(objective)[: max(n_polish, math.ceil(survivors * len(starts)))]
    theta, objective = levenberg_marquardt(theta[kept], x, y, t, delta, fixed=fixed)
    candidates = distinct(theta, objective, n_polish)
    for index in candidates:
        result = minimize(
            objective_and_gradient,
            theta[index],
            args=(x, y, t, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=[(value, value) if hold else (None, None) for value, hold in zip(theta[index], fixed)],
            options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-14},
        )
        if result.fun < objective[index]:
            theta[index], objective[index] = result.x, result.fun
    order = candidates[np.argsort(objective[candidates])]
    best = theta[order[0]]
    if check_grid:
        check_within_grid(best, grid)
    return ParametricFit(
        theta=best.copy(),
        objective=float(objective[order[0]]),
        n_points=n,
        n_starts=len(starts),
        minima=theta[order].copy(),
        minima_objective=objective[order].copy(),
        fixed=tuple(THETA_TO_LAW_NAME[name] for name, hold in zip(THETA_NAMES, fixed) if hold),
    )
