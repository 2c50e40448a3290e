"""python -m eval.bench litgpt: the litgpt config states the same network as mixerlab's model, the
exports hold what litgpt's pretrain reads, step times are parsed from both logs, and the whole
harness runs end to end against a stand-in for litgpt's python (litgpt itself is not installed here)."""

import json
import re
import stat
import sys
import textwrap

import pytest

from eval.litgpt_side import litgpt_model_config, litgpt_times, main
from eval.train_bench import steady_step_s
from tests.helpers.runs import compose_config
from training.run import resolve
from training.task import LMTask

TINY = ["model.d_model=32", "model.n_layers=2", "model.blocks.attention.n_heads=2", "data.seq_len=32", "data.batch_size=2",
        "data.max_files=40", "data.val_fraction=0.2", "data.bpe_vocab_size=300"]


def _model(overrides):
    values = resolve(compose_config(["model=transformer", *overrides]))
    return LMTask(values["model"], 300, values["optim"], values["schedule"], 10).model


def test_steady_step_is_the_median_interval_after_warmup():
    times = [0.0, 5.0, 6.0, 7.5, 8.5, 9.5]  # intervals 5, 1, 1.5, 1, 1
    assert steady_step_s(times, 1) == 1.0
    assert steady_step_s(times, 0) == 1.0
    with pytest.raises(SystemExit, match="too few"):
        steady_step_s(times, 5)


def test_litgpt_times_reads_the_cumulative_time_column(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("iter,loss,time\n1,8.5,2.5\n2,8.4,3.5\n,,\n3,8.0,4.75\n")
    assert litgpt_times(path) == [2.5, 3.5, 4.75]


def test_litgpt_config_states_the_same_network():
    model = _model(["model.d_model=64", "model.n_layers=3", "model.blocks.attention.n_heads=4", "model.blocks.attention.n_kv_heads=2"])
    cfg = litgpt_model_config(model, seq_len=128)
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"], cfg["n_query_groups"], cfg["head_size"]) == (3, 64, 4, 2, 16)
    assert cfg["padded_vocab_size"] == 300 and cfg["block_size"] == 128
    assert cfg["intermediate_size"] == model.layers[0].mlp.out_proj.in_features
    # litgpt's parameter count of that config (tied head): embedding + per layer (q, kv, out, SwiGLU, two norms) + final norm
    d, hidden, kv = 64, cfg["intermediate_size"], 2 * 2 * 16
    litgpt_params = 300 * d + 3 * (d * d + d * kv + d * d + 3 * d * hidden + 2 * d) + d
    assert litgpt_params == sum(p.numel() for p in model.parameters())


def test_litgpt_config_refuses_what_litgpt_cannot_express():
    with pytest.raises(SystemExit, match="plain Llama-style transformer"):
        litgpt_model_config(_model(["model.blocks.attention.window=16"]), seq_len=64)
    with pytest.raises(SystemExit, match="plain Llama-style transformer"):
        litgpt_model_config(_model(["model.tie_embeddings=false"]), seq_len=64)


@pytest.mark.slow
def test_harness_runs_both_sides_and_prints_their_ratio(tmp_path, monkeypatch, capsys):
    """A stand-in for litgpt's python checks the exported config and writes litgpt's CSV log of a run
    that takes 2 s per step; train.py really trains."""
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "litgpt_python"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, pathlib, sys
        args = sys.argv[1:]
        assert args[:3] == ["-m", "litgpt", "pretrain"], args
        cfg = json.loads(pathlib.Path(args[args.index("--config") + 1]).read_text())
        folder = pathlib.Path(cfg["data"]["init_args"]["folder"])
        assert (folder / "train.npy").exists() and (folder / "litgpt_data.py").exists()
        tok = json.loads((pathlib.Path(cfg["tokenizer_dir"]) / "tokenizer_config.json").read_text())
        assert tok["tokenizer_class"] and tok["bos_token"]
        assert os.environ.get("TORCHDYNAMO_DISABLE") == "1"  # the eager mode
        steps = int(args[args.index("--train.max_tokens") + 1]) // (cfg["train"]["micro_batch_size"] * cfg["train"]["max_seq_length"])
        out = pathlib.Path(args[args.index("--out_dir") + 1]) / "logs" / "csv" / "version_0"
        out.mkdir(parents=True)
        rows = [f"{{i + 1}},{{2.0 * (i + 1)}}" for i in range(steps)]
        (out / "metrics.csv").write_text("iter,time\\n" + "\\n".join(rows) + "\\n")
        """))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    work = str(tmp_path / "work")
    main(["--litgpt-python", str(fake), "--steps", "6", "--warmup", "1", "--modes", "eager", "--repeats", "2", "--keep", work, *TINY])
    out = capsys.readouterr().out
    per_repeat = re.search(r"eager, tokens/s per repeat: litgpt ([\d,. ]+); train\.py ([\d,. ]+)", out)
    assert per_repeat.group(1) == "32, 32" and len(per_repeat.group(2).split(", ")) == 2
    rows = {m[0]: float(m[1].replace(",", "")) for m in re.findall(r"\| (litgpt|train\.py) \| eager \| ([\d,]+) \|", out)}
    assert rows["litgpt"] == 32 * 2 / 2.0  # T x batch tokens every 2 s
    assert rows["train.py"] > 0
    ratio = float(re.search(r"train\.py/litgpt \(eager\): ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(rows["train.py"] / rows["litgpt"], rel=2e-3)
    config = json.loads((tmp_path / "work" / "pretrain.yaml").read_text())
    assert config["model_config"]["n_embd"] == 32 and config["train"]["max_seq_length"] == 32
