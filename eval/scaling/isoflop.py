"""Approach 2 (IsoFLOP profiles): per compute budget, a parabola of loss against log N gives N_opt(C).

Hoffmann et al. 2022, Sec. 3.2. Power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted
across budgets (Chinchilla: a = 0.49, b = 0.51). Here a is `n_opt_exponent`, b `d_opt_exponent`,
k_N `n_opt_factor` and k_D `d_opt_factor`; the JSON report keeps the keys "a", "b", "k_params"
and "k_tokens".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eval.scaling.errors import ScalingInputError


@dataclass(frozen=True)
class BudgetFit:
    """One IsoFLOP profile: loss = p[0] (ln N)^2 + p[1] ln N + p[2] over the runs `members`.

    `coefficients` is p; the parabola's minimum is at N = `n_opt` with loss `loss_opt`, and `d_opt`
    is the matching D_opt; `n_params_range` is (min N, max N) of the members.
    """

    flops: float
    members: np.ndarray
    coefficients: np.ndarray
    n_opt: float
    d_opt: float
    loss_opt: float
    n_params_range: tuple[float, float]

    @property
    def params_opt(self) -> float:
        """Former name of `n_opt` (kept for existing callers)."""
        return self.n_opt

    @property
    def tokens_opt(self) -> float:
        """Former name of `d_opt` (kept for existing callers)."""
        return self.d_opt

    @property
    def outside_sampled_range(self) -> bool:
        """The parabola's minimum is extrapolated beyond the sampled sizes (biased estimate)."""
        return not self.n_params_range[0] <= self.n_opt <= self.n_params_range[1]


@dataclass(frozen=True)
class IsoflopFit:
    """Approach 2: per-budget minima and the power laws N_opt = n_opt_factor C^n_opt_exponent,
    D_opt = d_opt_factor C^d_opt_exponent (Chinchilla's N_opt = k_N C^a, D_opt = k_D C^b)."""

    budgets: list[BudgetFit]
    n_opt_exponent: float
    n_opt_factor: float
    d_opt_exponent: float
    d_opt_factor: float
    warnings: list[str] = field(default_factory=list)

    @property
    def a(self) -> float:
        """Chinchilla's name for `n_opt_exponent` (kept for existing callers)."""
        return self.n_opt_exponent

    @property
    def b(self) -> float:
        """Chinchilla's name for `d_opt_exponent` (kept for existing callers)."""
        return self.d_opt_exponent

    @property
    def sum_off_one(self) -> bool:
        """|a + b - 1| > 0.1: N_opt D_opt does not scale like C (inconsistent FLOP accounting)."""
        return abs(self.n_opt_exponent + self.d_opt_exponent - 1.0) > 0.1

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
    n_params,
    flops,
    loss,
    *,
    n_tokens=None,
    tolerance_decades: float = 0.1,
    tokens=None,
) -> IsoflopFit:
    """Approach 2 (Hoffmann et al. 2022, Sec. 3.2) on arrays N, C, L [n] (optionally D [n]).

    Runs are grouped by budget (`group_budgets`); per budget with >= 3 sizes, L = p0 (ln N)^2 +
    p1 ln N + p2 gives N_opt = exp(-p1 / (2 p0)). D_opt = C / (6 N_opt) when `n_tokens` is None,
    else the budget's own ln D interpolated linearly in ln N at N_opt, so that a FLOP count that is
    not proportional to N D shows up as a + b != 1. Then ln N_opt and ln D_opt are fitted linearly
    in ln C. Raises ScalingInputError with fewer than 2 usable budgets. `tokens` is the former name
    of `n_tokens`.
    """
    if tokens is not None:
        if n_tokens is not None:
            raise TypeError("fit_isoflop: pass n_tokens or its former name tokens, not both")
        n_tokens = tokens
    n_params, flops, loss = (np.asarray(v, dtype=float) for v in (n_params, flops, loss))
    labels = group_budgets(flops, tolerance_decades)
    budgets, warnings = [], []
    for label in range(labels.max() + 1):
        members = np.flatnonzero(labels == label)
        budget = float(np.exp(np.log(flops[members]).mean()))
        log_n = np.log(n_params[members])
        if len(np.unique(log_n)) < 3:
            sizes = len(np.unique(log_n))
            warnings.append(f"budget C={budget:.3g}: only {sizes} model size(s), skipped")
            continue
        coefficients = np.polyfit(log_n, loss[members], 2)
        if coefficients[0] <= 0:
            warnings.append(f"budget C={budget:.3g}: loss is not convex in log N, skipped")
            continue
        log_n_opt = -coefficients[1] / (2 * coefficients[0])
        if n_tokens is None:
            d_opt = budget / (6.0 * math.exp(log_n_opt))
        else:
            line = np.polyfit(log_n, np.log(np.asarray(n_tokens, dtype=float)[members]), 1)
            d_opt = float(np.exp(np.polyval(line, log_n_opt)))
        fit = BudgetFit(
            flops=budget,
            members=members,
            coefficients=coefficients,
            n_opt=math.exp(log_n_opt),
            d_opt=d_opt,
            loss_opt=float(np.polyval(coefficients, log_n_opt)),
            n_params_range=(float(n_params[members].min()), float(n_params[members].max())),
        )
        if fit.outside_sampled_range:
            warnings.append(
                f"budget C={budget:.3g}: the parabola's minimum N={fit.n_opt:.3g} lies outside "
                f"the sampled sizes [{fit.n_params_range[0]:.3g}, {fit.n_params_range[1]:.3g}]; the "
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
    n_opt_exponent, log_n_opt_factor = np.polyfit(log_c, np.log([fit.n_opt for fit in budgets]), 1)
    d_opt_exponent, log_d_opt_factor = np.polyfit(log_c, np.log([fit.d_opt for fit in budgets]), 1)
    result = IsoflopFit(
        budgets, float(n_opt_exponent), math.exp(log_n_opt_factor), float(d_opt_exponent), math.exp(log_d_opt_factor), warnings
    )
    if result.sum_off_one:
        warnings.append(
            f"Approach 2 exponents a={n_opt_exponent:.3f}, b={d_opt_exponent:.3f} sum to "
            f"{n_opt_exponent + d_opt_exponent:.3f}, more than 0.1 from 1: "
            f"N_opt D_opt does not grow like C, so the FLOP count is probably not proportional to "
            f"N D (e.g. attention or embedding FLOPs in C but not in N)"
        )
    return result
