"""Closed-form kernels of the forward processes (spec section 7, invariants 1-6, 8 and 12).

Every check compares the code in ``vsmd.diffusion.kernel`` / ``vsmd.diffusion.process`` with an independent
computation: ``torch.linalg.matrix_exp`` (2x2 and the 4x4 Van Loan block), an RK4 solve of the covariance
ODE, the CLD oracle of spec section 1.6 and CLD-SGM's ``mean``/``var`` formulas, autograd of a Gaussian
log-density, and Monte Carlo.
"""

from __future__ import annotations

import math

import pytest
import torch

from vsmd.diffusion import kernel, make_process

F64 = torch.float64


# -------------------------------------------------------------------------------------------------
# Independent reference computations.
def drift_matrix(omega: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """D = [[0, -1], [omega, c]] per dimension, shape (*omega.shape, 2, 2)."""
    z = torch.zeros_like(omega)
    return torch.stack([torch.stack([z, -torch.ones_like(omega)], -1), torch.stack([omega, c], -1)], -2)


def van_loan(big_b: torch.Tensor, omega: torch.Tensor, c: torch.Tensor, gamma: float, var0v: float):
    """(Phi, Sigma) at integrated rate(s) B via the 4x4 Van Loan exponential exp([[F, Q], [0, -F^T]] B).

    F = -1/2 D and Q = gamma e2 e2^T per unit of B (exact for any scalar beta(t) since it factors out).
    ``big_b`` has shape (n,), omega and c shape (d,); returns Phi, Sigma of shape (n, d, 2, 2).
    """
    f = -0.5 * drift_matrix(omega, c)                        # (d, 2, 2)
    q = torch.zeros_like(f)
    q[..., 1, 1] = gamma
    top = torch.cat([f, q], -1)
    bottom = torch.cat([torch.zeros_like(f), -f.transpose(-1, -2)], -1)
    h = torch.cat([top, bottom], -2)                           # (d, 4, 4)
    e = torch.linalg.matrix_exp(big_b.reshape(-1, 1, 1, 1) * h)  # (n, d, 4, 4)
    phi, g = e[..., :2, :2], e[..., :2, 2:]
    sigma0 = torch.zeros_like(phi)
    sigma0[..., 1, 1] = var0v
    sigma = phi @ sigma0 @ phi.transpose(-1, -2) + g @ phi.transpose(-1, -2)
    return phi, 0.5 * (sigma + sigma.transpose(-1, -2))


def rk4_covariance(t_end: float, n_steps: int, beta_fn, omega, c, gamma: float, var0v,
                   save_at: list[float]) -> dict[float, torch.Tensor]:
    """RK4 on dSigma/dt = F Sigma + Sigma F^T + Q, F = -1/2 beta(t) D, Q = beta(t) gamma e2 e2^T.

    The mesh t_k = t_end (k / n)^2 is graded towards t = 0, where Sigma_xx ~ t^3 needs small steps to be
    resolved to a small relative error; the ``save_at`` times are added to it.
    """
    d0 = drift_matrix(omega, c)
    e22 = torch.zeros_like(d0)
    e22[..., 1, 1] = 1.0

    def rhs(t: float, s: torch.Tensor) -> torch.Tensor:
        b = beta_fn(t)
        f = -0.5 * b * d0
        return f @ s + s @ f.transpose(-1, -2) + b * gamma * e22

    s = torch.zeros_like(d0)
    s[..., 1, 1] = var0v
    mesh = sorted({t_end * (k / n_steps) ** 2 for k in range(n_steps + 1)} | set(save_at))
    out = {}
    for t, t_next in zip(mesh[:-1], mesh[1:]):
        h = t_next - t
        k1 = rhs(t, s)
        k2 = rhs(t + h / 2, s + h / 2 * k1)
        k3 = rhs(t + h / 2, s + h / 2 * k2)
        k4 = rhs(t + h, s + h * k3)
        s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if t_next in save_at:
            out[t_next] = s.clone()
    return out


def sigma_from_cholesky(k: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild L L^T from the coefficients; shape (n, d, 2, 2)."""
    lxx, lvx, lvv = k["lxx"], k["lvx"], k["lvv"]
    sxx = lxx * lxx
    sxv = lxx * lvx
    svv = lvx * lvx + lvv * lvv
    return torch.stack([torch.stack([sxx, sxv], -1), torch.stack([sxv, svv], -1)], -2)


def scaled_err(sigma: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """max_ij |S_ij - R_ij| / sqrt(R_ii R_jj): relative error on the diagonal, correlation-scaled off it."""
    dg = torch.diagonal(ref, dim1=-2, dim2=-1)
    scale = (dg.unsqueeze(-1) * dg.unsqueeze(-2)).sqrt()
    return ((sigma - ref).abs() / scale).max()


def rel_err_mat(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-matrix max-norm relative error, maximised over the batch."""
    num = (a - ref).abs().amax(dim=(-1, -2))
    den = ref.abs().amax(dim=(-1, -2))
    return (num / den).max()


def momentum_process(name: str, damping: float, d: int = 5, seed: int = 0, gamma: float = 2.0,
                     beta: float = 5.0, rho_scale: float = 1.0, **kw):
    p = make_process(name, (d,), beta=beta, gamma=gamma, damping=damping, **kw)
    g = torch.Generator().manual_seed(seed)
    p.rho.data = rho_scale * (2 * torch.rand(d, generator=g) - 1)
    return p


MOMENTUM_CASES = [("vscld", 1.0, 2.0), ("vsuld", 0.7, 2.0), ("vsuld", 0.3, 1.5), ("vscld", 1.0, 0.8)]


# -------------------------------------------------------------------------------------------------
# Invariant 1: the stable 2x2 exponential.
def _random_omega_b(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    omega = torch.exp(torch.empty(n, dtype=F64).uniform_(-3, 3, generator=g))
    big_b = torch.exp(torch.empty(n, dtype=F64).uniform_(math.log(1e-4), math.log(12.0), generator=g))
    r = torch.empty(n, dtype=F64).uniform_(0.02, 0.98, generator=g)
    excess = torch.empty(n, dtype=F64).uniform_(1.01, 3.0, generator=g)
    return omega, big_b, r, excess


@pytest.mark.parametrize("case", ["critical", "near_critical", "underdamped", "overdamped"])
def test_transition_matches_matrix_exp(case):
    omega, big_b, r, excess = _random_omega_b(400, seed=1)
    c = {"critical": 2 * omega.sqrt(),                      # R = 1: q == 0, Jordan block
         "near_critical": 2 * ((1 - 1e-9) * omega).sqrt(),   # R = 1 - 1e-9: tiny q < 0
         "underdamped": 2 * (r * omega).sqrt(),              # R < 1: q < 0
         "overdamped": 2 * omega.sqrt() * excess}[case]      # generic c with q > 0
    q = big_b**2 * (c**2 - 4 * omega) / 16
    if case == "critical":
        assert (q.abs() <= 1e-12 * big_b**2 * omega).all()
    elif case == "overdamped":
        assert (q > 0).all()
    else:
        assert (q < 0).all()
    for reverse in (False, True):
        phi = torch.stack(kernel.transition(big_b, omega, c, reverse=reverse), -1).reshape(-1, 2, 2)
        dmat = drift_matrix(omega, c)
        if reverse:  # D~ = [[0, 1], [-omega, c]]
            dmat = dmat * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)
        ref = torch.linalg.matrix_exp(-0.5 * big_b.reshape(-1, 1, 1) * dmat)
        assert rel_err_mat(phi, ref) < 1e-10, (case, reverse)


def test_expm2x2_generic_and_taylor_threshold():
    g = torch.Generator().manual_seed(2)
    m = torch.empty(500, 2, 2, dtype=F64).uniform_(-3, 3, generator=g)
    # Matrices whose q = tau^2 - det sits just inside/outside the Taylor switch |q| < 1e-4, and q = 0 exactly.
    qs = torch.tensor([0.0, 0.99e-4, -0.99e-4, 1.01e-4, -1.01e-4, 1e-12, -1e-12], dtype=F64)
    extra = torch.zeros(len(qs), 2, 2, dtype=F64)
    extra[:, 0, 0] = extra[:, 1, 1] = -0.3   # M = [[tau, m12], [m21, tau]] has q = m12 m21
    extra[:, 0, 1] = 1.7
    extra[:, 1, 0] = qs / 1.7
    m = torch.cat([m, extra])
    tau = (m[:, 0, 0] + m[:, 1, 1]) / 2
    q = tau**2 - torch.linalg.det(m)
    assert torch.allclose(q[-len(qs):], qs, atol=1e-15)
    e = torch.stack(kernel.expm2x2(m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]), -1).reshape(-1, 2, 2)
    assert rel_err_mat(e, torch.linalg.matrix_exp(m)) < 1e-10


def test_cld_transition_closed_form():
    """Spec 1.3 example: omega = 1, c = 2 gives Phi = e^-b [[1+b, b], [-b, 1-b]] with b = B/2."""
    big_b = torch.tensor([1e-6, 0.1, 1.0, 5.0, 20.0], dtype=F64)
    one = torch.ones_like(big_b)
    p11, p12, p21, p22 = kernel.transition(big_b, one, 2 * one)
    b = big_b / 2
    e = torch.exp(-b)
    for got, want in ((p11, e * (1 + b)), (p12, e * b), (p21, -e * b), (p22, e * (1 - b))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# -------------------------------------------------------------------------------------------------
# Invariant 2: the damping transform.
RHOS = torch.linspace(-25.0, 25.0, 501, dtype=torch.float32)


@pytest.mark.parametrize("gamma", [2.0, 0.7, 3.5])
def test_damping_transform_critical(gamma):
    p = make_process("vscld", (RHOS.numel(),), gamma=gamma, damping=1.0)
    p.rho.data = RHOS.clone()
    omega, c, kappa = p.drift_params()
    assert (omega > 0).all() and (kappa > 0).all()
    assert ((c**2 - 4 * omega).abs() <= 1e-13 * omega).all()  # c^2 - 4 omega == 0 to round-off
    torch.testing.assert_close(c, gamma * kappa, rtol=1e-14, atol=0)


@pytest.mark.parametrize("damping,gamma", [(0.7, 2.0), (0.3, 1.5), (1 - 1e-6, 2.0), (0.05, 4.0)])
def test_damping_transform_underdamped(damping, gamma):
    p = make_process("vsuld", (RHOS.numel(),), gamma=gamma, damping=damping)
    p.rho.data = RHOS.clone()
    omega, c, kappa = p.drift_params()
    assert (omega > 0).all() and (kappa > 0).all()
    big_b = torch.tensor(1.0, dtype=F64)
    q = big_b**2 * (c**2 - 4 * omega) / 16
    assert (q < 0).all()
    torch.testing.assert_close(c**2 / (4 * omega), torch.full_like(omega, damping), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES)
def test_alpha_nu_round_trip(name, damping, gamma):
    p = make_process(name, (201,), gamma=gamma, damping=damping)
    rho = torch.linspace(math.log(1e-3), math.log(1e3), 201)
    p.rho.data = rho.clone()
    alpha, nu = p.variational_scores()
    rho64 = rho.to(F64)
    # Independent: omega = e^rho, kappa = (2 sqrt(R)/gamma) e^(rho/2),
    # alpha = (1 - omega)/(2 gamma), nu = (1 - kappa)/2.
    torch.testing.assert_close(alpha, (1 - rho64.exp()) / (2 * gamma), rtol=1e-12, atol=1e-15)
    kappa = 2 * math.sqrt(damping) / gamma * (rho64 / 2).exp()
    torch.testing.assert_close(nu, (1 - kappa) / 2, rtol=1e-12, atol=1e-15)
    # nu -> alpha: alpha = (1 - gamma^2 kappa^2 / (4R)) / (2 gamma) with kappa = 1 - 2 nu (spec 1.2 inverse).
    kap = 1 - 2 * nu
    torch.testing.assert_close((1 - gamma**2 * kap**2 / (4 * damping)) / (2 * gamma), alpha, rtol=1e-10, atol=1e-12)
    # alpha -> nu: Eq. 14, nu = 1/2 - sqrt(R omega)/gamma with omega = 1 - 2 gamma alpha.
    om = 1 - 2 * gamma * alpha
    torch.testing.assert_close(0.5 - (damping * om).sqrt() / gamma, nu, rtol=1e-10, atol=1e-12)
    # Consistency with the drift parameters.
    omega, c, kappa2 = p.drift_params()
    torch.testing.assert_close(omega, om, rtol=1e-12, atol=0)
    torch.testing.assert_close(kappa2, kap, rtol=1e-12, atol=0)


def test_rho_zero_is_cld():
    p = make_process("vscld", (3,), gamma=2.0, damping=1.0)
    omega, c, kappa = p.drift_params()
    alpha, nu = p.variational_scores()
    for z, want in ((omega, 1.0), (c, 2.0), (kappa, 1.0), (alpha, 0.0), (nu, 0.0)):
        torch.testing.assert_close(z, torch.full_like(z, want), rtol=0, atol=1e-15)


# -------------------------------------------------------------------------------------------------
# Invariant 3: covariance = Van Loan = RK4; SPD; L L^T = Sigma.
COV_TIMES = [1e-3, 3e-3, 0.02, 0.1, 0.3, 0.5, 1.0]
# Relative tolerance per time. At t = delta = 1e-3 with Sigma_0 = 0, Sigma_xx ~ 2e-8 is the difference of O(1)
# terms in the stationary-difference closed form, so float64 round-off alone gives ~1e-7 relative error there
# (spec 1.3); that is 1e-15 absolute, far below the jitter. Everywhere else the spec's 1e-8 holds.
COV_TOL = torch.tensor([5e-7] + [1e-8] * (len(COV_TIMES) - 1), dtype=F64)


def assert_cov_close(sigma: torch.Tensor, ref: torch.Tensor, what: object = None) -> None:
    """sigma, ref of shape (*, n_times, d, 2, 2) on COV_TIMES."""
    dg = torch.diagonal(ref, dim1=-2, dim2=-1)
    err = (sigma - ref).abs() / (dg.unsqueeze(-1) * dg.unsqueeze(-2)).sqrt()
    err = err.amax(dim=(-1, -2, -3))
    assert (err <= COV_TOL).all(), (what, err)


@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES)
def test_covariance_matches_van_loan_and_rk4(name, damping, gamma):
    beta = 5.0
    t = torch.tensor(COV_TIMES, dtype=F64)
    modes = [("hsm", 1.0), ("hsm", 0.04), ("dsm", 1.0)]
    sigmas, omegas, var0s = [], [], []
    for init_velocity, v0_var in modes:
        p = momentum_process(name, damping, d=4, seed=3, gamma=gamma, beta=beta, init_velocity=init_velocity,
                             v0_var=v0_var)
        omega = p.rho.detach().to(F64).exp()                 # independent of drift_params()
        c = 2 * (damping * omega).sqrt()
        var0v = v0_var if init_velocity == "hsm" else 0.0   # dsm trains with Sigma_0 = 0
        k = p.coefficients(t, dtype=F64)
        sigma = sigma_from_cholesky(k)
        phi_ref, sigma_vl = van_loan(beta * t, omega, c, gamma, var0v)
        assert_cov_close(sigma, sigma_vl, (init_velocity, v0_var))
        phi = torch.stack([k["p11"], k["p12"], k["p21"], k["p22"]], -1).reshape(*k["p11"].shape, 2, 2)
        assert rel_err_mat(phi, phi_ref) < 1e-10
        # The prior (Sigma_0 = diag(0, s^2) whatever the mode) is the same kernel with var0v = s^2.
        kp = p.coefficients(t, dtype=F64, prior=True)
        assert_cov_close(sigma_from_cholesky(kp), van_loan(beta * t, omega, c, gamma, v0_var)[1], "prior")
        sigmas.append(sigma)
        omegas.append(omega)
        var0s.append(torch.full_like(omega, var0v))
    # One batched RK4 solve for the three initial covariances.
    omega = torch.stack(omegas)
    rk = rk4_covariance(1.0, 1000, lambda s: beta, omega, 2 * (damping * omega).sqrt(), gamma, torch.stack(var0s),
                        COV_TIMES)
    sigma_rk = torch.stack([rk[s] for s in COV_TIMES], 1)   # (mode, n, d, 2, 2)
    for i in range(len(modes)):
        assert_cov_close(sigmas[i], sigma_rk[i], modes[i])


def test_covariance_linear_schedule_matches_rk4():
    """With beta(t) linear, B(t) = int beta replaces beta t (exact for time-invariant A)."""
    p = momentum_process("vsuld", 0.7, d=3, seed=4, beta=12.0, beta_schedule="linear", beta_min=0.5)
    omega, c, _ = p.drift_params()
    t = torch.tensor(COV_TIMES, dtype=F64)
    sigma = sigma_from_cholesky(p.coefficients(t, dtype=F64))
    rk = rk4_covariance(1.0, 1000, lambda s: 0.5 + s * (12.0 - 0.5), omega, c, 2.0, 1.0, COV_TIMES)
    assert_cov_close(sigma, torch.stack([rk[s] for s in COV_TIMES]))
    # B(t) by hand: 0.5 t + 5.75 t^2.
    assert_cov_close(sigma, van_loan(0.5 * t + 5.75 * t**2, omega, c, 2.0, 1.0)[1])


@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES)
@pytest.mark.parametrize("init_velocity", ["hsm", "dsm"])
def test_covariance_spd_for_t_above_delta(name, damping, gamma, init_velocity):
    p = momentum_process(name, damping, d=7, seed=5, gamma=gamma, beta=10.0, rho_scale=math.log(1e3),
                         init_velocity=init_velocity)
    t = torch.logspace(-3, 0, 60, dtype=F64)
    omega, c, kappa = p.drift_params()
    big_b = (10.0 * t).reshape(-1, 1)
    sxx, sxv, svv = kernel.covariance(kernel.transition(big_b, omega, c), omega, kappa,
                                      1.0 if init_velocity == "hsm" else 0.0)
    assert (sxx > 0).all() and (svv > 0).all() and (sxx * svv - sxv**2 > 0).all()
    for dtype in (F64, torch.float32):
        k = p.coefficients(t, dtype=dtype)
        for key in ("lxx", "lvv"):
            assert torch.isfinite(k[key]).all() and (k[key] > 0).all(), (dtype, key)
        assert torch.isfinite(k["lvx"]).all()


