"""Scaling-law fits for a sweep: Chinchilla Approaches 2 (IsoFLOP) and 3 (parametric), with bootstrap.

Approach 3 (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Sec. 3.3;
refit by Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102):

    L(N, D) = E + A / N^alpha + B / D^beta

fitted in log space, with A = e^a, B = e^b, E = e^e, by minimising the *sum* over points of

    Huber_delta( LSE(a - alpha log N, b - beta log D, e) - log L ),   delta = 1e-3,

from every start of the grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25} (4500 starts), keeping the best (here every start is screened by a
vectorised Levenberg-Marquardt and the best local minima are polished with scipy L-BFGS-B; see
`fit_parametric`). The compute-optimal allocation under
C = 6 N D is

    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)).

Approach 2: per compute budget, a parabola of loss against log N gives N_opt(C); power laws
N_opt ~ C^a and D_opt ~ C^b are then fitted across budgets (Chinchilla: a = 0.49, b = 0.51).

Usage: ``python -m eval.scaling --points fig4.csv --drop-highest 5 --out results/``
or ``python -m eval.scaling --runs sweeps/gla sweeps/transformer --budget 1e21 --json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")
LOG_PARAMETER_NAMES = ("a", "b", "e", "alpha", "beta")  # order of the optimiser's vector theta
HUBER_DELTA = 1e-3
GRID_EDGE_FRACTION = 0.01
MIN_POINTS = len(LOG_PARAMETER_NAMES) + 1
ZERO_E_LOG = -100.0  # e = log E at or below this is E = 0 (`--fix-e 0`: pure power laws)
NATURAL_NAMES = dict(zip(LOG_PARAMETER_NAMES, ("A", "B", "E", "alpha", "beta")))  # theta entry -> law's name
ALL_ARCHES = "all"


class ScalingInputError(ValueError):
    """The points given to a fit cannot be read or cannot support the fit."""


class GridBoundaryError(RuntimeError):
    """The best Approach-3 fit lies at or beyond the edge of the grid of starts."""


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Points:
    """Final losses of a sweep: one entry per run, arrays of shape [n].

    `tokens_from_flops` is True when D was derived as C / (6 N) (the input had no token count);
    `arch` names the architecture of each run ("all" when the input does not say).
    """

    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    arch: np.ndarray
    tokens_from_flops: bool
    source: str

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, mask: np.ndarray) -> Points:
        """The points where the boolean or index `mask` selects."""
        return replace(
            self,
            params=self.params[mask],
            tokens=self.tokens[mask],
            flops=self.flops[mask],
            loss=self.loss[mask],
            arch=self.arch[mask],
        )

    def arches(self) -> list[str]:
        """Architecture names in order of first appearance."""
        return list(dict.fromkeys(self.arch.tolist()))

    def without_highest_losses(self, k: int) -> Points:
        """Drop the k highest-loss points of each architecture (Besiroglu et al. drop 5 outliers)."""
        if k == 0:
            return self
        keep = np.ones(len(self), dtype=bool)
        for name in self.arches():
            members = np.flatnonzero(self.arch == name)
            keep[members[np.argsort(self.loss[members])[-k:]]] = False
        return self.subset(keep)


def _validated(values: dict[str, list[float]], where: list[str], source: str) -> None:
    for column, column_values in values.items():
        for value, origin in zip(column_values, where):
            if not (math.isfinite(value) and value > 0):
                raise ScalingInputError(
                    f"{origin}: {column} = {value!r} is not a positive finite number. Every run "
                    f"needs a positive parameter count, token count, FLOP count and loss; remove "
                    f"diverged or unfinished runs from {source} before fitting."
                )


def _build_points(
    params: list[float],
    tokens: list[float] | None,
    flops: list[float] | None,
    loss: list[float],
    arch: list[str],
    where: list[str],
    source: str,
) -> Points:
    columns = {"params": params, "loss": loss}
    if tokens is not None:
        columns["tokens"] = tokens
    if flops is not None:
        columns["flops"] = flops
    _validated(columns, where, source)
    n = np.asarray(params, dtype=float)
    if tokens is None:
        c = np.asarray(flops, dtype=float)
        d = c / (6.0 * n)
    else:
        d = np.asarray(tokens, dtype=float)
        c = 6.0 * n * d if flops is None else np.asarray(flops, dtype=float)
    loss_array, arch_array = np.asarray(loss, dtype=float), np.asarray(arch, dtype=str)
    return Points(n, d, c, loss_array, arch_array, tokens is None, source)


def load_points(path: str | Path) -> Points:
    """Read a CSV of final losses.

    Columns: `params` (N), `tokens` (D) and/or `flops` (C), `loss`, optional `arch`. With only
    `flops`, D = C / (6 N) (Chinchilla's convention); with only `tokens`, C = 6 N D.
    """
    path = Path(path)
    if not path.is_file():
        raise ScalingInputError(
            f"points file {str(path)!r} does not exist or is not a file. Pass a CSV with one row per "
            f"run and columns params, tokens or flops, loss (and optionally arch), e.g. "
            f"a file of (params, flops, loss) rows such as the Chinchilla Fig. 4 points."
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    missing = [name for name in ("params", "loss") if name not in header]
    if "tokens" not in header and "flops" not in header:
        missing.append("tokens or flops")
    if missing:
        raise ScalingInputError(
            f"points file {str(path)!r} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(header) or 'no header'}. Expected params (parameters N), tokens (training "
            f"tokens D) and/or flops (training FLOPs C; then D = C / (6 N)), loss, and optionally arch."
        )
    where = [f"{path}:{i + 2}" for i in range(len(rows))]

    def column(name: str) -> list[float] | None:
        if name not in header:
            return None
        values = []
        for row, origin in zip(rows, where):
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                raise ScalingInputError(
                    f"{origin}: column {name} holds {row[name]!r}, which is not a number. Every "
                    f"row needs numeric params, tokens/flops and loss."
                ) from None
        return values

    arch = [row["arch"].strip() for row in rows] if "arch" in header else [ALL_ARCHES] * len(rows)
    return _build_points(
        column("params"), column("tokens"), column("flops"), column("loss"), arch, where, str(path)
    )


def load_runs(directories: list[str | Path], params_key: str = "total") -> Points:
    """Read `metrics.json` from run directories or sweep roots (searched recursively).

    Each file holds at least {"model", "params_total", "params_non_embedding", "tokens", "flops",
    "val/loss"}; `params_key` ("total" or "non_embedding") picks N; `model` becomes `arch`.
    """
    files: list[Path] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.exists():
            raise ScalingInputError(
                f"run directory {str(directory)!r} does not exist. Pass run directories or sweep "
                f"roots that contain metrics.json files (searched recursively)."
            )
        found = [directory] if directory.is_file() else sorted(directory.rglob("metrics.json"))
        files.extend(found)
    files = list(dict.fromkeys(path.resolve() for path in files))
    if not files:
        raise ScalingInputError(
            f"no metrics.json found under {', '.join(map(str, directories))}. A finished run writes "
            f"metrics.json with model, params_total, params_non_embedding, tokens, flops and val/loss (as train.py writes them)."
        )
    n_key = f"params_{params_key}"
    required = ("model", n_key, "tokens", "flops", "val/loss")
    records = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScalingInputError(f"cannot read {path} as JSON ({err}).") from None
        missing = [key for key in required if key not in record]
        if missing:
            raise ScalingInputError(
                f"{path} lacks key(s) {', '.join(missing)}; it has {', '.join(record) or 'none'}. "
                f"The scaling fit needs {', '.join(required)} (--params-key chooses params_total or "
                f"params_non_embedding)."
            )
        records.append(record)
    where = [str(path) for path in files]
    return _build_points(
        [float(r[n_key]) for r in records],
        [float(r["tokens"]) for r in records],
        [float(r["flops"]) for r in records],
        [float(r["val/loss"]) for r in records],
        [str(r["model"]) for r in records],
        where,
        ", ".join(map(str, directories)),
    )


# ----------------------------------------------------------------------------- Approach 3


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
        return np.array([getattr(self, name)[0] == getattr(self, name)[1] for name in LOG_PARAMETER_NAMES])

    def starts(self) -> np.ndarray:
        """All grid points as theta = (a, b, e, alpha, beta), shape [S, 5]."""
        mesh = np.meshgrid(*(self.axis(name) for name in LOG_PARAMETER_NAMES), indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)


def _residuals_and_jacobian(theta: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray):
    """r = LSE(a - alpha x, b - beta y, e) - t [S, n] and dr/dtheta [S, 5, n].

    theta [S, 5]; data x = ln N, y = ln D, t = ln L of shape [S, n] or [1, n] (shared).
    """
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))
    z_n = a - alpha * x
    z_d = b - beta * y
    top = np.maximum(np.maximum(z_n, z_d), e)
    p_n, p_d, p_e = np.exp(z_n - top), np.exp(z_d - top), np.exp(e - top)
    total = p_n + p_d + p_e
    residual = top + np.log(total) - t
    jacobian = np.empty((len(theta), 5, residual.shape[1]))
    np.divide(p_n, total, out=jacobian[:, 0])
    np.divide(p_d, total, out=jacobian[:, 1])
    np.divide(p_e, total, out=jacobian[:, 2])
    np.multiply(jacobian[:, 0], -x, out=jacobian[:, 3])
    np.multiply(jacobian[:, 1], -y, out=jacobian[:, 4])
    return residual, jacobian


def _huber_sum(residual: np.ndarray, delta: float) -> np.ndarray:
    size = np.abs(residual)
    return np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta)).sum(axis=-1)


def _levenberg_marquardt(
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    delta: float,
    *,
    rel_tol: float = 1e-10,
    max_iter: int = 400,
    fixed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the summed Huber loss from every row of theta [S, 5] at once; data [S or 1, n].

    Each start takes damped Gauss-Newton steps on the iteratively reweighted form of the Huber
    loss (weight psi(r)/r: 1 inside delta, delta/|r| outside), which majorises it, so accepted
    steps decrease the true objective. A start stops once an accepted step gains less than
    `rel_tol` of its objective, or no damping finds a decrease. `fixed` (bool [5]) marks
    parameters that keep their starting values.
    """
    theta = theta.copy()
    shared = len(x) == 1
    residual, jacobian = _residuals_and_jacobian(theta, x, y, t)
    objective = _huber_sum(residual, delta)
    damping = np.full(len(theta), 1e-2)
    active = np.arange(len(theta))
    for _ in range(max_iter):
        if active.size == 0:
            break
        r, jac = residual[active], jacobian[active]
        psi = np.clip(r, -delta, delta)
        weight = np.divide(psi, r, out=np.ones_like(r), where=r != 0)
        normal = np.matmul(jac * weight[:, None, :], jac.transpose(0, 2, 1))
        gradient = np.matmul(jac, psi[..., None])[..., 0]
        if fixed is not None and fixed.any():  # no step along a fixed parameter
            normal[:, fixed, :], normal[:, :, fixed], gradient[:, fixed] = 0.0, 0.0, 0.0
            normal[:, fixed, fixed] = 1.0
        diagonal = np.diagonal(normal, axis1=1, axis2=2)
        shift = damping[active, None] * (diagonal + 1e-9 * diagonal.max(axis=1, keepdims=True))
        step = np.linalg.solve(normal + shift[..., None] * np.eye(5), -gradient[..., None])[..., 0]
        trial = theta[active] + step
        data = (x, y, t) if shared else (x[active], y[active], t[active])
        trial_residual, trial_jacobian = _residuals_and_jacobian(trial, *data)
        trial_objective = _huber_sum(trial_residual, delta)
        better = trial_objective < objective[active]
        improved = active[better]
        stalled = objective[improved] - trial_objective[better] <= rel_tol * objective[improved]
        theta[improved] = trial[better]
        residual[improved] = trial_residual[better]
        jacobian[improved] = trial_jacobian[better]
        objective[improved] = trial_objective[better]
        damping[active] = np.where(better, damping[active] / 3, damping[active] * 4)
        done = damping[active] > 1e10
        done[better] = stalled
        active = active[~done]
    return theta, objective


def _objective_and_gradient(theta: np.ndarray, x, y, t, delta: float) -> tuple[float, np.ndarray]:
    residual, jacobian = _residuals_and_jacobian(theta[None], x, y, t)
    return float(_huber_sum(residual, delta)[0]), jacobian[0] @ np.clip(residual[0], -delta, delta)


def _distinct(theta: np.ndarray, objective: np.ndarray, limit: int, spacing: float = 0.1) -> np.ndarray:
    """Indices of the best solutions, at most `limit`, pairwise over `spacing` apart (max-norm)."""
    picked: list[int] = []
    for index in np.argsort(objective):
        if not np.isfinite(objective[index]):
            break
        if all(np.abs(theta[index] - theta[j]).max() > spacing for j in picked):
            picked.append(int(index))
            if len(picked) == limit:
                break
    return np.asarray(picked)


def _irreducible(e):
    """E = exp(e), with e <= ZERO_E_LOG read as exactly 0 (scalar or array)."""
    return np.where(np.asarray(e) <= ZERO_E_LOG, 0.0, np.exp(e))


def compute_optimal(A, B, alpha, beta, flops):
    """Compute-optimal N and D for budget C under C = 6 N D (Hoffmann et al. 2022, eq. 4).

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)). Arguments broadcast (e.g. parameters [R, 1] against
    budgets [1, k]); returns (N_opt, D_opt).
    """
    A, B, alpha, beta, flops = map(np.asarray, (A, B, alpha, beta, flops))
    total = alpha + beta
    log_g = (np.log(alpha * A) - np.log(beta * B)) / total
    log_c6 = np.log(flops / 6.0)
    return np.exp(log_g + beta / total * log_c6), np.exp(-log_g + alpha / total * log_c6)


@dataclass(frozen=True)
class ParametricFit:
    """Approach-3 fit. theta = (a, b, e, alpha, beta); `minima` [K, 5] are the best distinct local
    optima found from the grid (best first), `minima_objective` [K] their objectives."""

    theta: np.ndarray
    objective: float
    n_points: int
    n_starts: int
    minima: np.ndarray
    minima_objective: np.ndarray
    fixed: tuple[str, ...] = ()  # names (of PARAMETER_NAMES) held at their grid value

    @property
    def params(self) -> dict[str, float]:
        a, b, e, alpha, beta = self.theta
        return {"E": float(_irreducible(e)), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha), "beta": float(beta)}

    def loss(self, params, tokens):
        """L(N, D) = E + A / N^alpha + B / D^beta."""
        p = self.params
        return p["E"] + p["A"] / np.power(params, p["alpha"]) + p["B"] / np.power(tokens, p["beta"])

    def compute_optimal(self, flops):
        """(N_opt, D_opt) at budget(s) C; see `compute_optimal`."""
        p = self.params
        return compute_optimal(p["A"], p["B"], p["alpha"], p["beta"], flops)

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ~ C^a, D_opt ~ C^b: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
        _, _, _, alpha, beta = self.theta
        return beta / (alpha + beta), alpha / (alpha + beta)


