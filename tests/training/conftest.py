from pathlib import Path

import pytest

from tests.helpers.runs import TINY, compose_config
from training.run import train


@pytest.fixture
def run_tiny(tmp_path_factory):
    """Train a tiny model in-process: run_tiny(run_dir, *overrides) -> metrics."""
    cache = tmp_path_factory.getbasetemp() / "cache"

    def run(run_dir: Path, *overrides: str) -> dict:
        cfg = compose_config(TINY + [f"paths.cache={cache}", *overrides])
        return train(cfg, run_dir)

    return run