# -------------------------------------------------------------------------------------------------
# Invariant 4: small-t behaviour with Sigma_0 = 0 (dsm).
@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES)
def test_small_t_ratios(name, damping, gamma):
    beta = 5.0
    p = momentum_process(name, damping, d=5, seed=6, gamma=gamma, beta=beta, init_velocity="dsm")
    omega, c, kappa = p.drift_params()
    ts = [1e-2, 1e-3, 1e-4]
    devs = []
    for t in ts:
        t64 = torch.tensor([t], dtype=F64)
        # Raw float64 Sigma (no jitter) for the entries.
        sxx, sxv, svv = kernel.covariance(kernel.transition(beta * t64.reshape(-1, 1), omega, c), omega, kappa, 0.0)
        lvv2 = (sxx * svv - sxv**2) / sxx
        ratios = torch.stack([sxx / (beta**3 * gamma * t**3 / 12), sxv / (beta**2 * gamma * t**2 / 4),
                              svv / (beta * gamma * t), lvv2 / (beta * gamma * t / 4)])
        devs.append((ratios - 1).abs().max().item())
    # First-order convergence: the deviation is O(beta t c) and shrinks ~10x per decade of t.
    assert devs[0] < 0.3
    assert devs[1] < 0.1 * devs[0] * 1.5 and devs[2] < 0.1 * devs[1] * 1.5
    assert devs[2] < 5e-3
    # The training coefficients (float64, no jitter) follow the same asymptote.
    tt = torch.tensor([1e-3, 3e-3, 1e-2], dtype=F64).reshape(-1, 1)
    k = p.coefficients(tt.flatten(), dtype=F64)
    axx, axv, avv = beta**3 * gamma * tt**3 / 12, beta**2 * gamma * tt**2 / 4, beta * gamma * tt
    assert ((k["lvv"] ** 2 / ((axx * avv - axv**2) / axx) - 1).abs() < 0.1).all()


