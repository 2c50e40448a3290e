import pytest
import torch

from arch.config import ConfigError
from arch.lm import LanguageModel
from tests.helpers.properties import assert_model_decode_matches_forward

BLOCKS = {
    "attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 4},
    "swa": {"_target_": "arch.blocks.attention.Attention", "n_heads": 4, "n_kv_heads": 1, "window": 4},
    "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"},
    "identity": {"_target_": "arch.blocks.mlp.Identity"},
}


def lm(**kw) -> LanguageModel:
    cfg = dict(d_model=32, n_layers=3, vocab_size=50, layers=["attention"], mlp="swiglu", blocks=BLOCKS)
    cfg.update(kw)
    return LanguageModel.from_config(cfg)


def test_layer_pattern_is_cycled_and_overridden():
    model = lm(n_layers=5, layers=["attention", "swa"], overrides={4: "attention", 0: "swa"})
    windows = [layer.mixer.window for layer in model.layers]
    assert windows == [4, 4, None, 4, None]


def test_embeddings_are_tied_by_default_and_can_be_untied():
    tied, untied = lm(), lm(tie_embeddings=False)
    assert tied.head.weight is tied.embedding.weight
    assert untied.head.weight is not untied.embedding.weight
    assert untied.num_params() - tied.num_params() == 50 * 32


def test_non_embedding_params_exclude_token_and_position_tables():
    model = lm(position="learned", max_seq_len=16)
    assert model.num_params() - model.num_params(non_embedding=True) == 50 * 32 + 16 * 32


def test_residual_output_projections_get_scaled_init():
    torch.manual_seed(0)
    model = lm(d_model=256, n_layers=8)
    out_std = model.layers[0].mixer.out_proj.weight.std().item()
    in_std = model.layers[0].mixer.q_proj.weight.std().item()
    assert in_std == pytest.approx(0.02, rel=0.05)
    assert out_std == pytest.approx(0.02 / 4, rel=0.05)  # 16 residual branches (8 mixers, 8 MLPs)


@pytest.mark.parametrize("mlp", [None, "identity"])
def test_mlp_less_stacks_scale_by_their_one_branch_per_layer(mlp):
    torch.manual_seed(0)
    model = lm(d_model=256, n_layers=16, mlp=mlp)
    out_std = torch.cat([layer.mixer.out_proj.weight.flatten() for layer in model.layers]).std().item()
    assert out_std == pytest.approx(0.02 / 4, rel=0.03)  # 16 branches: 1/sqrt(16), not 1/sqrt(32)


@pytest.mark.parametrize(
    "kw", [dict(), dict(mlp="identity"), dict(mlp=None), dict(parallel=True), dict(position="learned"), dict(norm="layernorm")]
)
def test_lm_decode_matches_forward(kw):
    model = lm(layers=["attention", "swa"], **kw).double()
    ids = torch.randint(0, 50, (2, 10))
    assert_model_decode_matches_forward(model, ids)


def test_identity_mlp_means_no_channel_sublayer():
    model = lm(mlp="identity")
    assert all(layer.mlp is None and layer.norm2 is None for layer in model.layers)


def test_generate_is_greedy_consistent_with_forward():
    model = lm().double()
    prompt = torch.randint(0, 50, (2, 4))
    out = model.generate(prompt, max_new_tokens=5, temperature=0)
    assert out.shape == (2, 9) and torch.equal(out[:, :4], prompt)
    for t in range(4, 9):  # each generated token is the argmax of the forward pass on its prefix
        assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_loss_only_counts_labelled_positions():
    model = lm().double()
    ids = torch.randint(0, 50, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = 7
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[:, 3], labels[:, 3])
    torch.testing.assert_close(model.loss(ids, labels), expected)


def test_unknown_block_name_in_layers_is_a_config_error():
    with pytest.raises(ConfigError, match="'gla'.*defined: attention"):
        lm(layers=["gla"])


def test_unknown_block_hyperparameter_names_valid_keys():
    blocks = {**BLOCKS, "attention": {**BLOCKS["attention"], "n_head": 2}}
    with pytest.raises(ConfigError, match="model.blocks.attention.n_head.*Did you mean 'n_heads'"):
        lm(blocks=blocks)


def test_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="d_model.*expects int"):
        lm(d_model="big")


def test_target_outside_project_is_refused():
    with pytest.raises(ConfigError, match="only classes under"):
        lm(blocks={**BLOCKS, "attention": {"_target_": "os.system"}})
