"""train.py side by side with litgpt's ``pretrain`` on the same model, tokens and batches:

    python -m eval.bench litgpt --litgpt-python ENV/bin/python [--steps 175] [--warmup 20]
                                [--modes eager compiled] [--repeats R] [--keep DIR] [train.py overrides]

litgpt lives in its own virtual environment (it pins its own Lightning and jsonargparse). On a CPU
machine, install the CPU torch first so that litgpt does not pull a CUDA build:

    python -m venv ENV && ENV/bin/pip install torch==2.13.0 && ENV/bin/pip install litgpt==0.5.13 requests "jsonargparse[signatures]"

Without overrides the model is issue #15's transformer (`eval.train_bench.DEFAULT`: 4 layers, d_model
256, 4 heads, SwiGLU 672, tied embeddings, a 4096-token BPE of the embedded corpus, T 512, batch 8).
The harness
1. composes that config, builds mixerlab's model once to read its shapes and writes the same model as
   a litgpt ``Config`` (RMSNorm, LLaMAMLP, full RoPE, no biases, tied embeddings), with AdamW's rate,
   betas, weight decay and the gradient clip of the composed config, into ``DIR/pretrain.yaml``;
2. exports mixerlab's training and validation token streams (``train.npy``, ``val.npy``) and its BPE
   (``tokenizer/tokenizer.json`` and a ``tokenizer_config.json`` naming ``tokenizer_class`` and
   ``bos_token``, which litgpt asks for); litgpt reads the tokens through `eval.litgpt_data`, which
   cuts the same windows of T + 1 tokens;
3. for each mode, runs litgpt's ``pretrain`` and then ``train.py``, each in its own process, one
   after the other (so they never share the cores): **eager** is litgpt with
   ``TORCHDYNAMO_DISABLE=1`` (its pretrain always calls ``torch.compile``) against ``compile=none``;
   **compiled** is litgpt's default ``torch.compile`` of the whole model against ``compile=model``.

Tokens/s is the median over steps ``warmup+1 .. steps`` of the wall time between consecutive steps:
litgpt's CSV log has the cumulative time after each step (taken after the loss is read back),
train.py's a callback at each batch end (`eval.train_bench.StepTimer`), so data loading, the
optimiser and logging count on both sides. MFU uses one FLOP count (`arch.flops`) and one peak
(`training.peak`) for both. The table ends with ``train.py/litgpt`` per mode. ``--repeats R`` runs
the whole sequence R times (the sides alternate), prints the median tokens/s per run and the median
of the R pairs' ratios: on a machine whose speed drifts, one pair can be off by the drift (measured
here: litgpt's eager throughput 14% apart in two runs an hour apart).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.train_bench import DEFAULT, steady_step_s, timed_overrides

ROOT = Path(__file__).resolve().parents[1]


def litgpt_times(metrics_csv: Path) -> list[float]:
    """The cumulative ``time`` column of litgpt's CSV log (one row per step with log_interval 1)."""
    with open(metrics_csv, newline="") as f:
        return [float(row["time"]) for row in csv.DictReader(f) if row.get("time")]


