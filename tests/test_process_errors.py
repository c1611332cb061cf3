"""make_process and perturb reject bad configurations with messages that say what to change."""

from __future__ import annotations

import pytest
import torch

from vsmd.diffusion import MOMENTUM, PROCESSES, make_process


def test_unknown_process():
    with pytest.raises(ValueError, match=r"unknown process 'vsmd'; choose one of vp, vsdm, cld, uld, vscld, vsuld"):
        make_process("vsmd", (2,))


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_beta_must_be_positive(name, beta):
    damping = 0.7 if name in ("uld", "vsuld") else 1.0
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        make_process(name, (2,), beta=beta, damping=damping)


@pytest.mark.parametrize("name", MOMENTUM)
@pytest.mark.parametrize("damping", [0.0, -1.0, 1.5])
def test_damping_outside_unit_interval(name, damping):
    with pytest.raises(ValueError, match=r"damping ratio R must be in \(0, 1\]"):
        make_process(name, (2,), damping=damping)


@pytest.mark.parametrize("name", ["uld", "vsuld"])
def test_underdamped_needs_r_below_one(name):
    with pytest.raises(ValueError, match=rf"process '{name}' is under-damped and needs damping ratio R < 1.*cld/vscld"):
        make_process(name, (2,), damping=1.0)


@pytest.mark.parametrize("name", ["cld", "vscld"])
@pytest.mark.parametrize("damping", [0.7, 0.999])
def test_critical_needs_r_one(name, damping):
    with pytest.raises(ValueError, match=rf"process '{name}' is critically damped \(R = 1\).*uld/vsuld"):
        make_process(name, (2,), damping=damping)


@pytest.mark.parametrize("name", MOMENTUM)
def test_bad_init_velocity(name):
    damping = 0.7 if name in ("uld", "vsuld") else 1.0
    with pytest.raises(ValueError, match=r"init_velocity must be one of \('hsm', 'dsm'\), got 'sm'"):
        make_process(name, (2,), damping=damping, init_velocity="sm")


@pytest.mark.parametrize("name", ["vp", "vsdm", "cld", "vsuld"])
def test_linear_schedule_beta_min_above_beta(name):
    damping = 0.7 if name == "vsuld" else 1.0
    with pytest.raises(ValueError, match=r"linear schedule needs 0 < beta_min <= beta.*beta_min=12.0, beta=10.0"):
        make_process(name, (2,), beta=10.0, beta_schedule="linear", beta_min=12.0, damping=damping)
    with pytest.raises(ValueError, match=r"linear schedule needs 0 < beta_min <= beta"):
        make_process(name, (2,), beta=10.0, beta_schedule="linear", beta_min=0.0, damping=damping)
    make_process(name, (2,), beta=10.0, beta_schedule="linear", beta_min=10.0, damping=damping)  # equal is fine


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"beta_schedule must be 'constant' or 'linear', got 'cosine'"):
        make_process("cld", (2,), beta_schedule="cosine")
    with pytest.raises(ValueError, match=r"gamma \(friction\) must be > 0"):
        make_process("cld", (2,), gamma=0.0)
    with pytest.raises(ValueError, match=r"v0_var .* must be > 0"):
        make_process("vscld", (2,), v0_var=0.0)
    with pytest.raises(ValueError, match=r"need 0 < t_eps < t_max"):
        make_process("vp", (2,), t_eps=0.0)
    with pytest.raises(ValueError, match=r"need 0 < t_eps < t_max"):
        make_process("vsuld", (2,), damping=0.7, t_eps=1.5)


@pytest.mark.parametrize("name", PROCESSES)
def test_valid_configurations_build(name):
    damping = 0.7 if name in ("uld", "vsuld") else 1.0
    p = make_process(name, (3, 4, 4), damping=damping)
    assert p.data_shape == (3, 4, 4) and p.name == name
    assert p.adaptive == (name in ("vsdm", "vscld", "vsuld"))
    assert p.momentum == (name in MOMENTUM)
    assert torch.equal(p.rho, torch.zeros(3, 4, 4))


@pytest.mark.parametrize("name", PROCESSES)
def test_perturb_rejects_wrong_data_shape(name):
    damping = 0.7 if name in ("uld", "vsuld") else 1.0
    p = make_process(name, (3, 4, 4), damping=damping)
    t = torch.full((2,), 0.5)
    msg = r"data of shape .* does not match the process's data shape \(B, 3, 4, 4\)"
    for bad in (torch.zeros(2, 3, 4), torch.zeros(2, 6, 4, 4), torch.zeros(2, 48)):
        with pytest.raises(ValueError, match=msg):
            p.perturb(bad, t)
    # The right shape goes through, for images too, and the state has 2C channels for momentum processes.
    a, eps, scale = p.perturb(torch.zeros(2, 3, 4, 4), t)
    assert a.shape == (2, 3 * p.n_state, 4, 4) and eps.shape == (2, 3, 4, 4)
    assert scale.shape in ((2, 3, 4, 4), (1, 3, 4, 4))
