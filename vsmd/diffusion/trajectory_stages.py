"""DMSB's stages for the multi-marginal bridges (Lightning-free): which stage a training step is in, which policy a
stage simulates and which it fits, the seeds that make a resumed stage continue exactly, and the stage's pool.

Stage 0 fits both policies on OT chains of the data batches. Stage s >= 1 starts by simulating one policy from the
data at its own end (odd s: the backward policy from the last snapshot; even s: the forward one from the first)
through every training snapshot; each simulated snapshot is OT-projected onto the data there (``ot_project``, the
sample form of IPF's projection onto that marginal), and the stage fits the *other* policy by bridge matching on
chains drawn from that pool. Stage s covers the training steps [s, s + 1) * stage_steps; the last one runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vsmd.diffusion.trajectory import ot_project

POLICIES = ("forward", "backward")


def check_stage_options(stages: int, stage_steps: int, pool_size: int) -> None:
    if stages < 0 or stage_steps < 1 or pool_size < 2:
        raise ValueError(f"need stages >= 0, stage_steps >= 1 and pool_size >= 2; got {stages}, {stage_steps} and "
                         f"{pool_size}")


def check_schedule(stages: int, stage_steps: int, max_steps: int | None) -> None:
    """The last stage must start before training ends."""
    if stages > 0 and max_steps is not None and 0 < max_steps <= stages * stage_steps:
        raise ValueError(f"trainer.max_steps {max_steps} ends before the last stage starts (stage {stages} at "
                         f"step {stages * stage_steps}); raise max_steps, or lower stages or stage_steps")


def stage_at(step: int, stage_steps: int, stages: int) -> int:
    """The stage that training step ``step`` belongs to."""
    return min(step // stage_steps, stages)


def stage_plan(stage: int) -> tuple[str | None, tuple[str, ...]]:
    """(the policy a stage simulates, the policies it fits): stage 0 simulates none and fits both on OT chains;
    odd stages simulate the backward policy and fit the forward one; even stages the reverse."""
    if stage == 0:
        return None, POLICIES
    return ("backward", ("forward",)) if stage % 2 else ("forward", ("backward",))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The randomness of training step ``step`` of a staged run: a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + int(step) + 17)


def pool_generator(seed: int, stage: int) -> torch.Generator:
    """The randomness of building stage ``stage``'s pool: a function of (seed, stage) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7919 * stage + 1)


@dataclass
class Pool:
    """A stage's chains (P, K + 1, d) through the training snapshots, and how it was built: seconds of simulation
    and in all, and the rms shift of each snapshot's simulated points onto the data (0 at the start, data already)."""

    chains: Tensor
    stage: int
    simulated: str
    fits: tuple[str, ...]
    simulate_seconds: float
    seconds: float
    rms_projection_shift: list[float] = field(default_factory=list)

    def history_entry(self, step: int) -> dict:
        return {"stage": self.stage, "step": int(step), "simulated": self.simulated, "fits": list(self.fits),
                "simulate_seconds": self.simulate_seconds, "seconds": self.seconds,
                "rms_projection_shift": self.rms_projection_shift}

    def summary(self, step: int) -> str:
        return (f"stage {self.stage} at step {int(step)}: simulated the {self.simulated} policy ({len(self.chains)} "
                f"paths, {self.seconds:.1f} s); rms shift onto the data per snapshot "
                f"{', '.join(f'{m:.3f}' for m in self.rms_projection_shift)}; fitting the {' and '.join(self.fits)} "
                "policy")


@torch.no_grad()
def build_pool(stage: int, simulate: Callable[[str, Tensor, torch.Generator], Tensor], data: Sequence[Tensor],
               pool_size: int, generator: torch.Generator) -> Pool:
    """Stage ``stage``'s pool: ``pool_size`` starts resampled from the data at the simulating policy's end,
    ``simulate(direction, x_start, generator)`` -> positions at every training snapshot in forward order
    (P, K + 1, d), and each simulated snapshot OT-projected onto ``data`` (one (n_k, d) set per training
    snapshot) there."""
    simulated, fits = stage_plan(stage)
    start = time.perf_counter()
    end = data[0] if simulated == "forward" else data[-1]
    x_start = end[torch.randint(len(end), (pool_size,), generator=generator)]
    chain = simulate(simulated, x_start, generator)
    sim_seconds = time.perf_counter() - start
    moved, k_start = [], 0 if simulated == "forward" else chain.shape[1] - 1  # the start: data already
    for k in range(chain.shape[1]):
        if k == k_start:
            moved.append(0.0)
            continue
        projected = ot_project(chain[:, k], data[k], generator)
        moved.append(float((projected - chain[:, k]).pow(2).sum(1).mean().sqrt()))
        chain[:, k] = projected
    return Pool(chain.float(), stage, simulated, fits, sim_seconds, time.perf_counter() - start, moved)
