"""GluonTS multivariate forecasting data (paper section 5.2): Exchange, Solar, Electricity (the GP-Copula splits).

Loading order (``load_series``), all through GluonTS's own code:

1. a materialised dataset ``data_dir/<name>`` (``metadata.json``, ``train/``, ``test/``), read by ``get_dataset``;
2. else the GP-Copula archive ``data_dir/<name>.tar.gz`` (as GluonTS downloads it, with the old
   ``metadata/metadata.json``), converted offline with GluonTS's GP-Copula recipe into ``data_dir/<name>``
   (into a temporary folder when data_dir is read-only); the archive is left in place;
3. else GluonTS's normal download (``download=True``), materialised in a temporary folder and moved into place
   only when complete.

With nothing in place and no network, a ``FileNotFoundError`` names the archive and where to put it.

The series are grouped into one multivariate series with ``MultivariateGrouper``: the train split gives one
(D, T) array; the test split gives the rolling windows (5 for Exchange, 7 for Solar and Electricity), window k
holding every series up to its k-th forecast end.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vsmd.datamodules.toy import StreamLoader
from vsmd.settings import SettingsPolicy

DATASETS = {  # name: (freq, number of series, prediction length, rolling test windows)
    "exchange_rate_nips": ("B", 8, 30, 5),
    "solar_nips": ("h", 137, 24, 7),
    "electricity_nips": ("h", 370, 24, 7),
}

# TimeGrad's lag sets per frequency (pts `lags_for_fourier_time_features_from_frequency`).
DEFAULT_LAGS = {"B": [1, 2], "D": [1, 7, 14], "h": [1, 24, 168], "H": [1, 24, 168]}


def default_lags(freq: str) -> list[int]:
    return list(DEFAULT_LAGS.get(freq, [1]))


@contextlib.contextmanager
def _quiet():
    """pandas warns on every business-day Period operation (harmless on pandas 2.x)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Period with BDay freq.*")
        yield


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def convert_gp_copula_archive(archive: Path, name: str, target: Path) -> Path:
    """Materialise the GP-Copula archive ``archive`` as ``target`` with GluonTS's recipe, without a download.

    The steps are those of ``gluonts.dataset.repository._gp_copula_2019.generate_gp_copula_dataset`` minus the
    download and minus its clean-up, which would delete the archive.
    """
    from gluonts.dataset.common import MetaData, TrainDatasets
    from gluonts.dataset.jsonl import JsonLinesWriter
    from gluonts.dataset.repository._gp_copula_2019 import datasets_info, get_data
    from gluonts.dataset.repository._util import metadata
    from gluonts.util import safe_extractall

    info = datasets_info[name]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            with tarfile.open(archive) as tar:
                safe_extractall(tar, path=Path(tmp))
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"{archive} is not a readable .tar.gz archive ({err}); replace it with the GP-Copula "
                             f"archive {name}.tar.gz") from None
        src = Path(tmp) / name
        if not (src / "train").is_dir() or not (src / "test").is_dir():
            raise ValueError(f"{archive} does not hold {name}/train and {name}/test (the GP-Copula layout)")
        with _quiet():
            train, test = get_data(src / "train", info), get_data(src / "test", info)
            meta = MetaData(**metadata(cardinality=info.num_series, freq=info.freq,
                                       prediction_length=info.prediction_length))
            out = Path(tmp) / "materialised"
            TrainDatasets(metadata=meta, train=train, test=test).save(path_str=str(out), writer=JsonLinesWriter(),
                                                                      overwrite=True)
        out.rename(target)
    return target


def write_materialised(values: np.ndarray, target: Path, start: str, freq: str, prediction_length: int,
                       windows: int) -> Path:
    """Write a (D, T) array as a materialised GluonTS dataset at ``target`` with GluonTS's own writer.

    The train split is the first T - windows * prediction_length steps; test window k (1..windows) holds every
    series up to T - (windows - k) * prediction_length steps, as in the GP-Copula datasets.
    """
    import pandas as pd
    from gluonts.dataset.common import MetaData, TrainDatasets
    from gluonts.dataset.jsonl import JsonLinesWriter
    from gluonts.dataset.repository._util import metadata

    n_series, length = values.shape
    n_train = length - windows * prediction_length
    if n_train < 1:
        raise ValueError(f"{length} steps leave no training data for {windows} windows of {prediction_length}")
    period = pd.Period(start, freq=freq)

    def entries(lengths):
        return [{"start": period, "target": values[i, :n], "feat_static_cat": [i], "item_id": i}
                for n in lengths for i in range(n_series)]

    meta = MetaData(**metadata(cardinality=n_series, freq=freq, prediction_length=prediction_length))
    with _quiet():
        TrainDatasets(metadata=meta, train=entries([n_train]),
                      test=entries([n_train + prediction_length * k for k in range(1, windows + 1)])).save(
            path_str=str(target), writer=JsonLinesWriter(), overwrite=True)
    return target


