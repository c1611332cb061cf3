"""Issue 12, first step: the process on the data's principal axes (rotation "pca"), a full A = Q diag Q^T."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_cli import ROOT, tiny

from vsmd.cli import main
from vsmd.datamodules import Toy2DDataModule
from vsmd.datamodules.toy import rotation_matrix
from vsmd.models import ToyVSMD


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
    with pytest.raises(ValueError, match="toy model .* only so far"):
        TimeSeriesVSMD(target_dim=8, rotation="pca")


def _fit(rotate: float, frame: torch.Tensor, steps: int = 30) -> ToyVSMD:
    """A short seeded fit on spiral-8Y turned by ``rotate`` degrees, with the frame Q set to ``frame``."""
    pl.seed_everything(0)
    model = ToyVSMD(hidden=32, depth=1, process="vsuld", damping=0.7, sa_every=10, sa_steps=3, sa_paths=32,
                    sa_points=10, sample_steps=10, rotation="pca", ema_decay=0.0)
    model.frame.copy_(frame.float())
    model._frame_initialised = True
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, limit_val_batches=0,
                         enable_model_summary=False, enable_checkpointing=False, deterministic=True)
    trainer.fit(model, datamodule=Toy2DDataModule("spiral", [1.0, 8.0], batch_size=128, rotate=rotate))
    return model


def test_rotating_the_data_and_the_frame_together_changes_nothing() -> None:
    """Invariance: data turned by R and Q turned by R give the same process-frame data, so the same training,
    the same A, and samples turned by R."""
    r = rotation_matrix(30)
    a, b = _fit(0.0, torch.eye(2, dtype=torch.float64)), _fit(30.0, r)
    torch.testing.assert_close(b.process.rho, a.process.rho, rtol=1e-3, atol=1e-4)
    xa = a.process.split(a.generate(256, seed=5).state)[0].double()
    xb = b.process.split(b.generate(256, seed=5).state)[0].double()
    torch.testing.assert_close(xb, xa @ r.T, rtol=1e-3, atol=2e-2)


def test_fit_sets_the_frame_from_the_data_and_resume_keeps_it(tmp_path: Path, capsys) -> None:
    cfg = ["--config", str(ROOT / "configs" / "spiral8y_rot45.yaml")]
    args = [*cfg, *tiny(tmp_path)[2:]]  # the rot45 config, shrunk like tiny() shrinks spiral8y
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
