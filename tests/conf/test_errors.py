"""Bad input stops `python train.py` with a short error that names the problem, and leaves no run directory."""

import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = str(Path(__file__).resolve().parents[2] / "train.py")

CASES = {
    "unknown_key": (["+model.d_modle=64"], ["model.d_modle", "d_model"]),
    "unknown_block_key": (["+model.blocks.attention.heads=2"], ["model.blocks.attention.heads", "n_heads"]),
    "wrong_type": (["model.d_model=big"], ["model.d_model", "big", "int"]),
    "wrong_literal": (["model.norm=batchnorm"], ["model.norm", "rmsnorm", "layernorm"]),
    "unknown_preset": (["model=nosuchmodel"], ["nosuchmodel", "transformer"]),
    "missing_data_file": (["data=files", "data.paths=[corpus/missing.jsonl]"], ["missing.jsonl", "does not exist"]),
    "missing_required_value": (["data=files"], ["data.paths"]),
    "negative_width": (["model.d_model=-8"], ["model.d_model", "-8", "> 0"]),
    "missing_tokenizer": (["data.tokenizer=nowhere.json"], ["data.tokenizer", "nowhere.json", "does not exist"]),
    "heads_do_not_divide": (["model.blocks.attention.n_kv_heads=3"], ["model.blocks.attention", "n_heads=4", "multiple of n_kv_heads=3"]),
}
# composition errors are Hydra's own (exit code 1); every other bad input is mixerlab's config error
HYDRA_ERRORS = {"unknown_preset"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_a_short_error_and_leaves_nothing_behind(case, tmp_path):
    overrides, expected = CASES[case]
    proc = subprocess.run(
        [sys.executable, TRAIN, *overrides, f"paths.cache={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == (1 if case in HYDRA_ERRORS else 2), proc.stderr
    err = proc.stderr
    if case not in HYDRA_ERRORS:
        assert err.startswith("mixerlab: config error: ") and len(err.strip().splitlines()) == 1, err
    for word in expected:
        assert word in err, (word, err)
    assert "Traceback" not in err
    n_presets = len(list((Path(TRAIN).parent / "conf" / "model").glob("*.yaml")))
    assert len(err.strip().splitlines()) <= 12 + n_presets, err  # Hydra lists every valid preset, one a line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*")), list((tmp_path / "runs").rglob("*"))
