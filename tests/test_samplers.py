"""Samplers with the exact score on Gaussian data (spec section 7, invariant 10).

Data are N(m, s0^2) per dimension. For a momentum process (hsm) the marginal at time t is Gaussian with
mu_t = Phi (m, 0) and Sigma_t = Sigma_{t|0} + Phi diag(s0^2, 0) Phi^T, built here independently of the package:
Phi and Sigma_{t|0} come from the 4x4 Van Loan exponential (torch.linalg.matrix_exp) with omega = e^rho and
c = 2 sqrt(R omega). The exact v-score is -(Sigma_t^{-1} (a - mu_t))_v. For the overdamped vsdm the marginal is
N(e^{-B d/2} m, e^{-B d} s0^2 + (1 - e^{-B d}) / d) and the score is that of x. Each sampler starts from an exact
draw of the marginal at T, so any error at the end is the sampler's (plus Monte Carlo noise).
"""

from __future__ import annotations

import math

import pytest
import torch

from vsmd.diffusion import euler_maruyama, heun, make_process, sample, splitting
from vsmd.diffusion.process import ForwardProcess

F64 = torch.float64
DATA_M = torch.tensor([1.5, -2.0], dtype=F64)
DATA_S0 = torch.tensor([0.5, 2.0], dtype=F64)


class GaussianMarginal:
    """Exact marginals and score of Gaussian data pushed through the forward process (constant beta)."""

    def __init__(self, process: ForwardProcess, m: torch.Tensor = DATA_M, s0: torch.Tensor = DATA_S0) -> None:
        self.p, self.m, self.s0 = process, m, s0
        self.rho = process.rho.detach().to(F64).clone()
        self.beta = process.schedule.beta
        assert process.schedule.kind == "constant"
        self._cache: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prec: dict[tuple[float, torch.dtype], torch.Tensor] = {}

    def moments(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu (d, n_state), Sigma (d, n_state, n_state)) of the marginal at time t, float64."""
        if t in self._cache:
            return self._cache[t]
        big_b = self.beta * t
        if not self.p.momentum:
            rate = self.rho.exp()
            mu = (torch.exp(-big_b * rate / 2) * self.m).unsqueeze(-1)
            var = torch.exp(-big_b * rate) * self.s0**2 + (1 - torch.exp(-big_b * rate)) / rate
            out = (mu, var.reshape(-1, 1, 1))
        else:
            gamma, damping, s2 = self.p.gamma, self.p.damping, self.p.v0_var
            omega = self.rho.exp()
            c = 2 * (damping * omega).sqrt()
            d = len(omega)
            f = torch.zeros(d, 2, 2, dtype=F64)
            f[:, 0, 1] = 0.5
            f[:, 1, 0] = -0.5 * omega
            f[:, 1, 1] = -0.5 * c
            q = torch.zeros(d, 2, 2, dtype=F64)
            q[:, 1, 1] = gamma
            h = torch.cat([torch.cat([f, q], -1), torch.cat([torch.zeros_like(f), -f.transpose(-1, -2)], -1)], -2)
            e = torch.linalg.matrix_exp(big_b * h)
            phi, g = e[:, :2, :2], e[:, :2, 2:]
            s0mat = torch.diag_embed(torch.stack([self.s0**2, torch.full_like(self.s0, s2)], -1))
            sigma = phi @ s0mat @ phi.transpose(-1, -2) + g @ phi.transpose(-1, -2)
            mu = phi[:, :, 0] * self.m.unsqueeze(-1)
            out = (mu, 0.5 * (sigma + sigma.transpose(-1, -2)))
        self._cache[t] = out
        return out

    def _per_dim(self, a: torch.Tensor) -> torch.Tensor:
        """(B, n_state*d) -> (B, d, n_state)."""
        return torch.stack(self.p.split(a), -1)

    def score(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert (t == t[0]).all()
        mu, sigma = self.moments(float(t[0]))
        key = (float(t[0]), a.dtype)
        if key not in self._prec:
            self._prec[key] = (torch.linalg.inv(sigma).to(a.dtype), mu.to(a.dtype))
        prec, mu = self._prec[key]
        r = self._per_dim(a) - mu
        return -(prec[..., -1, :] * r).sum(-1)               # the noise coordinate (v, or x if overdamped)

    def sample(self, t: float, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        mu, sigma = self.moments(t)
        eps = torch.randn(n, *mu.shape, 1, dtype=F64, generator=generator)
        a = mu + (torch.linalg.cholesky(sigma) @ eps).squeeze(-1)   # (n, d, n_state)
        return torch.cat(a.unbind(-1), dim=1).to(dtype)


def make(name: str) -> ForwardProcess:
    if name == "vsuld":
        p = make_process("vsuld", (2,), beta=5.0, gamma=2.0, damping=0.7)
        p.rho.data = torch.tensor([0.5, -0.7])
    elif name == "cld":
        p = make_process("cld", (2,), beta=5.0, gamma=2.0, damping=1.0)
    else:
        p = make_process("vsdm", (2,), beta=5.0)
        p.rho.data = torch.tensor([0.4, -0.6])
    return p


SAMPLER_FNS = {"em": (euler_maruyama, 200), "sscs": (splitting, 50), "heun": (heun, 50)}

# Allowed discretisation bias (relative to |m| for the mean and to s0 for the std) on top of 4 Monte Carlo SEs.
# EM and the splitting sampler are first order (the splitting's score kick is an Euler step whose integrand
# depends on v, so the symmetric composition does not make it second order). Their bias, measured on the mean
# with the noise switched off and with 50 to 800 steps, halves with every doubling of the steps. At the
# spec's step counts it is <= 0.5% (EM, 200) and <= 1.8% (splitting, 50) for the momentum processes. For
# the overdamped vsdm the score of x itself is stiff near t = 0 (beta / s0^2 = 20 for s0 = 0.5): there EM(200)
# has ~2.5% bias on the std of the narrow dimension and splitting(50) ~3% on its mean. Those two cases are
# also run with 4x the steps, where the bias must drop below 1%. Heun is second order, and its 50 steps are
# unbiased to << 1%.
BIAS = {("em", True): 0.01, ("sscs", True): 0.02, ("heun", True): 0.01,
        ("em", False): 0.035, ("sscs", False): 0.035, ("heun", False): 0.01}


def _run(p, gm, fn, steps, n, seed):
    g = torch.Generator().manual_seed(seed)
    times = p.time_grid(steps)
    res = fn(p, gm.score, gm.sample(float(times[0]), n, g), times, generator=g)
    return res, p.split(res.state)[0].double()


def _errors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension (|mean - m| / |m|, |std / s0 - 1|)."""
    return (x.mean(0) - DATA_M).abs() / DATA_M.abs(), (x.std(0) / DATA_S0 - 1).abs()


