"""Is a set of generated samples usable at all? Non-finite or exploded samples make every metric meaningless
(a PMF clips far-away points into its grid, a FID clamps pixels), so they are reported instead of scored."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vsmd.caller import option

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


def unusable_advice(trained_steps: int, sampler: str, sample_steps: int, adaptive: bool,
                    guide: str | None = None) -> str:
    """The likely causes of unusable samples, most likely first: the end of a DivergedSamplesError's message.

    ``adaptive``: the process has a learned A (only then is A, and its ``sa_lr``, a suspect); ``guide``: AGM's
    velocity guidance target, in words, when it was on (a target far from the data pulls the samples after it).
    """
    causes = []
    if guide:
        causes.append(f"a guidance target far outside the data's range ({guide}; guide toward a point or image like "
                      "the data)")
    causes.append(f"an undertrained network (this checkpoint saw {trained_steps} training steps; the sampler "
                  "follows what the network learned, and a barely trained one carries the samples far out of the "
                  f"data's range whatever the sampler: train for more {option('trainer.max_steps')})")
    causes.append(f"too few sampler steps ({sampler} with {sample_steps} grid points: raise "
                  f"{option('model.sample_steps')})")
    fix = "a lower lr or sa_lr (A is learned here)" if adaptive else "a lower lr"
    causes.append(f"training that diverged (use an earlier checkpoint, or train with {fix})")
    return "Likely causes: " + "; ".join(causes) + "."


def unusable_advice_for(model) -> str:
    """``unusable_advice`` for a VSMDModule (its hparams, process and the steps its checkpoint saw)."""
    h = model.hparams
    guide = (f"guide {list(h.guide)}" if h.get("guide") is not None
             else f"guide_image {h.guide_image}" if h.get("guide_image") else None)
    return unusable_advice(max(model.trained_steps, model.global_step), h.sampler, h.sample_steps,
                           model.process.adaptive, guide=guide)
