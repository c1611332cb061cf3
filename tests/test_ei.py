"""The exponential integrator (sampler "ei") and the data estimate, against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from vsmd.diffusion import heun, make_process
from vsmd.diffusion.ei import EICoefficients, _Kernel, ei_grid, exponential_integrator

F64 = torch.float64
CASES = [("vp", 0.0, 20.0), ("vsdm", 0.6, 5.0), ("cld", 0.0, 10.0), ("uld", 0.0, 10.0), ("vscld", 1.3, 5.0),
         ("vsuld", 0.9, 5.0)]


class Gaussian:
    """N(mu0, s2) data (1-D) under a process: the exact marginal at any t, its v-score and E[x0 | a_t]."""

    def __init__(self, p, mu0: float, s2: float) -> None:
        self.p, self.mu0, self.s2, self.k = p, mu0, s2, _Kernel(p)

    def _moments(self, t):
        k = self.k.at(t.reshape(-1)[:1].to(F64))
        if not self.p.momentum:
            m, std = k["m"][0], k["std"][0]
            return (m,), (self.s2 * m * m + std**2,)
        lxx, lvx, lvv, mx, mv = (k[n][0] for n in ("lxx", "lvx", "lvv", "mx", "mv"))
        return (mx, mv), (lxx**2 + self.s2 * mx * mx, lxx * lvx + self.s2 * mx * mv,
                          lvx**2 + lvv**2 + self.s2 * mv * mv)

    def _dev(self, a, t):
        m, c = self._moments(t)
        if not self.p.momentum:
            return m, c, ((a - m[0] * self.mu0) / c[0],)
        x, v = self.p.split(a)
        dx, dv = x - m[0] * self.mu0, v - m[1] * self.mu0
        det = c[0] * c[2] - c[1] ** 2
        return m, c, ((c[2] * dx - c[1] * dv) / det, (-c[1] * dx + c[0] * dv) / det)  # C^{-1}(a - M mu0)

    def score(self, a, t):
        return -self._dev(a, t)[2][-1]

    def denoise(self, a, t):
        m, _, w = self._dev(a, t)
        return self.mu0 + self.s2 * sum(mi * wi for mi, wi in zip(m, w))

    def sample(self, n: int, t: float, gen) -> torch.Tensor:
        m, c = self._moments(torch.tensor([t], dtype=F64))
        if not self.p.momentum:
            return m[0] * self.mu0 + c[0].sqrt() * torch.randn(n, 1, generator=gen, dtype=F64)
        chol = torch.linalg.cholesky(torch.stack([torch.stack([c[0], c[1]]), torch.stack([c[1], c[2]])]).reshape(2, 2))
        z = torch.randn(n, 2, generator=gen, dtype=F64) @ chol.T
        return torch.cat([z[:, :1] + m[0] * self.mu0, z[:, 1:] + m[1] * self.mu0], 1)


def _process(name: str, rho: float, beta: float):
    p = make_process(name, (1,), beta=beta)
    p.rho.data.fill_(rho)
    return p


def _radau_flow(p, score, a0: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from t_max to t_eps by scipy's implicit Radau (tolerance 1e-9)."""
    from scipy.integrate import solve_ivp

    def rhs(t: float, y):
        a = torch.from_numpy(y).reshape(a0.shape)
        tt = torch.full((a0.shape[0],), t, dtype=F64)
        return (-p.reverse_drift(a, tt, score(a, tt), probability_flow=True)).reshape(-1).numpy()  # da/dt

    sol = solve_ivp(rhs, (p.t_max, p.t_eps), a0.reshape(-1).numpy(), method="Radau", rtol=1e-9, atol=1e-11)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1]).reshape(a0.shape)


def _exact_point_score(p, x0: float):
    """The v-score of the single-point marginal from formulas of its own (no kernel code, no jitter): the
    overdamped mean exp(-B d / 2) x0 and variance -expm1(-B d) / d, with B(t) written out; for momentum processes
    Phi and Sigma from Van Loan's 4x4 matrix exponential (tests/test_kernel.py) and a dense solve."""
    from test_kernel import van_loan
    rho, s = float(p.rho.detach().flatten()[0]), p.schedule
    big_b = (lambda t: s.beta * t) if s.kind == "constant" else (
        lambda t: s.beta_min * t + 0.5 * t * t * (s.beta - s.beta_min))
    if not p.momentum:
        d = math.exp(rho)
        return lambda a, t: (math.exp(-big_b(float(t[0])) * d / 2) * x0 - a) * d / -math.expm1(-big_b(float(t[0])) * d)
    omega = torch.tensor([math.exp(rho)], dtype=F64)
    c = p.gamma * 2 * math.sqrt(p.damping) / p.gamma * math.exp(rho / 2) * torch.ones(1, dtype=F64)

    def score(a, t):
        phi, sig = (z[0, 0] for z in van_loan(torch.tensor([big_b(float(t[0]))], dtype=F64), omega, c, p.gamma,
                                              p.v0_var))
        dev = torch.cat(p.split(a), 1) - phi[:, 0] * x0
        return -torch.linalg.solve(sig, dev.T).T[:, 1:]
    return score


