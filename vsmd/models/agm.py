"""AGM (Chen et al., "Generative Modeling with Phase Stochastic Bridges", ICLR 2024) as a model family: the
phase-space bridge of vsmd.diffusion.agm, trained on its force, sampled with its own multistep integrator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from vsmd.diffusion.agm import AGM_T_MAX, AGM_T_MIN, AGMProcess
from vsmd.diffusion.grids import check_t_stop
from vsmd.diffusion.objectives import force_matching
from vsmd.diffusion.registry import sampler_for
from vsmd.models.base import GenerativeModule
from vsmd.models.data_start import data_moments, describe
from vsmd.models.options import AGMOptions, SamplingOptions, TrainingOptions, groups
from vsmd.settings import SettingsPolicy

SCALE_SAMPLES = 4096  # training samples the data scale of agm_scale "data" is computed on


class AGMModule(GenerativeModule):
    """The AGM bridge from N(0, Sigma0) at time 0 to the data at time 1: the network learns the bridge's force (the
    regression target normalised by s(t), each time weighted by 1 / (1 - t)); sampling integrates the force with
    the "ei" sampler (AGM's multistep integrator, ``ei_order``, grid "quadratic" or "uniform") and returns the hop's
    estimate of the data at ``t_stop`` (AGM's time, noise 0 -> data 1; None: 0.999).

    A task mixes in ``data_shape()``, ``build_net()`` and its evaluation (vsmd.models.base.GenerativeModule).

    Args:
        agm_p: the noise scale p of g(t) = p (1 - t).
        agm_k: the correlation -k of (x0, v0) at the noise end. 
        agm_scale: "none" (the paper: the bridge runs on the data as they are) or "data" (on the
            data divided per dimension by its standard deviation, from the training data at the start of fit and
            kept in the checkpoint; samples are scaled back). AGM's start N(0, 1), noise p and hop times suit data
            of unit scale: with the exact force on Gaussian data of sd 8 the sampler keeps 63% of the spread at NFE
            10 against 100% at sd 1 (benchmarks/results/agm.md).
        guide: vector data: velocity guidance toward this point (one value per data dimension) in
            sampling (test, predict): in the first quarter of the steps v is redrawn from the bridge's
            p(v | x; x1 = guide); the network is not changed. None: unguided.
        t_levels, lr, weight_decay, ema_decay, ema_warmup: the network's training, as for VSMDModule.
        sampler, sample_steps, seed, ei_order, ei_grid, t_stop: the sampler ("ei", NFE = sample_steps), as for
            VSMDModule; ``t_stop`` is in AGM's time.
    """

    objective = staticmethod(force_matching)
    path_sampler = "ei"
    SETTINGS = SettingsPolicy(  # each option's role on resume and at test/predict (vsmd.settings)
        weights=("agm_p", "agm_k", "agm_scale"), resume=("lr", "weight_decay", "ema_decay", "t_levels"),
        start=("ema_warmup",), evaluation=("sampler", "sample_steps", "seed", "ei_order", "ei_grid", "t_stop", "guide"))

    def __init__(self, agm_p: float = 3.0, agm_k: float = 0.2, agm_scale: str = "none",
                 guide: list[float] | None = None,
                 t_levels: int = 1000, lr: float = 1e-3, weight_decay: float = 0.0, ema_decay: float = 0.999,
                 ema_warmup: bool = False, sampler: str = "ei", sample_steps: int = 50, seed: int = 0,
                 ei_order: int = 3, ei_grid: str = "quadratic", t_stop: float | None = None) -> None:
        super().__init__()
        _, sampling, training = groups(dict(locals()), AGMOptions, SamplingOptions, TrainingOptions)
        if ei_grid not in ("quadratic", "uniform"):
            raise ValueError(f"AGM needs ei_grid quadratic or uniform, got {ei_grid!r}")
        check_t_stop(t_stop, AGM_T_MIN, AGM_T_MAX, bridge=True)
        self.save_hyperparameters()
        shape = tuple(self.data_shape())
        if guide is not None and (len(shape) != 1 or len(guide) != shape[0]):
            raise ValueError(f"guide (velocity guidance) needs one value per data dimension {shape}, got {guide!r}")
        path = AGMProcess(shape, agm_p, agm_k)
        sampler_for(path, sampler)  # its own integrator only: the error names it
        self.build(path, training, sampling, scale=agm_scale == "data")

    def score(self, a: Tensor, t: Tensor, net: nn.Module | None = None, cond: Tensor | None = None) -> Tensor:
        """The force F = s(t) * output that AGM's integrator follows."""
        net = net if net is not None else self.eval_net
        return self._eps(net, a, t, cond) * self._noise_scale(a, t)

    def guide_target(self) -> Tensor | None:
        """The point of velocity guidance in the data's coordinates (None: unguided)."""
        guide = self.hparams.get("guide")
        return None if guide is None else torch.tensor(guide, dtype=torch.float32, device=self.device)

    def sampler_options(self, net: nn.Module, cond: Tensor | None = None, sampler: str | None = None) -> dict[str, Any]:
        """The EI settings and t_stop; the hop comes from the force itself; the guidance target in the frame."""
        opts = super().sampler_options(net, cond, sampler)
        target = self.guide_target()
        if target is not None:
            opts["guide"] = self.to_frame(target)
        return opts

    def start_from_data(self, moment_batches: Callable[[], Iterable] | None) -> None:
        """agm_scale "data": the data's sd per dimension, unless the checkpoint has it."""
        if self.x_scale is None or self.data_start.scale:
            return
        _, var = data_moments(self, moment_batches, SCALE_SAMPLES)
        self.x_scale.copy_(var.sqrt().clamp_min(1e-6).to(self.x_scale.dtype))
        self.data_start.scale = True
        self.print(f"agm_scale data: the bridge runs on the data divided by their sd per dimension "
                   f"({describe(self.x_scale)})")
