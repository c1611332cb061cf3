"""Issue 12, first step: the process on the data's principal axes (rotation "pca"), a full A = Q diag Q^T."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_cli import ROOT, tiny

from vsmd.cli import main
from vsmd.datamodules import Toy2DDataModule
from vsmd.datamodules.toy import rotation_matrix
from vsmd.diffusion import SAStats, VariationalScoreSA, forward_loss, make_process, simulate
from vsmd.diffusion.rotation import Rotation, skew
from vsmd.models import ToyVSMD


def _random_rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_the_rotated_kernel_is_the_full_a_sde_against_matrix_exp_and_van_loan() -> None:
    """A = Q diag(alpha) Q^T, A_v = Q diag(nu) Q^T (d = 2): the 4x4 drift -beta/2 [[0, -I], [Q W Q^T, Q C Q^T]]
    in the data's coordinates. Its mean map is matrix_exp, its covariance Van Loan's block exponential; both
    must equal the per-dimension 2x2 kernels of the frame, turned by Q (x and v alike)."""
    beta, t, v0 = 5.0, 0.375, 1.0  # t exact in float32
    p = make_process("vsuld", (2,), beta=beta, beta_schedule="constant", damping=0.7, v0_var=v0)
    p.rho.data = torch.tensor([1.3, -0.4])
    q = rotation_matrix(30.0)
    omega, c, _ = p.drift_params()
    eye, zero = torch.eye(2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    f = -0.5 * beta * torch.cat([torch.cat([zero, -eye], 1),
                                 torch.cat([q @ torch.diag(omega) @ q.T, q @ torch.diag(c) @ q.T], 1)])
    gg = torch.zeros(4, 4, dtype=torch.float64)
    gg[2:, 2:] = beta * p.gamma * eye  # the noise sqrt(beta gamma) dW on v: rotation-invariant
    phi = torch.linalg.matrix_exp(f * t)
    vl = torch.linalg.matrix_exp(torch.cat([torch.cat([f, gg], 1), torch.cat([0 * f, -f.T], 1)]) * t)
    sigma0 = torch.diag(torch.tensor([0.0, 0.0, v0, v0], dtype=torch.float64))
    cov = phi @ sigma0 @ phi.T + vl[:4, 4:] @ phi.T  # Van Loan: int e^{F(t-s)} GG^T e^{-F^T s} ds e^{F^T t}
    k = {n: z.flatten() for n, z in p.coefficients(torch.tensor([t]), dtype=torch.float64, prior=True).items()}
    big_q = torch.block_diag(q, q)

    def turned(a: torch.Tensor, b: torch.Tensor, cc: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return big_q @ torch.cat([torch.cat([torch.diag(a), torch.diag(b)], 1),
                                  torch.cat([torch.diag(cc), torch.diag(d)], 1)]) @ big_q.T

    torch.testing.assert_close(turned(k["p11"], k["p12"], k["p21"], k["p22"]), phi, rtol=1e-10, atol=1e-12)
    low = turned(k["lxx"], 0 * k["lxx"], k["lvx"], k["lvv"])  # Q-turned Cholesky factor of the frame's kernel
    torch.testing.assert_close(low @ low.T, cov, rtol=1e-8, atol=1e-10)


def _paths(name: str, d: int, zb_mode: str):
    """A process with a non-trivial A and backward paths under a made-up (non-exact) score."""
    p = make_process(name, (d,), beta=4.0, damping=0.7 if name == "vsuld" else None)
    p.rho.data = torch.linspace(-0.5, 1.0, d)
    w = torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d
    traj = simulate(p, lambda a, t: -0.7 * p.split(a)[-1] @ w, 64, 12, torch.Generator().manual_seed(2),
                    sampler="heun")
    return p, traj


@pytest.mark.parametrize("name", ["vsuld", "vsdm"])
@pytest.mark.parametrize("zb_mode", ["fbsde", "full_score"])
def test_the_sa_gradients_with_a_rotation_against_autograd(name: str, zb_mode: str) -> None:
    """The stage loss in a turned frame from the full moments, and its analytic gradients in rho and in the
    rotation's angles (through Q = Q0 exp(K)), against autograd of the loss evaluated on the paths themselves."""
    d = 3
    p, traj = _paths(name, d, zb_mode)
    stats = SAStats.from_trajectories(p, traj, zb_mode, zeta=0.8, full=True)
    q_sim = _random_rotation(d, 3)
    rot = Rotation(d)
    rot.reset(_random_rotation(d, 4))
    rot.angles.data = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    r = q_sim.T @ rot.matrix()
    alpha, nu = p.variational_scores()
    g_angles = rot.grad(q_sim @ stats.rotation_grad(r, alpha, nu))
    g_rho = p.rho_grad(*stats.rotated(r).grad(alpha, nu))

    rho = p.rho.detach().double().clone().requires_grad_(True)
    angles = rot.angles.detach().clone().requires_grad_(True)
    p.rho.data = rho.detach().float()
    if p.momentum:
        omega, _, kappa = p.drift_params(rho)
        a_x, a_v = (1 - omega) / (2 * p.gamma), (1 - kappa) / 2
    else:
        a_x, a_v = (1 - rho.exp()) / 2, None
    loss = forward_loss(p, traj, a_x, a_v, zb_mode, zeta=0.8, r=q_sim.T @ rot.matrix(angles))
    loss.backward()
    torch.testing.assert_close(stats.rotated(r).loss(alpha, nu), loss.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_angles, angles.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g_rho.double(), rho.grad, rtol=1e-6, atol=1e-8)


