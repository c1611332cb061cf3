"""The registries of vsmd.diffusion: every process name builds a GaussianPath; sample() dispatches to the sampler
registered for the path's class (tests/test_architecture_recipe.py adds a sampler by docs/architecture.md's recipe)."""

from __future__ import annotations

import pytest

from vsmd.diffusion import BRIDGES, PROCESSES, SAMPLERS, GaussianPath, make_process, sample
from vsmd.diffusion.registry import PROCESS_BUILDERS


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