@pytest.mark.parametrize("init_velocity", ["dsm", "hsm"])
def test_the_cholesky_factor_at_small_t_has_no_jitter_error(init_velocity):
    """Issue 23: a fixed 1e-12 diagonal jitter moved Lvv by 7e-5 at t = 1e-3 and 7% at t = 1e-4 (dsm, beta 5), and
    by 98% on a reverse step of B = 5e-5. Against the Cholesky factor of Van Loan's covariance (no jitter); what is
    left at 1e-4 is the round-off of the stationary-difference covariance (spec 1.3)."""
    beta = 5.0
    p = momentum_process("vsuld", 0.7, d=3, seed=11, beta=beta, init_velocity=init_velocity)
    omega, c, _ = p.drift_params()
    for t, tol in ((1e-3, 1e-6), (3e-4, 5e-6), (1e-4, 1e-4)):
        k = p.coefficients(torch.tensor([t], dtype=F64), dtype=F64)
        _, sigma = van_loan(torch.tensor([beta * t], dtype=F64), omega, c, 2.0, 1.0 if init_velocity == "hsm" else 0)
        ref = torch.linalg.cholesky(sigma[0])
        for got, want in ((k["lxx"], ref[:, 0, 0]), (k["lvx"], ref[:, 1, 0]), (k["lvv"], ref[:, 1, 1])):
            assert ((got.flatten() / want - 1).abs() < tol).all(), (t, got.flatten(), want)
    # A zero step (t = 0) gives the factor of Sigma = diag(0, v0_var): finite, no 0 / 0.
    lxx, lvx, lvv = kernel.cholesky2x2(*(torch.tensor([v], dtype=F64) for v in (0.0, 0.0, 0.5)))
    assert (float(lxx), float(lvx)) == (0.0, 0.0) and float(lvv) == pytest.approx(0.5**0.5, rel=1e-15)


