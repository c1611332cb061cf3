"""Time units of trajectory inference: what the bridge can be asked to fit, and the internal clock it runs on.

The networks regress velocities and accelerations, which scale like 1 / span and 1 / span^2 with the span of the
snapshot times, and the simulation multiplies their errors by the step. Trained on the same data with the same
reference process, a span of 3e4 ends in NaN and one of 3e-2 several times worse than a span of 3. So the model runs
on internal times u = t / 10^e, with e = floor(log10(span)) (the internal span lies in [1, 10); e = 0 for every span
already there, so those runs are unchanged). The reference process is the same law on the new clock: for
dx = v dt, dv = a dt + sigma dW, u = t / c gives dx/du = c v and a noise sigma c^(3/2); the first-order
dx = u dt + sigma dW gives sigma c^(1/2). Every time that goes in or out (pins, requested times, the simulation grid)
is in the data's own units.

Three things no change of units can fix are refused before training: times that start far from 0 compared with
their span (Unix timestamps: the clock is scaled, not shifted, and float32 cannot resolve them), a gap between
consecutive pins that is a tiny fraction of the span (the drift there is (gap)^-2 times larger than elsewhere; at
1e-2 of the span the fit is already useless), and a reference noise far larger than the data (sigma is per unit
of the data's time: 0.1 over a span of 2e7 seconds is a position noise of about 1e9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vsmd.diffusion.trajectory import spline_kriging

MIN_GAP_FRACTION = 1e-2  # smallest allowed (gap between consecutive pins) / (span of the pins)
MAX_NOISE_RATIO = 10.0  # largest allowed (the bridge's position sd between the pins) / (the data's sd)
MAX_ORIGIN_RATIO = 1e3  # largest allowed |first pin| / (span of the pins): float32 times keep ~1e-4 of the span


def time_exponent(pins: Sequence[float]) -> int:
    """e with span / 10^e in [1, 10)."""
    return math.floor(math.log10(float(pins[-1]) - float(pins[0])))


def to_internal(t: float, exponent: int) -> float:
    """t / 10^e (exact powers of ten: 10^|e| is an exact float up to e = 22)."""
    return float(t) / 10.0 ** exponent if exponent >= 0 else float(t) * 10.0 ** -exponent


def to_data_units(u, exponent: int):
    """u * 10^e (a float or a tensor)."""
    return u * 10.0 ** exponent if exponent >= 0 else u / 10.0 ** -exponent


def internal_sigma(sigma: float, dynamics: str, exponent: int) -> float:
    """The reference noise on the internal clock: sigma c^(3/2) (momentum) or sigma c^(1/2) (first order)."""
    return float(sigma) * (10.0 ** exponent) ** (1.5 if dynamics == "momentum" else 0.5)


def check_pin_gaps(pins: Sequence[float]) -> None:
    """A clear error when the smallest gap between consecutive pins is below MIN_GAP_FRACTION of their span."""
    t = [float(p) for p in pins]
    gaps = [b - a for a, b in zip(t[:-1], t[1:])]
    k = min(range(len(gaps)), key=gaps.__getitem__)
    ratio = gaps[k] / (t[-1] - t[0])
    if ratio < MIN_GAP_FRACTION:
        raise ValueError(f"the training snapshots at t = {t[k]:g} and {t[k + 1]:g} are {gaps[k]:.3g} apart, "
                         f"{ratio:.3g} of the span {t[-1] - t[0]:.3g} (times {t}); the bridge cannot fit a gap below "
                         f"{MIN_GAP_FRACTION:g} of the span (the drift there is (span / gap)^2 times larger than "
                         "elsewhere, and the fit fails). Merge the two snapshots, hold one out (holdout), or drop it.")


def check_origin(pins: Sequence[float]) -> None:
    """A clear error when the times start far from 0 compared with their span (e.g. Unix timestamps): the internal
    clock divides by a power of ten but does not shift, and a float32 grid near 1e9 cannot resolve a span of 2."""
    t0, span = float(pins[0]), float(pins[-1]) - float(pins[0])
    if abs(t0) > MAX_ORIGIN_RATIO * span:
        raise ValueError(f"the snapshot times start at {t0:g}, {abs(t0) / span:.3g} times their span {span:.3g} "
                         f"(times {[float(p) for p in pins]}); the simulation runs in float32 and cannot resolve such "
                         f"times (at most {MAX_ORIGIN_RATIO:g} spans from 0 is allowed). Subtract the first time from "
                         "every snapshot time (e.g. t - t_0) in the data file.")


def bridge_position_sd(bridge, points: int = 200) -> float:
    """The largest standard deviation of the bridge's position between the pins (per dimension), on a grid."""

    lo, hi = float(bridge.times[0]), float(bridge.times[-1])
    t = torch.linspace(lo, hi, points + 2, dtype=torch.float64)[1:-1]
    if bridge.momentum:
        var = spline_kriging(bridge.times, t)[1][:, 0, 0]
    else:
        times = bridge.times
        k = (torch.searchsorted(times, t, right=True) - 1).clamp(0, len(times) - 2)
        s = (t - times[k]) / (times[k + 1] - times[k])
        var = s * (1 - s) * (times[k + 1] - times[k])
    return bridge.sigma * float(var.clamp_min(0).max().sqrt())


def check_noise(bridge, data_sd: float, sigma: float, exponent: int) -> None:
    """A clear error when the bridge's position noise is more than MAX_NOISE_RATIO times the data's sd."""
    noise = bridge_position_sd(bridge)
    if noise > MAX_NOISE_RATIO * data_sd:
        span = to_data_units(float(bridge.times[-1] - bridge.times[0]), exponent)
        raise ValueError(f"sigma {sigma:g} is per unit of the snapshot times; over these times (span {span:.3g}) "
                         f"the bridge's position noise between the snapshots reaches {noise:.3g}, "
                         f"{noise / data_sd:.3g} times the data's sd {data_sd:.3g} (at most {MAX_NOISE_RATIO:g} "
                         "is allowed: the paths would be noise). Lower model.init_args.sigma, or give the times in "
                         "larger units (e.g. days instead of seconds).")


def check_in_span(times: Sequence[float], lo: float, hi: float) -> None:
    """Times (data units) must lie in the trained span [lo, hi] (up to 1e-9 of it)."""
    bad = [t for t in times if not lo - 1e-9 * (hi - lo) <= t <= hi + 1e-9 * (hi - lo)]
    if bad:
        raise ValueError(f"times {bad} are outside the trained span [{lo:g}, {hi:g}]; the bridge is only defined "
                         "between the first and the last training snapshot")
