"""The experiment layout: each study's recipe reaches both its CPU and GPU experiments, each experiment's own
values win over the recipe (and the swept arms over the experiment), every grid lands where eval.mqar and the
README look for it, and the YAML files carry short headers, the notes living in docs/experiments."""

import re
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from training.compose import CONF_DIR, compose

CONF = str(CONF_DIR)
REPO = CONF_DIR.parent
EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))
RUNS = "RUNS"  # paths.runs for every compose here, so MIXERLAB_RUNS does not matter

# study recipe -> the experiments that extend it
PAIRS = {"zoology_fig2": ["zoology_fig2", "zoology_fig2_cpu"], "based_tradeoff": ["based_tradeoff", "based_tradeoff_cpu"]}

# experiment -> (sweep directory under paths.runs, cells in its sweep); eval.mqar and the README read these paths
GRIDS = {
    "zoology_fig2": ("mqar/zoology_fig2", 4 * 4 * 4 * 4),
    "zoology_fig2_cpu": ("mqar/zoology_fig2_cpu", 3 * 2 * 3),
    "based_tradeoff": ("mqar/based_tradeoff", 12 * 3 * 4),  # 12 arms (conf/based_arm) x d_model x lr
    "based_tradeoff_cpu": ("mqar/based_tradeoff_cpu", 11),  # the arms without GLA, at d_model 64
    "scaling_cpu": ("scaling/scaling_cpu", 6 * 3),
}
TRAINERS = {"zoology_fig2": "gpu", "zoology_fig2_cpu": "cpu", "based_tradeoff": "gpu", "based_tradeoff_cpu": "cpu"}

MAX_HEADER_LINES = 4  # comment lines after "# @package"
MAX_COMMENT_LINES = 6  # the header and a few short inline notes


def compose_hydra(overrides):
    return compose([*overrides, f"paths.runs={RUNS}"], return_hydra_config=True)