def test_rotation_parameters_keep_q_orthogonal_and_start_at_the_base() -> None:
    rot = Rotation(4)
    base = _random_rotation(4, 0)
    rot.reset(base)
    torch.testing.assert_close(rot.matrix(), base, rtol=0, atol=0)  # angles 0 is the base exactly
    rot.angles.data = torch.linspace(-2.0, 3.0, 6, dtype=torch.float64)
    q = rot.matrix()
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    k = skew(rot.angles, 4)
    torch.testing.assert_close(k, -k.T, rtol=0, atol=0)
    with pytest.raises(ValueError, match="orthogonal 4 x 4"):
        rot.reset(2 * base)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        Rotation(1)


def test_a_learned_rotation_at_q_identity_is_the_diagonal_sa_exactly() -> None:
    """Q = I: the full moments' diagonals are the diagonal moments, and a one-step stage moves rho exactly as
    without the rotation."""
    p, traj = _paths("vsuld", 2, "fbsde")
    full = SAStats.from_trajectories(p, traj, "fbsde", full=True).rotated(torch.eye(2, dtype=torch.float64))
    diag = SAStats.from_trajectories(p, traj, "fbsde")
    for key in ("mxx", "mxv", "mvv", "bx", "bv"):
        torch.testing.assert_close(getattr(full, key), getattr(diag, key), rtol=1e-12, atol=1e-14)
    rhos = []
    for rot in (None, Rotation(2)):
        p.rho.data = torch.tensor([0.2, 1.1])
        sa = VariationalScoreSA(p, n_steps=1, n_paths=32, n_points=8, zb_mode="fbsde", sampler="heun", rotation=rot)
        sa.stage(lambda a, t: -0.5 * p.split(a)[1], torch.Generator().manual_seed(0))
        rhos.append(p.rho.detach().clone())
    torch.testing.assert_close(rhos[0], rhos[1], rtol=0, atol=1e-7)


def test_learned_rotation_at_identity_samples_and_trains_like_no_rotation() -> None:
    """Q = I in the module: the same score loss and the same samples (every sampler) as rotation none."""
    models = []
    for rotation in ("none", "learned"):
        torch.manual_seed(0)
        models.append(ToyVSMD(hidden=16, depth=1, process="vsuld", sample_steps=6, rotation=rotation,
                              ema_decay=0.0))
    a, b = models
    assert b.frame_rotation is not None and torch.equal(b.frame, torch.eye(2))
    x0 = torch.randn(64, 2)
    losses = []
    for m in models:
        torch.manual_seed(1)
        losses.append(m.score_loss(x0, m.net))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for sampler in ("heun", "em", "sscs", "ei"):
        torch.testing.assert_close(b.generate(32, sampler=sampler, seed=3).state,
                                   a.generate(32, sampler=sampler, seed=3).state, rtol=0, atol=0)


