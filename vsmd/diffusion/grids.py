"""The samplers' time grids, all in one place.

The diffusion samplers run backwards in diffusion time, from t_max down to t_eps (or to t_stop); the AGM bridge
runs forwards in its own time, from the noise end 0 up to t_stop <= AGM_T_MAX; the trajectory simulator runs forwards
through the snapshot times (knot_grid). Grids are built in float64 and returned in the dtype each sampler has always
used (float32 for the diffusion grids, float64 for AGM's and the trajectories').
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vsmd.diffusion.types import GaussianPath

EI_GRIDS = ("quadratic", "uniform", "log")
AGM_GRIDS = ("quadratic", "uniform")
AGM_T_MIN, AGM_T_MAX = 1e-5, 0.999  # AGM's training times; its sampler ends at t_stop <= AGM_T_MAX


def check_t_stop(t_stop: float | None, t_eps: float, t_max: float, bridge: bool = False, option: str = "t_stop",
                 unset: str = "") -> None:
    """Where a sampler may stop: a diffusion's time in [t_eps, t_max); a bridge's (time noise 0 -> data 1, e.g.
    AGM's) in (0, t_max]. None (no stop) always passes; ``unset`` says what None means, for the message. The one
    check of t_stop: the module calls it before training, the grids when they are built."""
    if t_stop is None:
        return
    if bridge and not 0 < t_stop <= t_max:
        raise ValueError(f"{option} must be in (0, {t_max}]{unset} for a bridge process such as agm (the bridge "
                         f"time of the hop), got {t_stop}")
    if not bridge and not t_eps <= t_stop < t_max:
        raise ValueError(f"{option} must be in [t_eps, t_max) = [{t_eps}, {t_max}){unset}, got {t_stop}")


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
    check_t_stop(None if t_stop is None else float(t_stop), process.t_eps, process.t_max)
    lo = process.t_eps if t_stop is None else float(t_stop)
    hi = process.t_max
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
    check_t_stop(None if t_stop is None else float(t_stop), AGM_T_MIN, AGM_T_MAX, bridge=True)
    end = AGM_T_MAX if t_stop is None else float(t_stop)
    s = torch.linspace(0, 1, steps, dtype=torch.float64)
    if kind == "quadratic":
        s = s**2  # the smallest steps at t = 0, where the start's noise is resolved
    elif kind != "uniform":
        raise ValueError(f"the AGM grid must be 'quadratic' or 'uniform', got {kind!r}")
    return (end * s).to(device)


def knot_grid(knots: Sequence[float], steps: int) -> Tensor:
    """The trajectory simulator's grid: increasing, float64, from knots[0] to knots[-1] with every knot on it and
    about ``steps`` steps in all, spread over the segments in proportion to their lengths (at least one per one)."""
    knots = sorted(set(float(k) for k in knots))
    span = knots[-1] - knots[0]
    pieces = [torch.tensor([knots[0]], dtype=torch.float64)]
    for a, b in zip(knots[:-1], knots[1:]):
        n = max(1, round(steps * (b - a) / span)) if span > 0 else 1
        pieces.append(torch.linspace(a, b, n + 1, dtype=torch.float64)[1:])
    return torch.cat(pieces)