def leaves(node, prefix=""):
    """Dotted key -> value of every non-mapping value (lists are values), interpolations unresolved."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def own_values(path: Path) -> dict:
    """The values a config file states itself (not its defaults list, not its hydra settings)."""
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return leaves({k: v for k, v in values.items() if k not in ("defaults", "hydra")})


def composed_values(cfg) -> dict:
    return leaves(OmegaConf.to_container(cfg, resolve=False))


def sweep_cells(params) -> int:
    cells = 1
    for key, value in params.items():
        (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
        cells *= len(list(override.sweep_string_iterator()))
    return cells


@pytest.fixture(scope="module")
def composed():
    return {name: compose_hydra([f"experiment={name}"]) for name in EXPERIMENTS}


def test_every_experiment_composes_and_resolves(composed):
    assert EXPERIMENTS, CONF
    for name, cfg in composed.items():  # schemas and model builds: tests/conf/test_compose.py
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        assert OmegaConf.to_container(job, resolve=True)["model"]["n_layers"] > 0, name


@pytest.mark.parametrize("recipe", PAIRS)
def test_the_cpu_and_gpu_experiments_share_their_recipe_and_state_only_their_differences(recipe, composed):
    recipe_file = Path(CONF) / "recipe" / f"{recipe}.yaml"
    shared = own_values(recipe_file)
    assert "hydra" not in OmegaConf.load(recipe_file), "a recipe has no sweep: each experiment states its own"
    for name in PAIRS[recipe]:
        path = Path(CONF) / "experiment" / f"{name}.yaml"
        assert f"/recipe/{recipe}" in OmegaConf.load(path).defaults
        own = own_values(path)
        values = composed_values(composed[name])
        for key, value in shared.items():  # the recipe reaches the experiment, except where the experiment says otherwise
            assert values[key] == own.get(key, value), (name, key)
        for key, value in own.items():  # the experiment's values come after the recipe's
            assert values[key] == value, (name, key)
        assert composed[name].hydra.runtime.choices.trainer == TRAINERS[name]
        repeated = {k for k, v in own.items() if shared.get(k, object()) == v}
        assert not repeated, f"{name} restates its recipe's values: {sorted(repeated)}"


def test_the_swept_arms_apply_after_the_experiment():
    for arm in sorted(p.stem for p in (Path(CONF) / "zoology_arm").glob("*.yaml")):
        cfg = compose_hydra(["experiment=zoology_fig2_cpu", f"zoology_arm={arm}", "model.d_model=128", "data.slice=L128_K8"])
        values = composed_values(cfg)
        for key, value in own_values(Path(CONF) / "zoology_arm" / f"{arm}.yaml").items():
            assert values[key] == value, (arm, key)
    assert cfg.optim.lr == 3.0e-3  # base_conv: the experiment's recipe (1)
    cfg = compose_hydra(["experiment=zoology_fig2_cpu", "zoology_arm=attention_16k", "model.d_model=128"])
    assert (cfg.optim.lr, cfg.data.batch_tokens, cfg.data.batch_size) == (0.192 / 128, 16384, 64)


def test_the_second_attention_recipe_runs_only_where_its_batch_differs_from_the_first():
    skips = {}
    for arm in sorted(p.stem for p in (Path(CONF) / "zoology_arm").glob("*.yaml")):
        for cell in ("L64_K4", "L128_K8", "L256_K16"):
            skips[arm, cell] = compose_hydra(["experiment=zoology_fig2_cpu", f"zoology_arm={arm}", f"data.slice={cell}"]).skip
    assert {key for key, skip in skips.items() if skip} == {("attention_16k", "L256_K16")}


def test_the_cpu_mqar_grids_run_single_threaded_cells_side_by_side_unless_the_command_line_says_otherwise():
    for name in ("zoology_fig2_cpu", "based_tradeoff_cpu"):
        launcher = compose_hydra([f"experiment={name}"]).hydra.launcher
        assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == -1
        assert compose_hydra([f"experiment={name}", "hydra/launcher=slurm"]).hydra.launcher._target_.endswith("SlurmLauncher")
    assert compose_hydra(["experiment=zoology_fig2"]).hydra.launcher._target_.endswith("BasicLauncher")


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_grid_runs_where_eval_mqar_and_the_readme_find_it(name, composed):
    from eval.mqar import grid_root

    where, cells = GRIDS[name]
    hydra = composed[name].hydra
    assert OmegaConf.select(composed[name], "hydra.sweep.dir") == f"{RUNS}/{where}"
    assert grid_root([f"experiment={name}", f"paths.runs={RUNS}", "hydra/launcher=slurm"]) == Path(RUNS) / where
    assert hydra.sweep._get_node("subdir")._value() == "${hydra.job.override_dirname}"
    assert list(hydra.job.config.override_dirname.exclude_keys) == ["experiment", "hydra/launcher", "paths.runs", "paths.cache"]
    assert sweep_cells(hydra.sweeper.params) == cells  # no sweep axis inherited from another experiment


def test_a_cell_directory_is_named_by_its_own_overrides_only():
    cfg = compose_hydra(["experiment=zoology_fig2_cpu", "zoology_arm=base_conv", "model.d_model=64", "data.slice=L64_K4"])
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "data.slice=L64_K4,model.d_model=64,zoology_arm=base_conv"


def test_budget_flops_sets_the_steps_of_scaling_cpu_without_a_placeholder():
    values = own_values(Path(CONF) / "experiment" / "scaling_cpu.yaml")
    assert "trainer.max_steps" not in values
    assert values["budget_flops"] > 0


def config_files():
    return sorted(p for group in ("experiment", "recipe", "grid", "zoology_arm") for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("path", config_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_files_keep_a_short_header_and_point_to_their_notes(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    comments = [line for line in lines if re.search(r"(^|\s)#", line)]
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) <= MAX_HEADER_LINES, f"{path}: notes belong in docs/experiments"
    assert len(comments) <= MAX_COMMENT_LINES, f"{path}: notes belong in docs/experiments"
    for doc in re.findall(r"docs/experiments/\S+\.md", path.read_text()):
        assert (REPO / doc).is_file(), (path, doc)
    if path.parent.name == "experiment" and path.stem in GRIDS:
        assert "docs/experiments/" in path.read_text(), f"{path}: name the study's notes"