def test_rotate_turns_the_toy_data_and_bad_angles_are_refused() -> None:
    plain = Toy2DDataModule("spiral", [1.0, 8.0], seed=3).fixed_set("test")
    turned = Toy2DDataModule("spiral", [1.0, 8.0], seed=3, rotate=45).fixed_set("test")
    torch.testing.assert_close(turned.double(), plain.double() @ rotation_matrix(45).T, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="rotate must be a finite angle"):
        Toy2DDataModule(rotate=float("nan"))


def test_principal_axes_against_the_rotation_of_the_data() -> None:
    """The first axis is the stretch direction (0, 1) turned by 45 degrees, i.e. (-sin 45, cos 45)."""
    x = Toy2DDataModule("spiral", [1.0, 8.0], seed=0, rotate=45).fixed_set("test").double()
    q = ToyVSMD.principal_axes(torch.cov(x.T))
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    stretch = rotation_matrix(45) @ torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert abs(float(q[:, 0] @ stretch)) > 0.999
    frame_cov = q.T @ torch.cov(x.T) @ q
    assert abs(float(frame_cov[0, 1])) < 1e-9 * float(frame_cov[0, 0]) and frame_cov[0, 0] > 20 * frame_cov[1, 1]


def test_rotation_is_refused_where_it_is_not_supported() -> None:
    from vsmd.models import TimeSeriesVSMD

    with pytest.raises(ValueError, match="rotation must be one of"):
        ToyVSMD(rotation="full")
    from vsmd.models import ImageVSMD

    with pytest.raises(ValueError, match="vector data .* only"):
        ImageVSMD(rotation="pca")
    with pytest.raises(ValueError, match="refined by the SA stages, which process 'cld'"):
        ToyVSMD(process="cld", rotation="learned")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ToyVSMD(data_dim=1, rotation="learned")
    TimeSeriesVSMD(target_dim=8, rotation="learned")  # Q is D x D over the series


def _fit(rotate: float, frame: torch.Tensor, steps: int = 30, rotation: str = "pca") -> ToyVSMD:
    """A short seeded fit on spiral-8Y turned by ``rotate`` degrees, with the frame Q set to ``frame``."""
    pl.seed_everything(0)
    model = ToyVSMD(hidden=32, depth=1, process="vsuld", damping=0.7, sa_every=10, sa_steps=3, sa_paths=32,
                    sa_points=10, sample_steps=10, rotation=rotation, ema_decay=0.0)
    model.frame.copy_(frame.float())
    if model.frame_rotation is not None:
        model.frame_rotation.reset(frame.double())
    model.data_start.frame = True
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, limit_val_batches=0,
                         enable_model_summary=False, enable_checkpointing=False, deterministic=True)
    trainer.fit(model, datamodule=Toy2DDataModule("spiral", [1.0, 8.0], batch_size=128, rotate=rotate))
    return model


