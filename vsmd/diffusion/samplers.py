"""Reverse-time samplers (spec section 4): plain functions over an explicit, decreasing time grid.

``score_fn(a, t)`` takes the state (B, n_state*C, ...) and times (B,) and returns the score of the noise
coordinate (v for momentum processes, x for overdamped ones), shape (B, *data_shape). Each sampler returns a
``SampleResult`` with the final state, the number of score evaluations (NFE) and, optionally, the states on
the grid. ``vsmd.diffusion.registry`` registers them by name (with the exponential integrator and AGM's sampler)
and ``sample`` there draws the prior, picks the grid and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vsmd.diffusion.process import ForwardProcess
from vsmd.diffusion.types import SampleResult, ScoreFn

__all__ = ["SampleResult", "ScoreFn", "euler_maruyama", "heun", "splitting"]


def _steps(times: Tensor, progress: bool, desc: str):
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist()))
    return tqdm(pairs, desc=desc, leave=False, disable=not progress)


def euler_maruyama(process: ForwardProcess, score_fn: ScoreFn, a: Tensor, times: Tensor,
                   generator: torch.Generator | None = None, return_trajectory: bool = False,
                   progress: bool = False) -> SampleResult:
    """Euler-Maruyama on the backward SDE (paper Eq. 16 with the missing x restored); no noise on the last step."""
    traj = [a] if return_trajectory else None
    n_steps = len(times) - 1
    for k, (t, t_next) in enumerate(_steps(times, progress, "EM sampling")):
        h = t - t_next
        tb = torch.full((a.shape[0],), t, device=a.device)
        a = a + h * process.reverse_drift(a, tb, score_fn(a, tb))
        if k < n_steps - 1:
            a = process.add_noise(a, tb, h, generator)
        if traj is not None:
            traj.append(a)
    return SampleResult(a, n_steps, times, torch.stack(traj) if traj is not None else None)


def splitting(process: ForwardProcess, score_fn: ScoreFn, a: Tensor, times: Tensor,
              generator: torch.Generator | None = None, return_trajectory: bool = False,
              progress: bool = False) -> SampleResult:
    """Symmetric splitting: exact linear OU half-step, score kick at the midpoint, exact half-step (spec 4.2).

    For A = 0 this is CLD-SGM's SSCS (with the score taken at the midpoint time).
    """
    traj = [a] if return_trajectory else None
    for t, t_next in _steps(times, progress, "SSCS sampling"):
        h, t_mid = t - t_next, 0.5 * (t + t_next)
        a = process.linear_step(a, t, t_mid, generator)
        tb = torch.full((a.shape[0],), t_mid, device=a.device)
        a = process.score_kick(a, tb, h, score_fn(a, tb))
        a = process.linear_step(a, t_mid, t_next, generator)
        if traj is not None:
            traj.append(a)
    return SampleResult(a, len(times) - 1, times, torch.stack(traj) if traj is not None else None)


def heun(process: ForwardProcess, score_fn: ScoreFn, a: Tensor, times: Tensor,
         generator: torch.Generator | None = None, return_trajectory: bool = False,
         progress: bool = False, final_euler_to_zero: bool = True,
         on_state: Callable[[Tensor, Tensor, Tensor], None] | None = None) -> SampleResult:
    """Heun (2nd order) on the probability-flow ODE (Karras et al. 2022), deterministic.

    With ``final_euler_to_zero`` an Euler step from the last grid time to t = 0 follows (VSMD code); on the
    default grid of n points that is NFE = 2n - 1. ``on_state(a, t, score)`` is called with each state on the
    grid and its score (not with the Euler predictor states), so callers can record the path for free.
    """
    del generator  # deterministic
    if final_euler_to_zero:
        times = torch.cat([times, times.new_zeros(1)])
    traj = [a] if return_trajectory else None
    nfe = 0
    n_steps = len(times) - 1

    def drift(state: Tensor, t: float, on_grid: bool = False) -> Tensor:
        tb = torch.full((state.shape[0],), t, device=state.device)
        score = score_fn(state, tb)
        if on_grid and on_state is not None:
            on_state(state, tb, score)
        return process.reverse_drift(state, tb, score, probability_flow=True)

    for k, (t, t_next) in enumerate(_steps(times, progress, "Heun sampling")):
        h = t - t_next
        d = drift(a, t, on_grid=True)
        nfe += 1
        a_next = a + h * d
        if not (final_euler_to_zero and k == n_steps - 1):
            d2 = drift(a_next, t_next)
            nfe += 1
            a_next = a + 0.5 * h * (d + d2)
        a = a_next
        if traj is not None:
            traj.append(a)
    return SampleResult(a, nfe, times, torch.stack(traj) if traj is not None else None)
