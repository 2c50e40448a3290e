import pytest
import torch

from arch.config import ConfigError
from data.mqar import MQARDataModule, generate_mqar

V, L, K = 512, 64, 8


@pytest.fixture(scope="module")
def examples():
    return generate_mqar(2000, L, K, vocab_size=V, seed=3)


def test_keys_and_values_come_from_their_halves_of_the_vocabulary(examples):
    x, y = examples
    keys, values = x[:, 0 : 2 * K : 2], x[:, 1 : 2 * K : 2]
    assert keys.min() >= 1 and keys.max() < V // 2
    assert values.min() >= V // 2 and values.max() < V
    assert all(len(set(r.tolist())) == K for r in keys) and all(len(set(r.tolist())) == K for r in values)


def test_labels_only_at_query_positions(examples):
    x, y = examples
    labelled = y != -100
    assert (labelled.sum(1) == K).all()
    assert not labelled[:, : 2 * K].any()
    assert (x[labelled] < V // 2).all() and (x[labelled] >= 1).all()  # a key is read where a value is asked
    query_region = x[:, 2 * K :]
    assert ((query_region != 0) == labelled[:, 2 * K :]).all()  # everything else is filler
    assert (torch.nonzero(labelled)[:, 1] % 2 == 0).all()  # keys sit at 2K + 2g


def test_every_label_is_recoverable_from_the_context(examples):
    x, y = examples
    for row_x, row_y in zip(x[:200], y[:200]):
        context = dict(zip(row_x[0 : 2 * K : 2].tolist(), row_x[1 : 2 * K : 2].tolist()))
        for pos in torch.nonzero(row_y != -100).flatten().tolist():
            assert context[row_x[pos].item()] == row_y[pos].item()


def test_query_positions_follow_the_power_law(examples):
    x, y = examples
    slots = (torch.nonzero(y != -100)[:, 1] - 2 * K) // 2
    counts = torch.bincount(slots, minlength=(L - 2 * K) // 2).float()
    # a = 0.01 weights slot g by ~1/(g+1): the first slots are far more likely than the last ones
    assert counts[:4].sum() > 3 * counts[-4:].sum()
    uniform = generate_mqar(2000, L, K, vocab_size=V, power_a=1.0, seed=3)[1]
    u_slots = (torch.nonzero(uniform != -100)[:, 1] - 2 * K) // 2
    u_counts = torch.bincount(u_slots, minlength=(L - 2 * K) // 2).float()
    assert u_counts[:4].sum() < 1.5 * u_counts[-4:].sum()


def test_earlier_keys_are_queried_sooner(examples):
    x, y = examples
    keys = x[:, 0 : 2 * K : 2]
    first_pos = torch.stack([(x == keys[:, i : i + 1]).int().flip(1).argmax(1) for i in (0, K - 1)])  # last occurrence
    last_occurrence = L - 1 - first_pos
    assert (last_occurrence[0] < last_occurrence[1]).float().mean() > 0.5


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (generate_mqar(50, L, K, V, seed=s)[0] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_and_test_slices_use_different_seeds_and_do_not_overlap():
    dm = MQARDataModule(
        vocab_size=V,
        train_slices=[{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 500}, {"seq_len": 64, "num_kv_pairs": 8, "num_examples": 500}],
        test_slices=[{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 200}, {"seq_len": 64, "num_kv_pairs": 8, "num_examples": 200}],
        batch_size=8,
    )
    dm.setup()
    assert dm.val_slices == ["L32_K4", "L64_K8"]
    train_x = dm.train_data[0]
    assert train_x.shape == (1000, 64)  # the shorter slice is padded to the longest
    train_rows = {tuple(r[:32].tolist()) for r in train_x}
    test_rows = {tuple(r.tolist()) for r in dm.test_data[0][0]}
    assert not train_rows & test_rows
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 64) and batch["labels"].shape == (8, 64)


def test_random_non_queries_fill_the_gaps_but_keep_labels():
    x, y = generate_mqar(100, L, K, V, random_non_queries=True, seed=0)
    assert (x[:, 2 * K :] != 0).float().mean() > 0.9
    assert ((y != -100).sum(1) == K).all()


@pytest.mark.parametrize("length,k", [(63, 4), (64, 17), (600, 4)])
def test_invalid_slices_are_config_errors(length, k):
    with pytest.raises(ConfigError, match="MQAR slice"):
        generate_mqar(10, length, k, vocab_size=V)


def test_unknown_slice_key_is_a_config_error():
    with pytest.raises(ConfigError, match="num_kv_pair"):
        MQARDataModule(vocab_size=V, train_slices=[{"seq_len": 64, "num_kv_pair": 4, "num_examples": 10}])


def test_slice_shorthand_makes_one_train_and_one_test_slice():
    dm = MQARDataModule(vocab_size=V, slice="L32_K2", num_train_examples=100, num_test_examples=10)
    assert [(s.seq_len, s.num_kv_pairs, s.num_examples) for s in dm.train_slices] == [(32, 2, 100)]
    assert dm.val_slices == ["L32_K2"]
    with pytest.raises(ConfigError, match="form 'L<seq_len>_K<kv_pairs>'"):
        MQARDataModule(vocab_size=V, slice="64x4")


@pytest.mark.parametrize("slice_name, rows", [("L32_K2", 8), ("L64_K4", 4)])
def test_batch_tokens_keeps_the_tokens_per_step_across_lengths(slice_name, rows):
    dm = MQARDataModule(vocab_size=V, slice=slice_name, num_train_examples=64, num_test_examples=8, batch_size=3, batch_tokens=256)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (rows, 256 // rows)


def test_batch_tokens_below_the_longest_length_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_tokens=32 must be an int of at least the longest training length"):
        MQARDataModule(vocab_size=V, slice="L64_K4", num_train_examples=10, batch_tokens=32)
