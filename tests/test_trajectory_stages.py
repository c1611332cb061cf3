"""DMSB's stages in the trajectory model: the backward policy's bridge (the mirrored clock) against Nelson's relation,
the velocity score's denoising target, Langevin velocity sampling with an exact score, the OT projection onto a
marginal, the stage schedule, and a resume in the middle of a stage that continues it exactly."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from vsmd.datamodules.trajectory import TrajectoryDataModule
from vsmd.diffusion.trajectory import MultiMarginalBridge, momentum_drift_weights, ot_project, spline_kriging
from vsmd.diffusion.trajectory_sampling import langevin_velocity
from vsmd.models import TrajectoryBridge

PINS = torch.tensor([0.0, 0.5, 1.2, 1.5, 2.0], dtype=torch.float64)
TIMES = torch.tensor([0.1, 0.5, 0.77, 1.3, 1.99], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------
def test_reversed_bridge_is_the_same_law_seen_backwards():
    """Kriging on the mirrored pins at the mirrored time gives the same mean position, the negated mean velocity and
    the covariance with its x-v entry negated: the reference is reversible with the velocity flipped."""
    bridge = MultiMarginalBridge(PINS, "momentum", 0.3)
    rev = bridge.reversed()
    torch.testing.assert_close(rev.times, torch.tensor([0.0, 0.5, 0.8, 1.5, 2.0], dtype=torch.float64))
    W, S = spline_kriging(PINS, TIMES)
    Wr, Sr = spline_kriging(rev.times, bridge.mirror(TIMES))
    torch.testing.assert_close(Wr[:, 0].flip(1), W[:, 0], atol=1e-9, rtol=0)
    torch.testing.assert_close(-Wr[:, 1].flip(1), W[:, 1], atol=1e-9, rtol=0)
    flip = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(Sr * flip, S, atol=1e-9, rtol=0)


def test_forward_and_backward_drifts_satisfy_nelsons_relation():
    """a_f(x, v, t) - a_b(x, -v, t_0 + t_K - t) = sigma^2 grad_v log p_t(x, v | pins): the two policies' exact drifts
    on one chain against the score of the kriging law (independent: the Gaussian's precision), at random states."""
    y = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    times = torch.tensor([0.1, 0.77, 1.3, 1.7, 1.99], dtype=torch.float64)  # off the pins (S is singular there)
    bridge = MultiMarginalBridge(PINS, "momentum", 1.0)
    rev = bridge.reversed()
    g = torch.Generator().manual_seed(0)
    W, S = spline_kriging(PINS, times)
    mean = W @ y  # (B, 2)
    state = mean + torch.randn(len(times), 2, generator=g, dtype=torch.float64)
    x, v = state[:, 0], state[:, 1]
    G, cx, cv = momentum_drift_weights(PINS, times)
    a_f = G @ y - cx * x - cv * v
    Gr, cxr, cvr = momentum_drift_weights(rev.times, bridge.mirror(times))
    a_b = Gr @ y.flip(0) - cxr * x - cvr * (-v)
    score_v = -torch.linalg.solve(S, (state - mean)[..., None])[:, 1, 0]
    torch.testing.assert_close(a_f - a_b, score_v, atol=1e-7, rtol=1e-7)


def test_the_exact_backward_drift_simulated_from_the_last_pin_is_the_bridge_backwards():
    """Monte Carlo of the reversed bridge's pinned SDE (its closed-form drift on the mirrored clock, started from its
    law at the last pin with the velocity negated): the paths hit every pin, and at t = 2.2 x has the forward
    bridge's mean and sd."""
    from vsmd.diffusion.trajectory_sampling import simulate_paths
    sigma, n = 0.5, 4000
    pins = torch.tensor([0.0, 1.0, 1.5, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 1.0, -1.0], dtype=torch.float64)
    bridge = MultiMarginalBridge(pins, "momentum", sigma)
    rev = bridge.reversed()
    gen = torch.Generator().manual_seed(0)
    W, S = spline_kriging(rev.times, rev.times[:1])
    w0 = W[0, 1] @ y.flip(0) + sigma * S[0, 1, 1].sqrt() * torch.randn(n, 1, generator=gen, dtype=torch.float64)

    def drift(x, w, s):
        G, cx, cv = momentum_drift_weights(rev.times, s[:1])
        return G[0] @ y.flip(0) - cx[0] * x - cv[0] * w
    grid = torch.linspace(0, 3, 3001, dtype=torch.float64)
    xs, _ = simulate_paths(drift, torch.full((n, 1), -1.0, dtype=torch.float64), w0, grid, sigma, gen)
    for tp, yp in zip(pins[:-1], y[:-1]):
        at = xs[int((grid - bridge.mirror(tp)).abs().argmin())]
        assert abs(float(at.mean()) - float(yp)) < 0.03 and float(at.std()) < 0.08
    x_b = bridge.sample(y.expand(n, -1)[..., None], torch.full((n,), 2.2, dtype=torch.float64),
                        torch.Generator().manual_seed(1))[0]
    at = xs[int((grid - bridge.mirror(2.2)).abs().argmin())]
    assert abs(float(at.mean()) - float(x_b.mean())) < 0.04
    assert abs(float(at.std()) / float(x_b.std()) - 1) < 0.06


def test_velocity_noise_is_the_noise_of_v_given_x():
    """v - E[v | x, chain] = scale * eps exactly, with E[v | x] from the kriging covariance (S_vx / S_xx) and scale
    the bridge's velocity_spread at that time."""
    bridge = MultiMarginalBridge(PINS, "momentum", 0.4)
    chain = torch.randn(len(TIMES), len(PINS), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, v, _, _, eps, scale = bridge.sample(chain, TIMES, torch.Generator().manual_seed(2), velocity_noise=True)
    W, S = spline_kriging(PINS, TIMES)
    mean = torch.einsum("bsn,bnd->bsd", W, chain)
    slope = torch.where(S[:, 0, 0] > 1e-12, S[:, 1, 0] / S[:, 0, 0].clamp_min(1e-12), 0)  # at a pin x is fixed
    cond = mean[:, 1] + slope[:, None] * (x - mean[:, 0])
    torch.testing.assert_close(v - cond, scale[:, None] * eps, atol=1e-7, rtol=0)  # the 1e-12 jitter by a pin
    for t, s in zip(TIMES.tolist(), scale.tolist()):
        assert abs(bridge.velocity_spread(t) / s - 1) < 1e-5
    with pytest.raises(ValueError, match="velocity_noise is for the momentum"):
        MultiMarginalBridge(PINS, "first_order", 0.4).sample(chain, TIMES, velocity_noise=True)


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_langevin_with_the_exact_score_samples_the_ula_stationary_law(ratio):
    """Target N(m, tau^2) with its exact score, the step's sd = ratio * tau, started far away: the chains reach
    ULA's stationary law, mean m and variance 2 tau^2 / (2 - eta ratio^2)."""
    n, m, tau, eta = 20_000, 1.5, 0.8, 0.05
    v0 = torch.full((n, 1), -3.0, dtype=torch.float64)
    v = langevin_velocity(lambda u: -(u - m) / tau ** 2, v0, ratio * tau, steps=int(40 / (eta * ratio ** 2)),
                          eta=eta, generator=torch.Generator().manual_seed(3))
    sd = math.sqrt(2 * tau ** 2 / (2 - eta * ratio ** 2))
    assert abs(float(v.mean()) - m) < 4 * sd / math.sqrt(n)
    assert abs(float(v.std()) / sd - 1) < 0.015
    with pytest.raises(ValueError, match="0 < eta < 2"):
        langevin_velocity(lambda u: u, v0, 1.0, steps=1, eta=2.5)


def test_ot_project_is_a_permutation_for_equal_sizes_and_balanced_otherwise():
    g = torch.Generator().manual_seed(4)
    target = torch.randn(300, 1, generator=g)
    points = 2 + 3 * torch.randn(300, 1, generator=g)
    out = ot_project(points, target, g)
    torch.testing.assert_close(out.sort(0).values, target.sort(0).values)  # exactly the data
    order = points[:, 0].argsort()
    assert bool((out[order, 0].diff() >= 0).all())  # in 1-D the OT map is monotone
    target2 = torch.randn(100, 2, generator=g)
    out2 = ot_project(torch.randn(200, 2, generator=g), target2, g)
    hits = (torch.cdist(out2, target2, compute_mode="donot_use_mm_for_euclid_dist") == 0).float()
    assert bool((hits.sum(1) == 1).all())  # every result is a data point
    assert bool((hits.sum(0) == 2).all())  # each data point taken twice: the projection has the data's law
    with pytest.raises(ValueError, match="ot_project needs"):
        ot_project(points, torch.randn(10, 2))


# ------------------------------------------------------------------------------------------------------------
def test_stage_plan_alternates_and_the_schedule_follows_the_steps():
    model = TrajectoryBridge(stages=3, stage_steps=10, ema_decay=0)
    assert model.stage_plan(0) == (None, ("forward", "backward"))
    assert model.stage_plan(1) == ("backward", ("forward",))
    assert model.stage_plan(2) == ("forward", ("backward",))
    assert [model.stage_at(s) for s in (0, 9, 10, 29, 30, 500)] == [0, 0, 1, 2, 3, 3]
    for bad in (dict(stages=-1), dict(stage_steps=0), dict(pool_size=1), dict(langevin_eta=0.0),
                dict(langevin_steps=3, dynamics="first_order"), dict(langevin_steps=3, sigma=0.0),
                dict(velocity_flow_steps=4, dynamics="first_order"), dict(velocity_flow_steps=-1)):
        with pytest.raises(ValueError):
            TrajectoryBridge(**bad)


def _fit(model, dm, steps, tmp_path, ckpt_path=None, every=None):
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1,
                                              filename="{step}")] if every else []
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=bool(every), callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def _small(**kw):
    torch.manual_seed(0)
    return TrajectoryBridge(hidden=16, depth=1, sample_steps=20, stages=3, stage_steps=6, pool_size=100,
                            langevin_steps=3, **kw)


