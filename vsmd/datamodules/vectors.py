"""Your own vectors: one file of n vectors of any dimension d (``.npy``, ``.npz``, ``.csv``, ``.parquet``; see
vsmd.datamodules.vector_files), split into training and held-out rows, optionally standardised, served to a vector
model (``ToyVSMD``) exactly as the 2-D toys are (vsmd.datamodules.vector_base)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from vsmd.datamodules.vector_base import StreamLoader, VectorDataBase
from vsmd.datamodules.vector_files import load_vectors
from vsmd.settings import SettingsPolicy


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


class VectorDataModule(VectorDataBase):
    """Vectors from a file, for unconditional generation with ``ToyVSMD`` (set its ``data_dim`` to ``data_dim``).

    The rows are split once (seeded) into training rows and ``val_fraction`` held-out rows; the held-out rows are the
    validation set and the real set of the test metrics (and of ``vsmd predict``'s figure). With ``standardise``
    every column is z-scored with the mean and standard deviation (ddof 0) of the training rows: the model learns in
    those units, ``standardisation`` gives (mean, std) and ``unstandardised(x)`` maps samples back to the data's
    units. Training batches are an endless seeded stream over the training rows (use ``trainer.max_steps``).

    Args:
        path: a ``.npy`` (n, d) array, an ``.npz`` archive, a ``.csv`` with a header line, or a ``.parquet`` file.
        key: the array of an ``.npz`` archive (needed when it holds several).
        columns: the columns to use, by name or position (from 0) for CSV and parquet, by position for arrays;
            None: all of them.
        val_fraction: the fraction of rows held out (rounded; at least 2 held-out and 2 training rows).
        standardise: z-score each column with the training rows' mean and standard deviation.
        delimiter: the CSV's field separator.
        encoding: the CSV's text encoding.
        batch_size: training batch size (at most the number of training rows).
        n_predict: samples ``vsmd predict`` generates.
        seed: the seed of the held-out split and of the training stream.
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings); the
    # file itself is known by ``identity`` (its path may change, its vectors may not)
    DATA_SETTINGS = SettingsPolicy(data=("key", "columns", "val_fraction", "standardise", "seed"),
                                   loading=("path", "delimiter", "encoding", "batch_size", "n_predict"))

    def __init__(self, path: str, key: str | None = None, columns: list[str | int] | None = None,
                 val_fraction: float = 0.1, standardise: bool = True, delimiter: str = ",", encoding: str = "utf-8",
                 batch_size: int = 256, n_predict: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be a fraction of the rows in (0, 1), e.g. 0.1, got {val_fraction}")
        if min(batch_size, n_predict) < 1:
            raise ValueError(f"batch_size and n_predict must be >= 1, got {batch_size} and {n_predict}")
        if not delimiter:
            raise ValueError("delimiter must be a character, e.g. ',' or ';'")
        self.save_hyperparameters()
        self.path, self.batch_size, self.n_predict, self.seed = path, batch_size, n_predict, seed
        table = load_vectors(path, key, columns, delimiter, encoding)
        self.column_names: list[str] = table.columns
        x = table.values
        n = len(x)
        k = math.floor(val_fraction * n + 0.5)
        if k < 2 or n - k < 2:
            raise ValueError(f"{path} has {n} rows: val_fraction {val_fraction} holds out {k} and trains on {n - k}, "
                             "but each needs at least 2 rows; add rows or change val_fraction")
        perm = np.random.default_rng(seed).permutation(n)
        self.heldout_rows, self.train_rows = np.sort(perm[:k]), np.sort(perm[k:])  # row indices in the file (from 0)
        self._standardisation = self._fit_standardisation(x[self.train_rows], path) if standardise else None
        self._train = self.standardised(torch.from_numpy(x[self.train_rows])).float()
        self._heldout = self.standardised(torch.from_numpy(x[self.heldout_rows])).float()
        h = hashlib.sha256(np.asarray(x.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(x).tobytes())
        self.identity = {"path": str(Path(path).resolve()), "sha256": h.hexdigest()}

    def _fit_standardisation(self, x: np.ndarray, path: str) -> tuple[Tensor, Tensor]:
        mean, std = x.mean(0), x.std(0)
        flat = np.flatnonzero(std == 0)
        if len(flat):
            name = self.column_names[int(flat[0])]
            others = [c for j, c in enumerate(self.column_names) if std[j] > 0]
            raise ValueError(f"{path}: column {name!r} is constant ({x[0, flat[0]]:g}) over the training rows, so it "
                             "cannot be standardised; leave it out" + (f" (columns: {others})" if others else "") +
                             " or set standardise: false")
        return torch.from_numpy(mean), torch.from_numpy(std)

    @property
    def data_dim(self) -> int:
        return self._train.shape[1]

    @property
    def standardisation(self) -> tuple[Tensor, Tensor] | None:
        """(mean, std) (float64, (d,)) of the training rows that the model's coordinates are z-scored with, or None
        (``standardise: false``)."""
        return self._standardisation

    def fixed_set(self, split: str) -> Tensor:
        """The held-out rows (N, d) in the model's coordinates, for 'val', 'test' and 'predict'."""
        if split not in ("val", "test", "predict"):
            raise ValueError(f"unknown split {split!r}; use val, test or predict")
        return self._heldout

    def train_set(self) -> Tensor:
        """The training rows (N, d) in the model's coordinates."""
        return self._train

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0  # distinct streams under DDP
        return StreamLoader(_RowStream(self._train, self.batch_size, self.seed + 7919 * rank), batch_size=None)