def _download(name: str, root: Path) -> None:
    """GluonTS's own download and materialisation, into a temporary folder moved into place when complete."""
    from gluonts.dataset.repository import get_dataset

    created = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            try:
                with _quiet():
                    get_dataset(name, path=Path(tmp))
            except OSError as err:  # URLError is an OSError
                raise FileNotFoundError(_missing_message(name, root, f"the download failed ({err})")) from None
            (Path(tmp) / name).rename(root / name)
    except BaseException:
        for p in created:  # a failed download leaves no empty data folder behind (innermost first)
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _missing_message(name: str, root: Path, why: str) -> str:
    return (f"dataset {name!r} is not in {root}: {why}. Put the GP-Copula archive {name}.tar.gz (as GluonTS "
            f"downloads it from https://raw.githubusercontent.com/mbohlkeschneider/gluon-ts/mv_release/datasets/"
            f"{name}.tar.gz) into {root}/, or a materialised GluonTS dataset folder at {root / name}/, or run "
            f"online with data.download: true")


def _writable(root: Path) -> bool:
    """Whether ``root`` could be written (or created), without creating it."""
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return False
    if p != root:
        return os.access(p, os.W_OK | os.X_OK)
    try:
        with tempfile.TemporaryFile(dir=root):
            return True
    except OSError:
        return False


def materialise(name: str, data_dir: str | Path, download: bool = True) -> None:
    """Make ``data_dir/<name>`` exist (from the archive, else by download) when data_dir is writable."""
    _check_name(name)
    root = Path(data_dir).expanduser()
    existing = next((p for p in (root, *root.parents) if p.exists()), root)
    if not existing.is_dir() and existing.exists():
        raise ValueError(f"data_dir {root}: {existing} is a file, not a folder; pass the folder that holds the "
                         "dataset (or is to hold its download), e.g. --data.init_args.data_dir data")
    folder, archive = root / name, root / f"{name}.tar.gz"
    if folder.exists():
        if not (folder / "metadata.json").is_file():
            raise ValueError(f"{folder} exists but is not a materialised GluonTS dataset (no metadata.json); move "
                             "it away or complete it")
        return
    if archive.is_file():
        if _writable(root):
            convert_gp_copula_archive(archive, name, folder)
        return  # read-only data_dir: load_series converts into a temporary folder
    if not download:
        raise FileNotFoundError(_missing_message(name, root, "no archive there and data.download is false"))
    if not _writable(root):
        raise FileNotFoundError(_missing_message(name, root, "and the folder is not writable for a download"))
    _download(name, root)


def load_series(name: str, data_dir: str | Path, download: bool = True) -> "GroupedSeries":
    """The grouped series of ``name`` (see the module docstring for the loading order)."""
    from gluonts.dataset.repository import get_dataset

    materialise(name, data_dir, download)
    root = Path(data_dir).expanduser()
    if (root / name).exists():
        with _quiet():
            datasets = get_dataset(name, path=root)
        check_finite(datasets, root / name)
        return group(datasets, name)
    with tempfile.TemporaryDirectory() as tmp:  # archive in a read-only folder: convert, read, forget
        convert_gp_copula_archive(root / f"{name}.tar.gz", name, Path(tmp) / name)
        with _quiet():
            datasets = get_dataset(name, path=Path(tmp))
        check_finite(datasets, root / f"{name}.tar.gz")
        return group(datasets, name)