def test_small_t_lvv_hsm():
    """With Sigma_0 = diag(0, s^2), s > 0: Lvv^2 ~ beta gamma t / 3 (spec 1.3)."""
    beta, gamma = 5.0, 2.0
    p = momentum_process("vsuld", 0.7, d=4, seed=7, gamma=gamma, beta=beta, v0_var=0.5)
    omega, c, kappa = p.drift_params()
    devs = []
    for t in (1e-3, 1e-4):
        sxx, sxv, svv = kernel.covariance(kernel.transition(torch.tensor([[beta * t]], dtype=F64), omega, c),
                                          omega, kappa, 0.5)
        devs.append(((sxx * svv - sxv**2) / sxx / (beta * gamma * t / 3) - 1).abs().max().item())
    assert devs[1] < devs[0] and devs[1] < 5e-3


# -------------------------------------------------------------------------------------------------
# Invariant 5: A = 0, gamma = 2 is CLD.
def cld_sgm_mean_var(t: torch.Tensor, x: torch.Tensor, v: torch.Tensor, var0v: float,
                     m_inv: float = 4.0, beta_c: float = 4.0):
    """CLD-SGM ``sde_lib.CLD.mean``/``var`` (constant beta_c, var0x = 0, no numerical_eps), in CLD units."""
    f = 2.0 / math.sqrt(m_inv)
    g = 1.0 / f
    bi = beta_c * t
    em = torch.exp(-2 * bi * g)
    mean_x = em * (2 * bi * g * x + 4 * bi * g**2 * v + x)
    mean_v = em * (-bi * x - 2 * bi * g * v + v)
    mult = torch.exp(-4 * bi * g)
    vxx = 1 / mult - 1 - 4 * bi * g - 8 * bi**2 * g**2 + 16 * g**4 * bi**2 * var0v
    vxv = 4 * g**2 * bi * var0v + 4 * g * bi**2 - 8 * g**3 * bi**2 * var0v
    vvv = f**2 * (1 / mult - 1) / 4 + f * bi - 4 * g * bi * var0v + 4 * g**2 * bi**2 * var0v + var0v - 2 * bi**2
    return (mean_x, mean_v), (vxx * mult, vxv * mult, vvv * mult)