@pytest.mark.parametrize("sampler", list(SAMPLER_FNS))
@pytest.mark.parametrize("name", ["vsuld", "cld", "vsdm"])
def test_sampler_recovers_gaussian_data(name, sampler):
    p = make(name)
    gm = GaussianMarginal(p)
    fn, steps = SAMPLER_FNS[sampler]
    n = 40_000
    res, x = _run(p, gm, fn, steps, n, seed=100)
    assert torch.isfinite(x).all()
    # Monte Carlo: SE(mean) = s0 / sqrt(n) (0.17% of |m| in dim 0, 0.5% in dim 1), SE(std)/s0 = 1/sqrt(2n) = 0.35%.
    se_mean = 4 * DATA_S0 / math.sqrt(n) / DATA_M.abs()
    se_std = 4 / math.sqrt(2 * n)
    bias = BIAS[(sampler, p.momentum)]
    mean_err, std_err = _errors(x)
    assert (mean_err < bias + se_mean).all(), (name, sampler, mean_err)
    assert (std_err < bias + se_std).all(), (name, sampler, std_err)
    if bias > 0.02:  # the stiff overdamped cases: the bias is discretisation and goes away with more steps
        _, x = _run(p, gm, fn, 4 * steps, n, seed=101)
        mean_err, std_err = _errors(x)
        assert (mean_err < 0.01 + se_mean).all() and (std_err < 0.01 + se_std).all(), (name, sampler)
    # The velocity (momentum processes) ends near its own marginal at the last time: N(Phi_21 m, Sigma_vv).
    if p.momentum:
        mu, sigma = gm.moments(float(res.times[-1]))
        v = p.split(res.state)[1].double()
        assert ((v.mean(0) - mu[:, 1]).abs() < 0.05).all()
        assert ((v.var(0) / sigma[:, 1, 1] - 1).abs() < 0.05).all()


