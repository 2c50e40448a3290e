import json
import math

import pytest
import torch

from arch.config import ConfigError
from tests.helpers.runs import scalars
from training.config import ScheduleConfig
from training.run import steps_for_budget
from training.task import LMTask, TrainingDiverged, lr_factor


def test_short_training_run_lowers_validation_loss_and_writes_the_run_directory(tmp_path, run_tiny):
    metrics = run_tiny(tmp_path, "trainer.max_steps=60", "trainer.val_check_interval=20", "optim.lr=3e-3")
    val = scalars(tmp_path, "val/loss")
    steps = sorted(val)
    assert steps[0] <= 20 and steps[-1] == 60
    assert val[steps[-1]] < val[steps[0]] - 0.3
    assert val[steps[-1]] < math.log(257) - 1.5  # far below a uniform guess over bytes
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and (tmp_path / "config.yaml").exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 60 and saved["val/loss"] == pytest.approx(metrics["val/loss"])
    assert saved["tokens"] == 60 * 4 * 32
    assert saved["val/bits_per_byte"] > 0 and saved["unigram_entropy"] > saved["val/loss"] * 0.5
    for tag in (
        "train/loss",
        "train/tokens",
        "train/flops",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_sec",
        "train/mfu",
        "val/ppl",
        "params/total",
    ):
        assert scalars(tmp_path, tag), tag
    tokens = scalars(tmp_path, "train/tokens")
    assert tokens[60] == 60 * 4 * 32
    mfu, tps = scalars(tmp_path, "train/mfu"), scalars(tmp_path, "train/tokens_per_sec")
    assert all(0 < v < 2 and math.isfinite(v) for v in mfu.values())  # CPU MFU against the measured peak
    assert all(v > 0 and math.isfinite(v) for v in tps.values())
    lr = scalars(tmp_path, "train/lr")
    assert lr[1] < lr[3] and lr[59] < lr[10]  # warmup then decay
    from eval.scaling import load_runs  # the scaling fitter reads what train.py writes

    points = load_runs([tmp_path])
    assert points.loss.tolist() == [pytest.approx(saved["val/loss"])] and points.tokens.tolist() == [60 * 4 * 32]


def test_resume_continues_the_step_count_and_reproduces_the_uninterrupted_losses(tmp_path, run_tiny):
    common = ["trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks.checkpoint.every_n_steps=3"]
    whole = run_tiny(tmp_path / "whole", *common)
    stopped = run_tiny(tmp_path / "split", *common, "+callback@callbacks.stop_after=stop_after_steps", "callbacks.stop_after.steps=5")
    assert stopped == {"stopped_at_step": 5}
    assert torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    resumed = run_tiny(tmp_path / "split", *common)
    assert resumed["steps"] == 12
    a, b = scalars(tmp_path / "whole", "train/loss"), scalars(tmp_path / "split", "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 13))  # no step repeated or skipped
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # bit-identical on CPU
    assert resumed["val/loss"] == whole["val/loss"]
    assert resumed["tokens"] == whole["tokens"]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path, run_tiny, monkeypatch):
    run_tiny(tmp_path, "trainer.max_steps=4", "trainer.val_check_interval=4")
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    from arch.lm import LanguageModel

    monkeypatch.setattr(LanguageModel, "loss", lambda self, ids, labels: self.hidden_states(ids).sum() * float("nan"))
    with pytest.raises(TrainingDiverged, match="became nan at step 4.*Lower optim.lr"):
        run_tiny(tmp_path, "trainer.max_steps=8", "trainer.val_check_interval=4")
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.parametrize(
    "name,step,expected",
    [
        ("cosine", 0, 0.1),
        ("cosine", 9, 1.0),
        ("cosine", 100, 0.1),
        ("wsd", 50, 1.0),
        ("wsd", 79, 1.0),
        ("wsd", 100, 0.1),
        ("constant", 70, 1.0),
    ],
)
def test_schedules(name, step, expected):
    s = ScheduleConfig(name=name, warmup_steps=10, min_lr_ratio=0.1, cooldown_fraction=0.2)
    assert lr_factor(step, 100, s) == pytest.approx(expected)


def test_wsd_cooldown_follows_one_minus_sqrt():
    s = ScheduleConfig(name="wsd", warmup_steps=0, min_lr_ratio=0.0, cooldown_fraction=0.2)
    assert lr_factor(90, 100, s) == pytest.approx(1 - math.sqrt(0.5))


def test_no_weight_decay_on_norms_biases_and_embeddings(tmp_path):
    task = LMTask(
        {
            "d_model": 16,
            "n_layers": 1,
            "blocks": {
                "attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 2, "bias": True},
                "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"},
            },
        },
        vocab_size=20,
        max_steps=10,
    )
    opt = task.configure_optimizers()["optimizer"]
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in task.model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith("weight") and "norm" not in n and "embedding" not in n for n in names)
    assert "layers.0.mixer.q_proj.bias" not in names and "layers.0.mixer.q_proj.weight" in names


def test_flops_budget_sets_the_step_count_and_a_rerun_skips_the_finished_run(tmp_path, run_tiny):
    first = run_tiny(tmp_path, "budget_flops=2e9", "trainer.max_steps=1000", "trainer.val_check_interval=1000")
    # the spent FLOPs land within half a step of the budget, whatever trainer.max_steps said
    per_step = first["flops"] / first["steps"]
    assert 1 < first["steps"] < 1000 and abs(first["flops"] - 2e9) <= per_step / 2
    assert first["budget_flops"] == 2e9
    import yaml

    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["max_steps"] == first["steps"]  # the steps it took
    again = run_tiny(tmp_path, "budget_flops=2e9", "trainer.max_steps=1000", "trainer.val_check_interval=1000")
    assert again == json.loads((tmp_path / "metrics.json").read_text())  # skipped: nothing retrained
    assert "wall_time_s" in again and again["wall_time_s"] == first["wall_time_s"]


@pytest.mark.parametrize(
    ("data", "trainer", "message"),
    [
        ({"seq_len": None, "batch_size": 4}, {"devices": 1}, "data.seq_len and data.batch_size"),
        ({"seq_len": 32, "batch_size": 4}, {"devices": "auto"}, "trainer.devices"),
    ],
)
def test_flops_budget_without_a_step_size_is_a_config_error(data, trainer, message):
    with pytest.raises(ConfigError, match=message):
        steps_for_budget(1e9, {}, data, trainer, 257)


def test_flops_budget_scales_steps_with_the_inverse_model_cost():
    from omegaconf import OmegaConf

    from tests.helpers.runs import compose_config

    def steps(d_model):
        cfg = OmegaConf.to_container(compose_config([f"model.d_model={d_model}", "data.seq_len=64", "data.batch_size=2"]))
        return steps_for_budget(1e12, cfg["model"], cfg["data"], {"devices": 2, "num_nodes": 1}, 257)

    from arch.flops import training_flops_per_token
    from arch.lm import LanguageModel

    cfg = OmegaConf.to_container(compose_config(["model.d_model=64"]))
    per_token = training_flops_per_token(LanguageModel.from_config(cfg["model"], vocab_size=257), 64)
    assert steps(64) == round(1e12 / (per_token * 64 * 2 * 2))  # two replicas share the budget
    assert steps(128) < steps(64) / 2.5
