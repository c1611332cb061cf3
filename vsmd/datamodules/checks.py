"""Checks of loaded numbers that every file loader shares: the values must survive the cast to float32 that training
does, so NaN, inf and finite values beyond float32's range (they would overflow to inf) are reported apart."""

from __future__ import annotations

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
