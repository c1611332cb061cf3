"""The registries of the math layer: every family's Gaussian path by process name, and the samplers of each path.

A sampler is a pure function ``(path, score_fn, SampleOptions) -> SampleResult`` registered for the path class it
integrates (``register_sampler``); ``sample`` only looks the pair up and runs it. A new process is one more entry in
PROCESS_BUILDERS, a new sampler one more registered function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vsmd.diffusion.agm import AGMProcess, agm_sample
from vsmd.diffusion.ei import exponential_integrator
from vsmd.diffusion.forward import make_forward_process
from vsmd.diffusion.grids import agm_grid, ei_grid
from vsmd.diffusion.process import BRIDGES, PROCESSES, ForwardProcess
from vsmd.diffusion.samplers import euler_maruyama, heun, splitting
from vsmd.diffusion.types import DenoiseFn, GaussianPath, SampleOptions, SampleResult, SamplerFn, ScoreFn


# ----------------------------------------------------------------------------------------------
# Processes.
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

    The diffusion options are those of ``vsmd.diffusion.forward.make_forward_process``.
    """
    if name not in PROCESS_BUILDERS:
        raise ValueError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES + BRIDGES)}")
    return PROCESS_BUILDERS[name](name, data_shape, beta=beta, beta_schedule=beta_schedule, beta_min=beta_min,
                                  gamma=gamma, damping=damping, init_velocity=init_velocity, v0_var=v0_var,
                                  t_eps=t_eps, agm_p=agm_p, agm_k=agm_k)


# ----------------------------------------------------------------------------------------------
# Samplers.
SAMPLER_REGISTRY: dict[tuple[type, str], SamplerFn] = {}


def register_sampler(path_class: type, name: str) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: ``fn`` samples paths of ``path_class`` (and its subclasses) under the sampler name ``name``."""
    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLER_REGISTRY[(path_class, name)] = fn
        return fn
    return add


def sampler_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for _, name in SAMPLER_REGISTRY))


# The path class each process name builds: what the module checks its sampler against before it builds the process.
PATH_CLASSES: dict[str, type] = {**dict.fromkeys(PROCESSES, ForwardProcess), **dict.fromkeys(BRIDGES, AGMProcess)}


def _registered(path_class: type, process_name: str, name: str) -> SamplerFn:
    """The sampler ``name`` of ``path_class`` (the nearest registered base class), or the one error that says which
    samplers exist and which this process accepts."""
    if name not in sampler_names():
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    for cls in path_class.__mro__:
        if (cls, name) in SAMPLER_REGISTRY:
            return SAMPLER_REGISTRY[(cls, name)]
    own = list(dict.fromkeys(m for c, m in SAMPLER_REGISTRY if issubclass(path_class, c)))
    raise ValueError(f"process {process_name!r} samples with its own sampler only: use sampler {' or '.join(own)}, "
                     f"not {name!r} (set sampler: {own[0]})")


def sampler_for(process: GaussianPath, name: str) -> SamplerFn:
    """The sampler ``name`` of the process's class (the nearest registered base class)."""
    return _registered(type(process), process.name, name)


def check_sampler(process_name: str, name: str) -> None:
    """Refuse, before the process is built, a sampler that process ``process_name`` has no entry for (an unknown
    process name is make_process's to refuse)."""
    if process_name in PATH_CLASSES:
        _registered(PATH_CLASSES[process_name], process_name, name)
    elif name not in sampler_names():
        _registered(object, process_name, name)


def sample(name: str, process: GaussianPath, score_fn: ScoreFn, n: int, steps: int,
           generator: torch.Generator | None = None, device=None, return_trajectory: bool = False,
           progress: bool = False, denoise_fn: DenoiseFn | None = None, ei_order: int = 3, ei_grid: str = "quadratic",
           t_stop: float | None = None, guide: torch.Tensor | None = None) -> SampleResult:
    """Draw n samples from the process's prior and run the sampler ``name`` on ``steps`` grid points.

    ``ei`` (the exponential integrator, vsmd.diffusion.ei) needs ``denoise_fn(a, t)``, the data estimate
    E[x0 | a_t]. With ``t_stop`` every sampler stops at that time and returns the data estimate there (one more
    network call) in place of the state's x. For the AGM bridge ``score_fn`` is the force (see ``_agm_ei``).
    """
    opts = SampleOptions(n, steps, generator, device, return_trajectory, progress, denoise_fn, ei_order, ei_grid,
                         t_stop, guide)
    return sampler_for(process, name)(process, score_fn, opts)


