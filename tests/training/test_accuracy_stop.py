"""training.callbacks.StopAtAccuracy: an MQAR run ends at the first validation that reaches the accuracy
(Zoology's early stop), counts as finished, and is skipped by a re-run."""

from types import SimpleNamespace

import pytest

from arch.config import ConfigError
from tests.helpers.runs import compose_config, scalars
from training.callbacks import StopAtAccuracy
from training.run import train

TINY_MQAR = [
    "experiment=mqar_quick",
    "trainer=cpu",
    "callbacks.progress=null",
    "model.d_model=16",
    "data.slice=L16_K2",
    "data.train_slices=null",
    "data.test_slices=null",
    "data.vocab_size=64",
    "data.num_train_examples=512",
    "data.num_test_examples=64",
    "data.batch_size=32",
    "trainer.max_steps=40",
    "trainer.val_check_interval=4",
    "optim.lr=1e-2",
    "schedule.warmup_steps=0",
]


@pytest.fixture
def run_mqar(tmp_path):
    def run(*overrides: str) -> dict:
        return train(compose_config([f"paths.cache={tmp_path / 'cache'}", *overrides]), tmp_path / "run")

    return run


def test_callback_stops_only_when_the_accuracy_is_reached():
    callback = StopAtAccuracy(0.99)
    for accuracy, stops in ((0.5, False), (0.989, False), (0.99, True)):
        trainer = SimpleNamespace(callback_metrics={"mqar/accuracy": accuracy}, sanity_checking=False, global_step=250, should_stop=False)
        callback.on_validation_end(trainer)
        assert trainer.should_stop is stops
    assert callback.reached_at == 250


def test_run_stops_at_the_first_validation_that_reaches_it_and_is_then_skipped(run_mqar, tmp_path):
    # 2 keys among 32 and a 64-way output: the first validation (step 4) is above 1% accuracy
    metrics = run_mqar(*TINY_MQAR, "+callback@callbacks.stop=stop_at_accuracy", "callbacks.stop.threshold=0.01")
    accuracy = scalars(tmp_path / "run", "mqar/accuracy")
    assert metrics["reached_accuracy"] == 0.01
    assert metrics["steps"] == 4 == min(accuracy) and accuracy[4] >= 0.01
    assert metrics["mqar/accuracy"] == pytest.approx(accuracy[4])
    again = run_mqar(*TINY_MQAR, "+callback@callbacks.stop=stop_at_accuracy", "callbacks.stop.threshold=0.01")
    assert again == metrics  # finished: not resumed, nothing retrained


def test_run_that_never_reaches_it_trains_every_step(run_mqar, tmp_path):
    metrics = run_mqar(*TINY_MQAR, "trainer.max_steps=8", "+callback@callbacks.stop=stop_at_accuracy", "callbacks.stop.threshold=1.0")
    assert metrics["steps"] == 8 and "reached_accuracy" not in metrics
    assert max(scalars(tmp_path / "run", "mqar/accuracy").values()) < 1.0


def test_language_model_data_cannot_stop_at_an_accuracy(run_tiny, tmp_path):
    with pytest.raises(ConfigError, match="needs an MQAR dataset"):
        run_tiny(tmp_path / "lm", "+callback@callbacks.stop=stop_at_accuracy")
    assert not (tmp_path / "lm" / "checkpoints").exists()


def test_an_accuracy_above_one_is_a_config_error(run_mqar, tmp_path):
    with pytest.raises(ConfigError, match=r"must be an accuracy in \(0, 1\]"):
        run_mqar(*TINY_MQAR, "+callback@callbacks.stop=stop_at_accuracy", "callbacks.stop.threshold=1.5")
    assert not (tmp_path / "run" / "checkpoints").exists()
