"""Is a set of generated samples usable at all? Non-finite or exploded samples make every metric meaningless
(a PMF clips far-away points into its grid, a FID clamps pixels), so they are reported instead of scored."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

EXPLODED = 1e3  # samples farther than this many data scales from 0 count as exploded


def sample_problem(samples, scale: float, limit: float = EXPLODED) -> str | None:
    """None when every sample is finite and within ``limit * scale`` of 0; else what is wrong, in words.

    ``scale`` is the data's own scale (e.g. its largest absolute value), so that the check means the same for
    a spiral of height 35 and for images in [-1, 1].
    """
    x = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples, dtype=np.float64)
    n = x.size
    finite = np.isfinite(x)
    bad = int((~finite).sum())
    if bad:
        return f"{bad} of {n} generated values are NaN or inf"
    scale = float(scale) if math.isfinite(scale) and scale > 0 else 1.0
    big = int((np.abs(x) > limit * scale).sum())
    if big:
        return (f"{big} of {n} generated values exploded (|x| up to {np.abs(x).max():.3g}, more than {limit:g} times "
                f"the data scale {scale:.3g})")
    return None


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON: NaN and inf become null (bare NaN is not JSON)."""
    path = Path(path)
    path.write_text(json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n")
    return path


class DivergedSamplesError(FloatingPointError):
    """The generated samples are non-finite or exploded: the metrics were written as null."""
