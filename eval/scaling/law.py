"""The parametric scaling law and its compute-optimal allocation (Chinchilla's Approach 3 model).

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Sec. 3.3:

    L(N, D) = E + A / N^alpha + B / D^beta

for a model of N parameters (`n_params`) trained on D tokens (`n_tokens`). Under C = 6 N D the
loss at a compute budget of C FLOPs is lowest at

    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)),

so N_opt ~ C^n_opt_exponent and D_opt ~ C^d_opt_exponent (Chinchilla's `a` and `b`), with
n_opt_exponent = beta/(alpha+beta) and d_opt_exponent = alpha/(alpha+beta).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAW_PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")  # the order of tables, JSON and bootstrap samples


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
class ScalingLaw:
    """A fitted law L(N, D) = E + A / N^alpha + B / D^beta (E: irreducible loss in nats/token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def as_dict(self) -> dict[str, float]:
        """{"E", "A", "B", "alpha", "beta"} in that order (the `parametric` entry of the JSON report)."""
        return {name: getattr(self, name) for name in LAW_PARAMETER_NAMES}

    def loss(self, n_params, n_tokens):
        """L(N, D) = E + A / N^alpha + B / D^beta."""
        return self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(n_tokens, self.beta)

    def compute_optimal(self, flops):
        """(N_opt, D_opt) at budget(s) C; see `compute_optimal`."""
        return compute_optimal(self.A, self.B, self.alpha, self.beta, flops)

    @property
    def n_opt_exponent(self) -> float:
        """beta/(alpha+beta): N_opt ~ C^n_opt_exponent (Chinchilla's `a`)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def d_opt_exponent(self) -> float:
        """alpha/(alpha+beta): D_opt ~ C^d_opt_exponent (Chinchilla's `b`)."""
        return self.alpha / (self.alpha + self.beta)
