"""The Python API (issue 25): vsmd.load / fit / evaluate and Model.sample / forecast / trajectories, each the twin
of the command: the same checks, run folders, checkpoints and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import vsmd
from tsdata import synthetic_series  # tests/tsdata.py
from vsmd.checkpointing import CheckpointError
from vsmd.cli import main
from vsmd.datamodules import VectorDataModule
from vsmd.metrics import crps_sum
from vsmd.model import Model

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def trainer(save_dir: Path, steps: int) -> dict:
    return {"max_steps": steps, **QUIET, "logger": {"init_args": {"save_dir": str(save_dir)}}}


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> tuple[Model, Path]:
    """A 5-D CSV (one column around 100) and 3 steps of a tiny ToyVSMD on it, through vsmd.fit."""
    tmp = tmp_path_factory.mktemp("vectors")
    g = np.random.default_rng(0)
    x = g.standard_normal((300, 5)) @ np.diag([1.0, 2.0, 5.0, 0.5, 10.0]) + [0, 1, 2, 3, 100]
    csv = tmp / "measurements.csv"
    pd.DataFrame(x, columns=["mass", "width", "height", "depth", "energy"]).to_csv(csv, index=False)
    model = vsmd.fit(ROOT / "configs" / "vectors.yaml", data={"path": str(csv), "batch_size": 64},
                     model={"data_dim": 5, "hidden": 32, "depth": 1, "sample_steps": 5, "n_straight": 20,
                            "straight_steps": 10}, trainer=trainer(tmp / "runs", 3))
    return model, csv


def test_fit_trains_into_the_run_folder_of_vsmd_fit(vectors) -> None:
    model, _ = vectors
    assert model.run_dir == model.checkpoint.parents[1] and model.run_dir.name == "version_0"
    assert model.run_dir.parent.name == "vectors" and (model.run_dir / "config.yaml").is_file()
    assert model.checkpoint.name == "last.ckpt" and model.module.trained_steps == 3
    assert type(model.module).__name__ == "ToyVSMD" and not model.module.training
    assert model.data_class == "vsmd.datamodules.VectorDataModule" and model.data_settings["val_fraction"] == 0.1


def test_samples_are_in_the_data_units(vectors) -> None:
    model, _ = vectors
    x = model.sample(200, seed=1)
    assert x.shape == (200, 5) and torch.isfinite(x).all()
    assert torch.equal(x, model.sample(200, seed=1)) and not torch.equal(x, model.sample(200, seed=2))
    state = model.sample(200, seed=1, return_state=True)  # (x, v) of the momentum process, the model's units
    assert state.shape == (200, 10)
    torch.testing.assert_close(x, model.datamodule.unstandardised(state[:, :5]))
    assert 50 < float(x[:, 4].mean()) < 150  # the energy column is about 100 in the file


def test_nfe_picks_the_grid_of_each_sampler(vectors) -> None:
    model, _ = vectors
    for sampler, nfe, steps in (("heun", 9, 5), ("em", 4, 5), ("sscs", 4, 5), ("ei", 6, 6)):  # ei: + the estimate
        assert torch.equal(model.sample(20, sampler=sampler, nfe=nfe), model.sample(20, sampler=sampler, steps=steps))
    assert model.module.hparams.sampler == "heun"  # the call's sampler only
    with pytest.raises(ValueError, match="cannot make exactly 8 network evaluations: at n grid points .* 2 n - 1; "
                                         "pass nfe=7 or 9, or steps=n"):
        model.sample(20, nfe=8)
    with pytest.raises(ValueError, match="give nfe or steps, not both"):
        model.sample(20, nfe=9, steps=5)


def test_evaluate_gives_the_metrics_of_vsmd_test(vectors, tmp_path: Path) -> None:
    model, _ = vectors
    metrics = vsmd.evaluate(model, save_dir=tmp_path / "api")
    written = json.loads((tmp_path / "api" / "version_0" / "test_metrics.json").read_text())
    assert written["metrics"] == metrics and written["trained_steps"] == 3
    main(["test", "--config", str(model.run_dir / "config.yaml"), "--ckpt_path", str(model.checkpoint),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "cli")])
    cli = json.loads((tmp_path / "cli" / "vectors" / "version_0" / "test_metrics.json").read_text())
    assert cli["metrics"] == metrics and all(metrics[f"w1_{j}"] > 0 for j in range(5))
    assert set(metrics) == {"rmse_pmf", "sliced_w1", "mmd", "w1",
                            *(f"{k}_{j}" for k in ("straightness", "w1", "std_ratio") for j in range(5))}


def test_evaluation_settings_apply_to_the_call_only(vectors) -> None:
    model, _ = vectors
    fewer = vsmd.evaluate(model, sample_steps=3, n_straight=10)
    assert fewer != vsmd.evaluate(model) and model.module.hparams.sample_steps == 5
    assert vsmd.evaluate(model, sampler="ei", nfe=6) == vsmd.evaluate(model, sampler="ei", sample_steps=6)
    assert model.steps_for_nfe(9) == 5 and model.steps_for_nfe(4, sampler="em") == 5
    with pytest.raises(ValueError, match="give nfe or sample_steps, not both"):
        vsmd.evaluate(model, nfe=9, sample_steps=5)
    with pytest.raises(ValueError, match="hidden: not an evaluation setting of ToyVSMD, whose evaluation settings are "
                                         "sampler, sample_steps, seed"):
        vsmd.evaluate(model, hidden=8)


def test_data_other_than_the_checkpoints_are_refused(vectors, tmp_path: Path) -> None:
    model, csv = vectors
    other = VectorDataModule(str(csv), val_fraction=0.2)
    with pytest.raises(CheckpointError, match=r"was trained on data with val_fraction=0\.1, but the config gives data "
                                              r"val_fraction=0\.2"):
        vsmd.evaluate(model, datamodule=other)
    with pytest.raises(CheckpointError, match="val_fraction"):
        vsmd.load(model.checkpoint, datamodule=other)
    elsewhere = model.data_settings | {"path": str(tmp_path / "x.csv")}
    moved = Model(model.module, model.checkpoint, model.data_class, elsewhere)
    with pytest.raises(FileNotFoundError, match=r"x\.csv.*\(the model was trained on it\)\. Set the data yourself: "
                                                r"model\.datamodule = "):
        moved.datamodule
    moved.datamodule = VectorDataModule(str(csv))  # the same data from another place
    assert torch.equal(moved.sample(10), model.sample(10))


def test_load_refuses_what_vsmd_test_refuses(vectors, tmp_path: Path) -> None:
    model, _ = vectors
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nothing.ckpt"):
        vsmd.load(tmp_path / "nothing.ckpt")
    with pytest.raises(CheckpointError, match="is a folder; pass a checkpoint file: the newest loadable one there is"):
        vsmd.load(model.run_dir / "checkpoints")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        vsmd.load(tmp_path / "notes.txt")
    damaged = tmp_path / "damaged.ckpt"
    data = bytearray(model.checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged.ckpt is corrupt"):
        vsmd.load(damaged)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "pytorch-lightning_version": "2.4.0",
                "hyper_parameters": {"_class_path": "mypackage.MyModel", "width": 3}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign.ckpt is a Lightning checkpoint, but not one of vsmd "
                                              r"\(its model class is mypackage.MyModel\)"):
        vsmd.load(foreign)


def test_a_checkpoint_of_vsmd_0_1_agm_loads_as_its_agm_class(tmp_path: Path) -> None:
    from test_legacy import VSMD_ONLY

    model = vsmd.fit(ROOT / "configs" / "spiral8y_agm.yaml", data={"n_test": 300, "batch_size": 64},
                     model={"hidden": 16, "depth": 1}, trainer=trainer(tmp_path, 3))
    state = torch.load(model.checkpoint, map_location="cpu", weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(dict(state, hyper_parameters=state["hyper_parameters"] | VSMD_ONLY |
                    {"_class_path": "vsmd.models.ToyVSMD"}), legacy)
    old = vsmd.load(legacy)
    assert type(old.module).__name__ == "ToyAGM"
    assert torch.equal(old.sample(50, nfe=10), model.sample(50, steps=10))  # AGM's integrator: NFE = grid points


def test_fit_raises_the_error_vsmd_fit_prints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        vsmd.fit(ROOT / "configs" / "vectors.yaml", data={"path": str(tmp_path / "absent.csv")},
                 trainer=trainer(tmp_path / "runs", 3))
    assert not list((tmp_path / "runs").rglob("version_*"))  # no empty run folder left behind


# ------------------------------------------------------------------------------------------------
def test_a_csv_of_3_series_is_forecast_and_scored_by_crps_sum(tmp_path: Path) -> None:
    values = synthetic_series(3, 80, 0)
    table = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=80, freq="D").strftime("%Y-%m-%d")})
    for j, name in enumerate("abc"):
        table[name] = values[j]
    table.to_csv(tmp_path / "three.csv", index=False)
    model = vsmd.fit(ROOT / "configs" / "csv_forecast.yaml",
                     data={"path": str(tmp_path / "three.csv"), "prediction_length": 5, "test_windows": 2,
                           "batch_size": 8, "num_batches_per_epoch": 3, "n_val": 8},
                     model={"hidden": 8, "layers": 1, "cond_dim": 8, "channels": 4, "residual_layers": 2,
                            "sa_every": 2, "sa_steps": 2, "sa_warmup": 0, "sa_paths": 16, "sa_points": 8,
                            "sample_steps": 3, "num_samples": 8}, trainer=trainer(tmp_path / "runs", 3))
    windows = model.test_windows()
    forecasts = model.forecast()
    assert forecasts.shape == (2, 8, 5, 3) and windows["future"].shape == (2, 5, 3)
    np.testing.assert_allclose(windows["future"][-1].numpy(), values[:, -5:].T, rtol=1e-6)
    assert torch.equal(forecasts, model.forecast(windows["target"], windows["time_feat"]))
    assert model.forecast(num_samples=4, nfe=7).shape == (2, 4, 5, 3)  # heun: 4 grid points per step
    assert model.steps_for_nfe(7) == 4 and model.steps_for_nfe(3, sampler="em") == 4
    metrics = vsmd.evaluate(model)
    assert crps_sum(forecasts.numpy(), windows["future"].numpy()) == pytest.approx(metrics["crps_sum"], rel=1e-9)
    main(["test", "--config", str(model.run_dir / "config.yaml"), "--ckpt_path", str(model.checkpoint),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "cli")])
    cli = json.loads((tmp_path / "cli" / "csv_forecast" / "version_0" / "test_metrics.json").read_text())
    assert cli["metrics"] == metrics and set(metrics) == {"crps_sum", "crps", "nd_sum", "nrmse_sum"}
    with pytest.raises(TypeError, match="a TimeSeriesVSMD model does not sample unconditionally; it has "
                                        r"model.forecast\(...\)"):
        model.sample(10)
    with pytest.raises(ValueError, match="give target and time_feat together"):
        model.forecast(windows["target"])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # the example refuses a forecaster in words
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "sample_checkpoint.py"), str(model.checkpoint)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "does not sample unconditionally" in out.stderr and "Traceback" not in out.stderr


def test_trajectories_from_the_first_snapshot(tmp_path: Path) -> None:
    model = vsmd.fit(ROOT / "configs" / "semicircle.yaml", data={"n_per_snapshot": 200},
                     model={"hidden": 16, "depth": 1, "sample_steps": 30}, trainer=trainer(tmp_path, 5))
    x = model.trajectories([0.0, 1.5, 3.0], n=50, seed=3)
    assert x.shape == (3, 50, 2) and torch.isfinite(x).all()
    first = model.datamodule.snapshots("test").points[0]
    assert all(any(torch.equal(p, q) for q in first) for p in x[0])  # started from points of the first snapshot
    assert torch.equal(x, model.trajectories([0.0, 1.5, 3.0], n=50, seed=3))
    assert model.trajectories([1.0], x0=first[:7]).shape == (1, 7, 2)
    metrics = vsmd.evaluate(model)
    assert metrics["w1_t3"] > 0 and metrics["mean_squared_acceleration"] > 0
    main(["test", "--config", str(model.run_dir / "config.yaml"), "--ckpt_path", str(model.checkpoint),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "cli")])
    assert json.loads((tmp_path / "cli" / "semicircle" / "version_0" / "test_metrics.json").read_text())["metrics"] \
        == metrics
    with pytest.raises(TypeError, match="a TrajectoryBridge model does not forecast; it has model.trajectories"):
        model.forecast()
    with pytest.raises(TypeError, match="a TrajectoryBridge model has no sampler NFE; give its simulation steps"):
        vsmd.evaluate(model, nfe=10)
    with pytest.raises(ValueError, match="give n or x0, not both"):
        model.trajectories([1.0], n=3, x0=first[:3])


def test_the_lightning_way_and_a_checkpoint_of_your_own_trainer(vectors, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from vsmd.checkpointing import AtomicCheckpointIO, FinalCheckpoint
    from vsmd.models import ToyVSMD

    _, csv = vectors
    data = VectorDataModule(str(csv), batch_size=64)
    module = ToyVSMD(data_dim=data.data_dim, hidden=16, depth=1, sample_steps=5, n_straight=20, straight_steps=10)
    trainer = pl.Trainer(max_steps=3, plugins=[AtomicCheckpointIO()], **QUIET,
                         callbacks=[pl.callbacks.ModelCheckpoint(save_last=True), FinalCheckpoint()],
                         logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="vectors"))
    trainer.fit(module, datamodule=data)
    model = Model(module, datamodule=data)
    x = model.sample(50)
    assert x.shape == (50, 5) and 50 < float(x[:, 4].mean()) < 150
    path = trainer.checkpoint_callback.last_model_path
    with pytest.raises(CheckpointError, match="it records no model class.*with model_class=<the vsmd module class>"):
        vsmd.load(path)
    again = vsmd.load(path, model_class=ToyVSMD, datamodule=data)
    assert torch.equal(again.sample(50), x) and vsmd.evaluate(again) == vsmd.evaluate(model)


def test_images_come_back_as_images() -> None:
    from vsmd.models import ImageVSMD

    module = ImageVSMD(image_size=8, channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                       process="vscld", sample_steps=3)
    x = Model(module).sample(2, seed=0)
    assert x.shape == (2, 3, 8, 8) and float(x.abs().max()) <= 1.0
    assert Model(module).sample(2, seed=0, return_state=True).shape == (2, 6, 8, 8)


def test_fit_with_a_misspelt_option_raises_a_value_error_not_system_exit(tmp_path: Path) -> None:
    """A notebook must not see SystemExit from the parser: vsmd.fit raises what the parser said."""
    with pytest.raises(ValueError, match=r"(?s)vsmd\.fit: the options were refused: .*data_dimm. is not accepted"):
        vsmd.fit(ROOT / "configs" / "spiral8y.yaml", model={"data_dimm": 5},
                 trainer={"max_steps": 1, "logger": {"init_args": {"save_dir": str(tmp_path)}}})
    assert not any(tmp_path.rglob("version_*"))  # nothing left behind