def _prior(process: ForwardProcess, name: str, opts: SampleOptions) -> torch.Tensor:
    """The diffusion samplers' checks, then the start: a draw from the prior N(0, Sigma_T)."""
    if opts.guide is not None:
        raise ValueError("velocity guidance needs process agm")
    if opts.steps < 2:
        raise ValueError(f"a sampler needs at least 2 grid points, got steps={opts.steps}")
    if (name == "ei" or opts.t_stop is not None) and opts.denoise_fn is None:
        raise ValueError(f"sampler {name!r}{' with t_stop' if opts.t_stop is not None else ''} needs the data "
                         "estimate E[x0 | a_t] (denoise_fn)")
    return process.prior_sample(opts.n, generator=opts.generator, device=opts.device)


def stop_grid(process: ForwardProcess, steps: int, t_stop: float | None, device=None) -> torch.Tensor:
    """The grid of em, sscs and heun: uniform from t_max to t_eps, or to ``t_stop`` when given."""
    if t_stop is None:
        return process.time_grid(steps, device=device)
    return ei_grid(process, steps, "uniform", t_stop, device=device)


def denoise_at_stop(process: ForwardProcess, res: SampleResult, denoise_fn: DenoiseFn) -> SampleResult:
    """The state's x replaced by the data estimate at the last grid time (one more network call)."""
    parts = list(process.split(res.state))
    t = torch.full((res.state.shape[0],), float(res.times[-1]), device=res.state.device)
    parts[0] = denoise_fn(res.state, t)
    return SampleResult(process.join(*parts), res.nfe + 1, res.times, res.trajectory)


def _on_stop_grid(integrator, name: str, process: ForwardProcess, score_fn: ScoreFn, opts: SampleOptions,
                  **kw) -> SampleResult:
    a = _prior(process, name, opts)
    times = stop_grid(process, opts.steps, opts.t_stop, opts.device)
    res = integrator(process, score_fn, a, times, generator=opts.generator,
                     return_trajectory=opts.return_trajectory, progress=opts.progress, **kw)
    return res if opts.t_stop is None else denoise_at_stop(process, res, opts.denoise_fn)


@register_sampler(ForwardProcess, "em")
def _em(process: ForwardProcess, score_fn: ScoreFn, opts: SampleOptions) -> SampleResult:
    return _on_stop_grid(euler_maruyama, "em", process, score_fn, opts)


@register_sampler(ForwardProcess, "sscs")
def _sscs(process: ForwardProcess, score_fn: ScoreFn, opts: SampleOptions) -> SampleResult:
    return _on_stop_grid(splitting, "sscs", process, score_fn, opts)


@register_sampler(ForwardProcess, "heun")
def _heun(process: ForwardProcess, score_fn: ScoreFn, opts: SampleOptions) -> SampleResult:
    # The final Euler step to t = 0 only when the grid ends at t_eps (with t_stop the estimate replaces it).
    return _on_stop_grid(heun, "heun", process, score_fn, opts, final_euler_to_zero=opts.t_stop is None)


@register_sampler(ForwardProcess, "ei")
def _ei(process: ForwardProcess, score_fn: ScoreFn, opts: SampleOptions) -> SampleResult:
    a = _prior(process, "ei", opts)
    times = ei_grid(process, opts.steps, opts.ei_grid, opts.t_stop, device=opts.device)
    return exponential_integrator(process, opts.denoise_fn, a, times, opts.ei_order,
                                  denoise_last=opts.t_stop is not None, return_trajectory=opts.return_trajectory,
                                  progress=opts.progress)


@register_sampler(AGMProcess, "ei")
def _agm_ei(process: AGMProcess, score_fn: ScoreFn, opts: SampleOptions) -> SampleResult:
    """AGM's own integrator: ``score_fn`` is the force; it ends with the hop at t_stop (bridge time)."""
    a = process.prior_sample(opts.n, generator=opts.generator, device=opts.device)
    times = agm_grid(opts.steps, opts.t_stop, opts.ei_grid, device=opts.device)
    return agm_sample(process, score_fn, a, times, opts.ei_order, opts.return_trajectory, opts.progress,
                      guide=opts.guide, generator=opts.generator)


SAMPLERS = sampler_names()  # ("em", "sscs", "heun", "ei")
