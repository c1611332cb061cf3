"""The registries: every family's Gaussian path by process name.

A new family is one more module with its path class and one more entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from vsmd.diffusion.agm import AGMProcess
from vsmd.diffusion.process import BRIDGES, PROCESSES, make_forward_process
from vsmd.diffusion.types import GaussianPath


def _forward(name: str, data_shape: tuple[int, ...], *, agm_p: float, agm_k: float, **options) -> GaussianPath:
    return make_forward_process(name, data_shape, **options)


def _agm(name: str, data_shape: tuple[int, ...], *, agm_p: float, agm_k: float, **options) -> GaussianPath:
    return AGMProcess(tuple(data_shape), agm_p, agm_k)  # the diffusion options do not apply


PROCESS_BUILDERS: dict[str, Callable[..., GaussianPath]] = {**dict.fromkeys(PROCESSES, _forward),
                                                            **dict.fromkeys(BRIDGES, _agm)}


def make_process(name: str, data_shape: tuple[int, ...] | list[int], beta: float = 5.0,
                 beta_schedule: str = "auto", beta_min: float = 0.1, gamma: float = 2.0,
                 damping: float | None = None, init_velocity: str = "hsm", v0_var: float = 1.0,
                 t_eps: float = 1e-3, agm_p: float = 3.0, agm_k: float = 0.2) -> GaussianPath:
    """Build a process by name: vp, vsdm (overdamped); cld, uld, vscld, vsuld (momentum); or the AGM bridge
    ``agm`` (noise scale ``agm_p``, start correlation -``agm_k``; the diffusion options do not apply).

    The diffusion options are those of ``vsmd.diffusion.process.make_forward_process``.
    """
    if name not in PROCESS_BUILDERS:
        raise ValueError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES + BRIDGES)}")
    return PROCESS_BUILDERS[name](name, data_shape, beta=beta, beta_schedule=beta_schedule, beta_min=beta_min,
                                  gamma=gamma, damping=damping, init_velocity=init_velocity, v0_var=v0_var,
                                  t_eps=t_eps, agm_p=agm_p, agm_k=agm_k)
