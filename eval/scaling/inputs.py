"""Inputs of a scaling fit: final losses of a sweep, read from a CSV of points or from run directories.

Each run gives N (`n_params`, parameters), D (`n_tokens`, training tokens), C (`flops`, training
FLOPs) and its final loss L; a missing D is derived as C / (6 N) and a missing C as 6 N D
(Chinchilla's convention). The CSV columns (`params`, `tokens`, `flops`, `loss`, `arch`) and the
`metrics.json` keys are the public input format and keep their names.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eval.scaling.errors import ScalingInputError

ALL_ARCHES = "all"  # the architecture name of points whose input does not name one


@dataclass(frozen=True)
class Points:
    """Final losses of a sweep: one entry per run, arrays of shape [n].

    `n_params` is N, `n_tokens` is D, `flops` is C; `tokens_from_flops` is True when D was derived
    as C / (6 N) (the input had no token count); `arch` names the architecture of each run ("all"
    when the input does not say).
    """

    n_params: np.ndarray
    n_tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    arch: np.ndarray
    tokens_from_flops: bool
    source: str

    @property
    def params(self) -> np.ndarray:
        """Former name of `n_params` (kept for callers of the single-module eval.scaling)."""
        return self.n_params

    @property
    def tokens(self) -> np.ndarray:
        """Former name of `n_tokens` (kept for callers of the single-module eval.scaling)."""
        return self.n_tokens

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, mask: np.ndarray) -> Points:
        """The points where the boolean or index `mask` selects."""
        return replace(
            self,
            n_params=self.n_params[mask],
            n_tokens=self.n_tokens[mask],
            flops=self.flops[mask],
            loss=self.loss[mask],
            arch=self.arch[mask],
        )

    def arches(self) -> list[str]:
        """Architecture names in order of first appearance."""
        return list(dict.fromkeys(self.arch.tolist()))

    def without_highest_losses(self, k: int) -> Points:
        """Drop the k highest-loss points of each architecture (Besiroglu et al. drop 5 outliers)."""
        if k == 0:
            return self
        keep = np.ones(len(self), dtype=bool)
        for name in self.arches():
            members = np.flatnonzero(self.arch == name)
            keep[members[np.argsort(self.loss[members])[-k:]]] = False
        return self.subset(keep)


def _validated(values: dict[str, list[float]], where: list[str], source: str) -> None:
    """Raise ScalingInputError at the first value (of column name -> values) that is not positive and finite."""
    for column, column_values in values.items():
        for value, origin in zip(column_values, where):
            if not (math.isfinite(value) and value > 0):
                raise ScalingInputError(
                    f"{origin}: {column} = {value!r} is not a positive finite number. Every run "
                    f"needs a positive parameter count, token count, FLOP count and loss; remove "
                    f"diverged or unfinished runs from {source} before fitting."
                )


def _build_points(
    n_params: list[float],
    n_tokens: list[float] | None,
    flops: list[float] | None,
    loss: list[float],
    arch: list[str],
    where: list[str],
    source: str,
) -> Points:
    """Validate the columns (named as in the CSV) and fill in D = C / (6 N) or C = 6 N D."""
    columns = {"params": n_params, "loss": loss}
    if n_tokens is not None:
        columns["tokens"] = n_tokens
    if flops is not None:
        columns["flops"] = flops
    _validated(columns, where, source)
    n = np.asarray(n_params, dtype=float)
    if n_tokens is None:
        c = np.asarray(flops, dtype=float)
        d = c / (6.0 * n)
    else:
        d = np.asarray(n_tokens, dtype=float)
        c = 6.0 * n * d if flops is None else np.asarray(flops, dtype=float)
    loss_array, arch_array = np.asarray(loss, dtype=float), np.asarray(arch, dtype=str)
    return Points(n, d, c, loss_array, arch_array, n_tokens is None, source)


def load_points(path: str | Path) -> Points:
    """Read a CSV of final losses.

    Columns: `params` (N), `tokens` (D) and/or `flops` (C), `loss`, optional `arch`. With only
    `flops`, D = C / (6 N) (Chinchilla's convention); with only `tokens`, C = 6 N D.
    """
    path = Path(path)
    if not path.is_file():
        raise ScalingInputError(
            f"points file {str(path)!r} does not exist or is not a file. Pass a CSV with one row per "
            f"run and columns params, tokens or flops, loss (and optionally arch), e.g. "
            f"a file of (params, flops, loss) rows such as the Chinchilla Fig. 4 points."
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    missing = [name for name in ("params", "loss") if name not in header]
    if "tokens" not in header and "flops" not in header:
        missing.append("tokens or flops")
    if missing:
        raise ScalingInputError(
            f"points file {str(path)!r} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(header) or 'no header'}. Expected params (parameters N), tokens (training "
            f"tokens D) and/or flops (training FLOPs C; then D = C / (6 N)), loss, and optionally arch."
        )
    where = [f"{path}:{i + 2}" for i in range(len(rows))]

    def column(name: str) -> list[float] | None:
        if name not in header:
            return None
        values = []
        for row, origin in zip(rows, where):
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                raise ScalingInputError(
                    f"{origin}: column {name} holds {row[name]!r}, which is not a number. Every "
                    f"row needs numeric params, tokens/flops and loss."
                ) from None
        return values

    arch = [row["arch"].strip() for row in rows] if "arch" in header else [ALL_ARCHES] * len(rows)
    return _build_points(
        column("params"), column("tokens"), column("flops"), column("loss"), arch, where, str(path)
    )


def load_runs(directories: list[str | Path], params_key: str = "total") -> Points:
    """Read `metrics.json` from run directories or sweep roots (searched recursively).

    Each file holds at least {"model", "params_total", "params_non_embedding", "tokens", "flops",
    "val/loss"}; `params_key` ("total" or "non_embedding", as `--params-key`) picks which parameter
    count is N; `model` becomes `arch`.
    """
    files: list[Path] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.exists():
            raise ScalingInputError(
                f"run directory {str(directory)!r} does not exist. Pass run directories or sweep "
                f"roots that contain metrics.json files (searched recursively)."
            )
        found = [directory] if directory.is_file() else sorted(directory.rglob("metrics.json"))
        files.extend(found)
    files = list(dict.fromkeys(path.resolve() for path in files))
    if not files:
        raise ScalingInputError(
            f"no metrics.json found under {', '.join(map(str, directories))}. A finished run writes "
            f"metrics.json with model, params_total, params_non_embedding, tokens, flops and val/loss (as train.py writes them)."
        )
    n_params_key = f"params_{params_key}"
    required = ("model", n_params_key, "tokens", "flops", "val/loss")
    records = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScalingInputError(f"cannot read {path} as JSON ({err}).") from None
        missing = [key for key in required if key not in record]
        if missing:
            raise ScalingInputError(
                f"{path} lacks key(s) {', '.join(missing)}; it has {', '.join(record) or 'none'}. "
                f"The scaling fit needs {', '.join(required)} (--params-key chooses params_total or "
                f"params_non_embedding)."
            )
        records.append(record)
    where = [str(path) for path in files]
    return _build_points(
        [float(r[n_params_key]) for r in records],
        [float(r["tokens"]) for r in records],
        [float(r["flops"]) for r in records],
        [float(r["val/loss"]) for r in records],
        [str(r["model"]) for r in records],
        where,
        ", ".join(map(str, directories)),
    )
