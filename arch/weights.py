"""A model's weights in a checkpoint file: reading them out of a run's checkpoint (or what
``python -m arch.upcycle`` writes: the same layout, ``state_dict`` with ``model.`` keys and
``hyper_parameters``) and checking that they fit a model. Plain PyTorch, so the model package can
read and write weights without the trainer; `training.checkpoint` uses the same error class."""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or resumed from; the message names the file and the way out."""


def read_model_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The model weights of a checkpoint that starts a run (``init_from``): a run's ``last.ckpt``, or
    what ``python -m arch.upcycle`` writes (the same layout: ``state_dict`` with ``model.`` keys and
    ``hyper_parameters``). Returns (the `LanguageModel` state dict, the hyperparameters);
    `CheckpointError` if the file is missing, unreadable or holds no model weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"init_from={path} does not exist. Give the path of a run's checkpoints/last.ckpt or an upcycled checkpoint.")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch raises RuntimeError, pickle and zip errors, EOFError...
        raise CheckpointError(f"init_from={path} cannot be read ({type(err).__name__}: {err}); give an intact checkpoint.") from err
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    weights = {k[len("model."):]: v for k, v in (state or {}).items() if k.startswith("model.")}
    if not weights:
        raise CheckpointError(f"init_from={path} holds no model weights (no 'state_dict' with 'model.' keys): is it a mixerlab checkpoint?")
    return weights, dict(ckpt.get("hyper_parameters") or {})


def check_weights_fit(weights: dict[str, torch.Tensor], model: torch.nn.Module, source: Path) -> None:
    """`CheckpointError` unless ``weights`` has exactly the model's parameter names and shapes (the
    first differences named, and the checkpoint's model config to compose instead)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    problems = [f"{k} missing" for k in expected if k not in got][:3]
    problems += [f"{k} not in the model" for k in got if k not in expected][:3]
    differ = [k for k in expected if k in got and got[k] != expected[k]]
    problems += [f"{k} is {got[k]} in the checkpoint, {expected[k]} in the model" for k in differ][:3]
    if problems:
        raise CheckpointError(
            f"init_from={source} does not fit the configured model: {'; '.join(problems)}. Compose the model the checkpoint "
            "was saved from (its config.yaml, or the command arch.upcycle printed), or drop init_from."
        )
