"""The metric bundle for generated vectors of any dimension d: real (n, d) and generated (m, d) samples in, a flat
dict of floats out (arrays or tensors; no Lightning, no I/O).

``vector_metrics(real, fake)`` gives

- ``std_ratio_j``: the generated over the real standard deviation of coordinate j (1 is right);
- ``w1_j``: the 1-D Wasserstein-1 of coordinate j (for equal sizes the mean |sorted differences|, as
  ``wasserstein1d``; else the integral of |F_real - F_fake|);
- ``sliced_w1``: the mean 1-D W1 of the projections on ``projections`` random unit directions (seeded);
- ``mmd``: sqrt of the biased MMD^2 with Gaussian kernels at ``mmd_bandwidths`` times the real set's median pairwise
  distance (or times ``mmd_scale``), on at most ``mmd_points`` points of each set;
- ``w1``: the exact W1 with the Euclidean cost (POT), on at most ``w1_points`` points of each set;
- ``rmse_pmf``: the RMSE between the 100 x 100 PMFs (the paper's toy metric) for d = 2, NaN otherwise.

Subsamples are seeded (``seed``), so the same inputs give the same numbers. ``VECTOR_METRIC_NOTES`` says in words
how each was computed (for a report file).
"""

from __future__ import annotations

import numpy as np
import torch

from vsmd.metrics.distances import MMD_BANDWIDTHS, mmd, point_set, sliced_w1, subsample, w1, w1_per_axis
from vsmd.metrics.toy import pmf_rmse, wasserstein1d

VECTOR_METRIC_NOTES = {
    "std_ratio_j": "generated / real standard deviation of coordinate j",
    "w1_j": "1-D Wasserstein-1 of coordinate j",
    "sliced_w1": "mean 1-D W1 of the projections on {projections} random unit directions (seed {seed})",
    "mmd": "sqrt of the biased MMD^2, Gaussian kernels at {bandwidths} x {scale}, on at most {mmd_points} points",
    "w1": "exact W1, Euclidean cost (POT), on at most {w1_points} points of each set (seed {seed})",
    "rmse_pmf": "RMSE of the 100 x 100 PMFs over the real data's range (d = 2 only; NaN otherwise)",
}


def _tensor(x) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2 or len(t) < 2:
        raise ValueError(f"expected an (n, d) set of n >= 2 vectors, got shape {tuple(t.shape)}")
    return t


def vector_metrics(real, fake, *, seed: int = 0, projections: int = 500, w1_points: int | None = 2000,
                   mmd_points: int | None = 2000, mmd_bandwidths=MMD_BANDWIDTHS,
                   mmd_scale: float | None = None) -> dict[str, float]:
    """The metric bundle (module docstring) of generated ``fake`` (m, d) against ``real`` (n, d) vectors.

    ``w1_points`` / ``mmd_points``: subsample sizes of the exact W1 (O(n m) memory and a network simplex) and of
    the MMD (None: all points). The per-axis numbers follow the input's dtype (float32 tensors as a model makes
    them), the others are computed in float64.
    """
    r, f = _tensor(real), _tensor(fake)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"the real vectors have dimension {r.shape[1]} but the generated ones {f.shape[1]}")
    for name, t in (("real", r), ("generated", f)):
        if not torch.isfinite(t).all():
            raise ValueError(f"the {name} vectors hold {int((~torch.isfinite(t)).sum())} NaN or inf values, which no "
                             "distance can score; check generated samples with vsmd.metrics.sample_problem first")
    d = r.shape[1]
    out = {"rmse_pmf": pmf_rmse(r, f) if d == 2 else float("nan")}
    per_axis = wasserstein1d(r, f) if r.shape == f.shape else w1_per_axis(r.cpu().double(), f.cpu().double())
    out |= {f"w1_{j}": float(v) for j, v in enumerate(per_axis)}
    out |= {f"std_ratio_{j}": float(v) for j, v in enumerate(f.std(0).cpu() / r.std(0).cpu())}
    a, b = point_set(f), point_set(r)
    out["sliced_w1"] = sliced_w1(a, b, projections=projections, seed=seed)
    out["mmd"] = mmd(subsample(a, mmd_points, seed), subsample(b, mmd_points, seed + 1), mmd_bandwidths, mmd_scale)
    out["w1"] = w1(subsample(a, w1_points, seed), subsample(b, w1_points, seed + 1))
    return out


def metric_notes(seed: int = 0, projections: int = 500, w1_points: int | None = 2000, mmd_points: int | None = 2000,
                 mmd_bandwidths=MMD_BANDWIDTHS, mmd_scale: float | None = None) -> dict[str, str]:
    """``VECTOR_METRIC_NOTES`` filled in with the settings of a ``vector_metrics`` call."""
    fill = {"projections": projections, "seed": seed, "w1_points": w1_points or "all", "mmd_points": mmd_points or
            "all", "bandwidths": list(mmd_bandwidths),
            "scale": "the real set's median pairwise distance" if mmd_scale is None else f"{mmd_scale:g}"}
    return {k: v.format(**fill) for k, v in VECTOR_METRIC_NOTES.items()}