def litgpt_model_config(model, seq_len: int) -> dict:
    """litgpt ``Config`` fields of the same network as mixerlab's `LanguageModel` ``model``; a clear
    error when the model is not a plain Llama-style transformer litgpt can express."""
    from arch.blocks.attention import Attention
    from arch.blocks.mlp import SwiGLU

    first = model.layers[0]
    plain = all(
        type(layer.mixer) is Attention
        and type(layer.mlp) is SwiGLU
        and layer.mixer.window is None
        and layer.mixer.maps == 1
        and layer.mixer.position == "rope"
        and layer.mixer.rope_dim == layer.mixer.head_dim
        and layer.mixer.q_norm is None
        for layer in model.layers
    )
    if not plain or not model.config.tie_embeddings or model.config.norm != "rmsnorm" or model.config.parallel:
        raise SystemExit(
            "error: the litgpt side-by-side needs a plain Llama-style transformer (every layer attention with full RoPE "
            "and no window or QK-norm, SwiGLU MLPs, RMSNorm, tied embeddings, sequential residuals); drop the model "
            "overrides or use `python -m eval.bench train` for other models."
        )
    attn = first.mixer
    return {
        "name": "mixerlab-transformer",
        "block_size": seq_len,
        "vocab_size": model.head.weight.shape[0],
        "padded_vocab_size": model.head.weight.shape[0],
        "n_layer": len(model.layers),
        "n_embd": model.config.d_model,
        "n_head": attn.n_heads,
        "n_query_groups": attn.n_kv_heads,
        "head_size": attn.head_dim,
        "rotary_percentage": 1.0,
        "rope_base": int(attn.rope_base),
        "parallel_residual": False,
        "bias": False,
        "norm_class_name": "RMSNorm",
        "norm_eps": model.config.norm_eps,
        "mlp_class_name": "LLaMAMLP",
        "intermediate_size": first.mlp.out_proj.in_features,
    }


def pretrain_config(model_config: dict, values: dict, folder: Path) -> dict:
    """litgpt ``pretrain`` arguments: the model, the exported tokens, mixerlab's optimiser settings,
    one step per micro-batch, a CSV log line per step, no validation or checkpoints inside the run."""
    data, optim = values["data"], values["optim"]
    return {
        "model_name": model_config["name"],
        "model_config": model_config,
        "precision": "32-true",
        "devices": 1,
        "tokenizer_dir": str(folder / "tokenizer"),
        "data": {"class_path": "litgpt_data.ExportedTokens", "init_args": {"folder": str(folder), "seed": values["seed"]}},
        "train": {
            "micro_batch_size": data["batch_size"],
            "global_batch_size": data["batch_size"],
            "max_seq_length": data["seq_len"],
            "tie_embeddings": True,
            "lr_warmup_steps": values["schedule"]["warmup_steps"],
            "log_interval": 1,
            "save_interval": None,
            "max_norm": values["trainer"].get("gradient_clip_val") or 1e9,
        },
        "eval": {"interval": 10**9, "initial_validation": False, "final_validation": False},
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {"lr": optim["lr"], "betas": list(optim["betas"]), "weight_decay": optim["weight_decay"]},
        },
        "logger_name": "csv",
        "seed": values["seed"],
    }