def _check_within_grid(theta: np.ndarray, grid: StartGrid) -> None:
    """Raise GridBoundaryError if a fitted log-parameter is outside [lo + m, hi - m], m = 1% of hi - lo.

    A best solution at or beyond the edge of the start grid means the grid did not bracket the
    optimum (or the data leave that parameter unconstrained, e.g. an exponent collapsing to 0).
    """
    for name, value in zip(LOG_PARAMETER_NAMES, theta):
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


def _log_data(params, tokens, loss):
    params, tokens, loss = (np.asarray(v, dtype=float).reshape(-1) for v in (params, tokens, loss))
    if not len(params) == len(tokens) == len(loss):
        raise ScalingInputError(
            f"N, D and L must have the same length, got {len(params)}, {len(tokens)}, {len(loss)}."
        )
    return np.log(params)[None], np.log(tokens)[None], np.log(loss)[None]


def fit_parametric(
    params,
    tokens,
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
    x, y, t = _log_data(params, tokens, loss)
    n = x.shape[1]
    if n < MIN_POINTS or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        raise ScalingInputError(
            f"Approach 3 fits 5 parameters (E, A, B, alpha, beta) and needs at least {MIN_POINTS} "
            f"points spanning at least 2 model sizes and 2 token counts; got {n} points with "
            f"{len(np.unique(x))} sizes and {len(np.unique(y))} token counts."
        )
    starts, fixed = grid.starts(), grid.fixed
    theta, objective = _levenberg_marquardt(starts, x, y, t, delta, max_iter=screen_iterations, fixed=fixed)
    kept = np.argsort(objective)[: max(n_polish, math.ceil(survivors * len(starts)))]
    theta, objective = _levenberg_marquardt(theta[kept], x, y, t, delta, fixed=fixed)
    candidates = _distinct(theta, objective, n_polish)
    for index in candidates:
        result = minimize(
            _objective_and_gradient,
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
        _check_within_grid(best, grid)
    return ParametricFit(
        theta=best.copy(),
        objective=float(objective[order[0]]),
        n_points=n,
        n_starts=len(starts),
        minima=theta[order].copy(),
        minima_objective=objective[order].copy(),
        fixed=tuple(NATURAL_NAMES[name] for name, hold in zip(LOG_PARAMETER_NAMES, fixed) if hold),
    )


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap of an Approach-3 fit: `samples` [R, 5] of (E, A, B, alpha, beta), and the
    compute-optimal `params_opt`, `tokens_opt` [R] at `budget` FLOPs."""

    samples: np.ndarray
    budget: float
    params_opt: np.ndarray
    tokens_opt: np.ndarray
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
        out = {name: self.interval(self.samples[:, i]) for i, name in enumerate(PARAMETER_NAMES)}
        out["N_opt"] = self.interval(self.params_opt)
        out["D_opt"] = self.interval(self.tokens_opt)
        return out


def bootstrap(
    params,
    tokens,
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
    x, y, t = _log_data(params, tokens, loss)
    n = x.shape[1]
    indices = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    starts = fit.minima
    k = len(starts)
    samples = np.empty((n_resamples, 5))
    for begin in range(0, n_resamples, chunk):
        rows = indices[begin : begin + chunk]
        count = len(rows)
        x_rows, y_rows, t_rows = (np.repeat(v[0][rows], k, axis=0) for v in (x, y, t))
        theta, objective = _levenberg_marquardt(
            np.tile(starts, (count, 1)), x_rows, y_rows, t_rows, delta, fixed=grid.fixed
        )
        best = np.argmin(objective.reshape(count, k), axis=1)
        samples[begin : begin + count] = theta.reshape(count, k, 5)[np.arange(count), best]
    at_edge = 0
    for theta in samples:
        try:
            _check_within_grid(theta, grid)
        except GridBoundaryError:
            at_edge += 1
    a, b, e, alpha, beta = samples.T
    natural = np.stack([_irreducible(e), np.exp(a), np.exp(b), alpha, beta], axis=1)
    n_opt, d_opt = compute_optimal(natural[:, 1], natural[:, 2], alpha, beta, budget)
    return BootstrapResult(natural, float(budget), n_opt, d_opt, level, seed, at_edge)


# ----------------------------------------------------------------------------- Approach 2


@dataclass(frozen=True)
class BudgetFit:
    """One IsoFLOP profile: loss = p[0] (ln N)^2 + p[1] ln N + p[2] over the runs `members`."""

    flops: float
    members: np.ndarray
    coefficients: np.ndarray
    params_opt: float
    tokens_opt: float
    loss_opt: float
    params_range: tuple[float, float]

    @property
    def outside_sampled_range(self) -> bool:
        """The parabola's minimum is extrapolated beyond the sampled sizes (biased estimate)."""
        return not self.params_range[0] <= self.params_opt <= self.params_range[1]


@dataclass(frozen=True)
class IsoflopFit:
    """Approach 2: per-budget minima and the power laws N_opt = k_N C^a, D_opt = k_D C^b."""

    budgets: list[BudgetFit]
    a: float
    k_params: float
    b: float
    k_tokens: float
    warnings: list[str] = field(default_factory=list)

    @property
    def sum_off_one(self) -> bool:
        """|a + b - 1| > 0.1: N_opt D_opt does not scale like C (inconsistent FLOP accounting)."""
        return abs(self.a + self.b - 1.0) > 0.1

    @property
    def biased(self) -> bool:
        """Some budget's minimum lies outside its sampled model sizes."""
        return any(budget.outside_sampled_range for budget in self.budgets)


def group_budgets(flops, tolerance_decades: float = 0.1) -> np.ndarray:
    """Label runs [n] by compute budget: sorted by C, a new budget starts when log10 C exceeds the
    first log10 C of the current budget by more than `tolerance_decades` (0: exact match only)."""
    log_c = np.log10(np.asarray(flops, dtype=float))
    order = np.argsort(log_c, kind="stable")
    labels = np.empty(len(log_c), dtype=int)
    label, anchor = -1, -np.inf
    for index in order:
        if log_c[index] - anchor > tolerance_decades:
            label, anchor = label + 1, log_c[index]
        labels[index] = label
    return labels


def fit_isoflop(
    params,
    flops,
    loss,
    *,
    tokens=None,
    tolerance_decades: float = 0.1,
) -> IsoflopFit:
    """Approach 2 (Hoffmann et al. 2022, Sec. 3.2) on arrays N, C, L [n] (optionally D [n]).

    Runs are grouped by budget (`group_budgets`); per budget with >= 3 sizes, L = p0 (ln N)^2 +
    p1 ln N + p2 gives N_opt = exp(-p1 / (2 p0)). D_opt = C / (6 N_opt) when `tokens` is None,
    else the budget's own ln D interpolated linearly in ln N at N_opt, so that a FLOP count that is
    not proportional to N D shows up as a + b != 1. Then ln N_opt and ln D_opt are fitted linearly
    in ln C. Raises ScalingInputError with fewer than 2 usable budgets.
    """
    params, flops, loss = (np.asarray(v, dtype=float) for v in (params, flops, loss))
    labels = group_budgets(flops, tolerance_decades)
    budgets, warnings = [], []
    for label in range(labels.max() + 1):
        members = np.flatnonzero(labels == label)
        budget = float(np.exp(np.log(flops[members]).mean()))
        log_n = np.log(params[members])
        if len(np.unique(log_n)) < 3:
            sizes = len(np.unique(log_n))
            warnings.append(f"budget C={budget:.3g}: only {sizes} model size(s), skipped")
            continue
        coefficients = np.polyfit(log_n, loss[members], 2)
        if coefficients[0] <= 0:
            warnings.append(f"budget C={budget:.3g}: loss is not convex in log N, skipped")
            continue
        log_opt = -coefficients[1] / (2 * coefficients[0])
        if tokens is None:
            tokens_opt = budget / (6.0 * math.exp(log_opt))
        else:
            line = np.polyfit(log_n, np.log(np.asarray(tokens, dtype=float)[members]), 1)
            tokens_opt = float(np.exp(np.polyval(line, log_opt)))
        fit = BudgetFit(
            flops=budget,
            members=members,
            coefficients=coefficients,
            params_opt=math.exp(log_opt),
            tokens_opt=tokens_opt,
            loss_opt=float(np.polyval(coefficients, log_opt)),
            params_range=(float(params[members].min()), float(params[members].max())),
        )
        if fit.outside_sampled_range:
            warnings.append(
                f"budget C={budget:.3g}: the parabola's minimum N={fit.params_opt:.3g} lies outside "
                f"the sampled sizes [{fit.params_range[0]:.3g}, {fit.params_range[1]:.3g}]; the "
                f"IsoFLOP grid is off-centre and this N_opt is extrapolated (biased)"
            )
        budgets.append(fit)
    if len(budgets) < 2:
        raise ScalingInputError(
            f"Approach 2 needs at least 2 compute budgets with 3 or more model sizes each (an IsoFLOP "
            f"design); found {len(budgets)} among {labels.max() + 1} budget(s) grouped with a "
            f"tolerance of {tolerance_decades} decades. {'; '.join(warnings)}"
        )
    log_c = np.log([fit.flops for fit in budgets])
    a, log_k_n = np.polyfit(log_c, np.log([fit.params_opt for fit in budgets]), 1)
    b, log_k_d = np.polyfit(log_c, np.log([fit.tokens_opt for fit in budgets]), 1)
    result = IsoflopFit(budgets, float(a), math.exp(log_k_n), float(b), math.exp(log_k_d), warnings)
    if result.sum_off_one:
        warnings.append(
            f"Approach 2 exponents a={a:.3f}, b={b:.3f} sum to {a + b:.3f}, more than 0.1 from 1: "
            f"N_opt D_opt does not grow like C, so the FLOP count is probably not proportional to "
            f"N D (e.g. attention or embedding FLOPs in C but not in N)"
        )
    return result


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ArchReport:
    """Everything fitted for one architecture."""

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
            fit = fit_parametric(subset.params, subset.tokens, subset.loss, delta=delta, grid=grid)
        except ScalingInputError as err:
            raise ScalingInputError(f"architecture {arch!r}: {err}") from None
        except GridBoundaryError as err:
            raise GridBoundaryError(f"architecture {arch!r}: {err}") from None
        warnings = []
        boot = None
        if n_bootstrap > 0:
            boot = bootstrap(
                subset.params, subset.tokens, subset.loss, fit, budget=budget,
                n_resamples=n_bootstrap, seed=seed, level=level, delta=delta, grid=grid,
            )
            if boot.n_at_grid_edge:
                warnings.append(
                    f"{boot.n_at_grid_edge} of {n_bootstrap} bootstrap fits lie at the edge of the "
                    f"start grid (kept in the intervals)"
                )
        try:
            isoflop = fit_isoflop(
                subset.params, subset.flops, subset.loss,
                tokens=None if subset.tokens_from_flops else subset.tokens,
                tolerance_decades=tolerance_decades,
            )
            warnings.extend(isoflop.warnings)
        except ScalingInputError as err:
            isoflop = None
            warnings.append(f"Approach 2 skipped: {err}")
        reports.append(ArchReport(arch, subset, fit, budget, boot, isoflop, warnings))
    return reports


def report_dict(reports: list[ArchReport]) -> dict:
    """JSON-ready summary: per architecture, fitted parameters, intervals, compute-optimal point,
    Approach-2 exponents and flags, and warnings."""
    fits = {}
    for report in reports:
        fit = report.parametric
        n_opt, d_opt = fit.compute_optimal(report.budget)
        a, b = fit.exponents
        entry = {
            "n_points": fit.n_points,
            "parametric": {
                **fit.params,
                "objective": fit.objective,
                "n_starts": fit.n_starts,
                "exponent_params": a,
                "exponent_tokens": b,
                "fixed": list(fit.fixed),
            },
            "compute_optimal": {
                "budget_flops": report.budget,
                "params": float(n_opt),
                "tokens": float(d_opt),
                "tokens_per_param": float(d_opt / n_opt),
                "loss": float(fit.loss(n_opt, d_opt)),
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
                "a": iso.a,
                "b": iso.b,
                "a_plus_b": iso.a + iso.b,
                "a_plus_b_off_one": iso.sum_off_one,
                "biased": iso.biased,
                "k_params": iso.k_params,
                "k_tokens": iso.k_tokens,
                "budgets": [
                    {
                        "flops": budget.flops,
                        "n_points": len(budget.members),
                        "params_opt": budget.params_opt,
                        "tokens_opt": budget.tokens_opt,
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
        *((name, with_interval(name, fit[name])) for name in PARAMETER_NAMES),
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


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(reports: list[ArchReport], path: Path) -> None:
    """Final loss vs training FLOPs for every run, with each architecture's Approach-3 frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for index, report in enumerate(reports):
        colour = f"C{index % 10}"
        pts = report.points
        ax.scatter(pts.flops, pts.loss, s=12, alpha=0.6, color=colour, label=f"{report.arch}: runs")
        budgets = np.geomspace(pts.flops.min(), max(pts.flops.max(), report.budget), 200)
        n_opt, d_opt = report.parametric.compute_optimal(budgets)
        ax.plot(budgets, report.parametric.loss(n_opt, d_opt), color=colour,
                label=f"{report.arch}: compute-optimal frontier (Approach 3)")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C [FLOPs]")
    ax.set_ylabel("final loss L [nats/token]")
    ax.set_title("Final loss vs training compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_isoflop(report: ArchReport, path: Path) -> None:
    """IsoFLOP profiles (loss vs N per budget) with their fitted parabolas and minima."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = report.isoflop.budgets
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))
    off_plot = False
    for budget, colour in zip(budgets, colours):
        n = report.points.params[budget.members]
        loss = report.points.loss[budget.members]
        ax.scatter(n, loss, s=14, color=colour, label=f"C = {budget.flops:.2g} FLOPs")
        # the curve spans the sampled sizes and its minimum, but at most 3x past them: a minimum
        # far off the sampled range (an off-centre budget) is marked at the edge with its value
        edge_low, edge_high = n.min() / 3, n.max() * 3
        low = max(min(n.min(), budget.params_opt) / 1.2, edge_low)
        high = min(max(n.max(), budget.params_opt) * 1.2, edge_high)
        grid = np.geomspace(low, high, 100)
        ax.plot(grid, np.polyval(budget.coefficients, np.log(grid)), color=colour, linewidth=1)
        if low <= budget.params_opt <= high:
            ax.plot(budget.params_opt, budget.loss_opt, marker="x", color=colour, markersize=8)
        else:
            off_plot = True
            edge = low if budget.params_opt < low else high
            y = np.polyval(budget.coefficients, np.log(edge))
            ax.plot(edge, y, marker="<" if edge == low else ">", color=colour, markersize=8)
            ax.annotate(f"N_opt = {budget.params_opt:.2g}", (edge, y), textcoords="offset points", xytext=(4, -12), fontsize=7, color=colour)
    ax.plot([], [], "kx", label="parabola minimum (N_opt)")
    if off_plot:
        ax.plot([], [], "k<", label="minimum off the sampled sizes (extrapolated)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N [params]")
    ax.set_ylabel("final loss L [nats/token]")
    ax.set_title(f"IsoFLOP profiles with fitted parabolas (Approach 2): {report.arch}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_extrapolation(reports: list[ArchReport], path: Path) -> None:
    """Compute-optimal loss, N and D vs C, extrapolated 100x past the data, with bootstrap bands."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for index, report in enumerate(reports):
        colour = f"C{index % 10}"
        fit = report.parametric
        largest = max(100 * report.points.flops.max(), 2 * report.budget)
        budgets = np.geomspace(report.points.flops.min(), largest, 200)
        n_opt, d_opt = fit.compute_optimal(budgets)
        curves = [fit.loss(n_opt, d_opt), n_opt, d_opt]
        bands = None
        if report.bootstrap is not None:
            s = report.bootstrap.samples
            n_b, d_b = compute_optimal(s[:, 1:2], s[:, 2:3], s[:, 3:4], s[:, 4:5], budgets[None])
            loss_b = s[:, 0:1] + s[:, 1:2] / n_b ** s[:, 3:4] + s[:, 2:3] / d_b ** s[:, 4:5]
            tail = 50.0 * (1.0 - report.bootstrap.level)
            bands = [np.percentile(v, [tail, 100 - tail], axis=0) for v in (loss_b, n_b, d_b)]
        for k, ax in enumerate(axes):
            ax.plot(budgets, curves[k], color=colour, label=f"{report.arch}: Approach 3 fit")
            if bands is not None:
                ax.fill_between(budgets, *bands[k], color=colour, alpha=0.2,
                                label=f"{report.arch}: {100 * report.bootstrap.level:g}% bootstrap band")
        if report.isoflop is not None:
            minima = report.isoflop.budgets
            flops = [budget.flops for budget in minima]
            keys = ("loss_opt", "params_opt", "tokens_opt")
            values = [[getattr(m, key) for m in minima] for key in keys]
            for ax, value in zip(axes, values):
                ax.scatter(flops, value, color=colour, s=16, label=f"{report.arch}: Approach 2 minima")
        for ax in axes:
            ax.axvline(report.points.flops.max(), color=colour, linestyle=":", linewidth=1,
                       label=f"{report.arch}: largest budget in data")
    titles = ["Loss at the compute-optimal point", "Compute-optimal model size",
              "Compute-optimal training tokens"]
    ylabels = ["loss L_opt [nats/token]", "N_opt [params]", "D_opt [tokens]"]
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_xscale("log")
        if ax is not axes[0]:
            ax.set_yscale("log")
        ax.set_xlabel("training compute C [FLOPs]")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("Fitted scaling law extrapolated past the data")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


# ----------------------------------------------------------------------------- command line


def _grid_override(grid: StartGrid, spec: str) -> StartGrid:
    name, _, ranges = spec.partition("=")
    try:
        low, high, step = (float(v) for v in ranges.split(":"))
    except ValueError:
        raise ScalingInputError(
            f"--grid {spec!r}: expected NAME=LOW:HIGH:STEP, e.g. e=-1:2:0.5."
        ) from None
    if name not in LOG_PARAMETER_NAMES or step <= 0 or high < low:
        raise ScalingInputError(
            f"--grid {spec!r}: NAME must be one of {', '.join(LOG_PARAMETER_NAMES)}, with LOW <= HIGH "
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