def check_finite(datasets, source: Path) -> None:
    """Refuse series with missing (NaN) or infinite values, naming the file, the series and the time index.

    vsmd does not model missing values (GluonTS marks them with an observed-values mask; a diffusion model would
    need that mask in its loss and its lags), so they are refused rather than turned into NaN losses or NaN
    forecasts.
    """
    for split in ("train", "test"):
        for k, entry in enumerate(getattr(datasets, split)):
            target = np.asarray(entry["target"], dtype=np.float64)
            bad = ~np.isfinite(target)
            if bad.any():
                first = int(np.flatnonzero(bad.reshape(-1))[0]) % target.shape[-1]
                raise ValueError(f"{source} ({split} split): series {entry.get('item_id', k)} (entry {k}) has "
                                 f"{int(bad.sum())} missing or infinite values, the first at time index {first}. vsmd "
                                 "does not model missing values: fill them (e.g. forward fill) or drop the series, "
                                 "and write the dataset again.")


@dataclass
class GroupedSeries:
    """One multivariate series: the train split (D, T) and the rolling test windows (D, T_k)."""

    freq: str
    prediction_length: int
    start: object                # pandas Period of the first time step
    train: np.ndarray            # (D, T_train) float32
    test: list[np.ndarray]       # W arrays (D, T_k), increasing T_k
    time_features: np.ndarray    # (T_max, F) float32 over the longest series

    @property
    def target_dim(self) -> int:
        return self.train.shape[0]