@pytest.mark.parametrize("name, rho, beta", CASES)
def test_a_single_data_point_is_exact_at_any_nfe(name: str, rho: float, beta: float) -> None:
    p = _process(name, rho, beta)
    g = Gaussian(p, 1.7, 0.0)
    a0 = g.sample(16, p.t_max, torch.Generator().manual_seed(0))
    outs = [exponential_integrator(p, g.denoise, a0, ei_grid(p, n).double(), order, denoise_last=False).state
            for n in (3, 7, 20) for order in (1, 2, 3)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-9)
    # The exact solution: an independent stiff solver (implicit Radau, scipy) on the probability-flow ODE, with the
    # score of formulas of its own (issue 23: the kernel's own score hid the fixed jitter's 2e-6 error in v). The
    # flow is stiff near t_eps, where the x-marginal of a single point collapses; explicit Heun with 20 000
    # uniform points is still 1e-4 off there (and converges to the EI answer at second order).
    torch.testing.assert_close(outs[0], _radau_flow(p, _exact_point_score(p, 1.7), a0), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name, rho, beta", [c for c in CASES if c[0] in ("cld", "uld", "vsuld")])
def test_transition_against_rk4_of_the_linear_part(name: str, rho: float, beta: float) -> None:
    """Psi(t, s) (closed form with a quadrature for the rotation) against RK4 of dPsi/dt = (F + G G^T P / 2) Psi."""
    p = _process(name, rho, beta)
    s, t = 1.0, 0.05
    co = EICoefficients(p, torch.tensor([s, t], dtype=F64), 1)
    kern = _Kernel(p)
    omega, c, _ = p.drift_params()

    def generator(tau: float) -> torch.Tensor:
        k = kern.at(torch.tensor([tau], dtype=F64))
        b = float(p.beta(torch.tensor([tau], dtype=F64)))
        lxx, lvx, lvv = (float(k[n]) for n in ("lxx", "lvx", "lvv"))
        sig = torch.tensor([[lxx**2, lxx * lvx], [lxx * lvx, lvx**2 + lvv**2]], dtype=F64)
        f = 0.5 * b * torch.tensor([[0.0, 1.0], [-float(omega), -float(c)]], dtype=F64)
        ggt = torch.tensor([[0.0, 0.0], [0.0, b * p.gamma]], dtype=F64)
        return f + 0.5 * ggt @ torch.linalg.inv(sig)

    psi, n = torch.eye(2, dtype=F64), 4000
    taus = torch.linspace(s, t, n + 1, dtype=F64).tolist()
    for a, b in zip(taus[:-1], taus[1:]):
        h = b - a
        k1 = generator(a) @ psi
        k2 = generator(a + h / 2) @ (psi + h / 2 * k1)
        k3 = generator(a + h / 2) @ (psi + h / 2 * k2)
        k4 = generator(b) @ (psi + h * k3)
        psi = psi + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    got = torch.tensor([[float(co.psi[0][0]), float(co.psi[0][1])], [float(co.psi[0][2]), float(co.psi[0][3])]], dtype=F64)
    torch.testing.assert_close(got, psi, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name, rho, beta", [c for c in CASES if c[0] not in ("vp", "vsdm")])
def test_the_rotation_angle_at_many_nodes_against_a_fine_trapezoid(name: str, rho: float, beta: float) -> None:
    """theta_t - theta_tau = int_t^tau rate at unsorted nodes (the cumulative Gauss-Legendre pass over the gaps)
    against the trapezoid rule on 950 001 points in t (step 1e-6, the nodes on it)."""
    p = _process(name, rho, beta)
    kern = _Kernel(p)
    t = torch.tensor(0.05, dtype=F64)
    tau = torch.tensor([0.9, 0.06, 0.3, 1.0, 0.051, 0.6], dtype=F64)
    got = EICoefficients._theta(kern, t, tau)
    fine = torch.linspace(float(t), 1.0, 950001, dtype=F64)
    rate = kern.at(fine)["rate"].reshape(len(fine), -1)[:, 0]
    cum = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(rate, fine)])
    want = torch.stack([cum[int((fine - x).abs().argmin())] for x in tau])
    torch.testing.assert_close(got.reshape(len(tau), -1)[:, 0], want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name, rho, beta", CASES)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_weights_against_brute_force_quadrature(name: str, rho: float, beta: float, order: int) -> None:
    p = _process(name, rho, beta)
    times = ei_grid(p, 6).double()
    co = EICoefficients(p, times, order)
    kern = _Kernel(p)
    i = 3  # a step with three previous estimates
    s, t = float(times[i]), float(times[i + 1])
    tau = torch.exp(torch.linspace(math.log(t), math.log(s), 200001, dtype=F64))
    k = kern.at(tau)
    # Psi(t, tau) from the closed form evaluated node by node through EICoefficients on [tau, t] (two-point grids).
    sub = tau[::2000]
    prev = [float(times[i - j]) for j in range(order)]
    for j in range(order):
        lag = torch.ones_like(sub)
        for m, tm in enumerate(prev):
            if m != j:
                lag = lag * (sub.log() - math.log(tm)) / (math.log(prev[j]) - math.log(tm))
        vals = []
        for node, lj in zip(sub.tolist(), lag.tolist()):
            if node <= t:  # Psi(t, t) = I
                psi = (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64), None, torch.ones(1, dtype=F64))
                psi = psi if p.momentum else psi[:1]
            else:
                psi = EICoefficients(p, torch.tensor([node, t], dtype=F64), 1).psi[0]
            kk = kern.at(torch.tensor([node], dtype=F64))
            if p.momentum:
                vals.append(torch.stack([psi[1], psi[3]]).reshape(2) * float(kk["cv"]) * lj)
            else:
                vals.append(psi[0].reshape(1) * float(kk["c"]) * lj)
        vals = torch.stack(vals)
        brute = -torch.trapezoid(vals, sub, dim=0)
        got = torch.stack([w.reshape(()) for w in co.weights[i][j]])
        torch.testing.assert_close(got, brute, rtol=2e-3, atol=1e-6)
    del k


