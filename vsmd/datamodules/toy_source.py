"""The 2-D anisotropic toys (paper section 5.1), generated on the fly as the VSDM code does (spec section 6), and the
source that serves them to ``VectorDataModule(dataset=...)`` (vsmd.datamodules.vectors)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

__all__ = ["DATASETS", "ToySource", "check_toy", "checkerboard", "make_toy", "rotation_matrix", "spiral"]

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


def check_toy(dataset: str, stretch: list[float], rotate: float) -> None:
    """Refuse an unknown toy, a stretch that is not two positive factors and an angle that is not finite."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown toy dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if len(stretch) != 2 or not all(s > 0 for s in stretch):
        raise ValueError(f"stretch must be two positive factors [x, y], got {stretch}")
    if not math.isfinite(rotate):
        raise ValueError(f"rotate must be a finite angle in degrees, got {rotate}")


class _ToyStream(IterableDataset):
    """An endless stream of fresh batches; batch k is a function of (seed, k) only."""

    def __init__(self, name: str, stretch: list[float], batch_size: int, seed: int, rotate: float = 0.0) -> None:
        self.name, self.stretch, self.batch_size, self.seed, self.rotate = name, stretch, batch_size, seed, rotate
        self.position = 0

    def __iter__(self):
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.position)
            self.position += 1
            yield make_toy(self.name, self.batch_size, self.stretch, gen, self.rotate)


class ToySource:
    """A generated toy as the rows of a ``VectorDataModule``: training batches are drawn fresh from a seeded stream,
    and the validation, test and predict sets are fixed draws of ``n_val``, ``n_test`` and ``n_predict`` points from
    other seeds. The toys are used in their own units (no standardisation, no column names, no file).

    Args:
        dataset: "spiral" or "checkerboard".
        stretch: multiply x and y by these factors (spiral-8Y: [1, 8]; checkerboard-6X: [6, 1]).
        rotate: then rotate the data by this many degrees about the origin (counter-clockwise).
        n_val, n_test, n_predict: the sizes of the fixed sets.
        seed: the seed of the fixed sets (the stream's is given to ``stream``).
    """

    data_dim = 2
    standardisation = None
    column_names = None
    identity = None

    def __init__(self, dataset: str, stretch: list[float], rotate: float, n_val: int, n_test: int, n_predict: int,
                 seed: int) -> None:
        check_toy(dataset, stretch, rotate)
        if min(n_val, n_test) < 1:
            raise ValueError(f"n_val and n_test must be >= 1 (the sizes of the toy's validation and test sets), got "
                             f"{n_val} and {n_test}")
        self.dataset, self.stretch, self.rotate = dataset, [float(s) for s in stretch], float(rotate)
        self.n_val, self.n_test, self.n_predict, self.seed = n_val, n_test, n_predict, seed

    def __repr__(self) -> str:
        return f"ToySource({self.dataset!r}, stretch={self.stretch}, rotate={self.rotate:g})"

    def fixed_set(self, split: str) -> Tensor:
        """A fixed draw for 'val', 'test' or 'predict' (the latter gives only the count that predict uses)."""
        n, offset = {"val": (self.n_val, 1), "test": (self.n_test, 2), "predict": (self.n_predict, 3)}[split]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983 * offset)
        return make_toy(self.dataset, n, self.stretch, gen, self.rotate)

    def stream(self, batch_size: int, seed: int) -> IterableDataset:
        """Endless fresh training batches (batch_size, 2); batch k is a function of (seed, k) only."""
        return _ToyStream(self.dataset, self.stretch, batch_size, seed, self.rotate)