def test_stage_pools_hold_the_data_and_a_resume_mid_stage_continues_exactly(tmp_path):
    """Stages of 6 steps: each pool's simulated snapshots are exactly the data (a permutation of each training
    snapshot); the checkpoint at step 9 (inside stage 1) resumed to step 24 rebuilds nothing it had, builds stages 2
    and 3 at steps 12 and 18, and ends with the same pool, history and weights as the run that never stopped. So
    does the checkpoint at step 3, inside stage 0, where the batches come from the data stream: it stores the
    position of the next batch a step receives (3), not of the one Lightning had prefetched (4)."""
    dm = TrajectoryDataModule("petal", n_per_snapshot=100, batch_size=32, holdout=[2])
    straight = _fit(_small(), dm, 24, tmp_path / "a", every=3)
    hist = [(h["stage"], h["step"], h["simulated"], tuple(h["fits"])) for h in straight.stage_history]
    assert hist == [(1, 6, "backward", ("forward",)), (2, 12, "forward", ("backward",)),
                    (3, 18, "backward", ("forward",))]
    snaps = dm.snapshots("train")
    data = [snaps.points[i] for i in dm.train_indices]
    for k, points in enumerate(data):
        if k < len(data) - 1:  # the last snapshot is where the backward policy started: data by construction
            torch.testing.assert_close(straight.pool[:, k].sort(0).values[:, 0], points.sort(0).values[:, 0])
    ckpt = torch.load(tmp_path / "a" / "step=9.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["vsmd_trajectory"]["stage"] == 1 and len(ckpt["vsmd_trajectory"]["stage_history"]) == 1
    early = torch.load(tmp_path / "a" / "step=3.ckpt", map_location="cpu", weights_only=False)
    assert early["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"position": 3}]
    for step in (9, 3):
        resumed = _fit(_small(), dm, 24, tmp_path / f"b{step}", ckpt_path=tmp_path / "a" / f"step={step}.ckpt")
        assert [(h["stage"], h["step"], h["simulated"]) for h in resumed.stage_history] == [h[:3] for h in hist]
        if step == 9:  # stage 1 came from the checkpoint, not rebuilt
            assert resumed.stage_history[0] == straight.stage_history[0]
        torch.testing.assert_close(resumed.pool, straight.pool, atol=0, rtol=0)
        for key, value in straight.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0, msg=f"{key} from {step}")


def test_max_steps_before_the_last_stage_is_a_clear_error(tmp_path):
    dm = TrajectoryDataModule("petal", n_per_snapshot=50, batch_size=16)
    with pytest.raises(ValueError, match="ends before the last stage starts"):
        _fit(_small(), dm, 18, tmp_path)


def test_the_first_order_bridge_runs_stages_too(tmp_path):
    """The overdamped baseline alternates the same way (no velocity): the pool at stage 1 holds the data."""
    dm = TrajectoryDataModule("gmm", n_per_snapshot=60, batch_size=16)
    torch.manual_seed(0)
    model = TrajectoryBridge(dynamics="first_order", hidden=16, depth=1, sample_steps=12, stages=1, stage_steps=4,
                             pool_size=60)
    _fit(model, dm, 6, tmp_path)
    assert [h["simulated"] for h in model.stage_history] == ["backward"]
    snaps = dm.snapshots("train")
    torch.testing.assert_close(model.pool[:, 0].sort(0).values, snaps.points[0].sort(0).values)


def test_the_velocity_flow_keeps_a_bimodal_velocity_that_the_mean_collapses():
    """Chains from a point cloud at 0 to +2 or -2 at random (as simulated chains can be): v given x at t_0 is about
    +-2, half each. The conditional flow samples both modes; E[v | x] plus the spread gives about 0."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    model = TrajectoryBridge(data_dim=1, sigma=0.1, hidden=32, depth=2, lr=3e-3, ema_decay=0, velocity_flow_steps=20)
    model._set_times([0.0, 1.0], [0.0, 1.0])
    opt = model.configure_optimizers()
    for _ in range(600):
        x0 = 0.1 * torch.randn(256, 1, generator=g)
        x1 = 2 * torch.sign(torch.randn(256, 1, generator=g)) + 0.1 * torch.randn(256, 1, generator=g)
        loss, parts = model.loss(torch.stack([x0, x1], 1), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"drift", "velocity", "velocity_flow"} <= parts.keys()
    x = 0.1 * torch.randn(4000, 1, generator=g)
    with torch.no_grad():
        v = model.start_velocity(x, 0.0, g)
        model.fnet = None
        v_mean = model.start_velocity(x, 0.0, g)
    assert 0.4 < float((v > 0).float().mean()) < 0.6
    assert abs(float(v.abs().mean()) - 2) < 0.25
    assert float(v_mean.abs().mean()) < 0.6  # the mean collapses the two modes


@pytest.mark.slow
def test_stages_through_the_cli(tmp_path, monkeypatch):
    """vsmd fit with a stage and the velocity flow, then vsmd test: the report carries the stage history."""
    import json
    from pathlib import Path

    from vsmd.cli import main
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(Path(__file__).parents[1] / "configs/gmm.yaml"), "--trainer.enable_progress_bar",
              "false", "--data.init_args.n_per_snapshot", "100", "--model.init_args.hidden", "16",
              "--model.init_args.sample_steps", "12", "--model.init_args.stages", "1", "--model.init_args.stage_steps",
              "8", "--model.init_args.pool_size", "100", "--model.init_args.velocity_flow_steps", "4"]
    main(["fit", *common, "--trainer.max_steps", "12"])
    main(["test", *common, "--ckpt_path", "runs/gmm/version_0/checkpoints/last.ckpt"])
    report = json.loads((tmp_path / "runs/gmm/version_1/test_metrics.json").read_text())
    assert report["stages"] == 1 and [h["stage"] for h in report["stage_history"]] == [1]
    assert report["stage_history"][0]["step"] == 8 and report["stage_history"][0]["simulated"] == "backward"
