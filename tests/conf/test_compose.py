"""Every preset and experiment composes, validates and builds; a model preset runs forward and backward."""


import pytest
import torch
from omegaconf import OmegaConf

from arch.lm import LanguageModel
from training.compose import CONF_DIR, compose

CONF = CONF_DIR
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_values(overrides):
    return OmegaConf.to_container(compose(overrides), resolve=True)


@pytest.mark.parametrize("preset", MODELS)
def test_model_preset_builds_and_runs_forward_and_backward(preset):
    values = compose_values([f"model={preset}"])
    torch.manual_seed(0)
    model = LanguageModel.from_config(values["model"], vocab_size=values["model"].get("vocab_size") or 257)
    ids = torch.randint(0, 257, (2, 32))
    loss = model.loss(ids, ids)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.state_size(32) > 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_its_model_builds(experiment):
    values = compose_values([f"experiment={experiment}"])
    model = LanguageModel.from_config(values["model"], vocab_size=values["model"].get("vocab_size") or 8192)
    assert model.num_params() > 0


@pytest.mark.parametrize("trainer", sorted(p.stem for p in (CONF / "trainer").glob("*.yaml")))
def test_trainer_presets_name_only_real_trainer_arguments(trainer):
    from lightning.pytorch import Trainer

    from arch.config import check_kwargs, signature_fields

    values = compose_values([f"trainer={trainer}"])["trainer"]
    fields, _, _ = signature_fields(Trainer)
    check_kwargs("trainer", {k: v for k, v in values.items() if k != "_target_"}, fields, "Trainer")
    assert values["max_steps"] > 0


def test_defaults_come_from_the_dataclasses_and_callback_signatures():
    import dataclasses
    import inspect

    from arch.lm import ModelConfig
    from training.callbacks import Checkpoint, Progress, Throughput
    from training.config import DebugConfig, OptimConfig, ScheduleConfig

    values = compose_values(["model=transformer"])
    model_defaults = dataclasses.asdict(ModelConfig())
    assert set(values["model"]) == set(model_defaults)  # every key overridable without '+'
    assert values["model"]["norm_eps"] == model_defaults["norm_eps"] and values["model"]["init_std"] == model_defaults["init_std"]
    assert values["optim"] == dataclasses.asdict(OptimConfig())
    assert values["schedule"] == dataclasses.asdict(ScheduleConfig())
    assert values["debug"] == dataclasses.asdict(DebugConfig())
    for name, cls in (("checkpoint", Checkpoint), ("throughput", Throughput), ("progress", Progress)):
        params = inspect.signature(cls.__init__).parameters
        node = values["callbacks"][name]
        assert node["_target_"] == f"training.callbacks.{cls.__name__}"
        assert {k: v for k, v in node.items() if k != "_target_"} == {
            k: p.default for k, p in params.items() if k not in ("self", "dirpath", "run_dir", "cache_dir")
        }
    assert not (CONF / "schema").exists()  # no YAML copy of a dataclass' defaults


@pytest.mark.parametrize("preset", MODELS)
def test_model_preset_trains_a_few_steps_with_decreasing_loss(preset):
    values = compose_values([f"model={preset}"])
    torch.manual_seed(0)
    model = LanguageModel.from_config(values["model"], vocab_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 64, (4, 64))
    losses = []
    for _ in range(12):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
