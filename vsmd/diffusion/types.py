"""What the samplers share: their result, the network functions they call, and the Gaussian path they integrate.

A Gaussian path is a linear SDE whose kernel given a data point is Gaussian in closed form: the forward processes of
``vsmd.diffusion.process`` (VSMD and its relatives, time running data -> noise) and the AGM bridge of
``vsmd.diffusion.agm`` (noise -> data). ``GaussianPath`` declares what training and the sampler registry use of
either; each family's own samplers use more of its class (the reverse drift, the force, the hop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (a, t) -> the score of the noise coordinate (AGM: the force)
DenoiseFn = Callable[[Tensor, Tensor], Tensor]  # (a, t) -> the data estimate E[x0 | a_t]


@dataclass
class SampleResult:
    state: Tensor                   # final state a at the last grid time
    nfe: int                        # score-network evaluations
    times: Tensor                   # the grid the trajectory is on, decreasing
    trajectory: Tensor | None = None  # (len(times), B, ...) when asked for


@dataclass(frozen=True)
class SampleOptions:
    """What a sampler is asked for besides the path and the network (see ``vsmd.diffusion.registry.sample``)."""

    n: int                                   # samples
    steps: int                               # grid points
    generator: torch.Generator | None = None
    device: Any = None
    return_trajectory: bool = False
    progress: bool = False
    denoise_fn: DenoiseFn | None = None      # the data estimate, for ei and t_stop
    ei_order: int = 3
    ei_grid: str = "quadratic"
    t_stop: float | None = None              # stop early and return the data estimate there
    guide: Tensor | None = None              # AGM's velocity guidance


@runtime_checkable
class GaussianPath(Protocol):
    """The interface of a family's Gaussian path. The state ``a`` is ``x`` (``n_state`` 1) or ``cat(x, v, dim=1)``
    (``n_state`` 2); data are ``(B, *data_shape)``; times lie in [t_eps, t_max]."""

    name: str
    data_shape: tuple[int, ...]
    momentum: bool
    adaptive: bool  # has variational scores (rho) that the SA stage learns
    t_eps: float
    t_max: float

    @property
    def n_state(self) -> int: ...

    def split(self, a: Tensor) -> tuple[Tensor, ...]: ...

    def join(self, *parts: Tensor) -> Tensor: ...

    def coefficients(self, t: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]: ...

    def table(self, levels: Tensor) -> dict[str, Tensor]:
        """``coefficients`` on a fixed grid of training levels (may be cached)."""

    def noise_scale(self, t: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        """The scale the network's output is multiplied by (the preconditioner)."""

    def perturb(self, x0: Tensor, t: Tensor, coeffs: dict[str, Tensor] | None = None,
                generator: torch.Generator | None = None, full: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """a_t drawn from the kernel given the data, the regression target and its scale."""

    def prior_sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n draws of the state where the sampler starts."""


SamplerFn = Callable[[GaussianPath, ScoreFn, SampleOptions], SampleResult]  # one registered sampler
