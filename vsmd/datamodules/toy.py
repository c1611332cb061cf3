"""2-D anisotropic toy data (paper section 5.1), generated on the fly as the VSDM code does (spec section 6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from vsmd.datamodules.vector_base import StreamLoader, VectorDataBase
from vsmd.settings import SettingsPolicy

__all__ = ["DATASETS", "StreamLoader", "Toy2DDataModule", "checkerboard", "make_toy", "rotation_matrix", "spiral"]

DATASETS = ("spiral", "checkerboard")


def spiral(n: int, generator: torch.Generator | None = None) -> Tensor:
    """VSDM's spiral: theta = sqrt(U) 3 pi - pi/2, r = theta + pi, 0.25 Gaussian noise, all times 0.4."""
    theta = torch.rand(n, generator=generator).sqrt() * 3 * math.pi - math.pi / 2
    r = theta + math.pi
    x = torch.stack([r * theta.cos(), r * theta.sin()], dim=1) + 0.25 * torch.randn(n, 2, generator=generator)
    return 0.4 * x


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """VSDM's checkerboard: uniform on [-2 pi, 2 pi]^2, keep points with sin(x1) sin(x2) < 0."""
    out = torch.empty(0, 2)
    while len(out) < n:  # 3n draws keep about 1.5n points; loop for the rare shortfall
        x = (torch.rand(3 * n, 2, generator=generator) * 2 - 1) * 2 * math.pi
        out = torch.cat([out, x[(x[:, 0].sin() * x[:, 1].sin()) < 0]])
    return out[:n]


def rotation_matrix(degrees: float) -> Tensor:
    """The 2 x 2 rotation by ``degrees`` counter-clockwise (float64)."""
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


def make_toy(name: str, n: int, stretch: tuple[float, float] | list[float] = (1.0, 1.0),
             generator: torch.Generator | None = None, rotate: float = 0.0) -> Tensor:
    """n points of a toy, stretched per axis, then rotated by ``rotate`` degrees about the origin."""
    if name not in DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(DATASETS)}")
    x = spiral(n, generator) if name == "spiral" else checkerboard(n, generator)
    x = x * torch.tensor(stretch, dtype=x.dtype)
    if rotate:
        x = (x.double() @ rotation_matrix(rotate).T).to(x.dtype)
    return x


class _Stream(IterableDataset):
    """An endless stream of fresh batches; batch k is a function of (seed, k) only."""

    def __init__(self, name: str, stretch: list[float], batch_size: int, seed: int, rotate: float = 0.0) -> None:
        self.name, self.stretch, self.batch_size, self.seed, self.rotate = name, stretch, batch_size, seed, rotate
        self.position = 0

    def __iter__(self):
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            self.position += 1
            yield make_toy(self.name, self.batch_size, self.stretch, gen, self.rotate)


class Toy2DDataModule(VectorDataBase):
    """Spiral or checkerboard with a per-axis stretch (spiral-8Y: stretch [1, 8]; checkerboard-6X: [6, 1]).

    Training batches are drawn fresh from a seeded stream (use ``trainer.max_steps``); validation, test
    and predict sets are fixed draws from other seeds. The loaders and the interface a vector model reads are
    ``VectorDataBase``'s (vsmd.datamodules.vector_base); the toys are used in their own units (no standardisation).

    Args:
        dataset: "spiral" or "checkerboard".
        stretch: multiply x and y by these factors.
        rotate: then rotate the data by this many degrees about the origin (counter-clockwise), e.g. 45 for a
            stretch off the coordinate axes, which a diagonal A cannot follow (model ``rotation: pca`` can).
        batch_size: training batch size.
        n_val: validation set size.
        n_test: real samples for the test metrics (3000 in the paper's PMF-RMSE).
        n_predict: samples ``vsmd predict`` generates.
        seed: seed of the data stream and of the fixed sets.
    """

    data_dim = 2

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings)
    DATA_SETTINGS = SettingsPolicy(data=("dataset", "stretch", "rotate"),
                                   loading=("batch_size", "n_val", "n_test", "n_predict", "seed"))

    def __init__(self, dataset: str = "spiral", stretch: list[float] = [1.0, 8.0], batch_size: int = 512,
                 n_val: int = 2000, n_test: int = 3000, n_predict: int = 3000, seed: int = 0,
                 rotate: float = 0.0) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown toy dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if len(stretch) != 2 or not all(s > 0 for s in stretch):
            raise ValueError(f"stretch must be two positive factors [x, y], got {stretch}")
        if not math.isfinite(rotate):
            raise ValueError(f"rotate must be a finite angle in degrees, got {rotate}")
        if min(batch_size, n_val, n_test, n_predict) < 1:
            raise ValueError("batch_size, n_val, n_test and n_predict must be >= 1")
        self.save_hyperparameters()
        self.dataset, self.stretch = dataset, [float(s) for s in stretch]
        self.batch_size, self.seed, self.rotate = batch_size, seed, float(rotate)
        self.n_val, self.n_test, self.n_predict = n_val, n_test, n_predict

    def fixed_set(self, split: str) -> Tensor:
        """A fixed draw for 'val', 'test' or 'predict' (the latter gives only the count that predict uses)."""
        n, offset = {"val": (self.n_val, 1), "test": (self.n_test, 2), "predict": (self.n_predict, 3)}[split]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983 * offset)
        return make_toy(self.dataset, n, self.stretch, gen, self.rotate)

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0  # distinct streams under DDP
        return StreamLoader(_Stream(self.dataset, self.stretch, self.batch_size, self.seed + 7919 * rank,
                                    self.rotate), batch_size=None)
