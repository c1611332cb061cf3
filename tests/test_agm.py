"""AGM (issue 13): the bridge's closed forms against numerics, the training target, the hop and the sampler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import ROOT, versions

from vsmd.cli import main
from vsmd.diffusion import make_process
from vsmd.diffusion.agm import AGMProcess, agm_grid, agm_sample, multistep_weights, transition

F64 = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _lyapunov(p: AGMProcess, t_end: float, n: int = 20000) -> np.ndarray:
    """dSigma/dt = F Sigma + Sigma F^T + G G^T, F = [[0, 1], [-4/h^2, -4/h]], by RK4 on a fine grid."""
    def rhs(t: float, s: np.ndarray) -> np.ndarray:
        h = 1 - t
        f = np.array([[0.0, 1.0], [-4 / h**2, -4 / h]])
        return f @ s + s @ f.T + np.array([[0.0, 0.0], [0.0, (p.p * h) ** 2]])

    s = np.array([[1.0, -p.k], [-p.k, 1.0]])
    dt = t_end / n
    for i in range(n):
        t = i * dt
        k1 = rhs(t, s)
        k2 = rhs(t + dt / 2, s + dt / 2 * k1)
        k3 = rhs(t + dt / 2, s + dt / 2 * k2)
        k4 = rhs(t + dt, s + dt * k3)
        s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s


@pytest.mark.parametrize("t_end", [0.2, 0.6, 0.95])
def test_the_covariance_against_the_lyapunov_ode(t_end: float) -> None:
    p = AGMProcess((1,), p=3.0, k=0.2)
    want = _lyapunov(p, t_end)
    sxx, sxv, svv = (float(z) for z in p.covariance(_t(t_end)))
    np.testing.assert_allclose([sxx, sxv, svv], [want[0, 0], want[0, 1], want[1, 1]], rtol=1e-7, atol=1e-10)


def test_the_transition_and_the_mean_solve_the_bridge_ode() -> None:
    """Phi(t, s) is the identity at s = t, composes, and d/dt Phi = F Phi; the mean reaches x1 at t = 1."""
    p = AGMProcess((1,))
    t, s, r = _t(0.7), _t(0.3), _t(0.1)
    phi = lambda a, b: torch.tensor(transition(a, b), dtype=F64).reshape(2, 2)  # noqa: E731
    torch.testing.assert_close(phi(s, s), torch.eye(2, dtype=F64))
    torch.testing.assert_close(phi(t, r), phi(t, s) @ phi(s, r), rtol=1e-12, atol=1e-12)
    eps = 1e-6
    h = 1 - 0.7
    f = torch.tensor([[0.0, 1.0], [-4 / h**2, -4 / h]], dtype=F64)
    torch.testing.assert_close((phi(t + eps, s) - phi(t - eps, s)) / (2 * eps), f @ phi(t, s), rtol=1e-6, atol=1e-6)
    k = p.coefficients(_t(1 - 1e-7), F64)
    assert abs(float(k["mx"]) - 1) < 2e-7 and float(k["lxx"]) < 2e-6  # mx = 1 - 4h/3 + O(h^4)


def _mp_kernel(p: AGMProcess, t: float, x1: float):
    """An independent high-precision reference (mpmath, 40 digits, no jitter, no code of agm.py): the fundamental
    matrix Y of the bridge ODE (checked here to solve it), Sigma(t) = Phi S0 Phi^T + the noise integral by
    tanh-sinh quadrature, the mean, and the exact conditional force a* + 1/2 g^2 (Sigma^-1 (a - mu))_v."""
    import mpmath as mp
    mp.mp.dps = 40
    y = lambda s: mp.matrix([[1 - s, (1 - s) ** 4], [-1, -4 * (1 - s) ** 3]])  # noqa: E731
    for s in (mp.mpf("0.3"), mp.mpf(t)):  # dY/dt = F Y
        h = 1 - s
        dy = mp.matrix([[mp.diff(lambda r: y(r)[i, j], s) for j in range(2)] for i in range(2)])
        assert mp.mnorm(dy - mp.matrix([[0, 1], [-4 / h**2, -4 / h]]) * y(s), 1) < mp.mpf(10) ** -25
    t = mp.mpf(t)
    phi = lambda s: y(t) * y(s) ** -1  # noqa: E731
    s0 = mp.matrix([[1, -p.k], [-p.k, 1]])
    sig = phi(0) * s0 * phi(0).T
    for i, j in ((0, 0), (0, 1), (1, 1)):
        sig[i, j] += mp.quad(lambda s: phi(s)[i, 1] * phi(s)[j, 1] * (p.p * (1 - s)) ** 2, [0, t / 2, t])
    sig[1, 0] = sig[0, 1]
    mu = mp.matrix([x1, 0]) - phi(0) * mp.matrix([x1, 0])
    lvv = mp.sqrt(mp.det(sig) / sig[0, 0])

    def force(x: float, v: float) -> float:
        h = 1 - t
        z = mp.lu_solve(sig, mp.matrix([x, v]) - mu)
        return float(4 * (x1 - x - h * v) / h**2 + (p.p * h) ** 2 / 2 * z[1])
    chol = mp.cholesky(sig)
    draws = [(float(mu[0] + chol[0, 0] * e), float(mu[1] + chol[1, 0] * e + chol[1, 1] * f))
             for e, f in ((0.3, -1.2), (-1.5, 0.7), (2.0, 1.9))]
    return float(mp.det(sig)), float(lvv), draws, force


@pytest.mark.parametrize("t", [0.5, 0.9, 0.99, 0.995, 0.999])
def test_the_cholesky_factor_and_the_force_near_t_one_against_high_precision(t: float) -> None:
    """Issue 23: a fixed 1e-12 jitter made L_vv 18 times too large at t = 0.999 (det Sigma ~ 6e-15) and the
    training target 60% off; the closed-form determinant is exact there."""
    p = AGMProcess((1,), p=3.0, k=0.2)
    det, lvv, draws, force = _mp_kernel(p, t, 1.7)
    k = p.coefficients(_t(t), F64)
    assert abs(float(k["lvv"]) / lvv - 1) < 1e-9
    a = torch.tensor([[x, v] for x, v in draws], dtype=F64)
    got = p.force(a, _t(*[t] * len(draws)), torch.full((len(draws), 1), 1.7, dtype=F64), k)
    want = torch.tensor([force(x, v) for x, v in draws], dtype=F64)
    torch.testing.assert_close(got.flatten(), want, rtol=1e-7, atol=1e-9)
    assert abs(float(p.determinant(_t(t))) / det - 1) < 1e-12


@pytest.mark.parametrize("t", [0.5, 0.99, 0.995, 0.999])
def test_the_float32_training_target_near_t_one(t: float) -> None:
    """Issue 23: the target recomputed eps from a_t, which in float32 (the training dtype) cancels near t = 1: it was
    off by 6 (unit-variance target) at 0.999. Against the float64 force of the same draws."""
    p = AGMProcess((2,))
    n = 4096
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(n, 2, generator=gen)
    tt = torch.full((n,), t)
    a, target, scale = p.perturb(x1, tt, p.coefficients(tt[:1]), torch.Generator().manual_seed(1))
    draw = torch.Generator().manual_seed(1)
    ex, ev = (torch.randn(n, 2, generator=draw).double() for _ in range(2))
    k = p.coefficients(_t(t), F64)
    x1 = x1.double()
    a64 = p.join(k["mx"] * x1 + k["lxx"] * ex, k["mv"] * x1 + k["lvx"] * ex + k["lvv"] * ev)
    torch.testing.assert_close(a.double(), a64, rtol=1e-6, atol=1e-6)
    want = p.force(a64, tt.double(), x1, k) / k["scale"]
    torch.testing.assert_close(target.double(), want, rtol=0, atol=1e-5)


def test_the_kernel_against_monte_carlo_of_the_controlled_sde() -> None:
    """Euler-Maruyama of dx = v dt, dv = 4 (x1 - x - h v)/h^2 dt + p h dW from the start law, x1 fixed."""
    p = AGMProcess((1,))
    gen = torch.Generator().manual_seed(0)
    x1 = torch.full((40000, 1), 1.7, dtype=F64)
    a = p.prior_sample(40000, gen).double()
    x, v = p.split(a)
    n, t_end = 4000, 0.9
    dt = t_end / n
    checks = {}
    for i in range(n):
        h = 1 - i * dt
        x, v = x + dt * v, v + dt * 4 * (x1 - x - h * v) / h**2 + p.p * h * math.sqrt(dt) * torch.randn(
            x.shape, generator=gen, dtype=F64)
        if i + 1 in (n // 2, n):
            checks[(i + 1) * dt] = (x.clone(), v.clone())
    for t, (xs, vs) in checks.items():
        k = p.coefficients(_t(t), F64)
        sxx, sxv, svv = (float(z) for z in p.covariance(_t(t)))
        emp = np.cov(np.stack([xs.flatten().numpy(), vs.flatten().numpy()]))
        assert abs(float(xs.mean()) - 1.7 * float(k["mx"])) < 4 * math.sqrt(sxx / 40000) + 0.01
        assert abs(float(vs.mean()) - 1.7 * float(k["mv"])) < 4 * math.sqrt(svv / 40000) + 0.01
        np.testing.assert_allclose(emp, [[sxx, sxv], [sxv, svv]], rtol=0.03, atol=0.005)


def _gaussian_force(p: AGMProcess, m: torch.Tensor, sd: torch.Tensor):
    """The exact marginal force for data N(m, sd^2) per dimension: the conditional force at the posterior
    mean E[x1 | x, v] (F is affine in x1), from the joint Gaussian of (x1, x_t, v_t)."""
    def post_mean(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = p.coefficients(t[:1], F64)
        x, v = p.split(a)
        mx, mv, lxx, lvx, lvv = (k[n] for n in ("mx", "mv", "lxx", "lvx", "lvv"))
        s2 = sd**2
        cxx, cxv, cvv = mx**2 * s2 + lxx**2, mx * mv * s2 + lxx * lvx, mv**2 * s2 + lvx**2 + lvv**2
        dx, dv = x - mx * m, v - mv * m
        return m + (mx * s2 * (cvv * dx - cxv * dv) + mv * s2 * (cxx * dv - cxv * dx)) / (cxx * cvv - cxv**2)

    def force(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = a.double()
        return p.force(a, t, post_mean(a, t), p.coefficients(t[:1], F64))
    return force, post_mean


def test_the_training_target_is_the_marginal_force_plus_zero_mean_noise_on_gaussian_data() -> None:
    """target * s(t) - F_marginal(a_t) has mean 0 and is uncorrelated with (x_t, v_t): the regression of the
    conditional force onto the state is the marginal probability-flow force."""
    p = AGMProcess((2,))
    m, sd = _t(1.5, -0.5), _t(2.0, 0.3)
    force, _ = _gaussian_force(p, m, sd)
    gen = torch.Generator().manual_seed(0)
    for t in (0.1, 0.5, 0.9):
        x1 = m + sd * torch.randn(200000, 2, generator=gen, dtype=F64)
        tt = torch.full((len(x1),), t, dtype=F64)
        a, target, scale = p.perturb(x1, tt, p.coefficients(tt, F64), generator=gen)
        resid = target * scale - force(a, tt)
        x, v = p.split(a)
        tol = 4 * resid.std(0) / math.sqrt(len(x1))
        assert (resid.mean(0).abs() < tol).all(), (t, resid.mean(0), tol)
        for z in (x, v):
            corr = ((resid - resid.mean(0)) * (z - z.mean(0))).mean(0) / (resid.std(0) * z.std(0))
            assert (corr.abs() < 0.015).all(), (t, corr)
        assert 0.2 < float(target.std(0).min()) and float(target.std(0).max()) < 3  # a sane normalisation


def test_the_hop_is_exact_for_a_point_and_unbiased_on_gaussian_data() -> None:
    p = AGMProcess((2,))
    gen = torch.Generator().manual_seed(1)
    x1 = torch.tensor([[3.0, -1.0]], dtype=F64).repeat(1000, 1)
    for t in (0.05, 0.5, 0.999):
        tt = torch.full((1000,), t, dtype=F64)
        a, _, _ = p.perturb(x1, tt, p.coefficients(tt, F64), generator=gen)
        torch.testing.assert_close(p.hop(a, tt, p.force(a, tt, x1)), x1, rtol=1e-6, atol=1e-6)
    m, sd = _t(1.5, -0.5), _t(2.0, 0.3)
    force, post_mean = _gaussian_force(p, m, sd)
    x1 = m + sd * torch.randn(100000, 2, generator=gen, dtype=F64)
    tt = torch.full((len(x1),), 0.6, dtype=F64)
    a, _, _ = p.perturb(x1, tt, p.coefficients(tt, F64), generator=gen)
    hop = p.hop(a, tt, force(a, tt))
    torch.testing.assert_close(hop, post_mean(a, tt), rtol=1e-8, atol=1e-8)
    assert ((hop.mean(0) - m).abs() < 4 * sd / math.sqrt(len(x1))).all()


def test_the_multistep_weights_integrate_polynomials_exactly() -> None:
    times = agm_grid(7, 0.9)
    w, u = multistep_weights(times, 3)
    for i in range(2, 6):
        a, b = float(times[i]), float(times[i + 1])
        nodes = [float(times[i - j]) for j in range(3)]
        for f, big_f, mom in ((lambda s: 1 + 0 * s, b - a, (b - a) ** 2 / 2),
                              (lambda s: s**2, (b**3 - a**3) / 3, b * (b**3 - a**3) / 3 - (b**4 - a**4) / 4)):
            vals = torch.tensor([f(s) for s in nodes], dtype=F64)
            assert float((w[i] * vals).sum()) == pytest.approx(big_f, rel=1e-10)
            assert float((u[i] * vals).sum()) == pytest.approx(mom, rel=1e-10)
    assert agm_grid(5, 0.8)[1] < 0.8 / 4  # quadratic: dense at the noise end
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        multistep_weights(times, 4)
    with pytest.raises(ValueError, match="t_stop must be in"):
        agm_grid(5, 1.2)


@pytest.mark.parametrize("steps, stop, tol_mean, tol_sd", [(10, 0.7, 0.01, 0.04), (20, 0.9, 0.02, 0.02),
                                                          (40, 0.9, 0.01, 0.01)])
def test_the_sampler_with_the_exact_force_recovers_gaussian_data(steps: int, stop: float, tol_mean: float,
                                                                 tol_sd: float) -> None:
    """NFE 20: within 2% in mean and sd; NFE 40: 1%. NFE 10 (the official hop at 0.7): the mean within 1%, the sd
    within 4% only (measured 3.7%): the hop returns the posterior mean of x1, which is narrower than the data when
    it stops early (3.9% short at 0.7 even at NFE 40), and stopping later leaves 9 steps for [0, t_stop] (8% at
    0.9; benchmarks/results/agm_gaussian.md)."""
    p = AGMProcess((2,))
    m, sd = _t(1.5, -0.5), _t(2.0, 0.3)
    force, _ = _gaussian_force(p, m, sd)
    gen = torch.Generator().manual_seed(2)
    res = agm_sample(p, force, p.prior_sample(40000, gen).double(), agm_grid(steps, stop), order=3)
    x = p.split(res.state)[0]
    assert res.nfe == steps
    assert ((x.mean(0) - m).abs() / sd < tol_mean).all(), x.mean(0)
    assert ((x.std(0) / sd - 1).abs() < tol_sd + 2 / math.sqrt(40000)).all(), x.std(0) / sd


def test_process_agm_is_built_by_name_and_bad_options_are_refused() -> None:
    from vsmd.models import ToyAGM, ToyVSMD
    assert isinstance(make_process("agm", (2,), agm_p=2.0), AGMProcess)
    with pytest.raises(ValueError, match="choose one of .*agm"):
        make_process("foo", (2,))
    with pytest.raises(ValueError, match="set sampler: ei"):
        ToyAGM(sampler="heun")
    with pytest.raises(TypeError, match="rotation"):  # AGM has no variational scores to rotate: no such option
        ToyAGM(rotation="pca")
    with pytest.raises(ValueError, match="bridge time of the hop"):
        ToyAGM(t_stop=1.5)
    with pytest.raises(ValueError, match="model family of its own .*ToyAGM"):  # a VSMD class says where AGM went
        ToyVSMD(process="agm", sampler="ei")
    with pytest.raises(ValueError, match="noise scale p must be > 0"):
        AGMProcess((2,), p=0.0)


def test_agm_through_fit_test_predict(tmp_path: Path, capsys) -> None:
    args = ["--config", str(ROOT / "configs" / "spiral8y_agm.yaml"), "--trainer.logger.init_args.save_dir",
            str(tmp_path), "--trainer.logger.init_args.name", "spiral8y", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.val_check_interval", "10",
            "--trainer.limit_val_batches", "1", "--model.init_args.hidden", "32", "--model.init_args.depth", "1",
            "--model.init_args.n_straight", "20", "--model.init_args.straight_steps", "10",
            "--data.init_args.batch_size", "64", "--data.init_args.n_val", "64", "--data.init_args.n_test", "300",
            "--data.init_args.n_predict", "50"]
    main(["fit", *args, "--trainer.max_steps", "30"])
    ckpt = versions(tmp_path)[-1] / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["_class_path"].endswith("ToyAGM") and "vsmd_sa" not in state
    main(["test", *args, "--ckpt_path", str(ckpt)])
    out = capsys.readouterr().out
    assert "test metrics (ei, NFE 20" in out
    main(["predict", *args, "--ckpt_path", str(ckpt)])
    samples = np.load(versions(tmp_path)[-1] / "samples.npz")["samples"]
    assert samples.shape == (50, 2) and np.isfinite(samples).all()
    main(["predict", *args, "--model.init_args.guide", "[0.0, 25.0]", "--ckpt_path", str(ckpt)])  # guidance
    guided = np.load(versions(tmp_path)[-1] / "samples.npz")["samples"]
    assert guided.shape == (50, 2) and np.isfinite(guided).all() and not np.array_equal(guided, samples)


@pytest.mark.parametrize("name", ["spiral8y_agm", "checkerboard6x_agm", "cifar10_agm"])
def test_the_agm_configs_build_their_model(name: str) -> None:
    import importlib

    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]
    module, cls = cfg["class_path"].rsplit(".", 1)
    model = getattr(importlib.import_module(module), cls)(**cfg["init_args"])
    assert isinstance(model.process, AGMProcess) and model.sa is None and model.hparams.sampler == "ei"


def test_velocity_guidance_moves_the_mass_toward_the_target() -> None:
    """Two data points (-3, 3) per coordinate pair, the exact force (posterior over the two points); guidance
    toward (3, 3) redraws only v in the first quarter of the steps and must raise the fraction that ends there."""
    p = AGMProcess((2,))
    points = torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=F64)

    def force(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = a.double()
        k = p.coefficients(t[:1], F64)
        logw = []
        for x1 in points:
            ex = (p.split(a)[0] - k["mx"] * x1) / k["lxx"]
            ev = (p.split(a)[1] - k["mv"] * x1 - k["lvx"] * ex) / k["lvv"]
            logw.append(-0.5 * (ex**2 + ev**2).sum(1))
        w = torch.softmax(torch.stack(logw, 1), 1)
        return p.force(a, t, w @ points, k)

    fractions = []
    for guide in (None, torch.tensor([3.0, 3.0], dtype=F64)):
        gen = torch.Generator().manual_seed(0)
        res = agm_sample(p, force, p.prior_sample(4000, gen).double(), agm_grid(40, 0.99), guide=guide,
                         generator=gen)
        x = p.split(res.state)[0]
        near = torch.stack([(x - z).norm(dim=1) for z in points], 1).min(1).values < 0.3
        assert near.float().mean() > 0.95  # the samples are data points either way
        fractions.append(float(((x - points[1]).norm(dim=1) < 0.3).float().mean()))
    assert abs(fractions[0] - 0.5) < 0.05 and fractions[1] > 0.75, fractions  # measured 0.49 -> 0.79
    from vsmd.models import ToyAGM, ToyVSMD
    with pytest.raises(TypeError, match="guide"):  # guidance is AGM's: a VSMD model has no such option
        ToyVSMD(process="vsuld", guide=[0.0, 1.0])
    with pytest.raises(ValueError, match="one value per data dimension"):
        ToyAGM(guide=[0.0])


def test_agm_scale_data_runs_the_bridge_on_unit_scale_data_and_resumes_it(tmp_path: Path, capsys) -> None:
    """agm_scale data: the sd of the training data per dimension at fit start (spiral-8Y: about 1 and 8 times the
    spiral's), printed, in the checkpoint, not recomputed on resume; the exact-force sampler keeps sd-8 data only
    with it at NFE 10."""
    from vsmd.models import ToyAGM, ToyVSMD
    with pytest.raises(ValueError, match="agm_scale must be"):
        ToyAGM(agm_scale="sd")
    with pytest.raises(TypeError, match="agm_scale"):  # AGM's: a VSMD model has no such option
        ToyVSMD(process="vsuld", agm_scale="data")
    args = ["--config", str(ROOT / "configs" / "spiral8y_agm.yaml"), "--trainer.logger.init_args.save_dir",
            str(tmp_path), "--trainer.logger.init_args.name", "spiral8y", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
            "--model.init_args.hidden", "16", "--model.init_args.depth", "1", "--model.init_args.agm_scale", "data",
            "--model.init_args.n_straight", "20", "--model.init_args.straight_steps", "10",
            "--data.init_args.batch_size", "64", "--data.init_args.n_test", "300"]
    main(["fit", *args, "--trainer.max_steps", "10"])
    assert "agm_scale data: the bridge runs on the data divided by their sd" in capsys.readouterr().out
    ckpt = versions(tmp_path)[-1] / "checkpoints" / "last.ckpt"
    scale = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["x_scale"]
    assert 5 < float(scale[1] / scale[0]) < 12
    main(["fit", *args, "--trainer.max_steps", "20", "--ckpt_path", str(ckpt)])
    assert "agm_scale data" not in capsys.readouterr().out
    again = torch.load(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.equal(again["state_dict"]["x_scale"], scale)
    main(["test", *args, "--ckpt_path", str(versions(tmp_path)[-2] / "checkpoints" / "last.ckpt")])
    p = AGMProcess((2,))
    for sd, want in ((8.0, (0.55, 0.7)), (1.0, (0.98, 1.02))):
        force, _ = _gaussian_force(p, torch.zeros(2, dtype=F64), torch.full((2,), sd, dtype=F64))
        res = agm_sample(p, force, p.prior_sample(20000, torch.Generator().manual_seed(0)).double(),
                         agm_grid(10, 0.7), 3)
        ratio = float((p.split(res.state)[0].std(0) / sd).mean())
        assert want[0] < ratio < want[1], (sd, ratio)


def test_the_readme_account_of_nfe_10_is_the_benchmarks() -> None:
    """Issue 23: the README called the sd shortfall at NFE 10 (hop 0.7) 3.7% and the hop's narrowing; it is 4.0% on
    the sd-2 dimension over seeds, where the hop's floor is 0.09%. The AGM page (docs/models/agm.md, once in the README)
    quotes agm_gaussian.md's figures."""
    import re
    table = (ROOT / "benchmarks" / "results" / "agm_gaussian.md").read_text()
    row = re.search(r"^\| sd 2 \| ([-+0-9.]+) ± [0-9.]+ \| [-+0-9.]+ \| [-+0-9.]+ \| ([-+0-9.]+) \|$", table, re.M)
    assert row is not None, "agm_gaussian.md has no per-dimension row for the sd-2 dimension"
    mean, floor = float(row.group(1)), float(row.group(2))
    assert mean < -0.03 and -0.002 < floor < 0  # the shortfall is the integrator's, not the hop's
    readme = " ".join((ROOT / "docs" / "models" / "agm.md").read_text().split())
    assert f"sd-2 dimension is {-100 * mean:.1f}% short" in readme and f"by only {-100 * floor:.2f}%" in readme


def test_the_sampler_s_multistep_weights_are_computed_once_per_grid_and_order() -> None:
    from vsmd.diffusion import agm

    p = AGMProcess((1,))
    agm._weights.cache_clear()
    for _ in range(2):
        agm_sample(p, lambda a, t: torch.zeros_like(a[:, :1]), p.prior_sample(3), agm_grid(6, 0.9), order=2)
    assert agm._weights.cache_info().misses == 1 and not any("weights" in k for k in vars(p))
    w, u = agm._weights(tuple(agm_grid(6, 0.9).tolist()), 2)
    assert (w, u) == tuple(z.tolist() for z in multistep_weights(agm_grid(6, 0.9), 2))