def test_samplers_need_the_score():
    """Negative control: with the score off by 10%, EM no longer recovers the data std within tolerance."""
    p = make("vsuld")
    gm = GaussianMarginal(p)
    g = torch.Generator().manual_seed(101)
    times = p.time_grid(200)
    res = euler_maruyama(p, lambda a, t: 1.1 * gm.score(a, t), gm.sample(1.0, 10_000, g), times, generator=g)
    x = p.split(res.state)[0].double()
    assert ((x.std(0) / DATA_S0) - 1).abs().max() > 0.03


@pytest.mark.parametrize("name", ["vsuld", "cld", "vsdm"])
def test_heun_is_second_order(name):
    """Heun on the PF-ODE is second order: halving h divides the error at t_eps by ~4 (vs a fine-grid solve).

    Forward (T -> delta) then backward (delta -> T) on the reversed grid returns the start to O(h^2) (in fact
    O(h^3): the leading local errors of the two passes cancel for a second-order method).
    """
    p = make(name)
    gm = GaussianMarginal(p)
    g = torch.Generator().manual_seed(102)
    a0 = gm.sample(1.0, 256, g, dtype=F64)
    ref = heun(p, gm.score, a0, p.time_grid(801).double(), final_euler_to_zero=False).state
    errs, trips = [], []
    for steps in (26, 51, 101):
        times = p.time_grid(steps).double()
        there = heun(p, gm.score, a0, times, final_euler_to_zero=False)
        back = heun(p, gm.score, there.state, times.flip(0), final_euler_to_zero=False)
        assert there.nfe == back.nfe == 2 * (steps - 1)
        assert (there.state - a0).abs().max() > 0.1             # it really moved
        errs.append((there.state - ref).abs().max().item())
        trips.append((back.state - a0).abs().max().item())
    for coarse, fine in zip(errs[:-1], errs[1:]):
        assert 3.0 < coarse / fine < 5.0, errs
    for coarse, fine in zip(trips[:-1], trips[1:]):
        assert coarse / fine > 3.5, trips
    assert trips[-1] < 1e-3


@pytest.mark.parametrize("name", ["vsuld", "cld", "vsdm"])
@pytest.mark.parametrize("sampler,expected", [("em", lambda s: s - 1), ("sscs", lambda s: s - 1),
                                              ("heun", lambda s: 2 * s - 1)])
def test_reported_nfe_counts_score_calls(name, sampler, expected):
    p = make(name)
    calls = []

    def score_fn(a, t):
        calls.append(float(t[0]))
        assert a.shape == (8, p.n_state * 2) and t.shape == (8,)
        return torch.zeros(8, 2)

    for steps in (2, 7):
        calls.clear()
        res = sample(sampler, p, score_fn, n=8, steps=steps, generator=torch.Generator().manual_seed(0))
        assert res.nfe == expected(steps) == len(calls)
        assert res.state.shape == (8, p.n_state * 2)
        grid = p.time_grid(steps)
        if sampler == "heun":  # the final Euler step goes on to t = 0
            grid = torch.cat([grid, grid.new_zeros(1)])
        assert torch.equal(res.times, grid)
        # scores are asked for at times within [t_eps, T]
        assert min(calls) >= p.t_eps - 1e-7 and max(calls) <= p.t_max + 1e-7


