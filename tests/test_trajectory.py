"""Trajectory inference: the bridges' closed forms against independent computations, the loaders and their
errors, the metrics, a trained model on Gaussian snapshots, and fit/test/predict through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline
from scipy.optimize import linear_sum_assignment

from vsmd.datamodules.trajectory import (Snapshots, TrajectoryDataModule, load_snapshots, make_toy_snapshots,
                                         save_snapshots)
from vsmd.diffusion.trajectory import (MultiMarginalBridge, _iwp_vv, _iwp_vx, _iwp_xx, momentum_drift_weights,
                                       ot_chain, ot_permutation, spline_kriging)
from vsmd.diffusion.trajectory_sampling import simulate_paths, time_grid
from vsmd.metrics.trajectory import mean_squared_acceleration, mmd, ot_interpolation, sliced_w1, w1

PINS = torch.tensor([0.0, 0.5, 1.2, 1.5, 2.0], dtype=torch.float64)
TIMES = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.3, 1.99, 2.0], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------
# The momentum bridge's closed forms.
def test_kriging_mean_is_the_natural_cubic_spline():
    y = torch.randn(len(PINS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W, _ = spline_kriging(PINS, TIMES)
    mean = W @ y
    cs = CubicSpline(PINS.numpy(), y.numpy(), bc_type="natural")
    np.testing.assert_allclose(mean[:, 0].numpy(), cs(TIMES.numpy()), atol=1e-10)
    np.testing.assert_allclose(mean[:, 1].numpy(), cs(TIMES.numpy(), 1), atol=1e-10)


def test_kriging_covariance_against_a_gp_with_a_wide_prior():
    """The diffuse start as the limit of a N(0, L^2) prior on (x_0, v_0): plain GP conditioning, L = 1e3."""
    _, S = spline_kriging(PINS, TIMES)
    L2 = 1e6

    def k(kind_a, a, kind_b, b):  # covariances of the IWP plus the trend x = b0 + b1 tau, v = b1
        base = {("x", "x"): lambda: _iwp_xx(a, b), ("v", "x"): lambda: _iwp_vx(a, b),
                ("x", "v"): lambda: _iwp_vx(b, a), ("v", "v"): lambda: _iwp_vv(a, b)}[(kind_a, kind_b)]()
        ga = (torch.ones_like(a), a) if kind_a == "x" else (torch.zeros_like(a), torch.ones_like(a))
        gb = (torch.ones_like(b), b) if kind_b == "x" else (torch.zeros_like(b), torch.ones_like(b))
        return base + L2 * (ga[0] * gb[0] + ga[1] * gb[1])

    K = k("x", PINS[:, None], "x", PINS[None, :])
    for i, t in enumerate(TIMES):
        tt = t.expand(len(PINS))
        f = torch.stack([k("x", tt, "x", PINS), k("v", tt, "x", PINS)])
        prior = torch.tensor([[k("x", t, "x", t), k("v", t, "x", t)], [k("v", t, "x", t), k("v", t, "v", t)]])
        post = prior - f @ torch.linalg.solve(K, f.T)
        np.testing.assert_allclose(S[i].numpy(), post.numpy(), atol=2e-6)
    assert S[0, 0, 0].abs() < 1e-12 and S[2, 0, 0].abs() < 1e-12  # positions are pinned at the pins


def test_drift_on_the_spline_is_its_acceleration_and_zero_after_the_last_pin():
    y = torch.randn(len(PINS), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W, _ = spline_kriging(PINS, TIMES)
    G, cx, cv = momentum_drift_weights(PINS, TIMES)
    mean = torch.einsum("bsn,nd->bsd", W, y)
    a = G @ y - cx[:, None] * mean[:, 0] - cv[:, None] * mean[:, 1]
    for d in range(3):
        cs = CubicSpline(PINS.numpy(), y[:, d].numpy(), bc_type="natural")
        np.testing.assert_allclose(a[:, d].numpy(), cs(TIMES.numpy(), 2), atol=1e-8)
    G, cx, cv = momentum_drift_weights(PINS, torch.tensor([2.0, 2.5], dtype=torch.float64))
    assert G.abs().max() == 0 and cx.abs().max() == 0 and cv.abs().max() == 0


@pytest.mark.parametrize("dynamics", ["momentum", "first_order"])
def test_the_exact_drift_simulated_hits_the_pins_and_has_the_bridge_marginal(dynamics):
    """Monte Carlo of the pinned SDE with the closed-form drift, from the bridge's law at t_0: the paths pass
    through every pin, and at an intermediate time x has the kriging (or Brownian-bridge) mean and variance."""
    sigma, n = 0.5, 4000
    pins = torch.tensor([0.0, 1.0, 1.5, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 1.0, -1.0], dtype=torch.float64)
    bridge = MultiMarginalBridge(pins, dynamics, sigma)
    gen = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 3, 3001, dtype=torch.float64)
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    if dynamics == "momentum":
        W, S = spline_kriging(pins, pins[:1])
        v0 = (W[0, 1] @ y) + sigma * S[0, 1, 1].sqrt() * torch.randn(n, 1, generator=gen, dtype=torch.float64)

        def drift(x, v, t):
            G, cx, cv = momentum_drift_weights(pins, t[:1])
            return G[0] @ y - cx[0] * x - cv[0] * v
    else:
        v0 = None

        def drift(x, v, t):
            k = int(torch.searchsorted(pins, t[:1], right=True)[0] - 1)
            k = min(k, len(pins) - 2)
            return (y[k + 1] - x) / (pins[k + 1] - t[0]).clamp_min(1e-3)
    xs, _ = simulate_paths(drift, x0, v0, grid, sigma, gen)
    for tp, yp in zip(pins[1:], y[1:]):
        at = xs[int((grid - tp).abs().argmin())]
        assert abs(float(at.mean()) - float(yp)) < 0.03 and float(at.std()) < 0.08
    tm = torch.tensor([2.2], dtype=torch.float64)
    chain = y.expand(n, -1)[..., None].float()
    x_b, _, _, _ = bridge.sample(chain, tm.expand(n), torch.Generator().manual_seed(1))
    at = xs[int((grid - 2.2).abs().argmin())]
    assert abs(float(at.mean()) - float(x_b.mean())) < 0.04
    assert abs(float(at.std()) / float(x_b.std()) - 1) < 0.06


def test_first_order_bridge_is_the_brownian_bridge_and_sigma_zero_is_ot_cfm():
    pins = torch.tensor([0.0, 1.0, 3.0])
    chain = torch.tensor([[[0.0], [1.0], [5.0]]]).expand(20000, -1, -1)
    t = torch.full((20000,), 2.0)
    x, _, u, _ = MultiMarginalBridge(pins, "first_order", 0.4).sample(chain, t, torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - 3.0) < 0.01  # halfway from 1 to 5
    assert abs(float(x.var()) - 0.16 * 0.5 * 0.5 * 2.0) < 0.004  # sigma^2 s (1 - s) dt
    np.testing.assert_allclose(u.numpy(), ((5.0 - x) / 1.0).numpy(), rtol=1e-5)
    x0, _, u0, _ = MultiMarginalBridge(pins, "first_order", 0.0).sample(chain[:3], t[:3])
    np.testing.assert_allclose(x0.numpy(), 3.0, atol=1e-6)
    np.testing.assert_allclose(u0.numpy(), 2.0, atol=1e-6)  # the segment's constant velocity


def test_loss_weight_depends_on_time_only_and_vanishes_at_pins():
    b = MultiMarginalBridge([0.0, 1.0, 2.0], "momentum", 0.1)
    w = b.loss_weight(torch.tensor([0.5, 0.999999, 1.0 - 0.02, 1.5]))
    assert w[1] < 1e-3 and abs(float(w[2]) - 0.5) < 1e-6 and 0.9 < float(w[0]) < 1


def test_ot_chain_is_the_monotone_coupling_in_1d_and_an_assignment_in_2d():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(64, 1, generator=g) * s + m for s, m in ((1, 0), (2, 3), (0.5, -1)))
    chain = ot_chain([a, b, c])
    order = chain[:, 0, 0].argsort()
    assert torch.all(chain[order, 1, 0].diff() >= 0) and torch.all(chain[order, 2, 0].diff() >= 0)
    p, q = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g) + 1
    j = ot_permutation(p, q)
    cost = torch.cdist(p.double(), q.double()).pow(2).numpy()
    r, s = linear_sum_assignment(cost)
    assert abs(cost[np.arange(40), j.numpy()].sum() - cost[r, s].sum()) < 1e-9


def test_time_grid_holds_every_knot():
    g = time_grid([0.0, 0.5, 2.0, 1.3], 20)
    assert g[0] == 0 and g[-1] == 2 and all(bool((g - k).abs().min() < 1e-12) for k in (0.5, 1.3))
    assert bool((g.diff() > 0).all())


# ------------------------------------------------------------------------------------------------------------
# Metrics.
def test_w1_against_sorting_in_1d_and_assignment_in_2d():
    g = np.random.default_rng(0)
    a, b = g.standard_normal((300, 1)), g.standard_normal((300, 1)) * 2 + 1
    assert abs(w1(a, b) - np.abs(np.sort(a[:, 0]) - np.sort(b[:, 0])).mean()) < 1e-9
    a, b = g.standard_normal((80, 3)), g.standard_normal((80, 3)) + 0.5
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    r, c = linear_sum_assignment(cost)
    assert abs(w1(a, b) - cost[r, c].mean()) < 1e-9
    assert w1(a, a[:40]) > 0  # unequal sizes work


def test_mmd_zero_on_the_same_set_and_grows_with_a_shift():
    g = np.random.default_rng(1)
    a = g.standard_normal((200, 2))
    assert mmd(a, a) < 1e-6
    near, far = mmd(a + 0.1, a), mmd(a + 1.0, a)
    assert 0 < near < far


def test_sliced_w1_is_w1_in_1d_and_invariant_to_rotation():
    g = np.random.default_rng(2)
    a, b = g.standard_normal((500, 1)), g.standard_normal((500, 1)) + 1
    assert abs(sliced_w1(a, b) - w1(a, b)) < 0.02
    a2, b2 = g.standard_normal((2000, 2)), g.standard_normal((2000, 2)) * 1.5
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    assert abs(sliced_w1(a2 @ rot, b2 @ rot) - sliced_w1(a2, b2)) < 0.03


def test_mean_squared_acceleration_of_a_parabola():
    t = torch.linspace(0, 2, 41, dtype=torch.float64) ** 1.5 / 2 ** 0.5  # an uneven grid
    paths = (3.0 * t ** 2)[:, None, None].expand(-1, 5, 2)
    assert abs(mean_squared_acceleration(paths, t) - 2 * 36.0) < 1e-6  # |x''|^2 = 2 * 6^2


# ------------------------------------------------------------------------------------------------------------
# Loaders.
def _snaps(k=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Snapshots([0.0, 1.0, 2.5][:k], [torch.randn(10 + i, d, generator=g) for i in range(k)])


def test_layouts_round_trip(tmp_path):
    s = _snaps()
    save_snapshots(tmp_path / "a.npz", s)
    x = torch.cat(s.points).numpy()
    ts = np.concatenate([np.full(len(p), t) for t, p in zip(s.times, s.points)])
    np.savez(tmp_path / "b.npz", X=x, ts=ts, v=x * 2)
    np.savez(tmp_path / "c.npz", pcs=x, sample_labels=ts)
    with open(tmp_path / "d.csv", "w") as f:
        f.write("x,time,y\n" + "".join(f"{r[0]},{t},{r[1]}\n" for r, t in zip(x, ts)))
    for name in ("a.npz", "b.npz", "c.npz", "d.csv"):
        back = load_snapshots(tmp_path / name)
        assert back.times == s.times
        for p, q in zip(back.points, s.points):
            np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-6)
    v = load_snapshots(tmp_path / "b.npz").velocities
    np.testing.assert_allclose(v[1].numpy(), 2 * s.points[1].numpy(), rtol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("unsorted", "strictly increasing"), ("one", "at least 2 snapshots"), ("dims", "one dimension"),
    ("nan", "NaN"), ("missing", "x_2"), ("keys", "unknown npz layout")])
def test_bad_files_get_clear_errors(tmp_path, case, message):
    s = _snaps()
    arrays = {"times": np.array(s.times), **{f"x_{k}": p.numpy() for k, p in enumerate(s.points)}}
    if case == "unsorted":
        arrays["times"] = np.array([0.0, 2.0, 1.0])
    elif case == "one":
        arrays = {"times": np.array([0.0]), "x_0": s.points[0].numpy()}
    elif case == "dims":
        arrays["x_1"] = np.zeros((5, 3))
    elif case == "nan":
        arrays["x_1"][2, 0] = np.nan
    elif case == "missing":
        del arrays["x_2"]
    elif case == "keys":
        arrays = {"data": np.zeros((3, 2))}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_snapshots(tmp_path / "bad.npz")


def test_missing_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.init_args.path"):
        TrajectoryDataModule("file", path=str(tmp_path / "none.npz"))


@pytest.mark.parametrize("holdout", [[0], [3], [1, 1]])
def test_holdout_must_be_intermediate_and_distinct(holdout):
    with pytest.raises(ValueError, match="intermediate|repeated"):
        TrajectoryDataModule("semicircle", holdout=holdout, n_per_snapshot=50)


def test_pca_whitening_is_fitted_on_the_training_snapshots(tmp_path):
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(6, 6, generator=g)
    s = Snapshots([0.0, 1.0, 2.0, 3.0], [torch.randn(300, 6, generator=g) @ mix + 5 * i for i in range(4)])
    save_snapshots(tmp_path / "s.npz", s)
    dm = TrajectoryDataModule("file", path=str(tmp_path / "s.npz"), pca=3, whiten=True, holdout=[2])
    out = dm.snapshots()
    assert dm.data_dim == 3 and out.dim == 3
    train = torch.cat([out.points[i] for i in dm.train_indices]).double()
    np.testing.assert_allclose(torch.cov(train.T).numpy(), np.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="more components"):
        TrajectoryDataModule("file", path=str(tmp_path / "s.npz"), pca=7)


def test_toys_have_dmsb_shapes():
    for name, times in (("petal", [0, 0.5, 1, 1.5, 2]), ("gmm", [0, 4 / 3, 8 / 3, 4]), ("semicircle", [0, 1, 2, 3])):
        s = make_toy_snapshots(name, 400, 0)
        assert np.allclose(s.times, times) and all(p.shape == (400, 2) for p in s.points)
    gmm = make_toy_snapshots("gmm", 4000, 0)
    radii = [float(p.norm(dim=1).mean()) for p in gmm.points]
    assert radii[0] < 1 and radii[3] < 1 and 3.5 < radii[1] < 4.5 and 3.5 < radii[2] < 4.5
    petal = make_toy_snapshots("petal", 2000, 0)
    extent = [float(p.abs().max(1).values.mean()) for p in petal.points]
    assert all(a < b for a, b in zip(extent, extent[1:]))  # the rings move outward


def test_ot_interpolation_against_an_assignment_solver():
    """Equal sizes: the pairs are scipy's optimal assignment; unequal sizes: pairs drawn from the plan keep its
    marginals' means; the ends of the interpolation are the two sets."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)), rng.normal(2.0, 0.5, size=(40, 3))
    rows, cols = linear_sum_assignment(((a[:, None] - b[None]) ** 2).sum(-1))
    mid = ot_interpolation(a, b, 0.3)
    assert np.allclose(np.sort(mid, 0), np.sort(0.7 * a[rows] + 0.3 * b[cols], 0))
    assert np.allclose(np.sort(ot_interpolation(a, b, 1.0), 0), np.sort(b, 0))
    big = rng.normal(-1.0, 1.0, size=(3000, 3))
    out = ot_interpolation(a, big, 0.5, n=4000, seed=1)
    assert out.shape == (4000, 3)
    assert np.allclose(out.mean(0), 0.5 * a.mean(0) + 0.5 * big.mean(0), atol=0.05)
    with pytest.raises(ValueError, match="fraction"):
        ot_interpolation(a, b, 1.5)
    with pytest.raises(ValueError, match="dimensions 3 and 2"):
        ot_interpolation(a, b[:, :2], 0.5)