@pytest.mark.parametrize("name", ["cld", "vscld"])
def test_a_zero_is_cld(name):
    beta, s2 = 16.0, 0.04
    p = make_process(name, (3,), beta=beta, gamma=2.0, damping=1.0, v0_var=s2)  # rho = 0: A = 0
    omega, c, kappa = p.drift_params()
    t = torch.tensor([1e-3, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0], dtype=F64).reshape(-1, 1)
    phi = kernel.transition(beta * t, omega, c)
    sxx, sxv, svv = kernel.covariance(phi, omega, kappa, s2)
    # Spec 1.6 oracle, b = beta t / 2.
    b = beta * t / 2
    e2 = torch.exp(-2 * b)
    oxx = 1 - e2 * ((1 + b) ** 2 + (1 - s2) * b**2)
    oxv = e2 * ((1 + b) * b + (s2 - 1) * b * (1 - b))
    ovv = 1 - e2 * (b**2 + (1 - s2) * (1 - b) ** 2)
    for got, want in ((sxx, oxx), (sxv, oxv), (svv, ovv)):
        got = got.expand_as(torch.empty(t.shape[0], 3))
        assert ((got - want).abs() / want.abs()).max() < 1e-9
    # CLD-SGM units: M = 1/4, beta_c = beta sqrt(M) / 2 = 4, v = v_CLD / sqrt(M), var0v_CLD = s^2 M.
    m = 0.25
    x0 = torch.tensor([0.7, -1.3, 2.0], dtype=F64)
    v0 = torch.tensor([0.2, 0.5, -1.0], dtype=F64)
    (mx, mv), (cxx, cxv, cvv) = cld_sgm_mean_var(t, x0, v0 * math.sqrt(m), s2 * m)
    p11, p12, p21, p22 = phi
    torch.testing.assert_close(p11 * x0 + p12 * v0, mx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p21 * x0 + p22 * v0, mv / math.sqrt(m), rtol=1e-9, atol=1e-12)
    for got, want in ((sxx, cxx), (sxv, cxv / math.sqrt(m)), (svv, cvv / m)):
        got = got.expand_as(torch.empty(t.shape[0], 3))
        want = want.expand_as(got)
        assert ((got - want).abs() / want.abs()).max() < 1e-9


