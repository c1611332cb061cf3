"""Matplotlib figures for TensorBoard and files (Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def samples_figure(real: Tensor | None, fake: Tensor, title: str = "", max_points: int = 3000):
    """Scatter of generated 2-D samples beside the real data when given, on the same axes: the real data's
    range, so a squashed or spread-out model is visible at a glance. The generated panel's title gives the
    per-axis std ratio (generated / real) and how many generated points fall outside the axes."""
    ncols = 1 if real is None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4), squeeze=False, sharex=True, sharey=True)
    name = f"generated {title}".strip()
    if real is not None:
        real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
        lo, hi = real.min(0).values * 1.05, real.max(0).values * 1.05
        ratio = fake.std(0) / real.std(0)
        outside = int((~torch.isfinite(fake).all(1) | ((fake < lo) | (fake > hi)).any(1)).sum())
        name += f"\nstd ratio x {float(ratio[0]):.2f}, y {float(ratio[1]):.2f}"
        if outside:
            name += f"; {outside} outside"
    panels = ([("data", real)] if real is not None else []) + [(name, fake)]
    for ax, (label, pts) in zip(axes[0], panels):
        pts = pts[:max_points]
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(label, fontsize=9)
    if real is not None:
        axes[0, 0].set_xlim(float(lo[0]), float(hi[0]))
        axes[0, 0].set_ylim(float(lo[1]), float(hi[1]))
    fig.tight_layout()
    return fig


def principal_axes(real: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
    """(mean (d,), axes (d, k)): the real data's mean and first k principal axes (float64), each axis signed so that
    its largest component is positive (the same data give the same picture)."""
    x = real.detach().double().cpu()
    mean = x.mean(0)
    axes = torch.linalg.svd(x - mean, full_matrices=False).Vh[:k].T
    flip = axes.gather(0, axes.abs().argmax(0, keepdim=True)).sign()
    return mean, axes * torch.where(flip == 0, 1.0, flip)


def vectors_figure(real: Tensor, fake: Tensor, columns: list[int] | None = None, names: list[str] | None = None,
                   title: str = "", max_points: int = 3000):
    """``samples_figure`` for vectors of any dimension d: the two coordinates themselves for d = 2, the ``columns``
    (two indices) if given, else both sets projected on the real data's first two principal axes (centred on the
    real mean). d = 1: the two histograms. ``names`` label the coordinates."""
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    d = real.shape[1]
    if d == 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist([real[:, 0].numpy(), fake[:, 0].numpy()], bins=50, density=True, label=["data", "generated"])
        ax.set_xlabel(names[0] if names else "x[0]")
        ax.set_title(f"generated {title}".strip(), fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    label = (lambda j: names[j] if names else f"x[{j}]")
    if columns is not None or d == 2:
        cols = list(columns) if columns is not None else [0, 1]
        if len(cols) != 2 or not all(-d <= c < d for c in cols):
            raise ValueError(f"columns must be two coordinate indices in 0..{d - 1}, got {columns}")
        pr, pf, axis_names = real[:, cols], fake[:, cols], [label(c) for c in cols]
    else:
        mean, axes = principal_axes(real)
        pr, pf, axis_names = (real - mean) @ axes, (fake - mean) @ axes, ["principal axis 1", "principal axis 2"]
    fig = samples_figure(pr, pf, title=title, max_points=max_points)
    for ax in fig.axes:
        ax.set_xlabel(axis_names[0], fontsize=8)
    fig.axes[0].set_ylabel(axis_names[1], fontsize=8)
    fig.tight_layout()
    return fig


def trajectories_figure(paths: Tensor, times: Tensor):
    """Probability-flow paths: one panel per data dimension, x_j against diffusion time (T on the left)."""
    n_dim = paths.shape[-1]
    fig, axes = plt.subplots(1, n_dim, figsize=(4 * n_dim, 3), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.plot(times.numpy(), paths[:, :, j].numpy(), lw=0.8)
        ax.invert_xaxis()
        ax.set_xlabel("t")
        ax.set_title(f"x[{j}] along the PF-ODE")
    fig.tight_layout()
    return fig


def forecast_figure(history, future, samples, max_dims: int = 4, title: str = ""):
    """Forecast median with 50% and 90% bands against the truth, one panel per series (paper Figure 6).

    history (L, D), future (H, D), samples (S, H, D), numpy arrays of one window.
    """
    import numpy as np

    d = min(max_dims, future.shape[1])
    lh, h = len(history), len(future)
    fig, axes = plt.subplots(d, 1, figsize=(8, 2.2 * d), squeeze=False, sharex=True)
    t_hist, t_fut = np.arange(-lh, 0), np.arange(h)
    q = np.quantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    for j, ax in enumerate(axes[:, 0]):
        ax.plot(t_hist, history[:, j], color="k", lw=1)
        ax.plot(t_fut, future[:, j], color="k", lw=1, label="truth")
        ax.fill_between(t_fut, q[0, :, j], q[4, :, j], color="C0", alpha=0.2, label="90%")
        ax.fill_between(t_fut, q[1, :, j], q[3, :, j], color="C0", alpha=0.4, label="50%")
        ax.plot(t_fut, q[2, :, j], color="C0", lw=1.2, label="median")
        ax.set_ylabel(f"series {j}")
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("steps from the forecast start")
    fig.tight_layout()
    return fig


def snapshot_trajectories_figure(snapshots: list[Tensor], times: list[float], paths: Tensor, holdout: list[int],
                                 predicted: dict[int, Tensor], title: str = "", max_paths: int = 48,
                                 max_points: int = 1000, grid: Tensor | None = None):
    """Trajectory inference on the first two coordinates: the snapshots coloured by time with a few dozen generated
    paths over them; then, per held-out snapshot, the real points against the model's prediction at that time.
    One-dimensional data are drawn as position against time (the paths on ``grid``, their times), and each held-out
    snapshot as two histograms."""
    cmap = plt.get_cmap("viridis")
    one_d = paths.shape[-1] == 1
    ncols = 1 + len(holdout)
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 4.4), squeeze=False)
    ax = axes[0, 0]
    span = max(times[-1] - times[0], 1e-12)
    for k, (pts, t) in enumerate(zip(snapshots, times)):
        pts = pts[:max_points].detach().cpu()
        label = f"t = {t:g}" + (" (held out)" if k in holdout else "")
        xy = (torch.full((len(pts),), float(t)), pts[:, 0]) if one_d else (pts[:, 0], pts[:, 1])
        ax.scatter(*xy, s=3, color=cmap((t - times[0]) / span), alpha=0.35, label=label,
                   marker="x" if k in holdout else "o")
    p = paths[:, :max_paths].detach().cpu()
    if one_d:
        steps = grid.detach().cpu() if grid is not None else torch.linspace(times[0], times[-1], len(p))
        ax.plot(steps.numpy(), p[:, :, 0].numpy(), color="0.15", lw=0.6, alpha=0.7)
        ax.set_xlabel("t")
        ax.set_ylabel("x")
    else:
        for j in range(p.shape[1]):
            ax.plot(p[:, j, 0], p[:, j, 1], color="0.15", lw=0.6, alpha=0.7)
    ax.set_title(f"snapshots and {p.shape[1]} generated paths {title}".strip(), fontsize=9)
    ax.legend(fontsize=7, markerscale=3, loc="best")
    for ax, k in zip(axes[0, 1:], holdout):
        real, gen = snapshots[k][:max_points].cpu(), predicted[k][:max_points].cpu()
        if one_d:
            ax.hist([real[:, 0].numpy(), gen[:, 0].numpy()], bins=30, color=["0.6", "tab:red"],
                    label=["held-out snapshot", "prediction"], density=True)
            ax.set_xlabel("x")
        else:
            ax.scatter(real[:, 0], real[:, 1], s=3, c="0.6", label="held-out snapshot")
            ax.scatter(gen[:, 0], gen[:, 1], s=3, c="tab:red", alpha=0.5, label="prediction")
        ax.set_title(f"held-out t = {times[k]:g}", fontsize=9)
        ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    return fig
