"""The real ``vsmd`` entry point: fit, test, predict, resume, and bad input with clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from vsmd.cli import main
from vsmd.datamodules import Toy2DDataModule
from vsmd.models import ToyVSMD

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "spiral8y.yaml")


def tiny(save_dir: Path, *extra: str) -> list[str]:
    """The spiral-8Y config, shrunk to run in seconds."""
    return ["--config", CONFIG, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "1",
            "--model.init_args.hidden", "32", "--model.init_args.depth", "1",
            "--model.init_args.sa_every", "10", "--model.init_args.sa_steps", "5", "--model.init_args.sa_warmup", "0",
            "--model.init_args.sa_paths", "32", "--model.init_args.sa_points", "10",
            "--model.init_args.sample_steps", "5", "--model.init_args.n_straight", "20",
            "--model.init_args.straight_steps", "10",
            "--data.init_args.batch_size", "64", "--data.init_args.n_val", "64", "--data.init_args.n_test", "300",
            "--data.init_args.n_predict", "50", *extra]


def versions(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "spiral8y").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 20-step VSULD fit through the CLI; returns the run folder."""
    save_dir = tmp_path_factory.mktemp("runs")
    main(["fit", *tiny(save_dir), "--trainer.max_steps", "20"])
    return versions(save_dir)[-1]


def test_fit_writes_config_and_checkpoints(trained: Path) -> None:
    assert (trained / "config.yaml").is_file()
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 20
    # SA state is in the checkpoint: one stage (at step 10) of 5 A-steps; rho has moved off 0.
    assert ckpt["vsmd_sa"]["stages"] == 1 and ckpt["vsmd_sa"]["steps"] == 5
    assert ckpt["state_dict"]["process.rho"].abs().max() > 0
    assert any(k.startswith("net_ema.") for k in ckpt["state_dict"])