# -------------------------------------------------------------------------------------------------
# Invariant 6: Lemma 1.
@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES)
def test_lemma1_stationary(name, damping, gamma):
    beta = 5.0
    p = momentum_process(name, damping, d=6, seed=8, gamma=gamma, beta=beta)
    omega, c, kappa = p.drift_params()
    sxx, svv = kernel.stationary(omega, kappa)
    s_inf = torch.diag_embed(torch.stack([sxx, svv], -1))
    f = -0.5 * beta * drift_matrix(omega, c)
    q = torch.zeros_like(f)
    q[..., 1, 1] = beta * gamma
    residual = f @ s_inf + s_inf @ f.transpose(-1, -2) + q
    assert residual.abs().max() < 1e-12
    # Damping-transform form of the stationary law (spec 1.5).
    root = (damping * omega).sqrt()
    torch.testing.assert_close(sxx, gamma / (2 * omega * root), rtol=1e-12, atol=0)
    torch.testing.assert_close(svv, gamma / (2 * root), rtol=1e-12, atol=0)
    # Sigma_t -> Sigma_inf for large t, from either initial covariance.
    for prior in (False, True):
        k = p.coefficients(torch.tensor([60.0]), dtype=F64, prior=prior)
        sig = sigma_from_cholesky(k)[0]
        assert scaled_err(sig, s_inf) < 1e-10
        for key in ("p11", "p12", "p21", "p22"):
            assert k[key].abs().max() < 1e-10


def test_stationary_r07_a0_is_1195():
    p = make_process("uld", (2,), gamma=2.0, damping=0.7)
    omega, _, kappa = p.drift_params()
    sxx, svv = kernel.stationary(omega, kappa)
    torch.testing.assert_close(sxx, torch.full_like(sxx, 1 / math.sqrt(0.7)))
    assert abs(svv[0].item() - 1.195) < 1e-3


