"""Reading and checking a user's file of series (``SeriesFile``, ``read_series``): the layouts, times and values that
``vsmd.datamodules.series_files`` documents. Every problem is a ``ValueError`` (``FileNotFoundError`` for a missing
file) that names the file and what to change."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from vsmd.datamodules.checks import csv_header, name_list, parquet_repeats
from vsmd.datamodules.series_windows import MISSING_ADVICE, _quiet

SUFFIXES = (".csv", ".parquet")
SEPARATORS = (",", ";", "\t", "|")
NEWLINE = b"\n"
FREQ_EXAMPLES = "h (hourly), D (daily), B (business days), W (weekly), M (monthly), 15min"


class SeriesFile:
    """One user file and how to read it; every message names the file."""

    def __init__(self, path: str | Path, sep: str = ",", encoding: str = "utf-8") -> None:
        self.path, self.sep, self.encoding = Path(path).expanduser(), sep, encoding
        self.check_path()

    def check_path(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} does not exist; set data.init_args.path to your CSV or parquet file "
                                    "of series")
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; set data.init_args.path to the CSV or parquet file in it")
        if self.path.suffix.lower() not in SUFFIXES:
            kind = repr(self.path.suffix) if self.path.suffix else "a name without extension"
            raise ValueError(f"{self.path}: vsmd reads .csv and .parquet files, not {kind}; save the table as CSV "
                             "(pandas: DataFrame.to_csv) or parquet (DataFrame.to_parquet) with that extension")

    def where(self, i: int) -> str:
        """Where data row ``i`` (0-based, in file order) is: the line of a CSV file (header = line 1), the row of a
        parquet file."""
        return f"line {i + 2}" if self.path.suffix.lower() == ".csv" else f"row {i + 1}"

    def read(self):
        """The table, with string column names."""
        import pandas as pd

        if self.path.suffix.lower() == ".parquet":
            repeated = parquet_repeats(self.path)
            if repeated:
                raise ValueError(f"{self.path}: the parquet file repeats the column name(s) {name_list(repeated)}; "
                                 "give every column its own name")
            try:
                table = pd.read_parquet(self.path)
            except ImportError as err:
                raise ValueError(f"{self.path}: reading parquet needs pyarrow ({err}); pip install pyarrow, or save "
                                 "the table as .csv") from None
            except Exception as err:  # noqa: BLE001 (pyarrow's errors have no common base worth naming)
                raise ValueError(f"{self.path} is not a readable parquet file ({type(err).__name__}: {err}); write it "
                                 "with pandas.DataFrame.to_parquet, or save the table as .csv") from None
        else:
            table = self._read_csv(pd)
        table.columns = [str(c) for c in table.columns]
        if table.empty:
            raise ValueError(f"{self.path} has no data rows; write a header line and one line per time step")
        return table

    def _read_csv(self, pd):
        try:
            table = pd.read_csv(self.path, sep=self.sep, encoding=self.encoding)
        except UnicodeDecodeError as err:
            raw = self.path.read_bytes()
            try:  # pandas reports the position in its buffer; find the byte in the file
                raw.decode(self.encoding)
                where = ""
            except UnicodeDecodeError as exact:
                err = exact
                where = f" on line {raw.count(NEWLINE, 0, exact.start) + 1}"
            bad = err.object[err.start:err.start + 1].hex()
            raise ValueError(f"{self.path} is not {self.encoding} text (byte 0x{bad}{where}: {err.reason}): save it as "
                             "UTF-8, or give its encoding, e.g. data.init_args.encoding: latin-1 (a parquet file must "
                             "be named .parquet)") from None
        except LookupError:
            raise ValueError(f"{self.path}: data.init_args.encoding {self.encoding!r} is not an encoding Python "
                             "knows; use e.g. utf-8 or latin-1") from None
        except pd.errors.EmptyDataError:
            raise ValueError(f"{self.path} is empty; write a header line and one line per time step") from None
        except pd.errors.ParserError as err:
            raise ValueError(f"{self.path} is not a table with separator {self.sep!r} ({str(err).strip()}); every "
                             "line needs as many fields as the header (check data.init_args.sep)") from None
        if table.shape[1] == 1:
            header = str(table.columns[0])
            other = [s for s in SEPARATORS if s != self.sep and s in header]
            if other:
                raise ValueError(f"{self.path} reads as one column {header!r} with separator {json.dumps(self.sep)}: "
                                 f"its fields are separated by {json.dumps(other[0])}; set data.init_args.sep: "
                                 f"{json.dumps(other[0])}")
        names, repeated = csv_header(self.path, self.sep, self.encoding, table.columns)
        if repeated:
            raise ValueError(f"{self.path}: the CSV header repeats the column name(s) {name_list(repeated)} "
                             f"({name_list(names)}); give every column its own name")
        table.columns = names  # as written, without the spaces of "date, a, b"
        return table

    def not_long(self, table, time_column: str) -> None:
        """Refuse a long-form file read as the wide form (no id_column): most times repeat, and a column holds text
        (or, among few numeric columns, as few values as there are rows per time): that column names the series."""
        import pandas as pd

        times = table[time_column]
        per_time = int(times.value_counts().median()) if len(times) else 0
        others = [c for c in table.columns if c != time_column]
        if per_time < 2 or not others:
            return

        def text(c) -> bool:
            col = table[c].dropna()
            return not pd.api.types.is_numeric_dtype(col) and pd.to_numeric(col, errors="coerce").isna().mean() > 0.5

        ids = [c for c in others if text(c)]
        if not ids and len(others) <= 3:
            ids = [c for c in sorted(others, key=lambda c: table[c].nunique()) if table[c].nunique() <= per_time][:1]
        if not ids:
            return
        rest = [c for c in others if c != ids[0]]
        numbers = [c for c in rest if not text(c)]
        value = "value" if "value" in numbers else (numbers or rest or ["<the column of the values>"])[0]
        what = (f"holds text ({table[ids[0]].dropna().iloc[0]!r}, ...)" if text(ids[0]) else
                f"holds {table[ids[0]].nunique()} distinct values")
        raise ValueError(f"{self.path} looks like the long form (one row per series and time step): the time column "
                         f"{time_column!r} repeats each time about {per_time} times and column {ids[0]!r} {what}, but "
                         "data.init_args.id_column is not set, so it is read as the wide form (one column per series). "
                         f"Set --data.init_args.id_column {ids[0]} --data.init_args.value_column {value} (in YAML: "
                         f"id_column: {ids[0]}, value_column: {value})")

    # ------------------------------------------------------------------------------------------------
    def column(self, table, name: str, role: str, option: str):
        if name not in table.columns:
            raise ValueError(f"{self.path} has no {role} column {name!r} (its columns: {name_list(table.columns)}); "
                             f"set data.init_args.{option} to one of them")
        return table[name]

    def numeric(self, col, name: str, fix: str) -> np.ndarray:
        """The column as float64, or an error at its first cell that is not a number."""
        import pandas as pd

        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            bad = pd.to_numeric(col, errors="coerce").isna() & col.notna()
            if pd.api.types.is_bool_dtype(col) or not bad.any():
                raise ValueError(f"{self.path}: column {name!r} is not numeric ({col.dtype}); {fix}")
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{self.path}: column {name!r} is not numeric: {self.where(i)} holds {col.iloc[i]!r}. "
                             f"Write a number there, or {fix}")
        return col.to_numpy(dtype=np.float64, na_value=np.nan)

    def periods(self, col, name: str, freq: str) -> np.ndarray:
        """The time column as pandas Periods at ``freq`` (one per row, in file order)."""
        import pandas as pd

        example = "write dates or times such as 2024-01-31 or 2024-01-31 13:00"
        if pd.api.types.is_numeric_dtype(col):
            raise ValueError(f"{self.path}: the time column {name!r} holds numbers ({col.tolist()[0]!r}, ...), not "
                             f"dates; {example}, or name the time column with data.init_args.time_column")
        times = col
        if not pd.api.types.is_datetime64_any_dtype(col):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "could not infer format": the rows below say where
                times = pd.to_datetime(col, errors="coerce")
        bad = times.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{self.path}: the time column {name!r} cannot be read as a time at {self.where(i)} "
                             f"({col.iloc[i]!r}, while {self.where(0)} holds {col.iloc[0]!r}); {example}, all in one "
                             "format")
        if times.dt.tz is not None:
            times = times.dt.tz_localize(None)
        with _quiet():
            return times.dt.to_period(freq).to_numpy()

    def grid(self, periods: np.ndarray, rows: np.ndarray, freq: str, unique: bool):
        """Check that the distinct times form a regular grid at ``freq``; return (start period, grid ordinals).

        ``periods``: pandas Periods, one per row; ``rows``: their rows in the file; ``unique``: whether two rows
        may not share a time (wide form)."""
        import pandas as pd

        ordinals = np.array([p.ordinal for p in periods], dtype=np.int64)
        order = np.argsort(ordinals, kind="stable")
        o = ordinals[order]
        same = np.flatnonzero(o[1:] == o[:-1])
        if unique and len(same):
            a, b = rows[order[same[0]]], rows[order[same[0] + 1]]
            raise ValueError(f"{self.path}: {self.where(a)} and {self.where(b)} fall on the same time step "
                             f"{periods[order[same[0]]]} at freq {freq!r}: remove the duplicate row, or set "
                             f"data.init_args.freq to the spacing of the rows (e.g. {FREQ_EXAMPLES})")
        first = periods[order[0]]
        distinct = np.unique(o)
        with _quiet():
            expected = pd.period_range(first, periods=len(distinct), freq=freq)
        exp = np.array([p.ordinal for p in expected], dtype=np.int64)
        gap = np.flatnonzero(distinct != exp)
        if len(gap):
            k = int(gap[0])
            after = periods[order[np.searchsorted(o, distinct[k - 1])]]
            nxt = periods[order[np.searchsorted(o, distinct[k])]]
            raise ValueError(f"{self.path}: after time {after} the next time in the file is {nxt}, but freq {freq!r} "
                             f"expects {expected[k]}. Add the missing time steps (vsmd does not model missing "
                             "values: fill them), or set data.init_args.freq to the spacing of the rows (e.g. "
                             f"{FREQ_EXAMPLES})")
        return first, distinct

    def missing(self, values: np.ndarray, names: list, row_of: np.ndarray, first) -> None:
        """Refuse missing or infinite values, naming the file, the series and the row (or the absent row's time)."""
        for j, name in enumerate(names):
            bad = ~np.isfinite(values[j])
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                with _quiet():
                    when = first + k
                at = f"time {when} (no row)" if row_of[j, k] < 0 else f"{self.where(int(row_of[j, k]))} (time {when})"
                raise ValueError(f"{self.path}: series {name!r} has {int(bad.sum())} missing or infinite values, the "
                                 f"first at {at}. {MISSING_ADVICE}")


def check_freq(freq: str, path) -> None:
    """Refuse a frequency that pandas periods or GluonTS's time features do not know."""
    import pandas as pd
    from gluonts.time_feature import time_features_from_frequency_str

    why = None
    try:
        with _quiet():
            pd.Period("2024-01-01", freq=freq)
            if not time_features_from_frequency_str(freq):
                why = "GluonTS has no time features for it"
    except (ValueError, TypeError, RuntimeError) as err:
        why = str(err).splitlines()[0].split(", failed to parse")[0]
    if why:
        raise ValueError(f"{path}: data.init_args.freq {freq!r} is not a frequency vsmd can use ({why}); give the "
                         f"spacing of the rows as a pandas period frequency, e.g. {FREQ_EXAMPLES}")


def read_series(file: SeriesFile, freq: str, time_column: str = "time", id_column: str | None = None,
                value_column: str = "value", columns: list[str] | None = None) -> tuple[np.ndarray, list, object]:
    """(values (D, T) float64, series names, start Period) of a wide or long file, checked."""
    table = file.read()
    times = file.column(table, time_column, "time", "time_column")
    if id_column is None:
        file.not_long(table, time_column)
        names = [c for c in table.columns if c != time_column] if columns is None else list(columns)
        if not names:
            raise ValueError(f"{file.path} has only the time column {time_column!r}; add one column per series, or "
                             "for the long form set data.init_args.id_column and value_column")
        unnamed = [c for c in names if c.startswith("Unnamed: ")] if columns is None else []
        if unnamed:
            position = list(table.columns).index(unnamed[0]) + 1
            raise ValueError(f"{file.path}: column {position} has no name in the header (pandas calls it "
                             f"{unnamed[0]!r}; often the index that DataFrame.to_csv writes without index=False): "
                             "name it, or drop it, or list the series in data.init_args.columns")
        cols = [file.column(table, c, "series", "columns") for c in names]
        fix = (f"leave it out: list the series columns in data.init_args.columns (now {name_list(names)})" if columns
               is None else "leave it out of data.init_args.columns")
        wide = np.stack([file.numeric(c, n, fix) for c, n in zip(cols, names)])
        periods = file.periods(times, time_column, freq)
        rows = np.arange(len(table))
        first, grid = file.grid(periods, rows, freq, unique=True)
        slot = np.searchsorted(grid, [p.ordinal for p in periods])
        values, row_of = np.full((len(names), len(grid)), np.nan), np.full((len(names), len(grid)), -1)
        values[:, slot], row_of[:, slot] = wide, rows
    else:
        ids = file.column(table, id_column, "series-id", "id_column")
        vals = file.numeric(file.column(table, value_column, "value", "value_column"), value_column,
                            "point data.init_args.value_column at the column of the values")
        if ids.isna().any():
            i = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise ValueError(f"{file.path}: the series-id column {id_column!r} is empty at {file.where(i)}; give "
                             "every row its series")
        periods = file.periods(times, time_column, freq)
        rows = np.arange(len(table))
        first, grid = file.grid(periods, rows, freq, unique=False)
        try:  # in sorted order, whatever the order of the rows
            names = sorted(ids.unique().tolist())
        except TypeError:
            names = sorted(ids.unique().tolist(), key=str)
        index = {n: j for j, n in enumerate(names)}
        slot = np.searchsorted(grid, [p.ordinal for p in periods])
        row_of = np.full((len(names), len(grid)), -1)
        for r, (j, k) in enumerate(zip((index[n] for n in ids.tolist()), slot)):
            if row_of[j, k] >= 0:
                raise ValueError(f"{file.path}: {file.where(int(row_of[j, k]))} and {file.where(r)} both give series "
                                 f"{names[j]!r} at time step {periods[r]} (freq {freq!r}): keep one row per series "
                                 "and time step, or set data.init_args.freq to the spacing of the rows")
            row_of[j, k] = r
        values = np.full(row_of.shape, np.nan)
        values[row_of >= 0] = vals[row_of[row_of >= 0]]
    file.missing(values, names, row_of, first)
    return values, names, first
