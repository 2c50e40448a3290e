"""The Approach-3 objective in log space and the optimisers that minimise it.

The law L(N, D) = E + A / N^alpha + B / D^beta is fitted through theta = (a, b, e, alpha, beta)
with A = e^a, B = e^b, E = e^e (`THETA_NAMES`; `a`, `b`, `e` also name the axes of the start grid
and of `--grid`). With x = ln N, y = ln D, t = ln L the objective is (Hoffmann et al. 2022,
Sec. 3.3 and App. D.2; Besiroglu et al. 2024)

    sum over points of  Huber_delta( LSE(a - alpha x, b - beta y, e) - t ),   delta = 1e-3.

Many starts are minimised at once by a vectorised Levenberg-Marquardt (`levenberg_marquardt`);
`objective_and_gradient` serves scipy's L-BFGS-B, which polishes the best local minima.
"""

from __future__ import annotations

import numpy as np

THETA_NAMES = ("a", "b", "e", "alpha", "beta")  # order of the optimiser's vector theta
HUBER_DELTA = 1e-3


def residuals_and_jacobian(theta: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray):
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


def huber_sum(residual: np.ndarray, delta: float) -> np.ndarray:
    """Sum over the last axis of Huber_delta(residual)."""
    size = np.abs(residual)
    return np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta)).sum(axis=-1)


def levenberg_marquardt(
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
    residual, jacobian = residuals_and_jacobian(theta, x, y, t)
    objective = huber_sum(residual, delta)
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
        trial_residual, trial_jacobian = residuals_and_jacobian(trial, *data)
        trial_objective = huber_sum(trial_residual, delta)
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


def objective_and_gradient(theta: np.ndarray, x, y, t, delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber objective and its gradient at one theta [5] (for scipy.optimize.minimize)."""
    residual, jacobian = residuals_and_jacobian(theta[None], x, y, t)
    return float(huber_sum(residual, delta)[0]), jacobian[0] @ np.clip(residual[0], -delta, delta)


def distinct(theta: np.ndarray, objective: np.ndarray, limit: int, spacing: float = 0.1) -> np.ndarray:
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