def test_test_writes_metrics(trained: Path) -> None:
    save_dir = trained.parent.parent
    main(["test", *tiny(save_dir), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")])
    out = json.loads((versions(save_dir)[-1] / "test_metrics.json").read_text())
    assert out["sampler"] == "heun" and out["nfe"] == 2 * 5 - 1
    assert math.isfinite(out["metrics"]["rmse_pmf"]) and out["metrics"]["rmse_pmf"] > 0
    assert out["metrics"]["straightness_0"] >= 0 and out["metrics"]["straightness_1"] >= 0
    assert out["trained_steps"] == 20 and len(out["A_x"]) == 2
    # The figure shows generated beside real samples; the arrays behind it are saved with it.
    run = versions(save_dir)[-1]
    assert (run / "test_samples.png").stat().st_size > 0
    with np.load(run / "test_samples.npz") as f:
        assert f["real"].shape == f["generated"].shape == (300, 2)
        np.testing.assert_allclose(np.std(f["generated"], 0) / np.std(f["real"], 0),
                                   [out["metrics"]["std_ratio_0"], out["metrics"]["std_ratio_1"]], rtol=1e-3)


def test_predict_writes_samples(trained: Path) -> None:
    save_dir = trained.parent.parent
    main(["predict", *tiny(save_dir), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")])
    with np.load(versions(save_dir)[-1] / "samples.npz") as f:
        assert f["samples"].shape == (50, 2) and np.isfinite(f["samples"]).all()
    assert (versions(save_dir)[-1] / "samples.png").stat().st_size > 0


def test_test_and_predict_with_the_exponential_integrator(trained: Path, capsys) -> None:
    """sampler ei (and its data estimate at t_stop) through vsmd test and predict, with NFE and time reported."""
    save_dir = trained.parent.parent
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    ei = ["--model.init_args.sampler", "ei", "--model.init_args.sample_steps", "8"]
    main(["test", *tiny(save_dir, *ei), "--ckpt_path", ckpt])  # 7 steps + the estimate at the toys' ei_t_stop
    out = json.loads((versions(save_dir)[-1] / "test_metrics.json").read_text())
    assert out["sampler"] == "ei" and out["sample_steps"] == 8 and out["nfe"] == 8 and out["sampling_seconds"] > 0
    assert math.isfinite(out["metrics"]["rmse_pmf"])
    main(["test", *tiny(save_dir, *ei, "--model.init_args.ei_t_stop", "null"), "--ckpt_path", ckpt])  # to t_eps
    assert json.loads((versions(save_dir)[-1] / "test_metrics.json").read_text())["nfe"] == 7
    capsys.readouterr()
    main(["predict", *tiny(save_dir, *ei, "--model.init_args.t_stop", "0.02"), "--ckpt_path", ckpt])
    assert re.search(r"\(ei, NFE 8, [0-9.]+ s of sampling\)", capsys.readouterr().out)  # 7 steps + the estimate
    with np.load(versions(save_dir)[-1] / "samples.npz") as f:
        assert str(f["sampler"]) == "ei" and int(f["nfe"]) == 8 and np.isfinite(f["samples"]).all()


def test_saved_config_reproduces_the_run(trained: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(trained / "config.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.max_steps", "20"])
    a = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, msg=k)


def test_resume_continues_the_sa_schedule(trained: Path, tmp_path: Path) -> None:
    """Resuming from step 20 to 40 gives the SA state of an uninterrupted 40-step run."""
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "40"])
    straight = torch.load(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "40",
          "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")])
    resumed = torch.load(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 40
    for key in ("stages", "steps"):
        assert resumed["vsmd_sa"][key] == straight["vsmd_sa"][key] == {"stages": 3, "steps": 15}[key]
    assert resumed["vsmd_sa"]["scheduler"] == straight["vsmd_sa"]["scheduler"]
    # The data stream continues rather than replaying: A ends close to, but not bit-equal to, the straight run.
    torch.testing.assert_close(resumed["state_dict"]["process.rho"], straight["state_dict"]["process.rho"],
                               atol=0.05, rtol=0)


def _count_reads(monkeypatch, path: Path) -> tuple[list, list]:
    """(opens of ``path``, torch.load calls with their weights_only) from now on."""
    import builtins
    import io

    opens, loads = [], []
    real_open, real_load = io.open, torch.load

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file).resolve() == path.resolve():
            opens.append(file)
        return real_open(file, *args, **kwargs)

    def counting_load(f, *args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(torch, "load", counting_load)
    return opens, loads


@pytest.mark.parametrize("command", ["test", "predict", "fit"])
def test_a_command_reads_its_checkpoint_once(trained: Path, tmp_path: Path, monkeypatch, command: str) -> None:
    """The CRC check, the settings reconciliation and Lightning's restore share one read and one weights_only load
    (fit: a resume)."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    opens, loads = _count_reads(monkeypatch, ckpt)
    steps = ["--trainer.max_steps", "22"] if command == "fit" else []
    main([command, *tiny(tmp_path), *steps, "--ckpt_path", str(ckpt)])
    assert len(opens) == 1 and loads == [True]
    if command == "fit":
        assert torch.load(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 22


@pytest.mark.parametrize("override, message", [
    (["--model.init_args.process", "foo"], "unknown process 'foo'"),
    (["--model.init_args.beta", "0"], "beta must be > 0"),
    (["--model.init_args.beta", "-1"], "beta must be > 0"),
    (["--model.init_args.damping", "1.5"], r"damping ratio R must be in \(0, 1\]"),
    (["--model.init_args.damping", "0"], r"damping ratio R must be in \(0, 1\]"),
    (["--model.init_args.process", "vsuld", "--model.init_args.damping", "1.0"], "needs damping ratio R < 1"),
    (["--model.init_args.data_dim", "3"], "data have dimension 2 but the model was built for data_dim=3"),
    (["--model.init_args.sa_sampler", "rk4"], "sa_sampler must be one of"),
    (["--model.init_args.rho_init", "ones"], "rho_init must be one of"),
    (["--model.init_args.rho_init_kl", "0"], r"need rho_init_kl > 0 \(a KL budget in nats\)"),
    (["--model.init_args.sa_points", "1"], "sa_points must be >= 2"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, capsys, override: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2", *override])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "vsmd: error:" in err
    assert re.search(message, err), err


def test_missing_checkpoint(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path), "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert "checkpoint not found" in capsys.readouterr().err


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path), "--ckpt_path", str(bad)])
    assert "corrupt" in capsys.readouterr().err
    assert bad.read_bytes() == b"not a checkpoint" * 10


class _PoisonedToy(Toy2DDataModule):
    """Clean batches for 6 steps, then NaN."""

    def train_dataloader(self):
        stream = iter(super().train_dataloader())
        clean = [next(stream) for _ in range(6)]
        return torch.utils.data.DataLoader(clean + [torch.full_like(clean[0], float("nan"))] * 10, batch_size=None)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    # rho_init zero: the data-informed start would read the NaN batches at fit start (tested below).
    model = ToyVSMD(hidden=16, depth=1, process="vsuld", damping=0.7, sa_every=2, sa_paths=8, sa_points=5,
                    rho_init="zero")
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(max_steps=20, callbacks=[ckpt_cb], logger=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    with pytest.raises(FloatingPointError, match="at step 6"):
        trainer.fit(model, datamodule=_PoisonedToy(batch_size=32))
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nan_data_stop_the_data_informed_start_with_a_clear_error(tmp_path: Path) -> None:
    model = ToyVSMD(hidden=16, depth=1, process="vsuld", damping=0.7, rho_init="data")
    trainer = pl.Trainer(max_steps=20, logger=False, enable_progress_bar=False, limit_val_batches=0,
                         enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="training data contain NaN or inf"):
        trainer.fit(model, datamodule=_PoisonedToy(batch_size=32))
    assert model.global_step == 0
