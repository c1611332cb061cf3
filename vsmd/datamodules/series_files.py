"""Users' own multivariate time series: a CSV or parquet file read into GluonTS datasets.

Two layouts:

- wide: a time column and one numeric column per series (all of them, or those listed in ``columns``);
- long: a time column, a series-id column and a value column, one row per series and time step (``id_column``);
  the series in the sorted order of their ids. A file that looks long (times that repeat, a column of ids) but
  comes without ``id_column`` is refused with the options to set.

Spaces around a CSV header's names are dropped (``date, a, b`` names a and b); a name written twice is refused. The
rows must be regular at ``freq`` (a pandas frequency: h, D, B, W, M, ...) with no time step missing; the file
order does not matter. The last ``test_windows * prediction_length`` steps are held out as rolling test windows,
as in the GP-Copula datasets: window k (1..W) holds every series up to T - (W - k) H steps, the train split the
first T - W H. The series become GluonTS ``ListDataset``s in a ``TrainDatasets`` and are grouped by
``MultivariateGrouper`` exactly as the named datasets are (``vsmd.datamodules.series_windows.group``), so the
forecaster, its training and CRPS-Sum apply unchanged.

Every problem with the file is a ``ValueError`` (``FileNotFoundError`` for a missing file) that names the file and
what to change (the reading and its checks: ``vsmd.datamodules.series_table``).
"""

from __future__ import annotations

from pathlib import Path

from vsmd.datamodules.series_table import SeriesFile, check_freq, read_series
from vsmd.datamodules.series_windows import ForecastDataModule, GroupedSeries, _quiet, group, split_entries
from vsmd.settings import SettingsPolicy


def load_file(path: str | Path, freq: str, prediction_length: int, test_windows: int = 1, time_column: str = "time",
              id_column: str | None = None, value_column: str = "value", columns: list[str] | None = None,
              sep: str = ",", encoding: str = "utf-8") -> GroupedSeries:
    """The grouped series of a user's file (see the module docstring)."""
    from gluonts.dataset.common import ListDataset, MetaData, TrainDatasets

    file = SeriesFile(path, sep, encoding)
    check_freq(freq, file.path)
    values, names, start = read_series(file, freq, time_column, id_column, value_column, columns)
    steps = values.shape[1]
    if steps - test_windows * prediction_length < 1:
        raise ValueError(f"{file.path} has {steps} time steps: {test_windows} test windows of prediction_length "
                         f"{prediction_length} leave none for training. Give a longer series, or lower "
                         "data.init_args.test_windows or prediction_length")
    train, test = split_entries(values, start, prediction_length, test_windows, [str(n) for n in names])
    with _quiet():
        datasets = TrainDatasets(metadata=MetaData(freq=freq, prediction_length=prediction_length),
                                 train=ListDataset(train, freq), test=ListDataset(test, freq))
        grouped = group(datasets, str(file.path))
    grouped.names = [str(n) for n in names]
    return grouped


class SeriesFileDataModule(ForecastDataModule):
    """Your own multivariate series from a CSV or parquet file, wide or long form (``vsmd.datamodules.series_files``),
    cut into the same windows as the GluonTS datasets and scored the same way (CRPS-Sum over the test windows).

    Args:
        path: the .csv or .parquet file.
        freq: pandas frequency of the rows (h, D, B, W, M, 15min, ...); the model's freq must be the same.
        prediction_length: forecast horizon H, in time steps.
        test_windows: rolling test windows W at the end of the series, H steps apart; the last W x H steps are held
            out of training.
        time_column: the column of times (dates or date-times, one format).
        id_column: long form: the column naming each row's series (None: wide form, one column per series).
        value_column: long form: the column of values.
        columns: wide form: the series columns to use (None: every column but the time column).
        sep: CSV field separator.
        encoding: CSV text encoding.
        batch_size: training windows per batch.
        num_batches_per_epoch: training batches per epoch.
        n_val: fixed windows from the train split for the validation loss.
        history: past steps per window when no model says (None: 2 x prediction_length + 1).
        seed: seed of the window stream and the validation windows.
        future: ``vsmd predict`` forecasts the ``prediction_length`` steps after the file's last row (written to
            ``forecast.csv`` with the series' names and the future times) instead of the test windows.
    """

    DATA_SETTINGS = SettingsPolicy(data=("freq", "prediction_length", "test_windows", "columns", "history"),
                                   loading=("path", "time_column", "id_column", "value_column", "sep", "encoding",
                                            "batch_size", "num_batches_per_epoch", "n_val", "seed", "future"))

    def __init__(self, path: str, freq: str, prediction_length: int, test_windows: int = 1, time_column: str = "time",
                 id_column: str | None = None, value_column: str = "value", columns: list[str] | None = None,
                 sep: str = ",", encoding: str = "utf-8", batch_size: int = 64, num_batches_per_epoch: int = 100,
                 n_val: int = 256, history: int | None = None, seed: int = 0, future: bool = False) -> None:
        super().__init__()
        file = SeriesFile(path, sep, encoding)
        if min(prediction_length, test_windows, batch_size, num_batches_per_epoch, n_val) < 1:
            raise ValueError(f"{file.path}: prediction_length, test_windows, batch_size, num_batches_per_epoch and "
                             f"n_val must be >= 1, got {prediction_length}, {test_windows}, {batch_size}, "
                             f"{num_batches_per_epoch}, {n_val}")
        if id_column is not None and columns is not None:
            raise ValueError(f"{file.path}: data.init_args.columns picks series columns of the wide form, but "
                             f"id_column {id_column!r} asks for the long form; drop one of them")
        check_freq(freq, file.path)
        self.save_hyperparameters()
        self.series: GroupedSeries | None = None

    def load(self) -> GroupedSeries:
        h = self.hparams
        return load_file(h.path, h.freq, h.prediction_length, h.test_windows, h.time_column, h.id_column,
                         h.value_column, h.columns, h.sep, h.encoding)

    def known(self) -> tuple[str, int, int]:
        self.series = self.load()  # the number of series is known only from the file
        return self.series.freq, self.series.target_dim, self.series.prediction_length

    def too_short(self, steps: int, need: int) -> str:
        h = self.hparams
        return (f"{h.path}: {h.test_windows} test windows of prediction_length {h.prediction_length} leave {steps} "
                f"time steps for training, but a training window needs {need} (the model's context_length + its "
                f"largest lag + prediction_length). Give a longer series, or lower data.init_args.test_windows or "
                "prediction_length, or the model's context_length or lags")