def group(datasets, name: str) -> GroupedSeries:
    """Group a GluonTS ``TrainDatasets`` with ``MultivariateGrouper`` and compute its time features."""
    import pandas as pd
    from gluonts.dataset.multivariate_grouper import MultivariateGrouper
    from gluonts.time_feature import time_features_from_frequency_str

    meta = datasets.metadata
    freq = {"H": "h"}.get(meta.freq, meta.freq)  # old materialised folders spell hourly "H"
    pred_len = meta.prediction_length or DATASETS[name][2]
    with _quiet():
        n_train = len(datasets.train)
        train = list(MultivariateGrouper(max_target_dim=n_train)(datasets.train))
        n_test = len(datasets.test)
        if n_test % n_train:
            raise ValueError(f"{name}: {n_test} test entries are not a whole number of windows of {n_train} series")
        test = list(MultivariateGrouper(num_test_dates=n_test // n_train, max_target_dim=n_train)(datasets.test))
        start = train[0]["start"]
        t_max = max(e["target"].shape[1] for e in test + train)
        index = pd.period_range(start, periods=t_max, freq=start.freq)
        feats = np.stack([f(index) for f in time_features_from_frequency_str(freq)], axis=1)
    test_arrays = sorted((np.asarray(e["target"], dtype=np.float32) for e in test), key=lambda a: a.shape[1])
    return GroupedSeries(freq, pred_len, start, np.asarray(train[0]["target"], dtype=np.float32), test_arrays,
                         feats.astype(np.float32))


class _WindowStream(IterableDataset):
    """Training windows from the train split, ``n_batches`` per epoch; batch k is a function of (seed, k) only."""

    def __init__(self, series: GroupedSeries, history: int, batch_size: int, n_batches: int, seed: int) -> None:
        self.series, self.history, self.batch_size, self.seed = series, history, batch_size, seed
        self.n_batches = n_batches
        self.position = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        s = self.series
        span = self.history + s.prediction_length
        n_ends = s.train.shape[1] - span + 1
        for _ in range(self.n_batches):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            self.position += 1
            starts = torch.randint(0, n_ends, (self.batch_size,), generator=gen).numpy()
            yield window_batch(s, s.train, starts, self.history, s.prediction_length)


def window_batch(series: GroupedSeries, array: np.ndarray, starts: np.ndarray, history: int,
                 future: int) -> dict[str, torch.Tensor]:
    """Windows [s, s + history + future) of ``array`` (D, T): target (B, L, D) and time features (B, L, F)."""
    idx = starts[:, None] + np.arange(history + future)[None]
    return {"target": torch.from_numpy(np.ascontiguousarray(array[:, idx].transpose(1, 2, 0))),
            "time_feat": torch.from_numpy(series.time_features[idx])}


class GluonTSDataModule(pl.LightningDataModule):
    """A GluonTS multivariate dataset grouped into one series, cut into TimeGrad-style windows.

    A window holds ``history = context_length + max(lags)`` past steps and ``prediction_length`` future steps.
    The model decides context length and lags; the DataModule reads them from the model it is trained with
    (``model.window_history(prediction_length)``), or from ``history`` when used on its own.

    Args:
        dataset: exchange_rate_nips, solar_nips or electricity_nips (GluonTS names).
        data_dir: where the dataset (folder or GP-Copula archive) lives or is downloaded to.
        download: allow GluonTS's download when neither the folder nor the archive is in data_dir.
        batch_size: training windows per batch.
        num_batches_per_epoch: training batches per epoch (TimeGrad's convention); windows never repeat.
        n_val: fixed windows from the train split for the validation loss.
        history: past steps per window when no model says (None: 2 x prediction_length + 1).
        seed: seed of the window stream and the validation windows.
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings)
    DATA_SETTINGS = SettingsPolicy(data=("dataset", "history"),
                                   loading=("data_dir", "download", "batch_size", "num_batches_per_epoch", "n_val",
                                            "seed"))

    def __init__(self, dataset: str = "exchange_rate_nips", data_dir: str = "data", download: bool = True,
                 batch_size: int = 64, num_batches_per_epoch: int = 100, n_val: int = 256,
                 history: int | None = None, seed: int = 0) -> None:
        super().__init__()
        _check_name(dataset)
        if batch_size < 1 or num_batches_per_epoch < 1 or n_val < 1:
            raise ValueError(f"batch_size, num_batches_per_epoch and n_val must be >= 1, got {batch_size}, "
                             f"{num_batches_per_epoch}, {n_val}")
        self.save_hyperparameters()
        self.series: GroupedSeries | None = None

    # Facts about the data, valid after prepare_data/setup.
    @property
    def freq(self) -> str:
        return DATASETS[self.hparams.dataset][0] if self.series is None else self.series.freq

    @property
    def target_dim(self) -> int:
        return DATASETS[self.hparams.dataset][1] if self.series is None else self.series.target_dim

    @property
    def prediction_length(self) -> int:
        return DATASETS[self.hparams.dataset][2] if self.series is None else self.series.prediction_length

    @property
    def history(self) -> int:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None and hasattr(model, "window_history"):
            return int(model.window_history(self.prediction_length))
        return self.hparams.history or 2 * self.prediction_length + 1

    def prepare_data(self) -> None:
        materialise(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.series is None:
            self.series = load_series(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)
        need = self.history + self.prediction_length
        if self.series.train.shape[1] < need:
            raise ValueError(f"{self.hparams.dataset}: the train split has {self.series.train.shape[1]} steps but "
                             f"a window needs {need} (context + max lag + prediction length); shorten the context "
                             "or the lags")

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seed = self.hparams.seed + 7919 * rank  # distinct streams under DDP
        stream = _WindowStream(self.series, self.history, self.hparams.batch_size,
                               self.hparams.num_batches_per_epoch, seed)
        return StreamLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        s, h = self.series, self.history
        gen = torch.Generator().manual_seed(self.hparams.seed + 12345)
        starts = torch.randint(0, s.train.shape[1] - h - s.prediction_length + 1, (self.hparams.n_val,),
                               generator=gen).numpy()
        batch = window_batch(s, s.train, np.sort(starts), h, s.prediction_length)
        return DataLoader(_Batches(batch, self.hparams.batch_size), batch_size=None)

    def test_windows(self) -> dict:
        """The rolling test windows: target (W, history, D), future (W, H, D), time_feat (W, history + H, F) and
        forecast_start (W period strings)."""
        s, h, p = self.series, self.history, self.prediction_length
        batches = []
        for k, arr in enumerate(s.test):
            if arr.shape[1] < h + p:
                raise ValueError(f"test window {k} has {arr.shape[1]} steps, fewer than history + horizon {h + p}")
            batches.append(window_batch(s, arr, np.array([arr.shape[1] - h - p]), h, p))
        out: dict = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
        out["future"] = out["target"][:, h:]
        out["target"] = out["target"][:, :h]
        with _quiet():
            out["forecast_start"] = [str(s.start + (arr.shape[1] - p)) for arr in s.test]
        return out

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(self.test_windows(), len(self.series.test)), batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()



class _Batches(torch.utils.data.Dataset):
    """Fixed tensors served in consecutive slices of ``size``."""

    def __init__(self, tensors: dict, size: int) -> None:
        self.tensors, self.size = tensors, size
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return -(-self.n // self.size)

    def __getitem__(self, i: int) -> dict:
        return {k: v[i * self.size:(i + 1) * self.size] for k, v in self.tensors.items()}