# -------------------------------------------------------------------------------------------------
# Invariant 8: the score target.
@pytest.mark.parametrize("name,damping,gamma", MOMENTUM_CASES[:3])
def test_score_target_matches_autograd(name, damping, gamma):
    beta, d = 5.0, 3
    p = momentum_process(name, damping, d=d, seed=9, gamma=gamma, beta=beta, v0_var=0.5)
    omega = p.rho.detach().to(F64).exp()
    c = 2 * (damping * omega).sqrt()
    t = torch.tensor([1e-3, 0.01, 0.1, 0.4, 0.7, 1.0], dtype=F64)
    n = t.numel()
    g = torch.Generator().manual_seed(10)
    x0 = torch.randn(n, d, dtype=F64, generator=g)
    coeffs = p.coefficients(t, dtype=F64)
    a, eps_v, lvv = p.perturb(x0, t, coeffs=coeffs, generator=g)
    assert a.dtype == F64 and a.shape == (n, 2 * d)
    # Independent law of a_t: mean Phi (x0, 0), covariance from Van Loan.
    phi, sigma = van_loan(beta * t, omega, c, gamma, 0.5)
    mu = phi[..., :, 0] * x0.unsqueeze(-1)                  # (n, d, 2)
    state = torch.stack(p.split(a), -1).detach().requires_grad_(True)  # (n, d, 2): (x, v) per dimension
    logp = torch.distributions.MultivariateNormal(mu, covariance_matrix=sigma).log_prob(state).sum()
    (grad,) = torch.autograd.grad(logp, state)
    # v-block of the score equals -eps_v / Lvv.
    torch.testing.assert_close(grad[..., 1], -eps_v / lvv, rtol=1e-6, atol=1e-8)
    # The full score equals -L^{-T} eps, with eps the standardised draw L^{-1}(a - mu).
    chol = torch.linalg.cholesky(sigma)
    eps = torch.linalg.solve_triangular(chol, (state.detach() - mu).unsqueeze(-1), upper=False)
    torch.testing.assert_close(eps[..., 1, 0], eps_v, rtol=1e-6, atol=1e-8)  # the returned target is that draw
    target = -torch.linalg.solve_triangular(chol.transpose(-1, -2), eps, upper=True).squeeze(-1)
    torch.testing.assert_close(grad, target, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(lvv, chol[..., 1, 1], rtol=1e-7, atol=0)


def test_perturb_dsm_matches_marginal():
    """dsm draws v0 ~ N(0, s^2) into the mean; its marginal must equal the hsm kernel (spec 1.4)."""
    beta, d, n = 5.0, 2, 100_000
    p = momentum_process("vsuld", 0.7, d=d, seed=11, beta=beta, init_velocity="dsm", v0_var=0.6)
    omega = p.rho.detach().to(F64).exp()
    c = 2 * (0.7 * omega).sqrt()
    x0 = torch.tensor([[1.0, -2.0]], dtype=F64).expand(n, d)
    t = torch.full((n,), 0.3, dtype=F64)
    g = torch.Generator().manual_seed(12)
    a, _, _ = p.perturb(x0, t, coeffs=p.coefficients(t[:1], dtype=F64), generator=g)
    phi, sigma = van_loan(torch.tensor([beta * 0.3], dtype=F64), omega, c, 2.0, 0.6)
    st = torch.stack(p.split(a), -1)                        # (n, d, 2)
    mu = (phi[0, ..., :, 0] * x0[0].unsqueeze(-1))
    _check_moments(st, mu, sigma[0], n_se=4.0)


# -------------------------------------------------------------------------------------------------
# Invariant 12: the prior.
def _check_moments(samples: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, n_se: float) -> None:
    """samples (n, d, 2); compare mean and covariance with standard errors of the Gaussian estimators."""
    n = samples.shape[0]
    samples = samples.to(F64)
    mean = samples.mean(0)
    diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
    assert ((mean - mu).abs() <= n_se * (diag / n).sqrt()).all(), (mean, mu)
    cen = samples - mean
    emp = torch.einsum("ndi,ndj->dij", cen, cen) / (n - 1)
    # Var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n.
    se = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + sigma**2) / n).sqrt()
    assert ((emp - sigma).abs() <= n_se * se).all(), (emp, sigma)


