"""The samplers' time grids, all in one place.

The diffusion samplers run backwards in diffusion time, from t_max down to t_eps (or to t_stop); the AGM bridge
runs forwards in its own time, from the noise end 0 up to t_stop <= AGM_T_MAX. Grids are built in float64 and
returned in the dtype each sampler has always used (float32 for the diffusion grids, float64 for AGM's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vsmd.diffusion.types import GaussianPath

EI_GRIDS = ("quadratic", "uniform", "log")
AGM_GRIDS = ("quadratic", "uniform")
AGM_T_MIN, AGM_T_MAX = 1e-5, 0.999  # AGM's training times; its sampler ends at t_stop <= AGM_T_MAX


def uniform_grid(t_max: float, t_eps: float, n: int, device=None) -> Tensor:
    """n points from t_max down to t_eps (inclusive), uniform in t, float32."""
    return torch.linspace(t_max, t_eps, n, device=device)


def ei_grid(process: GaussianPath, n: int, kind: str = "quadratic", t_stop: float | None = None,
            device=None) -> Tensor:
    """n decreasing times from t_max to t_stop (default t_eps): quadratic (dense at the data end), uniform in t,
    or uniform in log t."""
    if kind not in EI_GRIDS:
        raise ValueError(f"ei grid must be one of {EI_GRIDS}, got {kind!r}")
    if n < 2:
        raise ValueError(f"an EI grid needs at least 2 points, got {n}")
    lo = process.t_eps if t_stop is None else float(t_stop)
    hi = process.t_max
    if not process.t_eps <= lo < hi:
        raise ValueError(f"t_stop must be in [t_eps, t_max) = [{process.t_eps}, {hi}), got {lo}")
    u = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    if kind == "uniform":
        t = lo + (hi - lo) * u
    elif kind == "quadratic":
        t = lo + (hi - lo) * u * u
    else:
        t = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    t[0], t[-1] = hi, lo
    return t.to(device=device, dtype=torch.float32)


def agm_grid(steps: int, t_stop: float | None = None, kind: str = "quadratic", device=None) -> Tensor:
    """``steps`` increasing times from 0 to t_stop (default AGM_T_MAX): quadratic (dense at the noise end) or
    uniform, float64."""
    if steps < 2:
        raise ValueError(f"the AGM sampler needs at least 2 grid points, got {steps}")
    end = AGM_T_MAX if t_stop is None else float(t_stop)
    if not 0 < end <= AGM_T_MAX:
        raise ValueError(f"the AGM sampler's t_stop must be in (0, {AGM_T_MAX}], got {t_stop}")
    s = torch.linspace(0, 1, steps, dtype=torch.float64)
    if kind == "quadratic":
        s = s**2  # the smallest steps at t = 0, where the start's noise is resolved
    elif kind != "uniform":
        raise ValueError(f"the AGM grid must be 'quadratic' or 'uniform', got {kind!r}")
    return (end * s).to(device)
