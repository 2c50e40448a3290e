"""BAM upcycling (`python -m arch.upcycle`): identical parents give the parent's function (both K/V
variants); different parents give experts holding each parent's weights and averages elsewhere; the
printed command composes the upcycled model and continues training from the checkpoint; bad inputs
are refused without writing anything."""

import shlex

import pytest
import torch
from omegaconf import OmegaConf

from arch.lm import LanguageModel
from arch.upcycle import main
from tests.helpers.runs import TINY, compose_config

SMALL = ["model=bam_dense", "model.d_model=32", "model.n_layers=2", "model.blocks.attention.n_heads=2"]
VOCAB = 61


def dense_checkpoint(path, seed: int, overrides=SMALL) -> tuple[LanguageModel, dict]:
    cfg = OmegaConf.to_container(compose_config(overrides).model, resolve=True)
    torch.manual_seed(seed)
    model = LanguageModel.from_config(cfg, vocab_size=VOCAB)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": cfg, "vocab_size": VOCAB}}, path)
    return model, cfg


def upcycled_model(out, capsys) -> tuple[LanguageModel, list[str]]:
    command = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert command[:3] == ["python", "train.py", "model=bam"] and command[-1] == f"init_from={out}"
    cfg = OmegaConf.to_container(compose_config(command[2:-1]).model, resolve=True)
    model = LanguageModel.from_config(cfg, vocab_size=VOCAB)
    state = torch.load(out, weights_only=False)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items()})
    return model, command[2:-1]


@pytest.mark.parametrize("kv", ["separate", "shared"])
def test_identical_parents_upcycle_to_the_parent_function(tmp_path, capsys, kv):
    dense, _ = dense_checkpoint(tmp_path / "a.ckpt", seed=1)
    dense_checkpoint(tmp_path / "b.ckpt", seed=1)
    out = tmp_path / "bam.ckpt"
    main(["--parents", str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"), "--out", str(out), "--kv", kv, "--seed", "3"])
    child, _ = upcycled_model(out, capsys)
    assert child.layers[0].mixer.kv == kv and child.layers[0].mlp.n_experts == 2
    for layer in child.layers:  # random routers, so the weights are not trivially uniform
        torch.nn.init.normal_(layer.mixer.router.proj.weight, std=1.0)
    ids = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(child(ids), dense(ids), rtol=1e-4, atol=1e-4)


def test_different_parents_become_the_experts_and_the_rest_is_averaged(tmp_path, capsys):
    a, _ = dense_checkpoint(tmp_path / "a.ckpt", seed=1)
    b, _ = dense_checkpoint(tmp_path / "b.ckpt", seed=2)
    out = tmp_path / "bam.ckpt"
    main(["--parents", str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"), "--out", str(out)])
    child, _ = upcycled_model(out, capsys)
    for i in range(2):
        mixer, mlp = child.layers[i].mixer, child.layers[i].mlp
        width = mixer.heads * mixer.head_dim
        for e, parent in enumerate((a, b)):
            src = parent.layers[i]
            assert torch.equal(mixer.q_proj.weight[e * width : (e + 1) * width], src.mixer.q_proj.weight)
            assert torch.equal(mixer.out_proj.weight[:, e * width : (e + 1) * width], src.mixer.out_proj.weight)
            kv_rows = src.mixer.kv_proj.weight.shape[0]
            assert torch.equal(mixer.kv_proj.weight[e * kv_rows : (e + 1) * kv_rows], src.mixer.kv_proj.weight)
            assert torch.equal(mlp.in_proj.weight[e], src.mlp.in_proj.weight.T)
            assert torch.equal(mlp.out_proj.weight[e], src.mlp.out_proj.weight.T)
        torch.testing.assert_close(child.layers[i].norm1.weight, (a.layers[i].norm1.weight + b.layers[i].norm1.weight) / 2)
    torch.testing.assert_close(child.embedding.weight, (a.embedding.weight + b.embedding.weight) / 2)


def test_the_printed_command_continues_training_from_the_upcycled_checkpoint(tmp_path, capsys):
    from training.run import train

    tiny = [o for o in TINY if not o.startswith("model.blocks.attention")] + [f"paths.cache={tmp_path / 'cache'}"]
    for seed in (1, 2):
        dense = ["model=bam_dense", "model.n_layers=2", "model.blocks.attention.n_heads=2", f"seed={seed}", "trainer.max_steps=2"]
        train(compose_config(tiny + dense), tmp_path / f"dense{seed}")
    out = tmp_path / "bam.ckpt"
    main(["--parents", *(str(tmp_path / f"dense{s}/checkpoints/last.ckpt") for s in (1, 2)), "--out", str(out)])
    overrides = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])[2:]
    assert overrides[0] == "model=bam" and overrides[-1] == f"init_from={out}"
    metrics = train(compose_config(tiny + overrides + ["trainer.max_steps=2", "trainer.val_check_interval=2"]), tmp_path / "bam")
    assert metrics["val/loss"] < 10


def test_refusals_write_nothing(tmp_path):
    dense_checkpoint(tmp_path / "a.ckpt", seed=1)
    dense_checkpoint(tmp_path / "b.ckpt", seed=2, overrides=SMALL[:-1] + ["model.blocks.attention.n_heads=4"])
    dense_checkpoint(tmp_path / "c.ckpt", seed=2, overrides=["model=gla", "model.d_model=32", "model.n_layers=2"])
    out = tmp_path / "bam.ckpt"
    for parents, why in (
        (["a.ckpt", "b.ckpt"], "different model configs"),
        (["c.ckpt", "c.ckpt"], "one attention block"),
        (["a.ckpt"], "at least 2 parents"),
        (["a.ckpt", "missing.ckpt"], "does not exist"),
    ):
        with pytest.raises(SystemExit, match=why):
            main(["--parents", *(str(tmp_path / p) for p in parents), "--out", str(out)])
        assert not out.exists()
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit, match="exists"):
        main(["--parents", str(tmp_path / "a.ckpt"), str(tmp_path / "a.ckpt"), "--out", str(out)])
    assert out.read_bytes() == b"keep"


@pytest.mark.parametrize(
    "option", ["model.blocks.attention.qk_norm=true", "model.blocks.attention.window=16", "model.blocks.attention.score=sigmoid"]
)
def test_parents_with_attention_options_a_moa_expert_cannot_hold_are_refused(tmp_path, option):
    dense_checkpoint(tmp_path / "a.ckpt", seed=1, overrides=SMALL + [option])
    with pytest.raises(SystemExit, match=option.split(".")[-1].split("=")[0]):
        main(["--parents", str(tmp_path / "a.ckpt"), str(tmp_path / "a.ckpt"), "--out", str(tmp_path / "bam.ckpt")])
    assert not (tmp_path / "bam.ckpt").exists()