@pytest.mark.parametrize("rotation", ["pca", "learned"])
def test_rotating_the_data_and_the_frame_together_changes_nothing(rotation: str) -> None:
    """Invariance: data turned by R and Q turned by R give the same process-frame data, so the same training,
    the same A (and learned angles), and samples turned by R."""
    r = rotation_matrix(30)
    a, b = _fit(0.0, torch.eye(2, dtype=torch.float64), rotation=rotation), _fit(30.0, r, rotation=rotation)
    torch.testing.assert_close(b.process.rho, a.process.rho, rtol=1e-3, atol=1e-4)
    if rotation == "learned":
        assert a.frame_rotation.angles.abs().max() > 1e-4  # the SA did turn the frame
        torch.testing.assert_close(b.frame_rotation.angles, a.frame_rotation.angles, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(b.frame.double(), r @ a.frame.double(), rtol=0, atol=1e-5)
    xa = a.process.split(a.generate(256, seed=5).state)[0].double()
    xb = b.process.split(b.generate(256, seed=5).state)[0].double()
    torch.testing.assert_close(xb, xa @ r.T, rtol=1e-3, atol=2e-2)


def test_fit_sets_the_frame_from_the_data_and_resume_keeps_it(tmp_path: Path, capsys) -> None:
    cfg = ["--config", str(ROOT / "configs" / "spiral8y_rot45.yaml")]
    args = [*cfg, *tiny(tmp_path)[2:], "--model.init_args.rotation", "pca"]  # rot45, shrunk like tiny() shrinks spiral8y
    main(["fit", *args, "--trainer.max_steps", "20"])
    assert "rotation pca: the process runs on the principal axes of the data" in capsys.readouterr().out
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    first = torch.load(runs[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    q = first["state_dict"]["frame"].double()
    stretch = rotation_matrix(45) @ torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert abs(float(q[:, 0] @ stretch)) > 0.99
    main(["fit", *args, "--trainer.max_steps", "30", "--ckpt_path", str(runs[-1] / "checkpoints" / "last.ckpt")])
    assert "rotation pca" not in capsys.readouterr().out  # not recomputed on resume
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    again = torch.load(runs[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert again["global_step"] == 30 and torch.equal(again["state_dict"]["frame"], first["state_dict"]["frame"])
    main(["test", *args, "--ckpt_path", str(runs[-1] / "checkpoints" / "last.ckpt")])
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    report = json.loads((runs[-1] / "test_metrics.json").read_text())
    torch.testing.assert_close(torch.tensor(report["frame"]), again["state_dict"]["frame"])


def test_a_learned_rotation_resumes_exactly_and_is_reported(tmp_path: Path, capsys) -> None:
    """The frame, the angles and their Adam moments come back from the checkpoint bit for bit; the run continues
    refining them, and test reports the learned Q."""
    args = ["--config", str(ROOT / "configs" / "spiral8y_rot45.yaml"), *tiny(tmp_path)[2:],
            "--model.init_args.rotation", "learned"]
    main(["fit", *args, "--trainer.max_steps", "20"])
    assert "the SA stages refine them" in capsys.readouterr().out
    ckpt = sorted((tmp_path / "spiral8y_rot45").glob("version_*/checkpoints/last.ckpt"))[-1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    angles = saved["state_dict"]["frame_rotation.angles"]
    assert angles.dtype == torch.float64 and angles.abs().max() > 0  # one stage at step 10 turned the frame
    assert len(saved["vsmd_sa"]["optimizer"]["state"]) == 2  # Adam's moments of rho and of the angles
    model = ToyVSMD.load_from_checkpoint(ckpt, map_location="cpu")
    assert torch.equal(model.frame_rotation.angles, angles) and torch.equal(model.frame, saved["state_dict"]["frame"])
    torch.testing.assert_close(model.frame_rotation.matrix().float(), model.frame, rtol=0, atol=1e-7)
    main(["fit", *args, "--trainer.max_steps", "40", "--ckpt_path", str(ckpt)])
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumed = torch.load(runs[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["vsmd_sa"]["stages"] == 3 and not torch.equal(resumed["state_dict"]["frame_rotation.angles"],
                                                                  angles)
    main(["test", *args, "--ckpt_path", str(runs[-1] / "checkpoints" / "last.ckpt")])
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    report = json.loads((runs[-1] / "test_metrics.json").read_text())
    torch.testing.assert_close(torch.tensor(report["frame"]), resumed["state_dict"]["frame"])
    main(["predict", *args, "--ckpt_path", str(runs[-1].parent / runs[-2].name / "checkpoints" / "last.ckpt")])
    runs = sorted((tmp_path / "spiral8y_rot45").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    samples = np.load(runs[-1] / "samples.npz")["samples"]
    assert samples.shape == (50, 2) and np.isfinite(samples).all() and (runs[-1] / "samples.png").is_file()
