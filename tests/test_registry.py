"""The registries of vsmd.diffusion: every process name builds a GaussianPath; sample() dispatches to the sampler
registered for the path's class."""

from __future__ import annotations

import pytest
import torch

from vsmd.diffusion import BRIDGES, PROCESSES, SAMPLERS, GaussianPath, SampleResult, make_process, sample
from vsmd.diffusion.registry import PROCESS_BUILDERS
from vsmd.diffusion.types import SampleOptions


@pytest.mark.parametrize("name", PROCESSES + BRIDGES)
def test_every_process_name_builds_a_gaussian_path(name):
    p = make_process(name, (3,))
    assert isinstance(p, GaussianPath) and p.name == name and p.data_shape == (3,)
    assert p.split(p.prior_sample(4))[0].shape == (4, 3)


def test_the_registry_knows_exactly_the_documented_names():
    assert set(PROCESS_BUILDERS) == set(PROCESSES + BRIDGES)
    with pytest.raises(ValueError, match="unknown process 'foo'; choose one of vp, vsdm, cld, uld, vscld, vsuld, agm"):
        make_process("foo", (2,))


def test_sample_dispatches_to_each_family_s_own_sampler():
    """AGM's ``ei`` is its own registry entry, and AGM has no diffusion sampler."""
    from vsmd.diffusion.agm import AGMProcess
    from vsmd.diffusion.process import ForwardProcess
    from vsmd.diffusion.registry import SAMPLER_REGISTRY, sampler_for

    assert SAMPLERS == ("em", "sscs", "heun", "ei")
    assert {name for cls, name in SAMPLER_REGISTRY if cls is ForwardProcess} == set(SAMPLERS)
    agm, cld = make_process("agm", (2,)), make_process("cld", (2,))
    assert sampler_for(agm, "ei") is SAMPLER_REGISTRY[(AGMProcess, "ei")]
    assert sampler_for(cld, "ei") is SAMPLER_REGISTRY[(ForwardProcess, "ei")]
    with pytest.raises(ValueError, match="process 'agm' samples with its own sampler only: use sampler ei, not 'em'"):
        sample("em", agm, lambda a, t: a[:, :2], 4, 5)
    with pytest.raises(ValueError, match="unknown sampler 'ode'"):
        sample("ode", cld, lambda a, t: a[:, 2:], 4, 5)


def test_a_sampler_registered_by_its_recipe_runs_through_sample():
    """How to add a sampler: a pure function (path, score_fn, SampleOptions) -> SampleResult, registered for the path
    class it integrates. Here: the probability-flow ODE by plain Euler on the process's own grid."""
    from vsmd.diffusion.process import ForwardProcess
    from vsmd.diffusion.registry import SAMPLER_REGISTRY, register_sampler

    @register_sampler(ForwardProcess, "euler_ode")
    def euler_ode(process, score_fn, opts: SampleOptions) -> SampleResult:
        a = process.prior_sample(opts.n, generator=opts.generator, device=opts.device)
        times = process.time_grid(opts.steps, device=opts.device)
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            tb = torch.full((opts.n,), t)
            a = a + (t - t_next) * process.reverse_drift(a, tb, score_fn(a, tb), probability_flow=True)
        return SampleResult(a, opts.steps - 1, times)

    try:
        p = make_process("vp", (2,))
        res = sample("euler_ode", p, lambda a, t: -a, 500, 50,  # N(0, 1) data keep variance 1: score -a
                     generator=torch.Generator().manual_seed(0))
        assert res.nfe == 49 and res.state.shape == (500, 2)
        assert float(res.state.std()) == pytest.approx(1.0, abs=0.15)
    finally:
        del SAMPLER_REGISTRY[(ForwardProcess, "euler_ode")]
