"""eval.probes on planted features (float64): a sink head, a massive activation, a hand-built
induction circuit; the metric definitions on hand-made matrices; the command and its errors."""

import json

import pytest
import torch

from arch import probe as P
from arch.lm import LanguageModel
from arch.probe import attention_maps
from eval import probes as E


def _lm(**overrides) -> LanguageModel:
    cfg = {
        "d_model": 32,
        "n_layers": 1,
        "vocab_size": 50,
        "layers": ["attention"],
        "mlp": None,
        "blocks": {"attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 2, "position": "none"}},
    }
    cfg.update(overrides)
    torch.manual_seed(0)
    return LanguageModel.from_config(cfg).double().eval()


def test_sink_and_entropy_of_hand_made_rows():
    t = 64
    uniform = torch.tril(torch.ones(t, t, dtype=torch.float64))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    sink = torch.zeros(t, t, dtype=torch.float64)
    sink[:, 0] = 1.0
    w = torch.stack([sink, uniform])[None]  # [1, 2, T, T]
    mass, ratio = P.sink_mass(w, 16)
    assert mass[0] == 1.0 and ratio[1] == pytest.approx(1.0)
    assert mass[1] == pytest.approx(torch.tensor([1 / (i + 1) for i in range(16, t)]).mean().item())
    h, hn = P.entropy(w)
    assert h[0] == 0 and hn[1] == pytest.approx(1.0)


def test_hidden_sinks_find_a_token_that_draws_attention_and_ignore_the_first():
    t = 40
    w = torch.tril(torch.ones(t, t, dtype=torch.float64))
    w[10:, 7] = 30.0  # token 7 draws ~30x a uniform share from every later query
    w[:, 0] = 30.0
    w = w / w.sum(-1, keepdim=True)
    share, count = P.hidden_sinks(w[None, None], 16)
    assert count.item() == 1.0
    assert 0.3 < share.item() < 0.6


def test_copy_sources_of_mqar_and_of_a_repeated_sequence():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 7, 0, 5, 0]])  # keys 5, 7, 9 with values 6, 8, 1; queries 7 and 5
    labels = torch.full_like(ids, -100)
    labels[0, 6], labels[0, 8] = 8, 6
    src = P.copy_sources(ids, labels)
    assert src[0, 6] == 3 and src[0, 8] == 1 and (src[0, [0, 1, 2, 3, 4, 5, 7, 9]] == -1).all()
    ids, labels = P.induction_batch(2, 20, 100)
    src = P.copy_sources(ids, labels)
    assert torch.equal(src[:, 10:19], torch.arange(1, 10).expand(2, -1))


def test_a_key_that_favours_token_0_is_found_as_a_sink_and_a_zero_query_head_is_uniform():
    model = _lm()
    attn = model.layers[0].mixer
    with torch.no_grad():
        for p in attn.parameters():
            p.zero_()
        # every token carries dim 0 = 1; token 0 also carries dim 1. Head 0's query reads dim 0, its key
        # dim 1: only token 0 scores. Head 1 has a zero query: uniform attention.
        attn.q_proj.weight[0, 0] = 40.0
        attn.kv_proj.weight[0, 1] = 40.0
        model.embedding.weight.normal_(0, 0.1)
        model.embedding.weight[:, :2] = 0.0
        model.embedding.weight[:, 0] = 1.0
        model.embedding.weight[1, 1] = 1.0
    ids = torch.randint(2, 50, (3, 256))
    ids[:, 0] = 1
    w = P.row_weights(attention_maps(model, ids)[0])
    mass, ratio = P.sink_mass(w, 128)
    assert mass[0] >= 0.95
    assert mass[1] == pytest.approx(torch.tensor([1 / (t + 1) for t in range(128, 256)]).mean().item(), rel=1e-6)
    assert ratio[1] == pytest.approx(1.0, rel=1e-6)
    result = P.probe_model(model, ids, None, ["sink"], min_pos=128)
    assert result["layers"][0]["sink_mass"][0] >= 0.95


def test_a_planted_massive_activation_is_reported_where_it_was_planted():
    model = _lm(n_layers=2)
    ids = torch.randint(0, 50, (2, 24))

    def plant(module, args, out):
        out = out.clone()
        out[:, 0, 7] = 500 * out.abs().median()
        return out

    hook = model.layers[0].register_forward_hook(plant)
    try:
        result = P.probe_model(model, ids, None, ["massive"])
    finally:
        hook.remove()
    top = result["massive"][0]["top"][0]
    assert (top["token"], top["dim"]) == (0, 7)
    assert top["ratio"] == pytest.approx(500, rel=0.05)
    assert result["massive"][1]["top"][0]["ratio"] < 500


