"""Vectors for unconditional generation, from one of two sources: your own file of n vectors of any dimension d
(``path``: ``.npy``, ``.npz``, ``.csv``, ``.parquet``; vsmd.datamodules.file_source) or a generated 2-D toy
(``dataset``: the paper's spiral and checkerboard; vsmd.datamodules.toy_source). Either is served to a vector model
(``ToyVSMD``, ``ToyAGM``) through the same loaders (vsmd.datamodules.vector_base)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader

from vsmd.datamodules.file_source import FileSource
from vsmd.datamodules.toy_source import ToySource
from vsmd.datamodules.vector_base import StreamLoader, VectorDataBase
from vsmd.settings import SettingsPolicy

# the options of each source, with their defaults (an option of the other source is refused unless at its default)
FILE_OPTIONS = {"key": None, "columns": None, "val_fraction": 0.1, "standardise": True, "delimiter": ",",
                "encoding": "utf-8"}
TOY_OPTIONS = {"stretch": None, "rotate": None, "n_val": None, "n_test": None}
TOY_DEFAULTS = {"stretch": [1.0, 1.0], "rotate": 0.0, "n_val": 2000, "n_test": 3000}


def _names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


class VectorDataModule(VectorDataBase):
    """Vectors for ``ToyVSMD`` / ``ToyAGM`` (set the model's ``data_dim`` to ``data_dim``), from a file (``path``) or
    a generated 2-D toy (``dataset``): give exactly one.

    A file's rows are split once (seeded) into training rows and ``val_fraction`` held-out rows; the held-out rows
    are the validation set and the real set of the test metrics (and of ``vsmd predict``'s figure). With
    ``standardise`` every column is z-scored with the mean and standard deviation (ddof 0) of the training rows: the
    model learns in those units, ``standardisation`` gives (mean, std) and ``unstandardised(x)`` maps samples back to
    the data's units. Training batches are an endless seeded stream over the training rows.

    A toy (the paper's spiral-8Y: ``dataset: spiral, stretch: [1, 8]``; checkerboard-6X: ``dataset: checkerboard,
    stretch: [6, 1]``) is drawn fresh for every training batch from a seeded stream; its validation, test and predict
    sets are fixed draws of ``n_val``, ``n_test`` and ``n_predict`` points from other seeds. The toys are used in
    their own units (no standardisation). ``Toy2DDataModule`` is this toy source with the defaults of spiral-8Y.

    Either way training draws on without end: train with ``trainer.max_steps``. The source is ``source``
    (a ``FileSource`` or a ``ToySource``). The options of one source are refused with the other.

    Args:
        path: a ``.npy`` (n, d) array, an ``.npz`` archive, a ``.csv`` with a header line, or a ``.parquet`` file.
        key: the array of an ``.npz`` archive (needed when it holds several).
        columns: the columns to use, by name or position (from 0) for CSV and parquet, by position for arrays;
            None: all of them.
        val_fraction: the fraction of rows held out (rounded; at least 2 held-out and 2 training rows).
        standardise: z-score each column with the training rows' mean and standard deviation.
        delimiter: the CSV's field separator.
        encoding: the CSV's text encoding.
        batch_size: training batch size (for a file: at most the number of training rows).
        n_predict: samples ``vsmd predict`` generates.
        seed: the seed of the held-out split (file) or of the fixed sets (toy), and of the training stream.
        dataset: a toy instead of a file: "spiral" or "checkerboard" (2-D).
        stretch: the toy's factors [x, y] per axis; None: [1, 1].
        rotate: then rotate the toy by this many degrees about the origin (counter-clockwise), e.g. 45 for a stretch
            off the coordinate axes, which a diagonal A cannot follow (model ``rotation: pca`` can); None: 0.
        n_val: the toy's validation set size; None: 2000.
        n_test: the toy's real samples for the test metrics; None: 3000 (the paper's PMF-RMSE).
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings); a file
    # itself is known by ``identity`` (its path may change, its vectors may not)
    DATA_SETTINGS = SettingsPolicy(data=("dataset", "stretch", "rotate", "key", "columns", "val_fraction",
                                         "standardise", "seed"),
                                   loading=("path", "delimiter", "encoding", "batch_size", "n_val", "n_test",
                                            "n_predict"))

    def __init__(self, path: str | None = None, key: str | None = None, columns: list[str | int] | None = None,
                 val_fraction: float = 0.1, standardise: bool = True, delimiter: str = ",", encoding: str = "utf-8",
                 batch_size: int = 256, n_predict: int = 1000, seed: int = 0, dataset: str | None = None,
                 stretch: list[float] | None = None, rotate: float | None = None, n_val: int | None = None,
                 n_test: int | None = None) -> None:
        super().__init__()
        given = dict(key=key, columns=columns, val_fraction=val_fraction, standardise=standardise,
                     delimiter=delimiter, encoding=encoding, stretch=stretch, rotate=rotate, n_val=n_val, n_test=n_test)
        self._check_source(path, dataset, given)
        if min(batch_size, n_predict) < 1:
            raise ValueError(f"batch_size and n_predict must be >= 1, got {batch_size} and {n_predict}")
        self.save_hyperparameters()
        if dataset is not None:
            toy = {k: TOY_DEFAULTS[k] if given[k] is None else given[k] for k in TOY_OPTIONS}
            source = ToySource(dataset, n_predict=n_predict, seed=seed, **toy)
        else:
            source = FileSource(path, seed=seed, **{k: given[k] for k in FILE_OPTIONS})
        self.serve(source, batch_size, n_predict, seed)

    @classmethod
    def data_view(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The data that ``settings`` (a checkpoint's or a config's options of this class) stand for, as vsmd compares
        them to refuse other data: the options they leave out at their defaults (a checkpoint from before an option
        existed had its default), and a toy's None options resolved (stretch [1, 1], rotate 0, n_val 2000,
        n_test 3000)."""
        params = inspect.signature(cls.__init__).parameters
        out = {n: p.default for n, p in params.items() if p.default is not p.empty} | dict(settings)
        if out.get("dataset") is not None:
            out |= {k: TOY_DEFAULTS[k] for k in TOY_OPTIONS if out.get(k) is None}
            out.pop("seed", None)  # a toy's seed draws its fixed sets from the same law: another one may be tested
        return out

    @staticmethod
    def _check_source(path: str | None, dataset: str | None, given: dict) -> None:
        """Exactly one source, and no option of the other."""
        if path is None and dataset is None:
            raise ValueError("VectorDataModule needs its vectors: path (a .npy, .npz, .csv or .parquet file of your "
                             "own) or dataset (a generated 2-D toy: spiral or checkerboard)")
        if path is not None and dataset is not None:
            raise ValueError(f"give path (a file of vectors) or dataset (a generated toy), not both: path {path!r}, "
                             f"dataset {dataset!r}")
        if dataset is not None:
            wrong = [k for k, default in FILE_OPTIONS.items() if given[k] != default]
            if wrong:
                raise ValueError(f"{_names(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} to a file (path) only; the "
                                 f"toy dataset {dataset!r} is generated in its own units, with fixed sets of n_val and "
                                 f"n_test points: leave {_names(wrong)} out")
        else:
            wrong = [k for k in TOY_OPTIONS if given[k] is not None]
            if wrong:
                raise ValueError(f"{path}: {_names(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} to a generated toy "
                                 "(dataset: spiral or checkerboard) only; a file's vectors are used as they are, and "
                                 f"its held-out rows are val_fraction of them: leave {_names(wrong)} out")

    def serve(self, source: FileSource | ToySource, batch_size: int, n_predict: int, seed: int) -> None:
        """Serve ``source``'s rows in training batches of ``batch_size`` (a stream seeded by ``seed``)."""
        self.source, self.batch_size, self.n_predict, self.seed = source, batch_size, n_predict, seed

    @property
    def data_dim(self) -> int:
        return self.source.data_dim

    @property
    def path(self) -> str | None:
        """The file (None for a toy)."""
        return getattr(self.source, "path", None)

    @property
    def standardisation(self) -> tuple[Tensor, Tensor] | None:
        """(mean, std) (float64, (d,)) of the training rows that the model's coordinates are z-scored with, or None
        (``standardise: false``, and the toys)."""
        return self.source.standardisation

    @property
    def column_names(self) -> list[str] | None:
        """The file's columns used (None for a toy)."""
        return self.source.column_names

    @property
    def identity(self) -> dict[str, str] | None:
        """The file's resolved path and the fingerprint of its vectors (None for a toy)."""
        return self.source.identity

    def _file(self) -> FileSource:
        if not isinstance(self.source, FileSource):
            raise AttributeError(f"the vectors are generated ({self.source!r}), not read from a file: they have no "
                                 "training or held-out rows")
        return self.source

    @property
    def heldout_rows(self):
        """The file's held-out row indices (from 0), sorted."""
        return self._file().heldout_rows

    @property
    def train_rows(self):
        """The file's training row indices (from 0), sorted."""
        return self._file().train_rows

    def train_set(self) -> Tensor:
        """The file's training rows (N, d) in the model's coordinates."""
        return self._file().train

    def fixed_set(self, split: str) -> Tensor:
        """The real vectors (N, d) of 'val', 'test' or 'predict' in the model's coordinates: a file's held-out rows,
        or a toy's fixed draws."""
        return self.source.fixed_set(split)

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0  # distinct streams under DDP
        return StreamLoader(self.source.stream(self.batch_size, self.seed + 7919 * rank), batch_size=None)
