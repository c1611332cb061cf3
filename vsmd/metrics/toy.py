"""Metrics for 2-D toy data: RMSE of probability mass functions and straightness of PF-ODE paths."""

from __future__ import annotations

import torch
from torch import Tensor


def pmf(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Normalised 2-D histogram of x (n, 2) on [lo, hi] per axis; points are clipped into the range first,
    and a point on the right edge falls into the last bin (VSDM code, spec section 6)."""
    x = torch.minimum(torch.maximum(x, lo), hi)
    idx = ((x - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)
    counts = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).to(torch.float64)
    return (counts / counts.sum()).reshape(bins, bins)


def pmf_rmse(real: Tensor, fake: Tensor, bins: int = 100, margin: float = 1.025) -> float:
    """RMSE between the PMFs of real and generated 2-D samples on a bins x bins grid over the real data's
    range times ``margin`` (assumes min < 0 < max per axis, as for the paper's toys)."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != 2 or fake.shape[1] != 2:
        raise ValueError(f"pmf_rmse needs two (n, 2) tensors, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    lo, hi = real.min(0).values * margin, real.max(0).values * margin
    p, q = pmf(real, lo, hi, bins), pmf(fake, lo, hi, bins)
    return float((p - q).pow(2).mean().sqrt())


def straightness(trajectory: Tensor, times: Tensor) -> Tensor:
    """Rectified-flow straightness per data dimension of PF-ODE paths (lower is straighter):

        S_j = int E[(dx_j / (T - t_eps) - xdot_j(s))^2] ds,

    with xdot the finite-difference velocity along the path in reverse time s = T - t and dx_j the net
    displacement x_j(t_eps) - x_j(T). ``trajectory`` is (N, B, d) on the decreasing grid ``times`` (N,).
    Returns a (d,) tensor.
    """
    traj = trajectory.detach().double()
    h = (times[:-1] - times[1:]).double().to(traj.device)  # positive steps in s
    span = h.sum()
    mean_vel = (traj[-1] - traj[0]) / span
    vel = (traj[1:] - traj[:-1]) / h[:, None, None]
    return ((mean_vel[None] - vel).pow(2).mean(1) * h[:, None]).sum(0).cpu()


def wasserstein1d(real: Tensor, fake: Tensor) -> Tensor:
    """Per-dimension 1-D Wasserstein-1 distance between two equal-size samples (n, d): mean |sorted differences|."""
    if real.shape != fake.shape or real.dim() != 2:
        raise ValueError(f"wasserstein1d needs two (n, d) tensors of equal shape, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    r, f = real.detach().double().cpu(), fake.detach().double().cpu()
    return (r.sort(0).values - f.sort(0).values).abs().mean(0)
