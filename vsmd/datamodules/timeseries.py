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
from pathlib import Path

import numpy as np

from vsmd.caller import option
from vsmd.datamodules.series_windows import (  # noqa: F401 (GroupedSeries, check_finite, window_batch: their old home)
    ForecastDataModule,
    GroupedSeries,
    _quiet,
    check_finite,
    group,
    split_entries,
    window_batch,
)
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
    train, test = split_entries(values, pd.Period(start, freq=freq), prediction_length, windows)
    meta = MetaData(**metadata(cardinality=n_series, freq=freq, prediction_length=prediction_length))
    with _quiet():
        TrainDatasets(metadata=meta, train=train, test=test).save(path_str=str(target), writer=JsonLinesWriter(),
                                                                  overwrite=True)
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
                         f"dataset (or is to hold its download), e.g. {option('data.data_dir', 'data')}")
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
        return group(datasets, name, DATASETS[name][2])
    with tempfile.TemporaryDirectory() as tmp:  # archive in a read-only folder: convert, read, forget
        convert_gp_copula_archive(root / f"{name}.tar.gz", name, Path(tmp) / name)
        with _quiet():
            datasets = get_dataset(name, path=Path(tmp))
        check_finite(datasets, root / f"{name}.tar.gz")
        return group(datasets, name, DATASETS[name][2])



class GluonTSDataModule(ForecastDataModule):
    """A GluonTS multivariate dataset grouped into one series, cut into TimeGrad-style windows
    (``ForecastDataModule``: a window holds context + largest lag past steps and prediction_length future steps).

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

    def known(self) -> tuple[str, int, int]:
        return DATASETS[self.hparams.dataset][:3]

    def too_short(self, steps: int, need: int) -> str:
        return (f"{self.hparams.dataset}: the train split has {steps} steps but a window needs {need} (context + "
                "max lag + prediction length); shorten the context or the lags")

    def prepare_data(self) -> None:
        materialise(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)

    def load(self) -> GroupedSeries:
        return load_series(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)
