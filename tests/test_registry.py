"""The registries of vsmd.diffusion: every process name builds a GaussianPath."""

from __future__ import annotations

import pytest

from vsmd.diffusion import BRIDGES, PROCESSES, GaussianPath, make_process
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
