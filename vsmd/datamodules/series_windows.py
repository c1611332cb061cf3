"""One multivariate series cut into TimeGrad-style windows: the machinery every forecasting DataModule shares.

A forecasting DataModule says where its series come from (``load`` returns a ``GroupedSeries``: a GluonTS dataset
grouped with ``MultivariateGrouper`` by ``group``); ``ForecastDataModule`` serves the training window stream, the
validation windows and the rolling test windows from it. The GP-Copula datasets (``GluonTSDataModule``) and users'
own files (``SeriesFileDataModule``) are its two sources.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vsmd.datamodules.toy import StreamLoader


@contextlib.contextmanager
def _quiet():
    """pandas warns on every business-day Period operation (harmless on pandas 2.x)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Period with BDay freq.*")
        yield


def split_entries(values: np.ndarray, start, prediction_length: int, windows: int,
                  names: list | None = None) -> tuple[list[dict], list[dict]]:
    """GluonTS entries of a (D, T) array split as the GP-Copula datasets are: the train split is the first
    T - windows * prediction_length steps; test window k (1..windows) holds every series up to
    T - (windows - k) * prediction_length steps. Entries are ordered window by window, series by series."""
    n_series, length = values.shape
    n_train = length - windows * prediction_length
    ids = list(range(n_series)) if names is None else list(names)

    def entries(lengths):
        return [{"start": start, "target": values[i, :n], "feat_static_cat": [i], "item_id": ids[i]}
                for n in lengths for i in range(n_series)]

    return entries([n_train]), entries([n_train + prediction_length * k for k in range(1, windows + 1)])


MISSING_ADVICE = ("vsmd does not model missing values: fill them (e.g. forward fill) or drop the series, and write "
                  "the dataset again.")


def check_finite(datasets, source) -> None:
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
                                 f"{int(bad.sum())} missing or infinite values, the first at time index {first}. "
                                 f"{MISSING_ADVICE}")


@dataclass
class GroupedSeries:
    """One multivariate series: the train split (D, T) and the rolling test windows (D, T_k)."""

    freq: str
    prediction_length: int
    start: object                # pandas Period of the first time step
    train: np.ndarray            # (D, T_train) float32
    test: list[np.ndarray]       # W arrays (D, T_k), increasing T_k
    time_features: np.ndarray    # (T_max, F) float32 over the longest series
    names: list[str] | None = None  # the series' names (None: 0..D-1)

    @property
    def target_dim(self) -> int:
        return self.train.shape[0]


def time_features(start, length: int, freq: str) -> np.ndarray:
    """GluonTS's time features for ``freq`` at the ``length`` periods from ``start`` (a pandas Period): (length, F)."""
    import pandas as pd
    from gluonts.time_feature import time_features_from_frequency_str

    with _quiet():
        index = pd.period_range(start, periods=length, freq=start.freq)
        return np.stack([f(index) for f in time_features_from_frequency_str(freq)], axis=1)