def _induction_model(vocab: int, seq_len: int) -> LanguageModel:
    """Two one-head attention layers by hand. Residual stream: [token one-hot | position one-hot |
    previous token]. Layer 0 (a previous-token head): position t's query matches position t - 1's key
    and copies its token into the third part. Layer 1 (the induction head): token t's query matches
    keys whose previous token is token t, so it attends to the token after the previous occurrence."""
    d = 2 * vocab + seq_len
    cfg = {
        "d_model": d,
        "n_layers": 2,
        "vocab_size": vocab,
        "layers": ["attention"],
        "mlp": None,
        "position": "learned",
        "max_seq_len": seq_len,
        "norm": "rmsnorm",
        "blocks": {"attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 1, "head_dim": d, "position": "none"}},
    }
    model = LanguageModel.from_config(cfg).double().eval()
    tok, pos, prev = range(vocab), range(vocab, vocab + seq_len), range(vocab + seq_len, d)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for layer in model.layers:
            layer.norm1.weight.fill_(1.0)
        model.norm.weight.fill_(1.0)
        model.embedding.weight[:, :vocab] = torch.eye(vocab)
        model.pos_embedding.weight[:, vocab : vocab + seq_len] = torch.eye(seq_len)
        a0, a1 = model.layers[0].mixer, model.layers[1].mixer
        for t in range(1, seq_len):
            a0.q_proj.weight[pos[t - 1], pos[t]] = 30.0  # query of position t points at position t - 1's key
        for t in range(seq_len):
            a0.kv_proj.weight[pos[t], pos[t]] = 30.0  # keys: positions
        for i in range(vocab):
            a0.kv_proj.weight[d + i, tok[i]] = 1.0  # values: tokens
            a0.out_proj.weight[prev[i], i] = 1.0  # written into the previous-token part
            a1.q_proj.weight[i, tok[i]] = 30.0
            a1.kv_proj.weight[i, prev[i]] = 30.0
    return model


def test_a_hand_built_induction_circuit_scores_high_and_random_weights_low():
    vocab, seq_len = 32, 64
    # a first token (0) outside the repeated sequences: the previous-token head's first query has
    # only itself to attend to, so token 0's "previous token" is itself
    ids, labels = P.induction_batch(4, seq_len - 2, vocab - 1, seed=1)
    ids, labels = torch.cat([torch.zeros(4, 1, dtype=torch.long), ids + 1], 1), torch.cat([torch.full((4, 1), -100), labels + 1], 1)
    labels[labels == -99] = -100
    src = P.copy_sources(ids, labels)
    model = _induction_model(vocab, seq_len)
    maps = attention_maps(model, ids)
    assert P.induction_score(P.row_weights(maps[1]), src)[0] >= 0.99
    assert P.retrieval_score(maps[1], src)[0][0] == 1.0
    # a copy counts only where the model outputs the copied token (Wu et al. 2024)
    copied = torch.zeros_like(ids, dtype=torch.bool)
    copied[:, 40:] = True
    share = (src[:, 40:] >= 0).sum() / (src >= 0).sum()
    assert P.retrieval_score(maps[1], src, copied)[0][0].item() == pytest.approx(share.item())
    torch.manual_seed(0)
    model.reset_parameters()
    maps = attention_maps(model, ids)
    assert max(P.induction_score(P.row_weights(a), src).max().item() for a in maps.values()) <= 0.1


def test_head_ablation_resumes_the_forward_at_the_masked_layer_and_matches_masking_the_whole_model():
    from arch.probe import head_masks

    model = _lm(n_layers=3)
    ids = torch.randint(0, 50, (2, 20))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    result = P.probe_model(model, ids, None, ["ablation"])
    logits = model(ids)[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels[:, :-1].reshape(-1))
    assert result["ablation"]["loss"] == pytest.approx(full.item(), rel=1e-12)
    mask = torch.ones(2, dtype=torch.float64)
    mask[1] = 0
    with head_masks(model, {2: mask}):
        masked = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, 50), labels[:, :-1].reshape(-1))
    row = result["ablation"]["layers"][2][1]
    assert row["head"] == 1 and row["delta_loss"] == pytest.approx(masked.item() - full.item(), rel=1e-9, abs=1e-12)


def test_effective_rank_of_known_spectra():
    assert P.effective_rank(torch.eye(6, dtype=torch.float64)) == pytest.approx(6.0)
    assert P.effective_rank(torch.ones(5, 4, dtype=torch.float64)) == pytest.approx(1.0)


def test_unknown_probe_and_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        E.main(["run=" + str(tmp_path), "probe=sink,nonsense"])
    assert exit_.value.code == 2 and "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["run=" + str(tmp_path / "missing")])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["batch=0", "run=x"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.main(["frobnicate=1"])
    assert "unknown argument" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_probes_a_trained_run_and_the_callback_logs_probe_scalars(tmp_path):
    from tests.helpers.runs import TINY, compose_config, scalars
    from training.run import train

    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            *TINY,
            "trainer.max_steps=6",
            "+callback@callbacks.probes=probes",
            "callbacks.probes.every_n_steps=3",
            "callbacks.probes.probes=[sink,entropy,massive,rank,induction]",
            f"paths.runs={tmp_path / 'runs'}",
        ]
    )
    train(cfg, run_dir)
    logged = scalars(run_dir, "probe/sink_ratio/layer1")
    assert sorted(logged) == [0, 3, 6]
    E.main([f"run={run_dir}", "batch=2", "out=" + str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "probes.json").read_text())
    assert set(result["layers"]) == {"0", "1"} and "ablation" in result and "effective_rank" in result
    assert (tmp_path / "out" / "attention_layer1.png").exists() and (tmp_path / "out" / "metrics_vs_layer.png").exists()
    assert "| layer |" in (tmp_path / "out" / "probes.md").read_text()