def test_trajectory_shapes_and_last_em_step_noiseless():
    p = make("vsuld")
    gm = GaussianMarginal(p)
    times = p.time_grid(5)
    a0 = gm.sample(1.0, 16, torch.Generator().manual_seed(3))
    for fn, n_saved in ((euler_maruyama, 5), (splitting, 5), (heun, 6)):
        res = fn(p, gm.score, a0, times, generator=torch.Generator().manual_seed(4), return_trajectory=True)
        assert res.trajectory.shape == (n_saved, 16, 4)
        assert torch.equal(res.trajectory[0], a0) and torch.equal(res.trajectory[-1], res.state)
    # EM adds no noise on its last step: a single-step EM is deterministic.
    two = p.time_grid(2)
    r1 = euler_maruyama(p, gm.score, a0, two, generator=torch.Generator().manual_seed(5))
    r2 = euler_maruyama(p, gm.score, a0, two, generator=torch.Generator().manual_seed(6))
    assert torch.equal(r1.state, r2.state)
    # ... but the earlier steps are stochastic.
    r1 = euler_maruyama(p, gm.score, a0, times, generator=torch.Generator().manual_seed(5))
    r2 = euler_maruyama(p, gm.score, a0, times, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(r1.state, r2.state)


def test_sample_rejects_bad_arguments():
    p = make("vsuld")
    with pytest.raises(ValueError, match="unknown sampler 'ode'"):
        sample("ode", p, lambda a, t: torch.zeros(a.shape[0], 2), n=4, steps=10)
    for steps in (1, 0):
        with pytest.raises(ValueError, match="at least 2 grid points"):
            sample("em", p, lambda a, t: torch.zeros(a.shape[0], 2), n=4, steps=steps)


def test_prior_sample_matches_marginal_at_zero_data():
    """sample() starts from process.prior_sample: for data = 0 that is exactly the marginal at T."""
    for name in ("vsuld", "cld", "vsdm"):
        p = make(name)
        gm = GaussianMarginal(p, m=torch.zeros(2, dtype=F64), s0=torch.zeros(2, dtype=F64))
        mu, sigma = gm.moments(p.t_max)
        a = torch.stack(p.split(p.prior_sample(100_000, generator=torch.Generator().manual_seed(7))), -1).double()
        emp = torch.einsum("ndi,ndj->dij", a, a) / a.shape[0]
        diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
        se = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + sigma**2) / a.shape[0]).sqrt()
        assert ((emp - sigma).abs() < 4 * se).all(), name
        assert (a.mean(0).abs() < 4 * (diag / a.shape[0]).sqrt()).all()


# -------------------------------------------------------------------------------------------------
# The building blocks of the samplers, against the spec's formulas (section 4).
def _linear(name: str):
    if name == "vsdm":
        p = make_process("vsdm", (2,), beta=9.0, beta_schedule="linear", beta_min=0.5)
    else:
        p = make_process(name, (2,), beta=9.0, beta_schedule="linear", beta_min=0.5,
                         damping=0.7 if name == "vsuld" else 1.0, gamma=1.5)
    p.rho.data = torch.tensor([0.5, -0.7])
    return p


