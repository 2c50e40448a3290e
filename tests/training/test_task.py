"""`LMTask` is a module-level LightningModule: a trained run's checkpoint loads back by name alone
and evaluates to the same loss."""

import torch

from training.task import LMTask


def test_load_from_checkpoint_gives_back_the_trained_model(run_tiny, tmp_path):
    run_tiny(tmp_path, "trainer.max_steps=3", "trainer.val_check_interval=3")
    task = LMTask.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    assert task.max_steps == 3 and task.model.config.d_model == 32
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in task.state_dict().items())
    ids = torch.randint(0, task.model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    fresh = LMTask(**{k: v for k, v in state_hparams(tmp_path).items()})
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert task.model.loss(ids[:, :-1], ids[:, 1:]) == fresh.model.loss(ids[:, :-1], ids[:, 1:])
        # and not what an untrained model gives
        torch.manual_seed(1)
        untrained = LMTask(**state_hparams(tmp_path))
        assert untrained.model.loss(ids[:, :-1], ids[:, 1:]) != task.model.loss(ids[:, :-1], ids[:, 1:])


def state_hparams(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