def export(values: dict, datamodule, model, folder: Path) -> Path:
    """Write the tokens of the set-up ``datamodule``, the tokenizer folder, litgpt's data module and
    ``pretrain.yaml`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "train.npy", np.asarray(datamodule.train_windows.tokens, dtype=np.int64))
    np.save(folder / "val.npy", np.asarray(datamodule.val_windows.tokens, dtype=np.int64))
    tok = folder / "tokenizer"
    tok.mkdir(exist_ok=True)
    tokenizer = datamodule.tokenizer
    if not hasattr(tokenizer, "tok"):
        raise SystemExit(
            "error: the litgpt side-by-side needs a BPE or tokenizer.json tokenizer (litgpt reads tokenizer.json); use data.tokenizer=bpe."
        )
    tokenizer.tok.save(str(tok / "tokenizer.json"))
    eos = tokenizer.tok.id_to_token(tokenizer.eos_id)
    (tok / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos, "eos_token": eos, "add_bos_token": False})
    )
    shutil.copy(Path(__file__).with_name("litgpt_data.py"), folder / "litgpt_data.py")
    config = pretrain_config(litgpt_model_config(model, values["data"]["seq_len"]), values, folder)
    path = folder / "pretrain.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def run_litgpt(python: str, folder: Path, mode: str, steps: int, batch_tokens: int) -> list[float]:
    out = folder / f"litgpt_{mode}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(folder))
    if mode == "eager":
        env["TORCHDYNAMO_DISABLE"] = "1"
    cmd = [python, "-m", "litgpt", "pretrain", "--config", str(folder / "pretrain.yaml"), "--out_dir", str(out),
           "--train.max_tokens", str(steps * batch_tokens)]
    log = folder / f"litgpt_{mode}.log"
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=folder)
    if done.returncode:
        raise SystemExit(f"error: litgpt pretrain ({mode}) failed with exit code {done.returncode}; its output is in {log}.")
    return litgpt_times(next(out.rglob("metrics.csv")))


def run_mixerlab(overrides: Sequence[str], folder: Path, mode: str, steps: int) -> list[float]:
    runs = folder / f"mixerlab_{mode}"
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, *timed_overrides(steps), f"paths.runs={runs}",
           "compile=none" if mode == "eager" else "compile=model"]
    log = folder / f"mixerlab_{mode}.log"
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"error: train.py ({mode}) failed with exit code {done.returncode}; its output is in {log}.")
    return json.loads(next(runs.rglob("step_times.json")).read_text())


def main(argv: Sequence[str] | None = None) -> None:
    import torch
    from omegaconf import OmegaConf

    from arch.flops import training_flops_per_token
    from training.compose import compose
    from training.config import validate
    from training.peak import peak_flops
    from training.run import resolve
    from training.task import LMTask

    parser = argparse.ArgumentParser(prog="python -m eval.bench litgpt", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides (default: the transformer of issue #15)")
    parser.add_argument("--litgpt-python", required=True, help="the python of a virtual environment with litgpt installed")
    parser.add_argument("--steps", type=int, default=175)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the median (warm-up, compilation)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="run everything this many times, alternating the sides; medians per run and of the pairs' ratios")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the exports, logs and runs (default: a temporary folder)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not Path(args.litgpt_python).exists():
        raise SystemExit(f"error: --litgpt-python {args.litgpt_python} does not exist; give the python of litgpt's virtual environment.")
    overrides = DEFAULT + args.overrides
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp).resolve()
        cfg = compose([*overrides, f"paths.runs={folder / 'compose'}"])
        values = resolve(cfg)
        datamodule = validate(values, folder / "compose").datamodule
        datamodule.setup("fit")
        model = LMTask(values["model"], datamodule.vocab_size, values["optim"], values["schedule"], args.steps).model
        export(values, datamodule, model, folder)
        seq_len, batch = values["data"]["seq_len"], values["data"]["batch_size"]
        flops = training_flops_per_token(model, seq_len)
        results = {}
        for _ in range(args.repeats):
            for mode in args.modes:
                results.setdefault(("litgpt", mode), []).append(run_litgpt(args.litgpt_python, folder, mode, args.steps, seq_len * batch))
                results.setdefault(("train.py", mode), []).append(run_mixerlab(overrides, folder, mode, args.steps))
    peak = peak_flops(None, torch.device("cpu"), "32", OmegaConf.to_container(cfg.paths, resolve=True)["cache"])
    print(f"\n{' '.join(overrides)}: {args.steps} steps, median over steps {args.warmup + 1}-{args.steps}, T={seq_len}, batch {batch}\n")
    print("| run | mode | tokens/s | step ms | MFU |\n| --- | --- | ---: | ---: | ---: |")
    tps = {}
    for (side, mode), runs in results.items():
        tps[side, mode] = [seq_len * batch / steady_step_s(times, args.warmup) for times in runs]
        median = statistics.median(tps[side, mode])
        mfu = median * flops / peak if peak else float("nan")
        print(f"| {side} | {mode} | {median:,.0f} | {1e3 * seq_len * batch / median:.1f} | {100 * mfu:.1f}% |")
    print()
    for mode in args.modes:
        ratios = [m / lit for m, lit in zip(tps["train.py", mode], tps["litgpt", mode])]
        if args.repeats > 1:
            print(f"{mode}, tokens/s per repeat: litgpt {', '.join(f'{t:,.0f}' for t in tps['litgpt', mode])}; "
                  f"train.py {', '.join(f'{t:,.0f}' for t in tps['train.py', mode])}")
        print(f"train.py/litgpt ({mode}): {statistics.median(ratios):.2f}x")
