"""Specification of eval/scaling.py: Chinchilla Approaches 2 and 3, bootstrap, inputs and CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.scaling import (
    GridBoundaryError,
    ScalingInputError,
    StartGrid,
    analyse,
    bootstrap,
    compute_optimal,
    fit_isoflop,
    fit_parametric,
    load_points,
    load_runs,
    main,
)

REPO = Path(__file__).parents[2]
FIG4 = Path(__file__).parents[3] / "shared/data/chinchilla_fig4_points.csv"
TRUTH = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
BUDGETS = np.geomspace(1e17, 1e23, 5)  # 5 budgets over 6 decades of compute


def law(params, tokens, E, A, B, alpha, beta):
    return E + A / params**alpha + B / tokens**beta


def isoflop_design(truth=TRUTH, budgets=BUDGETS, sizes=7, spread=8.0, fixed_params=None):
    """Sizes log-spaced over [N_opt/spread, N_opt*spread] per budget (or `fixed_params` for all)."""
    rows = []
    for flops in budgets:
        centre, _ = compute_optimal(truth["A"], truth["B"], truth["alpha"], truth["beta"], flops)
        grid = np.geomspace(centre / spread, centre * spread, sizes)
        if fixed_params is not None:
            grid = fixed_params
        rows += [(n, flops / (6 * n), flops) for n in grid]
    params, tokens, flops = (np.array(column) for column in zip(*rows))
    return params, tokens, flops, law(params, tokens, **truth)


def relative_errors(fit, truth=TRUTH):
    return {name: abs(fit.params[name] / truth[name] - 1) for name in truth}


@pytest.mark.skipif(not FIG4.exists(), reason=f"reference data {FIG4} not present beside the repository")
def test_reproduces_besiroglu_fit_on_chinchilla_fig4_points():
    points = load_points(FIG4).without_highest_losses(5)
    assert len(points) == 240 and points.tokens_from_flops
    np.testing.assert_allclose(points.tokens, points.flops / (6 * points.params))
    fit = fit_parametric(points.params, points.tokens, points.loss)
    assert fit.params["alpha"] == pytest.approx(0.3473, abs=0.002)
    assert fit.params["beta"] == pytest.approx(0.367, abs=0.002)
    assert fit.params["E"] == pytest.approx(1.817, abs=0.002)
    assert fit.objective == pytest.approx(1.018e-3, rel=1e-3)


def test_noise_free_synthetic_law_is_recovered_to_relative_1e_4():
    params, tokens, _, loss = isoflop_design()
    fit = fit_parametric(params, tokens, loss)
    assert max(relative_errors(fit).values()) < 1e-4, fit.params


def test_noisy_isoflop_design_median_relative_error_under_2_percent():
    params, tokens, _, loss = isoflop_design()
    errors = []
    for seed in range(10):
        noisy = loss * np.exp(np.random.default_rng(seed).normal(0.0, 0.005, loss.shape))
        errors.append(relative_errors(fit_parametric(params, tokens, noisy)))
    for name in ("alpha", "beta", "E"):
        assert np.median([e[name] for e in errors]) < 0.02, (name, [e[name] for e in errors])


def test_compute_optimal_minimises_the_law_at_fixed_flops():
    flops = 1e21
    n_opt, d_opt = compute_optimal(TRUTH["A"], TRUTH["B"], TRUTH["alpha"], TRUTH["beta"], flops)
    assert n_opt * d_opt == pytest.approx(flops / 6)
    scan = n_opt * np.geomspace(0.5, 2.0, 201)
    losses = law(scan, flops / (6 * scan), **TRUTH)
    assert scan[np.argmin(losses)] == pytest.approx(n_opt, rel=0.01)


def test_best_fit_at_edge_of_start_grid_raises_until_grid_is_widened():
    params, tokens, _, loss = isoflop_design(truth={**TRUTH, "E": 4.0})  # e = ln 4 = 1.39 > 1
    with pytest.raises(GridBoundaryError, match="e = 1.386"):
        fit_parametric(params, tokens, loss)
    fit = fit_parametric(params, tokens, loss, grid=StartGrid(e=(-1.0, 2.0, 0.5)))
    assert fit.params["E"] == pytest.approx(4.0, rel=1e-4)


def test_isoflop_recovers_theoretical_exponents_on_centred_wide_grid():
    params, _, flops, loss = isoflop_design(spread=16.0)
    iso = fit_isoflop(params, flops, loss)
    total = TRUTH["alpha"] + TRUTH["beta"]
    assert iso.a == pytest.approx(TRUTH["beta"] / total, abs=1e-3)
    assert iso.b == pytest.approx(TRUTH["alpha"] / total, abs=1e-3)
    assert len(iso.budgets) == 5 and not iso.biased and not iso.sum_off_one and not iso.warnings


def test_isoflop_flags_off_centre_grid():
    params, _, flops, loss = isoflop_design(fixed_params=np.geomspace(3e7, 1e9, 7))
    iso = fit_isoflop(params, flops, loss)
    assert iso.biased
    assert any(budget.outside_sampled_range for budget in iso.budgets)
    assert any("outside the sampled sizes" in warning for warning in iso.warnings)


def test_isoflop_flags_exponents_not_summing_to_one():
    params, tokens, flops, loss = isoflop_design()
    inflated = flops**1.25  # FLOP accounting not proportional to N D
    iso = fit_isoflop(params, inflated, loss, tokens=tokens)
    assert iso.sum_off_one and abs(iso.a + iso.b - 1) > 0.1
    assert any("sum to" in warning for warning in iso.warnings)


def test_isoflop_groups_budgets_within_log_tolerance():
    params, _, flops, loss = isoflop_design()
    jitter = flops * np.exp(np.random.default_rng(0).uniform(-0.05, 0.05, flops.shape))
    assert len(fit_isoflop(params, jitter, loss, tolerance_decades=0.1).budgets) == 5
    with pytest.raises(ScalingInputError, match="at least 2 compute budgets"):
        fit_isoflop(params, jitter, loss, tolerance_decades=0.0)


def test_bootstrap_intervals_contain_fit_and_are_seeded():
    params, tokens, _, loss = isoflop_design()
    noisy = loss * np.exp(np.random.default_rng(1).normal(0.0, 0.005, loss.shape))
    fit = fit_parametric(params, tokens, noisy)
    first = bootstrap(params, tokens, noisy, fit, budget=1e23, n_resamples=60, seed=3)
    again = bootstrap(params, tokens, noisy, fit, budget=1e23, n_resamples=60, seed=3)
    other = bootstrap(params, tokens, noisy, fit, budget=1e23, n_resamples=60, seed=4)
    intervals = first.intervals()
    assert intervals == again.intervals() and intervals != other.intervals()
    n_opt, d_opt = fit.compute_optimal(1e23)
    for name, value in {**fit.params, "N_opt": n_opt, "D_opt": d_opt}.items():
        low, high = intervals[name]
        assert low < value < high, name


def write_sweep(root: Path, arches: dict[str, dict]) -> None:
    for arch, truth in arches.items():
        params, tokens, flops, loss = isoflop_design(truth=truth)
        for i, (n, d, c, final_loss) in enumerate(zip(params, tokens, flops, loss)):
            run = root / arch / f"run{i:02d}"
            run.mkdir(parents=True)
            metrics = {"model": arch, "params_total": int(n), "params_non_embedding": int(0.9 * n),
                       "tokens": int(d), "flops": float(c), "val/loss": float(final_loss)}
            (run / "metrics.json").write_text(json.dumps(metrics))


ARCHES = {"transformer": TRUTH, "gla": {**TRUTH, "alpha": 0.30, "E": 1.9}}


def test_load_runs_reads_metrics_recursively_and_chooses_params_key(tmp_path):
    write_sweep(tmp_path, ARCHES)
    total = load_runs([tmp_path])
    non_embedding = load_runs([tmp_path / "transformer", tmp_path / "gla"], params_key="non_embedding")
    assert len(total) == len(non_embedding) == 70
    assert set(total.arches()) == {"transformer", "gla"} and not total.tokens_from_flops
    expected = np.floor(0.9 * total.params)
    np.testing.assert_allclose(np.sort(non_embedding.params), np.sort(expected), atol=1)


def test_one_fit_per_architecture_side_by_side(tmp_path):
    write_sweep(tmp_path, ARCHES)
    reports = analyse(load_runs([tmp_path]), n_bootstrap=0)
    fitted = {report.arch: report.parametric.params for report in reports}
    assert set(fitted) == set(ARCHES)
    for arch, truth in ARCHES.items():
        assert fitted[arch]["alpha"] == pytest.approx(truth["alpha"], rel=1e-3)
        assert fitted[arch]["E"] == pytest.approx(truth["E"], rel=1e-3)


def test_cli_json_output_is_only_json(tmp_path, capsys):
    write_sweep(tmp_path, ARCHES)
    assert main(["--runs", str(tmp_path), "--json", "--bootstrap", "20", "--budget", "1e23"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["fits"]) == set(ARCHES)
    gla = summary["fits"]["gla"]
    assert gla["parametric"]["alpha"] == pytest.approx(0.30, rel=1e-3)
    assert gla["compute_optimal"]["budget_flops"] == 1e23
    assert gla["bootstrap"]["n_resamples"] == 20 and len(gla["bootstrap"]["intervals"]["N_opt"]) == 2
    assert gla["isoflop"]["a_plus_b_off_one"] is False


def test_cli_out_writes_table_json_and_png_plots(tmp_path, capsys):
    write_sweep(tmp_path / "sweep", ARCHES)
    out = tmp_path / "out"
    assert main(["--runs", str(tmp_path / "sweep"), "--bootstrap", "20", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert header.startswith("| quantity |") and "transformer" in header and "gla" in header
    assert "| alpha |" in table and "| N_opt at C=" in table
    assert (out / "table.md").read_text() == table
    json.loads((out / "fit.json").read_text())
    for name in ("frontier.png", "extrapolation.png", "isoflop_transformer.png", "isoflop_gla.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name


def test_cli_help_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "eval.scaling", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--points" in result.stdout and "--runs" in result.stdout


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing_file", "does not exist"),
        ("missing_column", "lacks column(s) loss"),
        ("too_few_points", "needs at least 6"),
        ("missing_metrics_key", "lacks key(s) val/loss"),
        ("no_metrics", "no metrics.json found"),
        ("negative_loss", "not a positive finite number"),
    ],
)
def test_bad_input_exits_with_clear_error(tmp_path, capsys, setup, message):
    csv = tmp_path / "points.csv"
    if setup == "missing_file":
        argv = ["--points", str(tmp_path / "absent.csv")]
    elif setup == "missing_column":
        csv.write_text("params,flops\n1e8,1e18\n")
        argv = ["--points", str(csv)]
    elif setup == "too_few_points":
        rows = "".join(f"{n},{2e9 / n},3.0\n" for n in (1e7, 2e7, 4e7, 8e7, 1.6e8))
        csv.write_text("params,tokens,loss\n" + rows)
        argv = ["--points", str(csv)]
    elif setup == "negative_loss":
        csv.write_text("params,tokens,loss\n1e7,1e9,-1\n")
        argv = ["--points", str(csv)]
    elif setup == "missing_metrics_key":
        (tmp_path / "run").mkdir()
        (tmp_path / "run/metrics.json").write_text(json.dumps(
            {"model": "gla", "params_total": 1, "params_non_embedding": 1, "tokens": 1, "flops": 6.0}))
        argv = ["--runs", str(tmp_path)]
    else:
        argv = ["--runs", str(tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


def test_fixed_irreducible_loss_is_held_and_the_rest_recovered():
    params, tokens, _, loss = isoflop_design()
    grid = StartGrid(e=(np.log(TRUTH["E"]), np.log(TRUTH["E"]), 1.0))
    fit = fit_parametric(params, tokens, loss, grid=grid)
    assert fit.fixed == ("E",) and fit.params["E"] == pytest.approx(TRUTH["E"], rel=1e-12)
    assert max(relative_errors(fit).values()) < 1e-4, fit.params
    # held at a wrong value, E stays there and the other parameters absorb the difference
    wrong = fit_parametric(params, tokens, loss, grid=StartGrid(e=(np.log(1.5), np.log(1.5), 1.0)))
    assert wrong.params["E"] == pytest.approx(1.5, rel=1e-12) and wrong.objective > fit.objective


def test_pure_power_laws_run_a_free_e_off_the_grid_and_fit_with_fix_e_zero(tmp_path, capsys):
    truth = {**TRUTH, "E": 0.0}
    params, tokens, _, loss = isoflop_design(truth=truth)
    with pytest.raises(GridBoundaryError, match="has e = "):
        fit_parametric(params, tokens, loss)  # E -> 0 is log E -> -inf: not identifiable
    csv = tmp_path / "points.csv"
    csv.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{final_loss}\n" for n, d, final_loss in zip(params, tokens, loss)))
    assert main(["--points", str(csv), "--json", "--bootstrap", "10", "--fix-e", "0"]) == 0
    fit = json.loads(capsys.readouterr().out)["fits"]["all"]
    assert fit["parametric"]["E"] == 0.0 and fit["parametric"]["fixed"] == ["E"]
    for name in ("A", "B", "alpha", "beta"):
        assert fit["parametric"][name] == pytest.approx(truth[name], rel=1e-4), name
    assert main(["--points", str(csv), "--bootstrap", "0", "--fix-e", "0"]) == 0
    assert "| E | 0 (fixed) |" in capsys.readouterr().out
    assert main(["--points", str(csv), "--fix-e", "-1"]) == 2
    assert "--fix-e -1.0: the irreducible loss must be >= 0" in capsys.readouterr().err


def test_isoflop_plot_keeps_an_off_range_minimum_at_the_edge(tmp_path, monkeypatch):
    """A budget whose parabola bottoms out far below the sampled sizes is drawn to 3x past them and
    its minimum is named at the edge, instead of stretching the axis to the extrapolated minimum."""
    import types

    import matplotlib.pyplot as plt

    from eval import scaling

    n = np.array([3e4, 1e5, 3e5, 1e6])
    log_n = np.log(n)
    coefficients = np.array([0.01, 0.2, 0.5])  # minimum at log N = -10: N = 4.5e-5, far off
    members = np.arange(4)
    budget = types.SimpleNamespace(members=members, flops=1e12, coefficients=coefficients,
                                   params_opt=float(np.exp(-10)), loss_opt=float(np.polyval(coefficients, -10)))
    report = types.SimpleNamespace(arch="toy", points=types.SimpleNamespace(params=n, loss=np.polyval(coefficients, log_n)),
                                   isoflop=types.SimpleNamespace(budgets=[budget]))
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    scaling.plot_isoflop(report, tmp_path / "iso.png")
    assert (tmp_path / "iso.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figures[0].axes[0]
    assert ax.get_xlim()[0] > 3e4 / 10  # the axis stays near the sampled sizes
    assert any(t.get_text() == "N_opt = 4.5e-05" for t in ax.texts)
    assert "minimum off the sampled sizes (extrapolated)" in [t.get_text() for t in ax.get_legend().get_texts()]
