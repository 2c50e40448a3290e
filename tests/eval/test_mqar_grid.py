"""A tiny MQAR grid runs end to end through Hydra multirun and eval.mqar, and a re-run skips finished cells."""

import csv

import pytest

from eval import mqar

TINY_GRID = [
    "experiment=mqar_quick",
    "model.d_model=16",
    "data.slice=L16_K2",
    "data.train_slices=null",
    "data.test_slices=null",
    "data.vocab_size=64",
    "data.num_train_examples=256",
    "data.num_test_examples=32",
    "data.batch_size=16",
    "trainer=cpu",
    "trainer.max_steps=6",
    "trainer.val_check_interval=6",
    "callbacks.progress=null",
    "optim.lr=1e-3,1e-2",
]


@pytest.mark.slow
def test_tiny_grid_runs_reports_and_skips_finished_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "grid"
    overrides = TINY_GRID + [
        f"hydra.sweep.dir={root}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
    mqar.main(overrides + ["--out", str(tmp_path / "report")])
    runs = sorted(p.parent for p in root.rglob("metrics.json"))
    assert len(runs) == 2 and runs[0] != runs[1]
    rows = list(csv.DictReader(open(tmp_path / "report" / "mqar.csv")))
    assert {float(r["lr"]) for r in rows} == {1e-3, 1e-2}
    assert {r["batch"] for r in rows} == {"16"}
    table = (tmp_path / "report" / "mqar.md").read_text()
    assert (
        "L=16 K=2" in table and ", batch 16)" in table and table.count("\n") == 3
    )  # header, rule, one (model, d_model) row with the best lr
    for png in ("accuracy_vs_d_model.png", "accuracy_vs_state.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = [(r / "metrics.json").stat().st_mtime_ns for r in runs]
    mqar.main(overrides + ["--out", str(tmp_path / "report")])  # the second run finds both cells finished
    assert [(r / "metrics.json").stat().st_mtime_ns for r in runs] == stamps


@pytest.mark.slow
def test_cells_run_side_by_side_and_a_skipped_cell_trains_and_writes_nothing(tmp_path, monkeypatch):
    """hydra/launcher=cores (two single-threaded worker processes here) and `skip` set per cell by a resolver."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "grid"
    overrides = TINY_GRID + [
        "hydra/launcher=cores",
        "skip='${gt:${optim.lr},0.005}'",
        f"hydra.sweep.dir={root}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
    mqar.main(overrides + ["--out", str(tmp_path / "report")])
    cells = {str(d.parent).split("optim.lr=")[1].split(",")[0]: d.parent for d in root.rglob("run.log")}  # the cells Hydra started
    assert set(cells) == {"0.001", "0.01"}
    assert (cells["0.001"] / "metrics.json").exists()
    assert not [p.name for p in cells["0.01"].iterdir() if p.name in ("config.yaml", "metrics.json", "checkpoints", "tensorboard")]
    rows = list(csv.DictReader(open(tmp_path / "report" / "mqar.csv")))
    assert {float(r["lr"]) for r in rows} == {1e-3}


def test_best_learning_rate_is_kept_per_cell():
    rows = [
        {"model": "a", "d_model": 64, "seq_len": 64, "kv_pairs": 4, "lr": 1e-3, "accuracy": 0.5},
        {"model": "a", "d_model": 64, "seq_len": 64, "kv_pairs": 4, "lr": 3e-3, "accuracy": 0.9},
        {"model": "a", "d_model": 128, "seq_len": 64, "kv_pairs": 4, "lr": 1e-3, "accuracy": 0.7},
    ]
    best = mqar.best_per_cell(rows)
    assert [(r["d_model"], r["lr"]) for r in best] == [(64, 3e-3), (128, 1e-3)]


def test_batch_column_is_the_data_modules_resolved_batch():
    config = {"data": {"_target_": "data.mqar.MQARDataModule", "vocab_size": 8192, "slice": "L128_K8", "batch_size": 64}}
    assert mqar._batch_size(config) == 64
    config["data"]["batch_tokens"] = 16384
    assert mqar._batch_size(config) == 128  # 16384 tokens at L=128


def test_variants_of_a_family_are_separate_cells_drawn_as_one_line(tmp_path):
    rows = [
        {
            "model": f"mamba/d_state{n}",
            "d_model": 64,
            "lr": 3e-3,
            "batch": 64,
            "seq_len": 64,
            "kv_pairs": 4,
            "accuracy": acc,
            "state_size": 64 * n,
        }
        for n, acc in ((8, 0.5), (16, 0.7), (24, 0.8))
    ] + [{"model": "attention", "d_model": 64, "lr": 3e-3, "batch": 64, "seq_len": 64, "kv_pairs": 4, "accuracy": 1.0, "state_size": 8192}]
    best = mqar.best_per_cell(rows)
    assert len(best) == 4  # d_state 8, 16, 24 are three cells, not one "best of"
    assert {mqar.family_of(r["model"]) for r in best} == {"mamba", "attention"}
    assert all(p.exists() for p in mqar.plot(best, tmp_path))
