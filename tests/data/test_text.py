import json

import numpy as np
import pytest
import torch

import data.corpus
from data.corpus import DataError
from data.text import TextDataModule
from data.tokenizers import ByteTokenizer, load_tokenizer_file

TEXT = "def f(x):\n    return x ** 2  # ünïcödé ✓\n"


def docs(n=40):
    return [f"document {i}: " + TEXT * (1 + i % 3) for i in range(n)]


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids.max() < 256 and tok.decode(ids) == TEXT
    assert tok.decode(np.append(ids, tok.eos_id)) == TEXT


def test_bpe_trained_on_the_train_split_round_trips_and_reloads(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs()))
    dm = TextDataModule(
        source="files",
        paths=[str(tmp_path / "*.jsonl")],
        tokenizer="bpe",
        bpe_vocab_size=300,
        seq_len=8,
        cache_dir=str(tmp_path / "c"),
        val_fraction=0.2,
    )
    dm.prepare_data()
    tok = dm.tokenizer
    assert tok.vocab_size <= 300
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert len(tok.encode(TEXT)) < len(TEXT.encode())  # merges learned
    saved = next((tmp_path / "c" / "tokenizers").glob("*.json"))
    again = load_tokenizer_file(str(saved))
    assert again.encode(TEXT).tolist() == tok.encode(TEXT).tolist()


def test_tokenizer_from_a_local_path(tmp_path):
    from data.tokenizers import train_bpe

    trained = train_bpe(iter(docs()), 280, tmp_path / "tokenizer.json")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs()))
    dm = TextDataModule(
        source="files",
        paths=[str(tmp_path / "a.jsonl")],
        tokenizer=str(tmp_path),
        seq_len=8,
        cache_dir=str(tmp_path / "c"),
        val_fraction=0.25,
    )
    dm.setup()
    assert dm.vocab_size == trained.vocab_size
    assert dm.tokenizer.encode(TEXT).tolist() == trained.encode(TEXT).tolist()
    assert dm.tokenizer.decode(dm.tokenizer.encode(TEXT)) == TEXT


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files_are_packed_with_eos_between_documents(tmp_path, kind):
    texts = docs()
    if kind == "txt":
        for i, d in enumerate(texts):
            (tmp_path / f"{i:03d}.txt").write_text(d)
    elif kind == "jsonl":
        (tmp_path / "all.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in texts))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), tmp_path / "all.parquet")
    dm = TextDataModule(
        source="files", paths=[str(tmp_path / f"*.{kind}")], seq_len=16, batch_size=4, cache_dir=str(tmp_path / "cache"), val_fraction=0.25
    )
    dm.setup()
    tokens = {s: np.asarray(np.memmap(dm.packed_dir / f"{s}.bin", dtype=np.uint16, mode="r")) for s in ("train", "val")}
    n_docs = sum(int((t == 256).sum()) for t in tokens.values())
    assert n_docs == len(texts)
    assert tokens["val"].size > 0 and tokens["train"].size > tokens["val"].size
    decoded = ByteTokenizer().decode(tokens["train"][: list(tokens["train"]).index(256)])
    assert decoded in texts
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_a_saved_dataset_folder_loads_through_the_hf_path(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": docs()}).save_to_disk(str(tmp_path / "ds"))
    dm = TextDataModule(
        source="hf", dataset=str(tmp_path / "ds"), text_column="content", seq_len=16, cache_dir=str(tmp_path / "c"), val_fraction=0.25
    )
    dm.setup()
    assert dm.meta["train"]["tokens"] + dm.meta["val"]["tokens"] == sum(len(d.encode()) + 1 for d in docs())


def test_a_dataset_name_goes_through_load_dataset(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs()))
    # a builder name stands in for a hub name here: the same load_dataset call, no network
    dm = TextDataModule(source="hf", dataset="json", dataset_config=None, split="train", seq_len=16, cache_dir=str(tmp_path / "c"))
    with pytest.raises(Exception):
        dm.setup()  # 'json' without data_files has nothing to read: proves the name reached load_dataset


def test_the_second_run_reuses_the_cache_without_tokenising(tmp_path, monkeypatch):
    kw = dict(source="stdlib", max_files=20, seq_len=32, cache_dir=str(tmp_path), val_fraction=0.2)
    first = TextDataModule(**kw)
    first.setup()
    calls = []
    monkeypatch.setattr(ByteTokenizer, "encode", lambda self, text: calls.append(text))
    second = TextDataModule(**kw)
    second.setup()
    assert calls == []
    assert second.packed_dir == first.packed_dir
    assert second.meta == first.meta
    assert not list(tmp_path.glob("packed/.tmp-*"))


def test_a_different_tokenizer_or_corpus_gets_another_cache(tmp_path):
    a = TextDataModule(source="stdlib", max_files=20, cache_dir=str(tmp_path), val_fraction=0.2)
    b = TextDataModule(source="stdlib", max_files=21, cache_dir=str(tmp_path), val_fraction=0.2)
    a.prepare_data(), b.prepare_data()
    assert a.packed_dir != b.packed_dir


def test_an_interrupted_pack_leaves_no_cache(tmp_path, monkeypatch):
    def boom(split):
        yield "partial"
        raise KeyboardInterrupt

    dm = TextDataModule(source="stdlib", max_files=5, cache_dir=str(tmp_path))
    monkeypatch.setattr(dm.corpus, "documents", boom)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert not (dm.packed_dir / "meta.json").exists()


def test_stdlib_split_is_deterministic_by_file(tmp_path):
    dm = TextDataModule(source="stdlib", max_files=60, seq_len=32, cache_dir=str(tmp_path), val_fraction=0.2)
    dm.setup()
    c = data.corpus.stdlib_corpus(0.2, 60)
    assert sum(len(d.encode()) for d in c.documents("val")) == dm.meta["val"]["bytes"]
    assert 0 < dm.unigram_entropy < np.log(257)


def test_missing_data_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl.*does not exist"):
        TextDataModule(source="files", paths=[str(tmp_path / "nope.jsonl")])


def test_training_stream_resumes_at_any_batch_and_splits_ranks(tmp_path):
    from data.stream import BatchStream

    def make(idx):
        return {"idx": idx}

    full = BatchStream(100, 4, make, seed=1)
    it = iter(full)
    seq = [next(it)["idx"] for _ in range(60)]  # 2.4 epochs
    resumed = iter(BatchStream(100, 4, make, seed=1, start_batch=37))
    assert torch.equal(next(resumed)["idx"], seq[37])
    assert sorted(torch.cat(seq[:25]).tolist()) == list(range(100))  # each epoch visits every example once
    r0 = iter(BatchStream(100, 2, make, seed=1, rank=0, world_size=2))
    r1 = iter(BatchStream(100, 2, make, seed=1, rank=1, world_size=2))
    for g in range(5):
        assert torch.equal(torch.cat([next(r0)["idx"], next(r1)["idx"]]), seq[g])
