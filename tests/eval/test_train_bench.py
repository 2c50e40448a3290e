"""python -m eval.bench train on a tiny model: both loops train the same steps and the table and the
framework/bare ratio come out finite and positive; --profile prints the costliest operators."""

import re

import pytest

from eval.train_bench import main


def test_train_bench_times_both_loops_and_prints_their_ratio(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    main(
        [
            "model.d_model=32",
            "model.n_layers=1",
            "model.blocks.attention.n_heads=2",
            "data.tokenizer=byte",
            "data.seq_len=32",
            "data.batch_size=2",
            "data.max_files=40",
            "data.val_fraction=0.2",
            "--steps",
            "8",
            "--warmup",
            "2",
            "--profile",
            "2",
        ]
    )
    out = capsys.readouterr().out
    rows = {
        m[0]: [float(x.replace(",", "").rstrip("%")) for x in m[1:]]
        for m in re.findall(r"\| (framework|bare) \| ([\d,.]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+)% \|", out)
    }
    assert set(rows) == {"framework", "bare"} and all(v > 0 for row in rows.values() for v in row)
    ratio = float(re.search(r"framework/bare: ([\d.]+)x", out).group(1))
    assert abs(ratio - rows["framework"][0] / rows["bare"][0]) < 0.01
    # --profile: the three costliest operators of two more bare steps, shares of all self time in (0, 100]
    costs = re.findall(r"\| ([^|]+?) \| ([\d.]+) \| ([\d.]+)% \|", out.split("Top operators")[1])
    assert len(costs) == 3 and all(float(ms) > 0 and 0 < float(share) <= 100 for _, ms, share in costs)
    shares = [float(share) for _, _, share in costs]
    assert shares == sorted(shares, reverse=True)


def test_repeats_alternate_the_loops_and_take_the_median_pair_ratio(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache"))
    tiny = ["model.d_model=32", "model.n_layers=1", "model.blocks.attention.n_heads=2", "data.tokenizer=byte", "data.seq_len=32",
            "data.batch_size=2", "data.max_files=40", "data.val_fraction=0.2"]
    main([*tiny, "--steps", "6", "--warmup", "1", "--repeats", "3"])
    out = capsys.readouterr().out
    per = re.search(r"tokens/s per repeat: framework ([\d,. ]+); bare ([\d,. ]+); ratios ([\d., ]+)", out)
    framework, bare = ([float(x.replace(",", "")) for x in g.split(", ")] for g in per.groups()[:2])
    ratios = [float(x) for x in per.group(3).split(", ")]
    assert len(framework) == len(bare) == len(ratios) == 3
    assert ratios == pytest.approx([f / b for f, b in zip(framework, bare)], abs=0.01)
    median_row = float(re.search(r"\| framework \| ([\d,]+) \|", out).group(1).replace(",", ""))
    assert median_row == pytest.approx(sorted(framework)[1], abs=1)
    assert float(re.search(r"framework/bare: ([\d.]+)x", out).group(1)) == pytest.approx(sorted(ratios)[1], abs=0.01)
