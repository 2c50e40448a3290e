"""The one place that composes configs: the resolvers, the schema nodes generated from the
dataclasses, and `compose` for every entry point and test.

Importing this module registers, once per process:
- ``${uid:}``: a short id, one per process; with the start time it names run directories, so two
  runs started in the same second never share one (DDP children get the parent's directory
  passed explicitly);
- ``${div:a,b}`` = a / b, for settings that scale with another, e.g. a learning rate per width:
  ``optim.lr: ${div:0.192,${model.d_model}}`` (3e-3 at d_model 64, 1.5e-3 at 128);
- ``${slice_len:L128_K8}`` = 128, the sequence length of an MQAR slice name, for sizes that follow
  a grid cell's L (``l_max: ${slice_len:${data.slice}}``, as Zoology sets filter lengths to L);
- ``${gt:a,b}`` = a > b, for settings that hold in part of a grid only
  (``skip: ${gt:${slice_len:${data.slice}},128}`` leaves out the cells with L above 128);
- the config nodes whose defaults live in code (written once, there): ``schema/model``
  (`arch.lm.ModelConfig`), ``schema/optim``, ``schema/schedule`` and ``debug/default``
  (`training.config`), which presets extend (``defaults: [/schema@_here_: model]``), and one
  ``callback/<name>`` node per framework callback, generated from the class's signature
  (``conf/callbacks/default.yaml`` lists the default ones; ``+callback@callbacks.stop=stop_at_accuracy``
  adds another). A required argument shows as ``???``: the run stops until it is set.

The nodes are stored as plain mappings generated from the dataclasses, not as structured configs:
values are checked by `training.config.validate`, which gives one-paragraph errors, rather than
by OmegaConf's type system (which has no ``Literal`` and raises its own messages mid-composition).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from arch.config import signature_fields
from arch.lm import ModelConfig
from data.mqar import parse_slice
from training import callbacks
from training.config import CALLBACK_OFFERED, DebugConfig, OptimConfig, ScheduleConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RUN_UID = uuid.uuid4().hex[:6]

OmegaConf.register_new_resolver("uid", lambda: RUN_UID, replace=True)
OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b), replace=True)
OmegaConf.register_new_resolver("slice_len", lambda name: parse_slice(name)[0], replace=True)
OmegaConf.register_new_resolver("gt", lambda a, b: float(a) > float(b), replace=True)

_store = ConfigStore.instance()
for _group, _name, _schema in (
    ("schema", "model", ModelConfig),
    ("schema", "optim", OptimConfig),
    ("schema", "schedule", ScheduleConfig),
    ("debug", "default", DebugConfig),
):
    _store.store(group=_group, name=_name, node=dataclasses.asdict(_schema()))

# the framework's callbacks, by the name a config gives them
CALLBACKS = {
    "checkpoint": callbacks.Checkpoint,
    "throughput": callbacks.Throughput,
    "progress": callbacks.Progress,
    "stop_at_accuracy": callbacks.StopAtAccuracy,
    "stop_after_steps": callbacks.StopAfterSteps,
    "probes": callbacks.Probes,
}


def signature_node(cls: type, skip: tuple[str, ...] = ()) -> dict:
    """``{_target_: cls, argument: default, ...}`` from ``cls.__init__``; ``???`` marks a required one."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    node = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    for name in signature_fields(cls)[0]:
        if name not in skip:
            default = params[name].default
            node[name] = "???" if default is inspect.Parameter.empty else default
    return node


for _name, _cls in CALLBACKS.items():
    _store.store(group="callback", name=_name, node=signature_node(_cls, CALLBACK_OFFERED))


def compose(overrides: list[str] | tuple[str, ...] = (), *, return_hydra_config: bool = False) -> DictConfig:
    """The composed ``conf/config.yaml`` with command-line style ``overrides``, as train.py sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
