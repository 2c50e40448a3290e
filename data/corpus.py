"""Text corpora and their packed token caches.

A corpus is a list of documents split deterministically into train and validation. Packing
tokenises every document, appends the end-of-document token and writes one flat token file per
split (uint16, or uint32 for vocabularies over 65,535) plus ``meta.json``, into a directory named
by a hash of (source, tokenizer, settings). The directory is written under a temporary name and
renamed into place, so an interrupted run never leaves a half-written cache, and a second run with
the same settings memory-maps it without tokenising again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arch.config import ConfigError


class DataError(ConfigError):
    """Missing or unreadable data; the message names the file and the fix."""


def is_validation(name: str, val_fraction: float) -> bool:
    """Deterministic split: a document is validation iff crc32(name) lands in the first fraction."""
    return zlib.crc32(name.encode()) % 10_000 < val_fraction * 10_000


@dataclass
class Corpus:
    """Documents of one source: ``fingerprint`` identifies the content for the cache key and
    ``documents(split)`` yields the texts of 'train' or 'val'."""

    fingerprint: dict
    documents: Callable[[str], Iterator[str]]


def stdlib_corpus(val_fraction: float, max_files: int | None = None) -> Corpus:
    """The running interpreter's standard-library sources (``*.py`` outside site-packages, ~30 MB):
    real text on every machine with Python, split by file path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise DataError(f"No Python sources found under the standard library at {root}; use data=files with your own text files.")
    rel = [str(p.relative_to(root)) for p in files]
    fingerprint = {
        "source": "stdlib",
        "python": sys.version.split()[0],
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "val_fraction": val_fraction,
    }

    def documents(split: str) -> Iterator[str]:
        for path, name in zip(files, rel):
            if is_validation(name, val_fraction) == (split == "val"):
                yield path.read_text(encoding="utf-8", errors="replace")

    return Corpus(fingerprint, documents)


def _expand(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise DataError(
                f"Data file {pattern!r} does not exist (no file matches it). Check data.paths: give existing "
                f"files or glob patterns (.txt, .jsonl/.json, .parquet), or use the embedded corpus with data=text."
            )
        found += [Path(m) for m in matches if Path(m).is_file()]
    return found


def dataset_corpus(
    val_fraction: float,
    *,
    paths: list[str] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    cache_dir: str | None = None,
) -> Corpus:
    """Documents read through the ``datasets`` library: local files (``paths``: .txt, one document
    per file; .jsonl/.json and .parquet, one per record) or a dataset name / local dataset folder.
    Documents are split by their index."""
    import datasets

    if paths:
        files = _expand(paths)
        suffixes = {p.suffix for p in files}
        builder = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
        kinds = {builder.get(s) for s in suffixes}
        if None in kinds or len(kinds) != 1:
            raise DataError(
                f"data.paths mixes or includes unsupported file types {sorted(suffixes)}; use one of .txt, .jsonl/.json, .parquet."
            )
        kind = kinds.pop()
        fingerprint = {"source": "files", "files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
        extra = {"sample_by": "document"} if kind == "text" else {}

        def load():
            return datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train", cache_dir=cache_dir, **extra)

    elif dataset:
        local = Path(dataset)
        fingerprint = {"source": "hf", "dataset": dataset, "config": dataset_config, "split": split}
        if local.exists():
            fingerprint["mtime"] = local.stat().st_mtime_ns

        def load():
            if (local / "dataset_info.json").exists() or (local / "state.json").exists():
                return datasets.load_from_disk(str(local))
            return datasets.load_dataset(dataset, dataset_config, split=split, cache_dir=cache_dir)

    else:
        raise DataError("data.source needs data.paths (local files) or data.dataset (a dataset name or folder).")
    fingerprint.update({"text_column": text_column, "val_fraction": val_fraction})

    def documents(which: str) -> Iterator[str]:
        ds = load()
        if text_column not in ds.column_names:
            raise DataError(f"Dataset has no column {text_column!r} (columns: {ds.column_names}); set data.text_column.")
        for i, row in enumerate(ds):
            if is_validation(str(i), val_fraction) == (which == "val"):
                yield row[text_column]

    return Corpus(fingerprint, documents)


def cache_key(*parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pack(corpus: Corpus, tokenizer, directory: Path) -> None:
    """Tokenise both splits of ``corpus`` into ``directory`` (train.bin, val.bin, meta.json), atomically."""
    if (directory / "meta.json").exists():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    meta = {"tokenizer": tokenizer.spec, "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name, "corpus": corpus.fingerprint}
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for split in ("train", "val"):
        n_tokens = n_bytes = 0
        with open(tmp / f"{split}.bin", "wb") as f:
            for text in corpus.documents(split):
                ids = np.append(tokenizer.encode(text), tokenizer.eos_id).astype(dtype)
                f.write(ids.tobytes())
                n_tokens += len(ids)
                n_bytes += len(text.encode("utf-8"))
                if split == "train":
                    counts += np.bincount(ids, minlength=tokenizer.vocab_size)
        if n_tokens < 2:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"The {split} split of {corpus.fingerprint.get('source')} data is empty; add documents or change data.val_fraction."
            )
        meta[split] = {"tokens": n_tokens, "bytes": n_bytes}
    p = counts[counts > 0] / counts.sum()
    meta["unigram_entropy"] = float(-(p * np.log(p)).sum())  # nats/token of the train split
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(directory)
    except OSError:  # another process finished the same cache first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def load_packed(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((directory / "meta.json").read_text())
    tokens = {s: np.memmap(directory / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val")}
    return meta, tokens
