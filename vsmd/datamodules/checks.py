"""Checks that every file loader shares: the values must survive the cast to float32 that training does, so NaN,
inf and finite values beyond float32's range (they would overflow to inf) are reported apart; a CSV header's names
are read as written (stripped of surrounding spaces, repeats found); and column lists in messages stay short."""

from __future__ import annotations

from collections import Counter

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


def unusable_values(values) -> tuple[str, int, str] | None:
    """(what is wrong, the flat index of the first bad value, what to do) for real values that float32 training
    cannot use, or None: values too large for float32 first (finite here, inf after the cast), then NaN or inf."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    huge = finite & (np.abs(x) > FLOAT32_MAX)
    if huge.any():
        return (f"{int(huge.sum())} values too large for float32 (|x| up to {np.abs(x[huge]).max():.3g}; above "
                f"{FLOAT32_MAX:.3g} they overflow to inf)", int(np.flatnonzero(huge.reshape(-1))[0]),
                "rescale them (e.g. divide by a power of ten, or take logs)")
    if not finite.all():
        return (f"{int((~finite).sum())} missing (NaN) or infinite values", int(np.flatnonzero(~finite.reshape(-1))[0]),
                "remove or impute them first")
    return None


def numeric_array(a, where: str) -> np.ndarray:
    """``a`` as float64 if it holds real numbers (bool, integer or float); else a clear error naming ``where``
    (text, complex numbers, objects, dates)."""
    a = np.asarray(a)
    kind = a.dtype.kind
    if kind in "US":
        first = a.reshape(-1)[0] if a.size else ""
        raise ValueError(f"{where} holds text (dtype {a.dtype}, e.g. {str(first)!r}), not numbers; convert it to "
                         "numbers (np.asarray(values, dtype=float)) and save the file again")
    if kind == "c":
        raise ValueError(f"{where} holds complex numbers (dtype {a.dtype}); vsmd needs real coordinates and would "
                         "drop the imaginary part: save the real part, the magnitude, or both as separate coordinates")
    if kind not in "biuf":
        raise ValueError(f"{where} holds {a.dtype} values, not numbers; save it as a float array")
    return a.astype(np.float64)


def name_list(names, limit: int = 8) -> str:
    """Column names for a message: quoted, comma-separated, the first ``limit`` only and "... (N in all)" beyond
    (a transposed file has thousands)."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def transposed_hint(rows: int, columns: int) -> str:
    """A hint for a table with fewer rows than columns (empty otherwise), to end a message with."""
    if rows >= columns:
        return ""
    return (f"; is the file transposed? (one row per sample, one column per dimension: it has {rows} rows and "
            f"{columns} columns)")


def csv_header(path, sep: str, encoding: str, parsed) -> tuple[list[str], list[str]]:
    """(names, repeated) of a CSV file's header that pandas read as the columns ``parsed``: the names as written,
    stripped of surrounding spaces (``a, b`` names ``b``, not `` b``; an empty one keeps pandas' ``Unnamed: k``),
    and those written more than once (which pandas would rename ``a``, ``a.1`` without a word)."""
    import pandas as pd

    parsed = [str(c) for c in parsed]
    raw = pd.read_csv(path, sep=sep, encoding=encoding, header=None, nrows=1, dtype=str, keep_default_na=False)
    raw = [str(c) for c in raw.iloc[0].tolist()] if len(raw) else []
    if len(raw) != len(parsed):  # a first column taken as the index: keep pandas' names
        raw = parsed
    names = [r.strip() or (p if p.startswith("Unnamed: ") else f"Unnamed: {k}")
             for k, (r, p) in enumerate(zip(raw, parsed))]
    counts = Counter(names)
    return names, sorted(n for n, k in counts.items() if k > 1)


def parquet_repeats(path) -> list[str]:
    """The column names a parquet file's schema holds more than once (pyarrow cannot read such a file into pandas);
    [] also when the schema cannot be read (reading the file then says why)."""
    try:
        import pyarrow.parquet as pq

        counts = Counter(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 (no pyarrow, not a parquet file: the read reports it)
        return []
    return sorted(n for n, k in counts.items() if k > 1)