@pytest.mark.parametrize("name", ["vsuld", "vscld", "vsdm"])
def test_reverse_drift_and_noise_match_spec(name):
    p = _linear(name)
    g = torch.Generator().manual_seed(8)
    a = torch.randn(5, p.n_state * 2, generator=g, dtype=F64)
    score = torch.randn(5, 2, generator=g, dtype=F64)
    t = torch.tensor([0.9, 0.5, 0.3, 0.1, 0.001])
    beta = (0.5 + t * (9.0 - 0.5)).to(F64).unsqueeze(-1)      # beta(t) of the linear schedule
    rho = torch.tensor([0.5, -0.7], dtype=F64)
    for pf in (False, True):
        got = p.reverse_drift(a, t, score, probability_flow=pf)
        k = 0.5 if pf else 1.0
        if name == "vsdm":
            want = 0.5 * beta * rho.exp() * a + k * beta * score
        else:
            x, v = a[:, :2], a[:, 2:]
            omega = rho.exp()
            c = 2 * ((0.7 if name == "vsuld" else 1.0) * omega).sqrt()
            want = torch.cat([-0.5 * beta * v, 0.5 * beta * (omega * x + c * v) + k * beta * 1.5 * score], 1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # EM noise: sqrt(g^2 h) on the noise coordinate only, g^2 = beta (overdamped) or beta gamma (momentum).
    n, h = 200_000, 0.01
    tt = torch.full((n,), 0.5)
    noisy = p.add_noise(torch.zeros(n, p.n_state * 2), tt, h, generator=g).double()
    g2 = (0.5 + 0.5 * 8.5) * (1.0 if name == "vsdm" else 1.5)
    if p.momentum:
        assert torch.equal(noisy[:, :2], torch.zeros(n, 2, dtype=F64))
    assert ((noisy[:, -2:].var(0) / (g2 * h) - 1).abs() < 4 * math.sqrt(2 / n)).all()


@pytest.mark.parametrize("name", ["vsuld", "vscld", "vsdm"])
def test_linear_step_is_the_exact_ou_step(name):
    """Splitting's linear part over [t_next, t]: mean exp(-B/2 D~) a and its Van Loan covariance (spec 4.2)."""
    p = _linear(name)
    t, t_next = 0.6, 0.35
    big_b = 0.5 * (t - t_next) + 0.5 * 8.5 * (t**2 - t_next**2)   # int_{t_next}^{t} beta
    rho = torch.tensor([0.5, -0.7], dtype=F64)
    if name == "vsdm":
        f = -0.5 * rho.exp().reshape(-1, 1, 1)                 # dx/ds = -1/2 beta d x + sqrt(beta) dW
        q = torch.ones(2, 1, 1, dtype=F64)
        start = torch.tensor([1.0, -0.5], dtype=F64).reshape(2, 1)
    else:
        omega = rho.exp()
        c = 2 * ((0.7 if name == "vsuld" else 1.0) * omega).sqrt()
        f = torch.zeros(2, 2, 2, dtype=F64)                    # -1/2 D~ with D~ = [[0, 1], [-omega, c]]
        f[:, 0, 1] = -0.5
        f[:, 1, 0] = 0.5 * omega
        f[:, 1, 1] = -0.5 * c
        q = torch.zeros(2, 2, 2, dtype=F64)
        q[:, 1, 1] = 1.5                                       # gamma
        start = torch.tensor([[1.0, -0.5], [-2.0, 0.8]], dtype=F64)  # (d, (x, v))
    k = f.shape[-1]
    e = torch.linalg.matrix_exp(big_b * torch.cat([torch.cat([f, q], -1),
                                                   torch.cat([torch.zeros_like(f), -f.transpose(-1, -2)], -1)], -2))
    phi, gmat = e[:, :k, :k], e[:, :k, k:]
    mu = (phi @ start.unsqueeze(-1)).squeeze(-1)               # (d, k)
    sigma = gmat @ phi.transpose(-1, -2)
    n = 200_000
    a = torch.cat(start.unbind(-1)).to(torch.float32).expand(n, -1)
    out = p.linear_step(a, t, t_next, generator=torch.Generator().manual_seed(9))
    st = torch.stack(p.split(out), -1).double()                # (n, d, k)
    diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
    assert ((st.mean(0) - mu).abs() < 4 * (diag / n).sqrt() + 1e-6).all()
    cen = st - st.mean(0)
    emp = torch.einsum("ndi,ndj->dij", cen, cen) / (n - 1)
    se = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + sigma**2) / n).sqrt()
    assert ((emp - sigma).abs() < 4 * se).all(), (emp, sigma)


@pytest.mark.parametrize("name", ["vsuld", "vsdm"])
def test_score_kick_matches_spec(name):
    """Kick: v <- v + h beta gamma (s + kappa v) (momentum), x <- x + h beta (s + d x) (overdamped)."""
    p = _linear(name)
    g = torch.Generator().manual_seed(10)
    a = torch.randn(6, p.n_state * 2, generator=g, dtype=F64)
    s = torch.randn(6, 2, generator=g, dtype=F64)
    t = torch.full((6,), 0.4)
    h = 0.02
    beta = 0.5 + 0.4 * 8.5
    rho = torch.tensor([0.5, -0.7], dtype=F64)
    out = p.score_kick(a, t, h, s)
    if name == "vsdm":
        want = a + h * beta * (s + rho.exp() * a)
    else:
        kappa = 2 * math.sqrt(0.7) / 1.5 * (rho / 2).exp()
        want = torch.cat([a[:, :2], a[:, 2:] + h * beta * 1.5 * (s + kappa * a[:, 2:])], 1)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
