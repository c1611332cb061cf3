"""A file of vectors as the rows of a ``VectorDataModule(path=...)`` (vsmd.datamodules.vectors): read by
vsmd.datamodules.vector_files, split once (seeded) into training and held-out rows, optionally standardised."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from vsmd.datamodules.checks import name_list, transposed_hint
from vsmd.datamodules.vector_base import standardised
from vsmd.datamodules.vector_files import load_vectors


class _RowStream(IterableDataset):
    """Endless training batches of ``batch_size`` rows (all rows if fewer): epoch e is a permutation of the rows
    seeded by (seed, e), cut into n // batch_size batches (the rest of each epoch is left out, a different rest each
    time); batch k is a function of (seed, k) only."""

    def __init__(self, rows: Tensor, batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed, self.position = rows, min(batch_size, len(rows)), seed, 0
        self._perm: tuple[int, Tensor] | None = None

    def __iter__(self):
        per_epoch = len(self.rows) // self.batch_size
        while True:
            epoch, j = divmod(self.position, per_epoch)
            if self._perm is None or self._perm[0] != epoch:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(len(self.rows), generator=gen))
            self.position += 1
            yield self.rows[self._perm[1][j * self.batch_size:(j + 1) * self.batch_size]]


class FileSource:
    """The vectors of one file: ``val_fraction`` of the rows (drawn with ``seed``) held out as the validation set and
    the real set of the test metrics (and of ``vsmd predict``'s figure), the others the training rows; with
    ``standardise`` every column z-scored with the training rows' mean and standard deviation (ddof 0).

    Attributes:
        column_names: the names of the columns used (positions as text for arrays).
        heldout_rows, train_rows: row indices in the file (from 0), sorted.
        standardisation: (mean, std) (float64, (d,)) of the training rows, or None (``standardise: false``).
        identity: the file's resolved path and a fingerprint of its vectors (its path may change, its vectors may
            not).
    """

    def __init__(self, path: str, key: str | None, columns: list[str | int] | None, val_fraction: float,
                 standardise: bool, delimiter: str, encoding: str, seed: int) -> None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be a fraction of the rows in (0, 1), e.g. 0.1, got {val_fraction}")
        if not delimiter:
            raise ValueError("delimiter must be a character, e.g. ',' or ';'")
        self.path = path
        table = load_vectors(path, key, columns, delimiter, encoding)
        self.column_names: list[str] = table.columns
        x = table.values
        n = len(x)
        k = math.floor(val_fraction * n + 0.5)
        if k < 2 or n - k < 2:
            raise ValueError(f"{path} has {n} rows: val_fraction {val_fraction} holds out {k} and trains on {n - k}, "
                             "but each needs at least 2 rows; add rows or change val_fraction"
                             + transposed_hint(n, x.shape[1]))
        perm = np.random.default_rng(seed).permutation(n)
        self.heldout_rows, self.train_rows = np.sort(perm[:k]), np.sort(perm[k:])  # row indices in the file (from 0)
        self.standardisation = self._fit_standardisation(x[self.train_rows], path) if standardise else None
        self.train = standardised(torch.from_numpy(x[self.train_rows]), self.standardisation).float()
        self.heldout = standardised(torch.from_numpy(x[self.heldout_rows]), self.standardisation).float()
        h = hashlib.sha256(np.asarray(x.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(x).tobytes())
        self.identity = {"path": str(Path(path).resolve()), "sha256": h.hexdigest()}

    def __repr__(self) -> str:
        return f"FileSource({self.path!r}, {len(self.train_rows)} training and {len(self.heldout_rows)} held-out rows)"

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def _fit_standardisation(self, x: np.ndarray, path: str) -> tuple[Tensor, Tensor]:
        mean, std = x.mean(0), x.std(0)
        flat = np.flatnonzero(std == 0)
        if len(flat):
            name = self.column_names[int(flat[0])]
            others = [c for j, c in enumerate(self.column_names) if std[j] > 0]
            raise ValueError(f"{path}: column {name!r} is constant ({x[0, flat[0]]:g}) over the training rows, so it "
                             "cannot be standardised; leave it out" + (f" (columns: [{name_list(others)}])" if others else "") +
                             " or set standardise: false")
        return torch.from_numpy(mean), torch.from_numpy(std)

    def fixed_set(self, split: str) -> Tensor:
        """The held-out rows (N, d) in the model's coordinates, for 'val', 'test' and 'predict'."""
        if split not in ("val", "test", "predict"):
            raise ValueError(f"unknown split {split!r}; use val, test or predict")
        return self.heldout

    def stream(self, batch_size: int, seed: int) -> IterableDataset:
        """Endless training batches over the training rows (an epoch is a seeded permutation)."""
        return _RowStream(self.train, batch_size, seed)
