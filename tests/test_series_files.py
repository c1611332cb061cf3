"""Users' own series (issue 25): a CSV or parquet file, wide or long, through the GluonTS structures of the named
datasets, `vsmd fit/test` and CRPS-Sum; and every loader error names the file and what to change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsdata import make_materialised, synthetic_series  # tests/tsdata.py
from vsmd.cli import main
from vsmd.datamodules import GluonTSDataModule, SeriesFileDataModule
from vsmd.metrics import crps_sum

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "csv_forecast.yaml")


def wide_table(n_series: int = 3, length: int = 60, freq: str = "D", start: str = "2024-01-01",
               seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    values = synthetic_series(n_series, length, seed)
    times = pd.date_range(start, periods=length, freq=freq)
    table = pd.DataFrame({"date": times.strftime("%Y-%m-%d %H:%M")})
    for j in range(n_series):
        table["abc"[j] if n_series <= 3 else f"s{j}"] = values[j]
    return table, values


def long_table(table: pd.DataFrame) -> pd.DataFrame:
    return table.melt(id_vars="date", var_name="series", value_name="value")


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def dm_of(path, **kw) -> SeriesFileDataModule:
    args = dict(freq="D", prediction_length=5, test_windows=2, time_column="date", history=8) | kw
    return SeriesFileDataModule(str(path), **args)


# ------------------------------------------------------------------------------------------------
def test_a_file_goes_through_the_structures_of_the_named_datasets(tmp_path: Path) -> None:
    """The same values, as a CSV and as a materialised GluonTS dataset: the same grouped series and windows."""
    values = make_materialised(tmp_path, "solar_nips", n_series=3, n_train=40, h=6, windows=2, freq="h")
    times = pd.date_range("2020-01-01 00:00", periods=values.shape[1], freq="h")
    table = pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M"), **{f"s{j}": values[j] for j in range(3)}})
    named = GluonTSDataModule(dataset="solar_nips", data_dir=str(tmp_path), download=False, history=10)
    mine = SeriesFileDataModule(str(write_csv(table, tmp_path / "mine.csv")), freq="h", prediction_length=6,
                                test_windows=2, history=10)
    named.setup()
    mine.setup()
    assert (mine.target_dim, mine.freq, mine.prediction_length) == (3, "h", 6)
    np.testing.assert_array_equal(mine.series.train, named.series.train)
    assert len(mine.series.test) == 2
    for a, b in zip(mine.series.test, named.series.test):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mine.series.time_features, named.series.time_features)
    w, v = mine.test_windows(), named.test_windows()
    assert w["forecast_start"] == v["forecast_start"] == ["2020-01-02 16:00", "2020-01-02 22:00"]
    for key in ("target", "future", "time_feat"):
        assert np.array_equal(w[key].numpy(), v[key].numpy())


def test_wide_long_parquet_and_row_order_give_the_same_series(tmp_path: Path) -> None:
    table, values = wide_table()
    ref = dm_of(write_csv(table, tmp_path / "wide.csv"))
    ref.setup()
    assert ref.series.train.shape == (3, 50) and [a.shape[1] for a in ref.series.test] == [55, 60]
    np.testing.assert_allclose(ref.series.test[-1], values, rtol=1e-6)
    shuffled = table.sample(frac=1, random_state=0)
    long = long_table(table).sample(frac=1, random_state=1)
    long.to_parquet(tmp_path / "long.parquet")
    table.to_parquet(tmp_path / "wide.parquet")
    for path, kw in ((write_csv(shuffled, tmp_path / "shuffled.csv"), {}),
                     (write_csv(long, tmp_path / "long.csv"), {"id_column": "series"}),
                     (tmp_path / "long.parquet", {"id_column": "series"}),
                     (tmp_path / "wide.parquet", {})):
        dm = dm_of(path, **kw)
        dm.setup()
        np.testing.assert_array_equal(dm.series.train, ref.series.train)
        np.testing.assert_array_equal(dm.series.test[-1], ref.series.test[-1])
    table.to_csv(tmp_path / "semicolon.csv", sep=";", index=False)
    dm = dm_of(tmp_path / "semicolon.csv", sep=";", columns=["c", "a"])  # a subset, in the order given
    dm.setup()
    np.testing.assert_array_equal(dm.series.train, ref.series.train[[2, 0]])


def test_vsmd_fit_and_test_on_a_csv_give_crps_sum(tmp_path: Path, capsys) -> None:
    table, _ = wide_table(length=80)
    path = write_csv(long_table(table), tmp_path / "three_series.csv")
    common = ["--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--data.init_args.path", str(path), "--data.init_args.id_column", "series",
              "--data.init_args.prediction_length", "5", "--data.init_args.test_windows", "2",
              "--data.init_args.batch_size", "8", "--data.init_args.num_batches_per_epoch", "3",
              "--data.init_args.n_val", "8",
              "--model.init_args.hidden", "8", "--model.init_args.layers", "1", "--model.init_args.cond_dim", "8",
              "--model.init_args.channels", "4", "--model.init_args.residual_layers", "2",
              "--model.init_args.sa_every", "2", "--model.init_args.sa_steps", "2", "--model.init_args.sa_warmup", "0",
              "--model.init_args.sa_paths", "16", "--model.init_args.sa_points", "8",
              "--model.init_args.sample_steps", "3", "--model.init_args.num_samples", "8"]
    main(["fit", *common, "--trainer.max_steps", "3"])
    ckpt = tmp_path / "csv_forecast" / "version_0" / "checkpoints" / "last.ckpt"
    main(["test", *common, "--ckpt_path", str(ckpt)])
    out = tmp_path / "csv_forecast" / "version_1"
    report = json.loads((out / "test_metrics.json").read_text())
    assert "crps_sum" in capsys.readouterr().out
    assert report["windows"] == 2 and report["target_dim"] == 3 and report["prediction_length"] == 5
    assert report["trained_steps"] == 3 and np.isfinite(report["metrics"]["crps_sum"])
    f = np.load(out / "forecasts.npz")
    assert f["samples"].shape == (2, 8, 5, 3)
    assert crps_sum(f["samples"], f["future"]) == pytest.approx(report["metrics"]["crps_sum"], rel=1e-9)
    np.testing.assert_allclose(f["future"][-1], table[["a", "b", "c"]].to_numpy()[-5:], rtol=1e-6)
    with pytest.raises(SystemExit):  # a loader error reaches the user as one line naming the file
        main(["fit", *common, "--data.init_args.time_column", "when"])
    assert re.search(rf"{re.escape(str(path))} has no time column 'when' .*set data.init_args.time_column",
                     capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# Every loader error: (how the file is made, the DataModule's options, the error, what the message says).
def _table(tmp, **changes):
    table, _ = wide_table()
    for (row, col), value in changes.get("cells", {}).items():
        table[col] = table[col].astype(object)
        table.loc[row, col] = value
    return write_csv(table, tmp / "series.csv")


def _text(name: str, text: str | bytes):
    def make(tmp):
        path = tmp / name
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path
    return make


def _parquet(tmp, cell):
    table, _ = wide_table()
    table.loc[cell] = np.nan
    table.to_parquet(tmp / "series.parquet")
    return tmp / "series.parquet"


def _long(tmp, drop=(), dup=False, value=None):
    long = long_table(wide_table()[0])
    if value is not None:
        long["value"] = long["value"].astype(object)
        long.loc[4, "value"] = value
    if dup:
        long = pd.concat([long, long.iloc[[3]]])
    return write_csv(long.drop(index=list(drop)), tmp / "long.csv")


def _times(dates):
    def make(tmp):
        table, _ = wide_table()
        table["date"] = dates(table["date"])
        return write_csv(table, tmp / "series.csv")
    return make


def _numeric_ids(tmp):
    long = long_table(wide_table()[0]).rename(columns={"series": "store", "value": "sales"})
    long["store"] = long["store"].map({"a": 1, "b": 2, "c": 3})
    return write_csv(long[["date", "sales", "store"]], tmp / "long.csv")


def _repeated_parquet(tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, _ = wide_table()
    pq.write_table(pa.table([pa.array(table[c]) for c in ("date", "a", "b")], names=["date", "a", "a"]),
                   tmp / "series.parquet")
    return tmp / "series.parquet"


LONG = {"id_column": "series"}
ERRORS = [
    ("missing file", lambda tmp: tmp / "nope.csv", {}, FileNotFoundError,
     r"does not exist; set data.init_args.path"),
    ("a folder", lambda tmp: tmp, {}, ValueError, r"is a folder; set data.init_args.path"),
    ("wrong extension", _text("series.xlsx", "x"), {}, ValueError,
     r"reads .csv and .parquet files, not '.xlsx'; save the table as CSV"),
    ("no extension", _text("series", "x"), {}, ValueError, r"not a name without extension"),
    ("missing time column", _table, {"time_column": "time"}, ValueError,
     r"has no time column 'time' \(its columns: 'date', 'a', 'b', 'c'\); set data.init_args.time_column"),
    ("unknown series column", _table, {"columns": ["a", "z"]}, ValueError,
     r"has no series column 'z' .*set data.init_args.columns"),
    ("only a time column", _text("series.csv", "date\n2024-01-01\n2024-01-02\n"), {}, ValueError,
     r"has only the time column 'date'; add one column per series"),
    ("unknown id column", _long, {"id_column": "item"}, ValueError,
     r"has no series-id column 'item' .*set data.init_args.id_column"),
    ("unknown value column", _long, {**LONG, "value_column": "sales"}, ValueError,
     r"has no value column 'sales' .*set data.init_args.value_column"),
    ("columns with the long form", _long, {**LONG, "columns": ["a"]}, ValueError,
     r"columns picks series columns of the wide form.*drop one of them"),
    ("non-numeric column", lambda tmp: _table(tmp, cells={(3, "b"): "12 kg"}), {}, ValueError,
     r"column 'b' is not numeric: line 5 holds '12 kg'. Write a number there, or leave it out: list the series "
     r"columns in data.init_args.columns"),
    ("non-numeric value", lambda tmp: _long(tmp, value="1,5"), LONG, ValueError,
     r"column 'value' is not numeric: line 6 holds '1,5'"),
    ("unparseable time", _times(lambda d: d.where(d.index != 6, "2024-13-45")), {}, ValueError,
     r"the time column 'date' cannot be read as a time at line 8 \('2024-13-45', while line 2 holds "
     r"'2024-01-01 00:00'\); write dates or times such as 2024-01-31"),
    ("numeric time column", _times(lambda d: range(len(d))), {}, ValueError,
     r"the time column 'date' holds numbers \(0, ...\), not dates"),
    ("wrong separator", lambda tmp: wide_table()[0].to_csv(tmp / "series.csv", sep=";", index=False) or
     tmp / "series.csv", {}, ValueError,
     r"reads as one column 'date;a;b;c' with separator \",\": its fields are separated by \";\"; set "
     r"data.init_args.sep: \";\""),
    ("tab-separated", lambda tmp: wide_table()[0].to_csv(tmp / "series.csv", sep="\t", index=False) or
     tmp / "series.csv", {}, ValueError, r"separated by \"\\t\"; set data.init_args.sep: \"\\t\""),
    ("an unnamed column", lambda tmp: wide_table()[0].to_csv(tmp / "series.csv") or tmp / "series.csv", {},
     ValueError, r"column 1 has no name in the header \(pandas calls it 'Unnamed: 0'; often the index that "
     r"DataFrame.to_csv writes without index=False\): name it, or drop it, or list the series"),
    ("ragged lines", _text("series.csv", "date,a\n2024-01-01,1\n2024-01-02,1,2\n"), {}, ValueError,
     r"is not a table with separator ','.*check data.init_args.sep"),
    ("bad encoding", _text("series.csv", "date,caf\xe9\n2024-01-01,1\n".encode("latin-1")), {}, ValueError,
     r"is not utf-8 text \(byte 0xe9 on line 1: invalid continuation byte\): save it as UTF-8, or give its "
     r"encoding, e.g. data.init_args.encoding: latin-1"),
    ("unknown encoding", _table, {"encoding": "klingon"}, ValueError,
     r"data.init_args.encoding 'klingon' is not an encoding Python knows"),
    ("empty file", _text("series.csv", ""), {}, ValueError, r"is empty; write a header line"),
    ("header only", _text("series.csv", "date,a\n"), {}, ValueError, r"has no data rows"),
    ("not parquet", _text("series.parquet", b"PAR1 not really"), {}, ValueError,
     r"is not a readable parquet file .*save the table as .csv"),
    ("unknown frequency", _table, {"freq": "fortnightly"}, ValueError,
     r"data.init_args.freq 'fortnightly' is not a frequency vsmd can use .*e.g. h \(hourly\), D \(daily\)"),
    ("frequency without time features", _table, {"freq": "Y"}, ValueError,
     r"'Y' is not a frequency vsmd can use \(GluonTS has no time features for it\)"),
    ("rows finer than freq", _table, {"freq": "W"}, ValueError,
     r"line 2 and line 3 fall on the same time step .* at freq 'W': remove the duplicate row, or set "
     r"data.init_args.freq to the spacing"),
    ("rows coarser than freq", _table, {"freq": "h"}, ValueError,
     r"after time 2024-01-01 00:00 the next time in the file is 2024-01-02 00:00, but freq 'h' expects "
     r"2024-01-01 01:00. Add the missing time steps"),
    ("a missing row", lambda tmp: write_csv(wide_table()[0].drop(index=[9]), tmp / "series.csv"), {}, ValueError,
     r"after time 2024-01-09 the next time in the file is 2024-01-11, but freq 'D' expects 2024-01-10"),
    ("duplicate long rows", lambda tmp: _long(tmp, dup=True), LONG, ValueError,
     r"line 5 and line 182 both give series 'a' at time step 2024-01-04 \(freq 'D'\): keep one row"),
    ("empty series id", lambda tmp: _text("long.csv", "date,series,value\n2024-01-01,a,1\n2024-01-01,,2\n")(tmp),
     LONG, ValueError, r"the series-id column 'series' is empty at line 3; give every row its series"),
    ("a missing value", lambda tmp: _table(tmp, cells={(6, "b"): None}), {}, ValueError,
     r"series 'b' has 1 missing or infinite values, the first at line 8 \(time 2024-01-07\). vsmd does not model "
     r"missing values: fill them"),
    ("an infinite value", lambda tmp: _table(tmp, cells={(58, "c"): "inf"}), {}, ValueError,
     r"series 'c' has 1 missing or infinite values, the first at line 60 \(time 2024-02-28\)"),
    ("a missing value in parquet", lambda tmp: _parquet(tmp, (10, "a")), {}, ValueError,
     r"series 'a' has 1 missing or infinite values, the first at row 11 \(time 2024-01-11\)"),
    ("a missing long row", lambda tmp: _long(tmp, drop=[65]), LONG, ValueError,
     r"series 'b' has 1 missing or infinite values, the first at time 2024-01-06 \(no row\)"),
    ("a missing long value", lambda tmp: _long(tmp, value=""), LONG, ValueError,
     r"series 'a' has 1 missing or infinite values, the first at line 6 \(time 2024-01-05\)"),
    ("no training steps", _table, {"prediction_length": 30}, ValueError,
     r"has 60 time steps: 2 test windows of prediction_length 30 leave none for training. Give a longer series, "
     r"or lower data.init_args.test_windows or prediction_length"),
    ("too few steps for a window", _table, {"history": 46}, ValueError,
     r"2 test windows of prediction_length 5 leave 50 time steps for training, but a training window needs 51 "
     r"\(the model's context_length \+ its largest lag \+ prediction_length\)"),
    ("a horizon of zero", _table, {"prediction_length": 0}, ValueError, r"prediction_length, .* must be >= 1"),
    ("long form without id_column", _long, {}, ValueError,
     r"looks like the long form \(one row per series and time step\): the time column 'date' repeats each time about 3 "
     r"times and column 'series' holds text \('a', ...\), but data.init_args.id_column is not set, so it is read as "
     r"the wide form \(one column per series\). Set --data.init_args.id_column series --data.init_args.value_column "
     r"value \(in YAML: id_column: series, value_column: value\)"),
    ("long form with numeric ids", _numeric_ids, {}, ValueError,
     r"looks like the long form .*column 'store' holds 3 distinct values, .*Set --data.init_args.id_column store "
     r"--data.init_args.value_column sales"),
    ("a repeated header name", _text("series.csv", "date,a,b,a\n2024-01-01,1,2,3\n"), {}, ValueError,
     r"the CSV header repeats the column name\(s\) 'a' \('date', 'a', 'b', 'a'\); give every column its own name"),
    ("a repeated parquet column", _repeated_parquet, {}, ValueError,
     r"the parquet file repeats the column name\(s\) 'a'; give every column its own name"),
    ("an unknown column among many", lambda tmp: write_csv(wide_table(n_series=30)[0], tmp / "series.csv"),
     {"columns": ["x"]}, ValueError,
     r"has no series column 'x' \(its columns: 'date', 's0', 's1', 's2', 's3', 's4', 's5', 's6', ... \(31 in all\)\)"),
]


@pytest.mark.parametrize("make, options, error, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_every_loader_error_names_the_file_and_what_to_change(tmp_path: Path, make, options, error,
                                                               message) -> None:
    path = make(tmp_path)
    with pytest.raises(error) as err:
        dm_of(path, **options).setup()
    assert re.search(message, str(err.value)), str(err.value)
    assert str(err.value).startswith(str(path)), str(err.value)


def test_spaces_around_header_names_are_dropped(tmp_path: Path) -> None:
    """``date, a, b, c`` names the columns date, a, b and c: the time column and columns: [b] are found."""
    table, values = wide_table()
    path = tmp_path / "spaced.csv"
    path.write_text("date, a, b , c\n" + table.to_csv(index=False, header=False).replace(",", ", "))
    dm = dm_of(path, columns=["b"])
    dm.setup()
    np.testing.assert_allclose(dm.series.test[-1], values[[1]], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The forecast after the file's last row (the future), from the DataModule, the CLI and the API.
def test_the_future_window_is_the_end_of_the_file(tmp_path: Path) -> None:
    from gluonts.time_feature import time_features_from_frequency_str

    table, values = wide_table(length=60)
    dm = dm_of(write_csv(table, tmp_path / "series.csv"))  # D, H 5, history 8
    dm.setup()
    w = dm.future_window()
    future = pd.period_range("2024-03-01", periods=5, freq="D")  # 60 days from 2024-01-01 (a leap year) end on 02-29
    assert w["times"] == [[str(p) for p in future]] and w["forecast_start"] == ["2024-03-01"]
    assert w["target"].shape == (1, 8, 3) and w["time_feat"].shape == (1, 13, 3)
    np.testing.assert_allclose(w["target"][0].numpy(), values[:, -8:].T, rtol=1e-6)
    np.testing.assert_array_equal(w["time_feat"][0, :8].numpy(), dm.series.time_features[-8:])
    expected = np.stack([f(future) for f in time_features_from_frequency_str("D")], axis=1)
    np.testing.assert_allclose(w["time_feat"][0, 8:].numpy(), expected, rtol=1e-6)
    assert dm.series_names == ["a", "b", "c"]
    long = dm_of(write_csv(long_table(table), tmp_path / "long.csv"), id_column="series")
    long.setup()
    assert long.series_names == ["a", "b", "c"] and long.future_window()["times"] == w["times"]
    assert [b["forecast_start"] for b in dm.predict_dataloader()] == [["2024-02-20", "2024-02-25"]]  # test windows
    future_dm = dm_of(tmp_path / "series.csv", future=True)
    future_dm.setup()
    assert [b["times"] for b in future_dm.predict_dataloader()] == [w["times"]]


def test_vsmd_predict_and_model_forecast_give_the_future(tmp_path: Path, capsys) -> None:
    """`vsmd predict --data.init_args.future true` writes the H steps after the last row (forecast.csv with the
    times and the series' names, forecasts.npz), and `Model.forecast(future=True)` gives the same paths."""
    import torch

    import vsmd

    table, _ = wide_table(length=80)
    path = write_csv(table.rename(columns={"a": "north", "b": "south", "c": "east"}), tmp_path / "three.csv")
    common = ["--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--data.init_args.path", str(path), "--data.init_args.prediction_length", "5",
              "--data.init_args.test_windows", "2", "--data.init_args.batch_size", "8",
              "--data.init_args.num_batches_per_epoch", "3", "--data.init_args.n_val", "8",
              "--model.init_args.hidden", "8", "--model.init_args.layers", "1", "--model.init_args.cond_dim", "8",
              "--model.init_args.channels", "4", "--model.init_args.residual_layers", "2",
              "--model.init_args.sa_every", "100", "--model.init_args.sample_steps", "3",
              "--model.init_args.num_samples", "8"]
    main(["fit", *common, "--trainer.max_steps", "2"])
    ckpt = tmp_path / "csv_forecast" / "version_0" / "checkpoints" / "last.ckpt"
    main(["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.future", "true"])
    out = tmp_path / "csv_forecast" / "version_1"
    days = [str(p) for p in pd.period_range("2024-03-21", periods=5, freq="D")]  # the file ends on 2024-03-20
    assert f"forecast paths for the 5 steps from 2024-03-21 to {out / 'forecasts.npz'}" in capsys.readouterr().out
    f = np.load(out / "forecasts.npz")
    assert f["samples"].shape == (1, 8, 5, 3) and f["times"].tolist() == [days]
    assert f["series"].tolist() == ["north", "south", "east"] and f["forecast_start"].tolist() == ["2024-03-21"]
    np.testing.assert_allclose(f["history"][0, -1], table[["a", "b", "c"]].to_numpy()[-1], rtol=1e-6)
    csv = pd.read_csv(out / "forecast.csv")
    assert list(csv.columns) == ["time", "series", "mean", "q05", "median", "q95"] and len(csv) == 15
    assert csv["time"].tolist() == np.repeat(days, 3).tolist()
    assert csv["series"].tolist() == ["north", "south", "east"] * 5
    paths = f["samples"][0]
    np.testing.assert_allclose(csv["mean"], paths.mean(0).reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(csv["median"], np.median(paths, 0).reshape(-1), rtol=1e-6)
    assert (csv["q05"] <= csv["median"]).all() and (csv["median"] <= csv["q95"]).all()

    model = vsmd.load(ckpt)
    window = model.future_window()
    assert window["times"] == [days] and window["series"] == ["north", "south", "east"]
    forecasts = model.forecast(future=True, seed=2)  # vsmd predict's seed: the model's seed + 2
    assert forecasts.shape == (1, 8, 5, 3) and np.array_equal(forecasts.numpy(), f["samples"])
    assert torch.equal(forecasts, model.forecast(window["target"], window["time_feat"], seed=2))
    assert model.forecast(seed=2).shape == (2, 8, 5, 3)  # the test windows, as before
    with pytest.raises(ValueError, match=r"give target and time_feat, or future=True .*not both"):
        model.forecast(window["target"], window["time_feat"], future=True)