@pytest.mark.parametrize("name,damping,init_velocity", [("vsuld", 0.7, "hsm"), ("vscld", 1.0, "dsm")])
def test_prior_covariance(name, damping, init_velocity):
    beta, d, n = 3.0, 3, 200_000   # beta = 3: a strongly non-stationary, correlated prior
    p = momentum_process(name, damping, d=d, seed=13, beta=beta, init_velocity=init_velocity, v0_var=0.3)
    omega = p.rho.detach().to(F64).exp()
    c = 2 * (damping * omega).sqrt()
    g = torch.Generator().manual_seed(14)
    a = p.prior_sample(n, generator=g)
    assert a.shape == (n, 2 * d)
    # Independent Sigma_prior: Van Loan at T with Sigma_0 = diag(0, s^2).
    _, sigma = van_loan(torch.tensor([beta * p.t_max], dtype=F64), omega, c, 2.0, 0.3)
    sigma = sigma[0]
    corr = sigma[:, 0, 1] / (sigma[:, 0, 0] * sigma[:, 1, 1]).sqrt()
    assert (corr.abs() > 0.1).any()  # the xv term is not negligible, so dropping it would be caught
    _check_moments(torch.stack(p.split(a), -1), torch.zeros(d, 2, dtype=F64), sigma, n_se=4.0)
    # And the coefficients agree with it.
    k = p.coefficients(torch.tensor([p.t_max]), dtype=F64, prior=True)
    assert scaled_err(sigma_from_cholesky(k)[0], sigma) < 1e-8


# -------------------------------------------------------------------------------------------------
# Overdamped processes: mean exp(-B d / 2), variance (1 - exp(-B d)) / d, checked by RK4 on the moments.
@pytest.mark.parametrize("name,schedule", [("vp", "linear"), ("vsdm", "constant"), ("vsdm", "linear")])
def test_overdamped_mean_var(name, schedule):
    beta, beta_min, d = 10.0, 0.1, 4
    p = make_process(name, (d,), beta=beta, beta_schedule=schedule, beta_min=beta_min)
    if name == "vsdm":
        p.rho.data = torch.tensor([-1.0, -0.2, 0.4, 1.2])
    rate = p.rho.detach().to(F64).exp()

    def beta_fn(s):
        return beta if schedule == "constant" else beta_min + s * (beta - beta_min)

    # RK4 on dm/dt = -1/2 beta d m (m(0) = 1) and dV/dt = -beta d V + beta (V(0) = 0), in plain Python floats.
    save_at = [0.01, 0.2, 0.5, 1.0]
    n_steps = 2000
    h = 1.0 / n_steps
    save = {round(ts / h): i for i, ts in enumerate(save_at)}
    ref = torch.zeros(len(save_at), 2, d, dtype=F64)
    for i, r in enumerate(rate.tolist()):
        def rhs(s, m, v):
            b = beta_fn(s)
            return -0.5 * b * r * m, -b * r * v + b

        m, v = 1.0, 0.0
        for k in range(n_steps):
            s = k * h
            k1 = rhs(s, m, v)
            k2 = rhs(s + h / 2, m + h / 2 * k1[0], v + h / 2 * k1[1])
            k3 = rhs(s + h / 2, m + h / 2 * k2[0], v + h / 2 * k2[1])
            k4 = rhs(s + h, m + h * k3[0], v + h * k3[1])
            m += h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            v += h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
            if k + 1 in save:
                ref[save[k + 1], 0, i], ref[save[k + 1], 1, i] = m, v
    t = torch.tensor(save_at, dtype=F64)
    k = p.coefficients(t, dtype=F64)
    torch.testing.assert_close(k["m"], ref[:, 0], rtol=1e-9, atol=0)
    torch.testing.assert_close(k["std"] ** 2, ref[:, 1], rtol=1e-9, atol=0)
    # Closed form with B by hand.
    big_b = (beta * t if schedule == "constant" else beta_min * t + 0.5 * (beta - beta_min) * t**2).reshape(-1, 1)
    torch.testing.assert_close(k["m"], torch.exp(-big_b * rate / 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(k["std"] ** 2, (1 - torch.exp(-big_b * rate)) / rate, rtol=1e-12, atol=0)
    # noise_scale is the std; perturb and prior_sample draw from these laws.
    torch.testing.assert_close(p.noise_scale(t, k), k["std"])
    n = 100_000
    g = torch.Generator().manual_seed(15)
    x0 = torch.tensor([[2.0, -1.0, 0.5, 3.0]]).expand(n, d)
    xt, eps, std = p.perturb(x0, torch.full((n,), 0.2), generator=g)
    k02 = p.coefficients(torch.tensor([0.2]), dtype=F64)
    torch.testing.assert_close(xt, k02["m"].float() * x0 + std * eps)
    assert ((xt.double().mean(0) - k02["m"][0] * x0[0]).abs() < 4 * k02["std"][0] / math.sqrt(n)).all()
    assert ((xt.double().var(0) / k02["std"][0] ** 2 - 1).abs() < 4 * math.sqrt(2 / n)).all()
    prior = p.prior_sample(n, generator=g).double()
    v_t = ref[-1, 1]
    assert (prior.mean(0).abs() < 4 * (v_t / n).sqrt()).all()
    assert ((prior.var(0) / v_t - 1).abs() < 4 * math.sqrt(2 / n)).all()
