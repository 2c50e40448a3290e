"""PNG plots of an analysis: loss-compute frontier, IsoFLOP parabolas, and the law extrapolated past the data.

matplotlib is imported on first use, with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eval.scaling.law import compute_optimal

if TYPE_CHECKING:
    from eval.scaling.analysis import ArchReport


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
        law = report.parametric.law
        n_opt, d_opt = law.compute_optimal(budgets)
        ax.plot(budgets, law.loss(n_opt, d_opt), color=colour,
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
    """IsoFLOP profiles (loss vs N per budget) with their fitted parabolas and minima.

    Reads only `report.arch`, `report.points.params`, `report.points.loss` and, per budget of
    `report.isoflop.budgets`, `members`, `flops`, `coefficients`, `params_opt` and `loss_opt`: the
    former names of `n_params` and `n_opt`, which tests/eval/test_scaling.py passes in a
    duck-typed stand-in for the report.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    budgets = report.isoflop.budgets
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))
    off_plot = False
    for budget, colour in zip(budgets, colours):
        n_params = report.points.params[budget.members]
        loss = report.points.loss[budget.members]
        n_opt = budget.params_opt
        ax.scatter(n_params, loss, s=14, color=colour, label=f"C = {budget.flops:.2g} FLOPs")
        # the curve spans the sampled sizes and its minimum, but at most 3x past them: a minimum
        # far off the sampled range (an off-centre budget) is marked at the edge with its value
        edge_low, edge_high = n_params.min() / 3, n_params.max() * 3
        low = max(min(n_params.min(), n_opt) / 1.2, edge_low)
        high = min(max(n_params.max(), n_opt) * 1.2, edge_high)
        grid = np.geomspace(low, high, 100)
        ax.plot(grid, np.polyval(budget.coefficients, np.log(grid)), color=colour, linewidth=1)
        if low <= n_opt <= high:
            ax.plot(n_opt, budget.loss_opt, marker="x", color=colour, markersize=8)
        else:
            off_plot = True
            edge = low if n_opt < low else high
            y = np.polyval(budget.coefficients, np.log(edge))
            ax.plot(edge, y, marker="<" if edge == low else ">", color=colour, markersize=8)
            ax.annotate(f"N_opt = {n_opt:.2g}", (edge, y), textcoords="offset points", xytext=(4, -12), fontsize=7, color=colour)
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
        law = report.parametric.law
        largest = max(100 * report.points.flops.max(), 2 * report.budget)
        budgets = np.geomspace(report.points.flops.min(), largest, 200)
        n_opt, d_opt = law.compute_optimal(budgets)
        curves = [law.loss(n_opt, d_opt), n_opt, d_opt]
        bands = None
        if report.bootstrap is not None:
            # columns of the samples [R, 5], as [R, 1] against budgets [1, k]: E, A, B, alpha, beta
            E, A, B, alpha, beta = (report.bootstrap.samples[:, i : i + 1] for i in range(5))
            n_opt_samples, d_opt_samples = compute_optimal(A, B, alpha, beta, budgets[None])
            loss_samples = E + A / n_opt_samples**alpha + B / d_opt_samples**beta
            tail = 50.0 * (1.0 - report.bootstrap.level)
            bands = [np.percentile(v, [tail, 100 - tail], axis=0) for v in (loss_samples, n_opt_samples, d_opt_samples)]
        for k, ax in enumerate(axes):
            ax.plot(budgets, curves[k], color=colour, label=f"{report.arch}: Approach 3 fit")
            if bands is not None:
                ax.fill_between(budgets, *bands[k], color=colour, alpha=0.2,
                                label=f"{report.arch}: {100 * report.bootstrap.level:g}% bootstrap band")
        if report.isoflop is not None:
            minima = report.isoflop.budgets
            flops = [budget.flops for budget in minima]
            keys = ("loss_opt", "n_opt", "d_opt")
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
