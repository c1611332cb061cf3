"""Matplotlib figures for TensorBoard and files (Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def samples_figure(real: Tensor | None, fake: Tensor, title: str = "", max_points: int = 3000):
    """Scatter of generated 2-D samples, beside the real data when given, on the real data's axes."""
    ncols = 1 if real is None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4), squeeze=False, sharex=True, sharey=True)
    panels = ([("data", real)] if real is not None else []) + [(f"generated {title}".strip(), fake)]
    for ax, (name, pts) in zip(axes[0], panels):
        pts = pts[:max_points]
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(name)
    if real is not None:
        lo, hi = real.min(0).values * 1.05, real.max(0).values * 1.05
        axes[0, 0].set_xlim(float(lo[0]), float(hi[0]))
        axes[0, 0].set_ylim(float(lo[1]), float(hi[1]))
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