def test_bad_model_options_get_clear_errors():
    from vsmd.models import TrajectoryBridge
    with pytest.raises(ValueError, match="'marginal' for dynamics momentum only"):
        TrajectoryBridge(dynamics="first_order", sampler="marginal")
    with pytest.raises(ValueError, match="sampler must be one of"):
        TrajectoryBridge(sampler="heun")
    with pytest.raises(ValueError, match="sigma_min is the first-order"):
        TrajectoryBridge(dynamics="momentum", sigma_min=0.1)


# ------------------------------------------------------------------------------------------------------------
# A trained model.
def test_trained_momentum_bridge_reproduces_gaussian_snapshots():
    """1-D Gaussian snapshots N(m_k, s_k^2): OT chains them monotonically, x_k = m_k + s_k z, so the exact sigma-0
    bridge is x(t) = m(t) + s(t) z with m, s the natural splines through the training means and sds. The trained
    bridge, simulated from the first snapshot, matches the training snapshots and that prediction at the held-out
    time."""
    from vsmd.models import TrajectoryBridge
    torch.manual_seed(0)
    times, means, sds = [0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 3.0, 2.0], [1.0, 0.6, 0.8, 1.2]
    g = torch.Generator().manual_seed(0)
    sets = [m + s * torch.randn(2000, 1, generator=g) for m, s in zip(means, sds)]
    model = TrajectoryBridge(data_dim=1, dynamics="momentum", sigma=0.0, hidden=64, depth=2, lr=3e-3, ema_decay=0)
    model._set_times([0.0, 1.0, 3.0], times)  # snapshot 2 held out
    opt = model.configure_optimizers()
    steps = 800  # a cosine-decayed lr: the end weights average out minibatch noise (600 steps at a fixed lr: 0.17 off)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    train = [sets[0], sets[1], sets[3]]
    for step in range(steps):
        batch = [s[torch.randint(len(s), (256,), generator=g)] for s in train]
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    pins = [0.0, 1.0, 3.0]
    means[2] = float(CubicSpline(pins, [means[i] for i in (0, 1, 3)], bc_type="natural")(2.0))
    sds[2] = float(CubicSpline(pins, [sds[i] for i in (0, 1, 3)], bc_type="natural")(2.0))
    for sampler in ("phase", "marginal"):  # the phase-space dynamics, and the ODE on E[v | x, t]
        model.hparams.sampler = sampler
        xs, grid, nfe = model.trajectories(sets[0][:2000], times, steps=120)
        assert nfe == (121 if sampler == "phase" else 240)
        for t, m, s in zip(times[1:], means[1:], sds[1:]):
            x = xs[int((grid - t).abs().argmin())]
            assert abs(float(x.mean()) - m) < 0.15, (sampler, t, float(x.mean()), m)
            assert abs(float(x.std()) - s) < 0.15, (sampler, t, float(x.std()), s)