@pytest.mark.parametrize("name, rho, beta", CASES)
def test_weights_sum_to_the_exact_mean_transport(name: str, rho: float, beta: float) -> None:
    """sum_j w_j = M_t - Psi(t, s) M_s: a constant data estimate is transported exactly."""
    p = _process(name, rho, beta)
    times = ei_grid(p, 8).double()
    co = EICoefficients(p, times, 3)
    kern = _Kernel(p)
    for i in range(len(times) - 1):
        ks, kt = kern.at(times[i:i + 1]), kern.at(times[i + 1:i + 2])
        total = [sum(w[c] for w in co.weights[i]) for c in range(2 if p.momentum else 1)]
        psi = co.psi[i]
        if p.momentum:
            want = (kt["mx"] - psi[0] * ks["mx"] - psi[1] * ks["mv"], kt["mv"] - psi[2] * ks["mx"] - psi[3] * ks["mv"])
        else:
            want = (kt["m"] - psi[0] * ks["m"],)
        for got, exp in zip(total, want):
            torch.testing.assert_close(got.reshape(()), exp.reshape(()), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name, rho, beta", CASES)
def test_gaussian_data_within_one_percent_at_forty_nfe(name: str, rho: float, beta: float) -> None:
    """From the exact marginal at T, ei (order 3, 40 network calls, quadratic grid) ends within 1% (sd) and 0.03
    (mean) of the exact flow of the same starting points.

    The issue asks for 1% at 10 NFE; that does not hold for this integrator on N(1.7, 3^2) data: at 10 NFE the sd
    is 9-25% off (order 2) and at 20 NFE 1-5% (benchmarks/results/ei_gaussian.md). The data estimate of a
    wide Gaussian moves fast in log-time where the data stops being forgotten, and the polynomial lags behind.
    """
    p = _process(name, rho, beta)
    g = Gaussian(p, 1.7, 9.0)
    a0 = g.sample(4000, p.t_max, torch.Generator().manual_seed(0))
    ref = p.split(heun(p, g.score, a0, p.time_grid(1000).double()).state)[0]
    res = exponential_integrator(p, g.denoise, a0, ei_grid(p, 41).double(), 3, denoise_last=False)
    assert res.nfe == 40
    x = p.split(res.state)[0]
    assert abs(float(x.std() / ref.std()) - 1) < 0.01
    assert abs(float(x.mean() - ref.mean())) < 0.03


def test_order_of_convergence() -> None:
    """Halving the step (quadratic grid) cuts the error of order k by about 2^k."""
    p = _process("cld", 0.0, 10.0)
    g = Gaussian(p, 1.7, 9.0)
    a0 = g.sample(512, p.t_max, torch.Generator().manual_seed(1))
    ref = heun(p, g.score, a0, torch.linspace(p.t_max, p.t_eps, 20000, dtype=F64), final_euler_to_zero=False).state
    for order, want in ((1, 2.0), (2, 4.0)):
        errs = [float((exponential_integrator(p, g.denoise, a0, ei_grid(p, n).double(), order,
                                              denoise_last=False).state - ref).abs().mean()) for n in (41, 81)]
        assert errs[0] / errs[1] > 0.75 * want, (order, errs)


@pytest.mark.parametrize("name, rho, beta", CASES)
def test_data_estimate_is_exact_for_a_point_and_unbiased_on_gaussian_data(name: str, rho: float, beta: float) -> None:
    p = _process(name, rho, beta)
    x0 = torch.full((64, 1), 1.7, dtype=F64)
    for t in (p.t_eps, 0.3, 1.0):
        tt = torch.full((64,), t, dtype=F64)
        a, eps, _ = p.perturb(x0, tt, p.coefficients(tt, F64, prior=True), torch.Generator().manual_seed(0),
                              **({"full": True} if p.momentum else {}))
        torch.testing.assert_close(p.data_estimate(a, tt, eps), x0, rtol=0, atol=1e-9)
    g = Gaussian(p, 1.7, 9.0)
    a = g.sample(200_000, 0.3, torch.Generator().manual_seed(2))
    est = g.denoise(a, torch.tensor([0.3], dtype=F64))
    assert abs(float(est.mean()) - 1.7) < 0.03  # E[E[x0 | a_t]] = E[x0]


@pytest.mark.parametrize("name, rho, beta", [c for c in CASES if c[0] != "vp" and c[0] != "vsdm"])
def test_the_flow_estimate_from_eps_v_is_exact_for_a_point_and_gives_the_same_flow(name: str, rho: float,
                                                                                  beta: float) -> None:
    """flow_estimate (the v row of Tweedie, from eps_v alone) is exact for a single point, and on Gaussian data its
    network term c * x0_v equals the one of the full E[x0 | a_t], so ei runs the same flow as the exact score."""
    p = _process(name, rho, beta)
    x0 = torch.full((64, 1), 1.7, dtype=F64)
    for t in (p.t_eps, 0.3, 1.0):
        tt = torch.full((64,), t, dtype=F64)
        a, eps, _ = p.perturb(x0, tt, p.coefficients(tt, F64, prior=True), torch.Generator().manual_seed(0))
        torch.testing.assert_close(p.flow_estimate(a, tt, eps), x0, rtol=0, atol=1e-8)
    g = Gaussian(p, 1.7, 9.0)
    kern = _Kernel(p)
    for t in (0.01, 0.3, 0.9):
        tt = torch.full((4000,), t, dtype=F64)
        a = g.sample(4000, t, torch.Generator().manual_seed(3))
        k = kern.at(tt[:1])
        eps_v = -g.score(a, tt) * k["lvv"]  # score_v = -eps_v / L_vv
        cv = k["cv"]
        torch.testing.assert_close(cv * p.flow_estimate(a, tt, eps_v), cv * g.denoise(a, tt), rtol=1e-7, atol=1e-9)


def test_the_guard_bounds_the_gain_of_a_node_where_the_data_estimate_is_singular() -> None:
    """Under-damped, fast A: kap = (L^{-1} M)_v crosses zero at some t*, and x0_hat = y / kap there divides by
    nearly zero. With a grid node at t*, the unguarded weights multiply an error in y at that node by ~1e7; the
    guard keeps the step's sensitivity to y (|w_j / kap_j|) of order 1, and leaves grids without a crossing alone."""
    p = _process("vsuld", 2.3, 5.0)
    kern = _Kernel(p)
    t = torch.linspace(0.2, 1.0, 2001, dtype=F64)
    kap = kern.at(t)["kap"][:, 0]
    i = int(torch.nonzero(kap[1:] * kap[:-1] < 0)[0])
    lo, hi = t[i], t[i + 1]
    for _ in range(60):  # bisection for the zero
        mid = (lo + hi) / 2
        same = kern.at(mid.reshape(1))["kap"][0, 0] * kern.at(lo.reshape(1))["kap"][0, 0] > 0
        lo, hi = (mid, hi) if same else (lo, mid)
    times = ei_grid(p, 21).double()
    times[int((times - lo).abs().argmin())] = float(lo.float())  # the samplers evaluate the network in float32
    kt = kern.at(times)["kap"][:, 0]
    for order in (1, 2, 3):
        sens = {}
        for gain in (100.0, 0.0):
            co = EICoefficients(p, times, order, max_gain=gain)
            sens[gain] = max(abs(float(w[1][0] / kt[i - j])) for i, ws in enumerate(co.weights) for j, w in
                             enumerate(ws))
        assert sens[0.0] > 1e5 and sens[100.0] < 10, (order, sens)
    # No crossing (rho 0.9): the guard changes no weight.
    q = _process("vsuld", 0.9, 5.0)
    grid = ei_grid(q, 21).double()
    a, b = EICoefficients(q, grid, 3), EICoefficients(q, grid, 3, max_gain=0.0)
    assert sum(a.reduced) == 0
    for wa, wb in zip(a.weights, b.weights):
        for x, y in zip(wa, wb):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def _cli_model(config: str, *extra: str):
    """The model that `vsmd <subcommand> --config configs/<config>.yaml <extra>` builds (LightningCLI, not run)."""
    from pathlib import Path

    from lightning.pytorch import LightningDataModule

    from vsmd.cli import PhaseSpaceModule, VSMDArgumentParser, VSMDCLI
    path = Path(__file__).resolve().parents[1] / "configs" / f"{config}.yaml"
    args = ["--config", str(path), "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--model.init_args.hidden", "16", "--model.init_args.depth", "1", *extra]
    model = VSMDCLI(PhaseSpaceModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    parser_class=VSMDArgumentParser, run=False, args=args).model
    opts = model.sampler_options(model.eval_net)
    return model, (opts["ei_order"], opts["ei_grid"], opts["t_stop"])


@pytest.mark.parametrize("name", ["spiral8y", "checkerboard6x", "spiral8y_rot45"])
def test_a_toy_config_with_sampler_ei_gets_the_recommended_settings(name: str) -> None:
    """Issue 23: `--model.init_args.sampler ei` on a toy config gives toy_ei.md's recommended setting (order 2, uniform
    grid, the data estimate at 0.02), not the module-wide order 3 on the quadratic grid; heun is unchanged."""
    model, got = _cli_model(name, "--model.init_args.sampler", "ei")
    assert got == (2, "uniform", 0.02) and (model.hparams.ei_order, model.hparams.ei_grid) == (2, "uniform")
    heun, got = _cli_model(name)
    assert heun.hparams.sampler == "heun" and got[2] is None
    assert heun.sampler_options(heun.eval_net, sampler="ei")["t_stop"] == 0.02  # ei asked for by name, too
    _, got = _cli_model(name, "--model.init_args.sampler", "ei", "--model.init_args.ei_t_stop", "null",
                        "--model.init_args.ei_order", "3", "--model.init_args.ei_grid", "quadratic")
    assert got == (3, "quadratic", None)
    if name != "spiral8y_rot45":  # AGM keeps its own integrator's setting
        from vsmd.models import ToyAGM
        agm = ToyAGM(hidden=8, depth=1)
        opts = agm.sampler_options(agm.eval_net)
        assert (opts["ei_order"], opts["ei_grid"], opts["t_stop"]) == (3, "quadratic", None)


def test_the_coefficients_are_kept_per_process_until_grid_order_or_rho_changes() -> None:
    from vsmd.diffusion.ei import ei_coefficients

    p = make_process("vscld", (2,))
    times = ei_grid(p, 6).double()
    co = ei_coefficients(p, times, 2)
    assert ei_coefficients(p, times, 2) is co and "_ei_cache" not in vars(p)
    assert ei_coefficients(p, times, 3) is not co
    co3 = ei_coefficients(p, times, 3)
    assert ei_coefficients(p, times[:-1], 3) is not co3
    co3 = ei_coefficients(p, times, 3)
    p.rho.data += 0.5  # A changed: the kernel changed
    fresh = ei_coefficients(p, times, 3)
    assert fresh is not co3 and ei_coefficients(p, times, 3) is fresh
    ref = EICoefficients(p, times, 3)
    assert all(torch.equal(x, y) for x, y in zip(fresh.psi[-1], ref.psi[-1]))
    q = make_process("vscld", (2,))
    q.rho.data += 0.5
    assert ei_coefficients(q, times, 3) is not fresh  # one entry per process