def group(datasets, name: str, prediction_length: int | None = None) -> GroupedSeries:
    """Group a GluonTS ``TrainDatasets`` with ``MultivariateGrouper`` and compute its time features
    (``prediction_length``: when the metadata have none)."""
    from gluonts.dataset.multivariate_grouper import MultivariateGrouper

    meta = datasets.metadata
    freq = {"H": "h"}.get(meta.freq, meta.freq)  # old materialised folders spell hourly "H"
    pred_len = meta.prediction_length or prediction_length
    with _quiet():
        n_train = len(datasets.train)
        train = list(MultivariateGrouper(max_target_dim=n_train)(datasets.train))
        n_test = len(datasets.test)
        if n_test % n_train:
            raise ValueError(f"{name}: {n_test} test entries are not a whole number of windows of {n_train} series")
        test = list(MultivariateGrouper(num_test_dates=n_test // n_train, max_target_dim=n_train)(datasets.test))
        start = train[0]["start"]
        t_max = max(e["target"].shape[1] for e in test + train)
    feats = time_features(start, t_max, freq)
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


class ForecastDataModule(pl.LightningDataModule):
    """Windows of one grouped multivariate series; subclasses say where the series come from.

    A window holds ``history = context_length + max(lags)`` past steps and ``prediction_length`` future steps.
    The model decides context length and lags; the DataModule reads them from the model it is trained with
    (``model.window_history(prediction_length)``), or from ``hparams.history`` when used on its own.

    A subclass saves the hyper-parameters ``batch_size``, ``num_batches_per_epoch``, ``n_val``, ``history`` and
    ``seed``, sets ``self.series = None`` and implements ``load``, ``known`` and ``too_short``.
    """

    series: GroupedSeries | None = None

    def load(self) -> GroupedSeries:
        """The grouped series (called once, by ``setup``)."""
        raise NotImplementedError

    def known(self) -> tuple[str, int, int]:
        """(freq, target_dim, prediction_length) before ``setup`` has loaded the series."""
        raise NotImplementedError

    def too_short(self, steps: int, need: int) -> str:
        """The error when the train split has ``steps`` steps and a window needs ``need``."""
        raise NotImplementedError

    # Facts about the data, valid after prepare_data/setup.
    @property
    def freq(self) -> str:
        return self.known()[0] if self.series is None else self.series.freq

    @property
    def target_dim(self) -> int:
        return self.known()[1] if self.series is None else self.series.target_dim

    @property
    def prediction_length(self) -> int:
        return self.known()[2] if self.series is None else self.series.prediction_length

    @property
    def history(self) -> int:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None and hasattr(model, "window_history"):
            return int(model.window_history(self.prediction_length))
        return self.hparams.history or 2 * self.prediction_length + 1

    def setup(self, stage: str | None = None) -> None:
        if self.series is None:
            self.series = self.load()
        need = self.history + self.prediction_length
        if self.series.train.shape[1] < need:
            raise ValueError(self.too_short(self.series.train.shape[1], need))

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

    @property
    def series_names(self) -> list[str]:
        """The series' names (their columns or ids in a file; 0..D-1 where the data have none), after setup."""
        return list(self.series.names or [str(j) for j in range(self.series.target_dim)])

    def future_window(self) -> dict:
        """The one window after the last time step: target (1, history, D) (the last ``history`` steps of every
        series), time_feat (1, history + H, F), forecast_start (the first future period, a string) and times (the H
        future periods, strings: the steps after the last at the data's frequency)."""
        s, h, p = self.series, self.history, self.prediction_length
        full = s.test[-1]  # the last test window holds every step (setup checked that a window fits)
        steps = full.shape[1]
        feats = time_features(s.start, steps + p, s.freq)[steps - h:].astype(np.float32)
        with _quiet():
            times = [str(s.start + (steps + k)) for k in range(p)]
        return {"target": torch.from_numpy(np.ascontiguousarray(full[:, steps - h:].T))[None],
                "time_feat": torch.from_numpy(feats)[None], "forecast_start": times[:1], "times": [times]}

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(self.test_windows(), len(self.series.test)), batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        """The test windows, or with the option ``future`` (``SeriesFileDataModule``) the window after the last
        time step."""
        if self.hparams.get("future"):
            return DataLoader(_Batches(self.future_window(), 1), batch_size=None)
        return self.test_dataloader()


def forecast_table(samples: np.ndarray, times: list[str], names: list[str]):
    """One forecast's sample paths (S, H, D) as a pandas table, one row per future time and series: time, series,
    and the mean, 5% quantile, median and 95% quantile of the paths."""
    import pandas as pd

    q05, median, q95 = np.quantile(samples, [0.05, 0.5, 0.95], axis=0)
    steps, dim = samples.shape[1:]
    return pd.DataFrame({"time": np.repeat(times, dim), "series": np.tile(names, steps),
                         "mean": samples.mean(0).reshape(-1), "q05": q05.reshape(-1), "median": median.reshape(-1),
                         "q95": q95.reshape(-1)})


class _Batches(torch.utils.data.Dataset):
    """Fixed tensors served in consecutive slices of ``size``."""

    def __init__(self, tensors: dict, size: int) -> None:
        self.tensors, self.size = tensors, size
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return -(-self.n // self.size)

    def __getitem__(self, i: int) -> dict:
        return {k: v[i * self.size:(i + 1) * self.size] for k, v in self.tensors.items()}