# ------------------------------------------------------------------------------------------------------------
# Through the CLI.
def _cli(args):
    from vsmd.cli import main
    main(args)


@pytest.mark.slow
def test_fit_test_predict_on_petal_with_a_holdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(pytest.importorskip("pathlib").Path(__file__).parents[1] / "configs/petal.yaml"),
              "--trainer.enable_progress_bar", "false", "--data.init_args.n_per_snapshot", "200",
              "--data.init_args.holdout", "[2]", "--model.init_args.hidden", "32",
              "--model.init_args.sample_steps", "20"]
    _cli(["fit", *common, "--trainer.max_steps", "30"])
    ckpt = tmp_path / "runs/petal/version_0/checkpoints/last.ckpt"
    assert ckpt.is_file()
    _cli(["test", *common, "--ckpt_path", str(ckpt)])
    report = json.loads((tmp_path / "runs/petal/version_1/test_metrics.json").read_text())
    m = report["metrics"]
    assert {"w1_t1", "w1_holdout_t2", "baseline_w1_holdout_t2", "baseline_ot_interp_w1_holdout_t2", "mmd_holdout_t2",
            "sliced_w1_t4",
            "mean_squared_acceleration"} <= m.keys()
    assert all(math.isfinite(v) for v in m.values())
    assert report["pins"] == [0.0, 0.5, 1.5, 2.0] and report["holdout"] == [2]
    assert (tmp_path / "runs/petal/version_1/test_trajectories.png").is_file()
    _cli(["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.times", "[0.25, 1.0, 1.75]",
          "--data.init_args.n_predict", "50"])
    out = np.load(tmp_path / "runs/petal/version_2/samples.npz")
    assert out["samples"].shape == (3, 50, 2) and np.allclose(out["times"], [0.25, 1.0, 1.75])
    with pytest.raises(SystemExit):  # outside the trained span: a clear error, not an extrapolation
        _cli(["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.times", "[3.0]"])
