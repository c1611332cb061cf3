"""A user's vectors from one file: ``.npy`` (an (n, d) array), ``.npz`` (the array ``key``, or the only one), ``.csv``
(a header line of column names, then one row per vector; spaces around a name are dropped) or ``.parquet`` (one
column per coordinate), with an optional choice of columns. The result is an (n, d) table of real numbers; every
problem is an error that names the file and says what to change."""

from __future__ import annotations

import numbers
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsmd.caller import option
from vsmd.datamodules.checks import (
    csv_header,
    name_list,
    numeric_array,
    parquet_repeats,
    transposed_hint,
    unusable_values,
)

FORMATS = (".npy", ".npz", ".csv", ".parquet")
OTHER_SEPARATORS = (",", ";", "\t", "|", " ")


@dataclass
class VectorTable:
    """``values`` (n, d) float64 and the names of its ``columns`` (the positions "0".."d-1" for arrays)."""

    values: np.ndarray
    columns: list[str]


def load_vectors(path: str | Path, key: str | None = None, columns: list[str | int] | None = None,
                 delimiter: str = ",", encoding: str = "utf-8") -> VectorTable:
    """The (n, d) table of real numbers in ``path`` (the formats of the module docstring), its ``columns`` only if
    given (names or positions for tables, positions for arrays); ``delimiter`` and ``encoding`` are the CSV's."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vector file not found: {p}; pass {option('data.path')} with a "
                                f"{', '.join(FORMATS)} file")
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{p}: unknown vector file format {p.suffix!r}; use {', '.join(FORMATS)} (e.g. numpy.save, "
                         "DataFrame.to_csv(index=False) or DataFrame.to_parquet)")
    if key is not None and suffix != ".npz":
        raise ValueError(f"{p}: key {key!r} names an array of an .npz archive, but this is a {suffix} file; remove "
                         "key" + (" (columns: chooses the columns)" if suffix in (".csv", ".parquet") else ""))
    if columns is not None:
        if len(columns) == 0 or len(set(map(str, columns))) != len(columns):
            raise ValueError(f"{p}: columns must list each wanted column once, got {list(columns)}; or leave it "
                             "out for all columns")
    if suffix in (".npy", ".npz"):
        return _array_table(_read_npy(p) if suffix == ".npy" else _read_npz(p, key), p, columns)
    frame = _read_csv(p, delimiter, encoding) if suffix == ".csv" else _read_parquet(p)
    return _frame_table(frame, p, columns, csv=suffix == ".csv")


# ------------------------------------------------------------------------------------------------------------
# arrays
def _read_npy(p: Path) -> np.ndarray:
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            raise ValueError(f"{p} holds Python objects (dtype object), which vsmd does not load (pickled code could "
                             "run); save a number array: numpy.save(path, np.asarray(values, dtype=float))") from None
        raise ValueError(f"{p} is not an .npy array (text or another format?); write it with numpy.save, or give "
                         "the file its own extension (.csv, .npz, .parquet)") from None
    except (EOFError, OSError) as err:
        raise ValueError(f"{p} is a damaged .npy file ({err}: e.g. a truncated copy); copy or write it again") from None
    if not isinstance(a, np.ndarray):  # np.load opens a zip archive whatever the extension
        a.close()
        raise ValueError(f"{p} is an .npz archive of named arrays, not an .npy array; rename it to .npz")
    return a


def _read_npz(p: Path, key: str | None) -> np.ndarray:
    try:
        f = np.load(p, allow_pickle=False)
    except ValueError:
        raise ValueError(f"{p} is not an .npz archive (text or another format?); write it with numpy.savez, or "
                         "give the file its own extension (.csv, .npy, .parquet)") from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{p} is a damaged .npz ({err}: e.g. a truncated copy); copy or write it again") from None
    if isinstance(f, np.ndarray):
        raise ValueError(f"{p} holds a single .npy array, not an .npz archive; rename it to .npy")
    with f:
        names = list(f.files)
        if key is None:
            if len(names) != 1:
                raise ValueError(f"{p} holds {len(names)} arrays ({', '.join(names) or 'none'}); choose one with "
                                 f"key (e.g. {option('data.key', names[0] if names else 'x')})")
            key = names[0]
        elif key not in names:
            raise ValueError(f"{p} has no array {key!r}; its arrays are {', '.join(names) or 'none'}: set key to one "
                             "of them")
        try:
            return f[key]
        except ValueError:
            raise ValueError(f"{p}: array {key!r} holds Python objects (dtype object), which vsmd does not load; "
                             "save it as a number array (np.asarray(values, dtype=float))") from None
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise ValueError(f"{p}: array {key!r} is damaged ({err}); copy or write the file again") from None


def _array_table(a: np.ndarray, p: Path, columns: list[str | int] | None) -> VectorTable:
    if a.ndim != 2:
        fix = ("for one coordinate per vector save x.reshape(-1, 1)" if a.ndim == 1 else
               "save x.reshape(len(x), -1) to flatten each vector" if a.ndim > 2 else "save an (n, d) array")
        raise ValueError(f"{p}: vsmd needs a 2-D array (one row per vector, one column per coordinate), got shape "
                         f"{a.shape}; {fix}")
    a = numeric_array(a, str(p))
    names = [str(j) for j in range(a.shape[1])]
    if columns is not None:
        text = [c for c in columns if not _is_position(c)]
        if text:
            raise ValueError(f"{p}: an array has no column names (columns {text}); give column positions, e.g. "
                             f"columns: [0, 2] (0..{a.shape[1] - 1})")
        idx = [_position(c, a.shape[1], p, names) for c in columns]
        a, names = a[:, idx], [names[j] for j in idx]
    return _checked(a, names, p, lambda i, j: f"row index {i}, column index {names[j]}")


def _is_position(c) -> bool:
    return isinstance(c, numbers.Integral) and not isinstance(c, bool)


def _position(c: int, d: int, p: Path, names: list[str]) -> int:
    if not -d <= c < d:
        raise ValueError(f"{p}: column position {c} is out of range; the file has {d} columns (0..{d - 1}: "
                         f"{name_list(names)})")
    return int(c) % d


# ------------------------------------------------------------------------------------------------------------
# tables
def _read_csv(p: Path, delimiter: str, encoding: str):
    import pandas as pd

    try:
        frame = pd.read_csv(p, sep=delimiter, encoding=encoding, float_precision="round_trip")  # exact numbers
    except UnicodeDecodeError as err:
        raise ValueError(f"{p} is not {encoding} text (byte {err.object[err.start:err.start + 1]!r} at position "
                         f"{err.start}); save it as UTF-8, or set its encoding (e.g. "
                         f"{option('data.encoding', 'latin-1')})") from None
    except LookupError:
        raise ValueError(f"{p}: unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p} is empty; write a header line of column names and one row per vector") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{p}: the rows do not all have the header's number of fields with delimiter "
                         f"{delimiter!r} ({str(err).strip()}); give every row one value per column") from None
    names, repeated = csv_header(p, delimiter, encoding, frame.columns)
    if repeated:
        raise ValueError(f"{p}: the CSV header repeats the column name(s) {name_list(repeated)} ({name_list(names)}); "
                         "give every column its own name")
    frame.columns = names
    if len(names) == 1:
        seen = [s for s in OTHER_SEPARATORS if s != delimiter and s in names[0]]
        if seen:
            raise ValueError(f"{p} reads as a single column {names[0]!r} with delimiter {delimiter!r}, but its "
                             f"header holds {seen[0]!r}: set {option('data.delimiter', repr(seen[0]))} (in YAML: "
                             f"delimiter: {seen[0]!r})")
    if all(_is_number(n) for n in names):
        first = delimiter.join(names[:8]) + (f"{delimiter}... ({len(names)} in all)" if len(names) > 8 else "")
        raise ValueError(f"{p}: the first line ({first}) holds numbers, not column names; add a header line of names "
                         "(e.g. numpy.savetxt(path, x, delimiter=',', comments='', header='x0,x1,...'))"
                         + transposed_hint(len(frame) + 1, len(names)))
    return frame


def _read_parquet(p: Path):
    import pandas as pd

    repeated = parquet_repeats(p)
    if repeated:
        raise ValueError(f"{p}: the parquet file repeats the column name(s) {name_list(repeated)}; give every column "
                         "its own name")
    try:
        return pd.read_parquet(p)
    except ImportError as err:
        raise ImportError(f"reading {p} needs pyarrow: pip install pyarrow ({err})") from None
    except Exception as err:  # noqa: BLE001 (pyarrow's errors: not a parquet file, damaged, unsupported)
        raise ValueError(f"{p} cannot be read as parquet ({type(err).__name__}: {err}); write it with "
                         "DataFrame.to_parquet, or give the file its own extension") from None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _frame_table(frame, p: Path, columns: list[str | int] | None, csv: bool) -> VectorTable:
    import pandas as pd

    names = [str(c) for c in frame.columns]
    if columns is not None:
        idx = []
        for c in columns:
            if _is_position(c):
                idx.append(_position(c, len(names), p, names))
            elif c in names:
                idx.append(names.index(c))
            else:
                raise ValueError(f"{p} has no column {c!r}; its columns are {name_list(names)}: fix columns (names, "
                                 "or positions from 0)" + transposed_hint(len(frame), len(names)))
        frame, names = frame.iloc[:, idx], [names[j] for j in idx]
    unnamed = [c for c in names if c.startswith("Unnamed: ")] if columns is None else []
    if unnamed:  # a saved index is no coordinate: refuse it rather than train on the row numbers
        raise ValueError(f"{p}: column {names.index(unnamed[0]) + 1} has no name in the header (pandas calls it "
                         f"{unnamed[0]!r}; often the index that DataFrame.to_csv writes without index=False): name "
                         "it, drop it (write the file with index=False), or list the wanted columns in columns: [...]"
                         + transposed_hint(len(frame), len(names)))
    line = (lambda i: f"row {i + 1} (line {i + 2} of the file)") if csv else (lambda i: f"row {i + 1}")
    if len(frame) == 0:
        raise ValueError(f"{p} has no rows of data; write one row per vector")
    values = np.empty((len(frame), len(names)))
    for j, name in enumerate(names):
        col = frame.iloc[:, j]
        if pd.api.types.is_bool_dtype(col) or (pd.api.types.is_numeric_dtype(col) and
                                               not pd.api.types.is_complex_dtype(col)):
            values[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        parsed = pd.to_numeric(col, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & col.notna().to_numpy())
        i = int(bad[0]) if len(bad) else 0
        cell = col.iloc[i]
        hint = " (a decimal comma? write it with a '.')" if re.fullmatch(r"\s*-?\d+,\d+\s*", str(cell)) else ""
        keep = [n for k, n in enumerate(names) if k != j]
        raise ValueError(f"{p}: column {name!r} is not numeric ({col.dtype}; {line(i)}: {cell!r}{hint}); convert it "
                         "to numbers" + (f", or leave it out with columns: [{name_list(keep)}]" if keep else "")
                         + transposed_hint(len(frame), len(names)))
    return _checked(values, names, p, lambda i, j: f"{line(i)}, column {names[j]!r}")


def _checked(values: np.ndarray, names: list[str], p: Path, place) -> VectorTable:
    """The table, once every value is a finite number that float32 holds (else an error at the first bad one)."""
    found = unusable_values(values)
    if found:
        what, first, todo = found
        i, j = np.unravel_index(first, values.shape)
        raise ValueError(f"{p} has {what}, the first at {place(int(i), int(j))}; {todo}"
                         + transposed_hint(*values.shape))
    return VectorTable(values.astype(np.float64), names)
