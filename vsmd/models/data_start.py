"""The data moments a model's data-informed start needs (VSMD: rho_init "data" and rotation "pca"/"learned"; AGM:
agm_scale "data"), from the DataModule's ``moment_batches`` (vsmd.datamodules.moments), and the component that keeps
which parts of the start are done.

Each part runs once, at the start of the first fit: a resumed fit and a loaded checkpoint have them already (the
values are in the state dict), which :meth:`DataStart.loaded` records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DataStart:
    """Which parts of the data-informed start are done: the data scale, the frame, the start of A."""

    scale: bool = False
    frame: bool = False
    rho: bool = False

    def loaded(self) -> None:
        """A checkpoint was loaded: every part comes from it."""
        self.scale = self.frame = self.rho = True


@torch.no_grad()
def data_moments(module, moment_batches: Callable[[], Iterable] | None, n_samples: int,
                 full: bool = False) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and variance (float64, data_shape) of about ``n_samples`` training samples (the module's
    ``stats_x0`` of the DataModule's moment batches), averaged over DDP ranks; with ``full``, the mean and the
    covariance matrix of vector data."""
    if moment_batches is None:
        raise RuntimeError("rho_init 'data' needs a DataModule to compute the data moments; pass one to "
                           "fit, or set model rho_init: zero")
    n, s1, s2 = 0, 0.0, 0.0
    for batch in moment_batches():
        batch = module.transfer_batch_to_device(batch, module.device, 0)
        x0 = module.stats_x0(batch).to(torch.float64)
        outer = x0.T @ x0 if full else (x0 * x0).sum(0)
        n, s1, s2 = n + len(x0), s1 + x0.sum(0), s2 + outer
        if n >= n_samples:
            break
    if n < 2:
        raise RuntimeError("rho_init 'data': the training data gave fewer than 2 samples")
    mean, second = s1 / n, s2 / n
    trainer = module.trainer
    if trainer.world_size > 1:
        mean = trainer.strategy.reduce(mean, reduce_op="mean")
        second = trainer.strategy.reduce(second, reduce_op="mean")
    if not (torch.isfinite(mean).all() and torch.isfinite(second).all()):
        raise ValueError("the training data contain NaN or inf: the data moments for rho_init 'data' are not "
                         "finite; check the data")
    if full:
        return mean, second - torch.outer(mean, mean)
    return mean, (second - mean * mean).clamp_min(0.0)


def describe(values: Tensor, limit: int = 16, fmt: str = ".3g") -> str:
    """Up to ``limit`` values, comma-separated, for the start-of-fit messages."""
    return ", ".join(f"{float(v):{fmt}}" for v in values.flatten()[:limit])
