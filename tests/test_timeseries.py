"""Forecasting: GluonTS loading in both layouts, windows, the conditional model for every process, CRPS-Sum, CLI."""

from __future__ import annotations

import json
import math
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdata import make_gp_copula_archive, make_materialised  # tests/tsdata.py
from vsmd.cli import main
from vsmd.datamodules import GluonTSDataModule
from vsmd.datamodules import timeseries as tsdata
from vsmd.metrics import crps_sum, gluonts_metrics, random_walk_samples
from vsmd.models import TimeSeriesAGM, TimeSeriesVSMD

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "exchange.yaml")


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("gpcopula")
    _, values = make_gp_copula_archive(d, n_train=200)
    return d, values


def test_archive_converted_offline_and_kept(tmp_path: Path) -> None:
    archive, values = make_gp_copula_archive(tmp_path, n_train=200)
    before = archive.read_bytes()
    dm = GluonTSDataModule(data_dir=str(tmp_path), download=False, history=40)
    dm.prepare_data()
    dm.setup()
    assert archive.read_bytes() == before  # GluonTS's own clean-up would delete it; ours keeps it
    assert (tmp_path / "exchange_rate_nips" / "metadata.json").is_file()
    meta = json.loads((tmp_path / "exchange_rate_nips" / "metadata.json").read_text())
    assert meta["freq"] == "B" and meta["prediction_length"] == 30
    s = dm.series
    assert (dm.target_dim, dm.freq, dm.prediction_length) == (8, "B", 30)
    np.testing.assert_allclose(s.train, values[:, :200], rtol=1e-6)
    assert [a.shape[1] for a in s.test] == [230, 260, 290, 320, 350]
    np.testing.assert_allclose(s.test[-1], values, rtol=1e-6)
    assert s.time_features.shape == (350, 3)  # business days: day of week, month, year in [-0.5, 0.5]
    assert np.abs(s.time_features).max() <= 0.5


def test_read_only_archive_is_converted_in_a_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    make_gp_copula_archive(tmp_path, n_train=200)
    monkeypatch.setattr(tsdata, "_writable", lambda root: False)
    dm = GluonTSDataModule(data_dir=str(tmp_path), download=False, history=40)
    dm.prepare_data()
    dm.setup()
    assert dm.series.train.shape == (8, 200)
    assert not (tmp_path / "exchange_rate_nips").exists()


def test_materialised_layout(tmp_path: Path) -> None:
    values = make_materialised(tmp_path, "solar_nips", n_series=5, n_train=300, h=6, windows=2, freq="h")
    dm = GluonTSDataModule(dataset="solar_nips", data_dir=str(tmp_path), download=False, batch_size=4, history=30)
    dm.setup()
    assert (dm.target_dim, dm.freq, dm.prediction_length) == (5, "h", 6)
    np.testing.assert_allclose(dm.series.train, values[:, :300], rtol=1e-6)
    w = dm.test_windows()
    assert w["target"].shape == (2, 30, 5) and w["future"].shape == (2, 6, 5) and w["time_feat"].shape == (2, 36, 4)
    np.testing.assert_allclose(w["future"][1].numpy(), values[:, -6:].T, rtol=1e-6)
    np.testing.assert_allclose(w["target"][0, -1].numpy(), values[:, 299], rtol=1e-6)
    assert w["forecast_start"] == ["2020-01-13 12:00", "2020-01-13 18:00"]  # steps 300 and 306 after the start


def test_write_materialised_needs_training_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leave no training data for 2 windows of 6"):
        tsdata.write_materialised(np.ones((3, 12)), tmp_path / "solar_nips", "2020-01-01 00:00", "h", 6, 2)
    assert not (tmp_path / "solar_nips").exists()


def test_windows_shapes_and_determinism(archive_dir) -> None:
    d, values = archive_dir

    def first(seed: int):
        dm = GluonTSDataModule(data_dir=str(d), download=False, batch_size=16, num_batches_per_epoch=3,
                               history=40, seed=seed)
        dm.setup()
        return list(dm.train_dataloader())

    a, b, c = first(0), first(0), first(1)
    assert len(a) == 3
    assert a[0]["target"].shape == (16, 70, 8) and a[0]["time_feat"].shape == (16, 70, 3)
    assert all(torch.equal(x["target"], y["target"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["target"], c[0]["target"])
    assert not torch.equal(a[0]["target"], a[1]["target"])
    # Every window is a contiguous stretch of the train split.
    win = a[0]["target"][0].numpy().T
    start = int(np.argmin(np.abs(values[0, :200] - win[0, 0])))
    np.testing.assert_allclose(win, values[:, start:start + 70], rtol=1e-6)


def test_unknown_dataset_and_missing_data(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'traffic'.*exchange_rate_nips"):
        GluonTSDataModule(dataset="traffic")
    dm = GluonTSDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match=r"exchange_rate_nips\.tar\.gz.*into " + str(tmp_path)):
        dm.prepare_data()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import gluonts.dataset.repository._gp_copula_2019 as recipe
    monkeypatch.setattr(recipe.request, "urlretrieve", offline)
    dm = GluonTSDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="the download failed.*exchange_rate_nips.tar.gz"):
        dm.prepare_data()
    assert not (tmp_path / "exchange_rate_nips").exists()  # nothing half-made is left to be mistaken for data


def test_corrupt_archive_is_reported_and_kept(tmp_path: Path) -> None:
    bad = tmp_path / "exchange_rate_nips.tar.gz"
    bad.write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="not a readable .tar.gz"):
        GluonTSDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    assert bad.read_bytes() == b"not a tar file"
    assert not (tmp_path / "exchange_rate_nips").exists()


# ------------------------------------------------------------------------------------------------
def test_crps_sum_matches_gluonts_evaluator() -> None:
    rng = np.random.default_rng(0)
    future = 1 + rng.normal(0, 0.1, (3, 5, 4))
    samples = future[:, None] + rng.normal(0.05, 0.2, (3, 50, 5, 4))
    starts = ["2020-01-06", "2020-01-13", "2020-01-20"]
    m = gluonts_metrics(samples, np.ones((3, 10, 4)), future, starts, "B")
    assert m["crps_sum"] == pytest.approx(crps_sum(samples, future), rel=1e-12)
    # A sharper forecast centred on the truth scores better.
    assert crps_sum(future[:, None] + rng.normal(0, 0.01, (3, 50, 5, 4)), future) < m["crps_sum"]
    with pytest.raises(ValueError, match="samples must be"):
        crps_sum(samples[0], future)


def test_random_walk_baseline() -> None:
    rng = np.random.default_rng(1)
    train = np.cumsum(rng.normal(0, [[0.1], [1.0]], (2, 5000)), axis=1)
    hist = np.zeros((4, 3, 2))
    s = random_walk_samples(train, hist, 10, 2000, seed=0)
    assert s.shape == (4, 2000, 10, 2)
    np.testing.assert_allclose(s[:, :, -1].std(axis=(0, 1)), np.sqrt(10) * np.array([0.1, 1.0]), rtol=0.05)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["vp", "vsdm", "cld", "uld", "vscld", "vsuld"])
def test_every_process_trains_adapts_and_forecasts(process: str, archive_dir) -> None:
    torch.manual_seed(0)
    model = TimeSeriesVSMD(process=process, hidden=8, layers=1, cond_dim=8, channels=4, residual_layers=2,
                           context_length=10, sa_paths=16, sa_points=8, sa_steps=2, sample_steps=3, num_samples=4)
    model.prediction_length = 30
    dm = GluonTSDataModule(data_dir=str(archive_dir[0]), download=False, batch_size=4,
                           history=model.window_history(30))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.SGD(model.net.parameters(), lr=0.1)
    for _ in range(2):  # the zero-initialised head passes no gradient upstream before its first update
        opt.zero_grad()
        loss = model.batch_loss(batch, model.net)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert model.net.rnn.weight_ih_l0.grad.abs().sum() > 0  # the condition reaches the loss
    if model.sa is not None:
        rho = model.process.rho.detach().clone()
        gen = torch.Generator().manual_seed(0)
        model.sa.stage(model.sa_score_fn(batch, model.net, gen), gen)
        assert model.process.rho.shape == (8,) and not torch.equal(model.process.rho, rho)
    w = dm.test_windows()
    samples, nfe = model.forecast(w["target"][:2], w["time_feat"][:2])
    assert samples.shape == (2, 4, 30, 8) and torch.isfinite(samples).all()
    assert nfe == 30 * (2 * 3 - 1)  # Heun on 3 points: NFE 5 per forecast step
    again, _ = model.forecast(w["target"][:2], w["time_feat"][:2])
    assert torch.equal(samples, again)  # seeded


def test_agm_trains_and_forecasts_through_the_conditional_model(archive_dir) -> None:
    """process agm in the forecaster: the same RNN condition, the force as the network's target, its sampler."""
    torch.manual_seed(0)
    model = TimeSeriesAGM(sample_steps=5, t_stop=0.9, hidden=8, layers=1, cond_dim=8,
                           channels=4, residual_layers=2, context_length=10, num_samples=4)
    model.prediction_length = 30
    assert model.sa is None
    dm = GluonTSDataModule(data_dir=str(archive_dir[0]), download=False, batch_size=4,
                           history=model.window_history(30))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.SGD(model.net.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = model.batch_loss(batch, model.net)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert model.net.rnn.weight_ih_l0.grad.abs().sum() > 0
    w = dm.test_windows()
    samples, nfe = model.forecast(w["target"][:2], w["time_feat"][:2])
    assert samples.shape == (2, 4, 30, 8) and torch.isfinite(samples).all()
    assert nfe == 30 * 5  # AGM: NFE = sample_steps per forecast step (the last call is the hop)


def test_scaling_modes() -> None:
    target = 1 + torch.rand(2, 12, 3)
    for scaling in ("mean", "std", "none"):
        model = TimeSeriesVSMD(scaling=scaling, hidden=4, layers=1, cond_dim=4, channels=2, residual_layers=1,
                               target_dim=3, context_length=5)
        model.prediction_length = 4
        values, loc, scale = model.scale(target, history=8)
        torch.testing.assert_close(values * scale + loc, target)
        ctx = values[:, 3:8]
        if scaling == "mean":
            torch.testing.assert_close(ctx.abs().mean(1), torch.ones(2, 3))
        elif scaling == "std":
            assert ctx.mean(1).abs().max() < 1e-5
    with pytest.raises(ValueError, match="scaling must be one of"):
        TimeSeriesVSMD(scaling="max")


# ------------------------------------------------------------------------------------------------
def tiny(save_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1",
            "--model.init_args.hidden", "8", "--model.init_args.layers", "1", "--model.init_args.cond_dim", "8",
            "--model.init_args.channels", "4", "--model.init_args.residual_layers", "2",
            "--model.init_args.sa_every", "2", "--model.init_args.sa_steps", "2", "--model.init_args.sa_warmup", "0",
            "--model.init_args.sa_paths", "16", "--model.init_args.sa_points", "8",
            "--model.init_args.sample_steps", "3", "--model.init_args.num_samples", "8",
            "--data.init_args.data_dir", str(data_dir), "--data.init_args.batch_size", "8",
            "--data.init_args.num_batches_per_epoch", "2", "--data.init_args.n_val", "8", *extra]


def test_cli_fit_test_predict(tmp_path: Path, archive_dir, capsys) -> None:
    data_dir = archive_dir[0]
    main(["fit", *tiny(tmp_path, data_dir), "--trainer.max_steps", "4"])
    run = tmp_path / "exchange" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4 and state["vsmd_sa"]["stages"] == 1  # at step 2 (step 4 never starts)
    main(["test", *tiny(tmp_path, data_dir), "--ckpt_path", str(ckpt)])
    out = tmp_path / "exchange" / "version_1"
    report = json.loads((out / "test_metrics.json").read_text())
    assert "crps_sum" in capsys.readouterr().out
    assert report["windows"] == 5 and report["num_samples"] == 8 and report["nfe_per_step"] == 5
    assert report["trained_steps"] == 4 and len(report["A_x"]) == 8
    assert (out / "forecast.png").is_file()
    # Anyone can re-score the saved forecasts: GluonTS's evaluator and the formula give the reported number.
    f = np.load(out / "forecasts.npz")
    assert f["samples"].shape == (5, 8, 30, 8) and f["future"].shape == (5, 30, 8)
    again = gluonts_metrics(f["samples"], f["history"], f["future"], list(f["forecast_start"]), str(f["freq"]))
    assert again["crps_sum"] == pytest.approx(report["metrics"]["crps_sum"], rel=1e-9)
    assert crps_sum(f["samples"], f["future"]) == pytest.approx(report["metrics"]["crps_sum"], rel=1e-9)
    for key in ("crps", "nd_sum", "nrmse_sum"):
        assert again[key] == pytest.approx(report["metrics"][key], rel=1e-9)
    main(["predict", *tiny(tmp_path, data_dir), "--ckpt_path", str(ckpt)])
    pred = np.load(tmp_path / "exchange" / "version_2" / "forecasts.npz")
    assert pred["samples"].shape == (5, 8, 30, 8) and np.isfinite(pred["samples"]).all()
    # the exponential integrator through test and predict, with its NFE and time reported
    ei = ["--model.init_args.sampler", "ei", "--model.init_args.sample_steps", "4"]
    capsys.readouterr()
    main(["test", *tiny(tmp_path, data_dir, *ei), "--ckpt_path", str(ckpt)])
    report = json.loads((tmp_path / "exchange" / "version_3" / "test_metrics.json").read_text())
    assert report["sampler"] == "ei" and report["nfe_per_step"] == 3 and report["sampling_seconds"] > 0
    assert math.isfinite(report["metrics"]["crps_sum"])
    main(["predict", *tiny(tmp_path, data_dir, *ei), "--ckpt_path", str(ckpt)])
    assert re.search(r"\(ei, NFE 3 per step, [0-9.]+ s of sampling\)", capsys.readouterr().out)
    assert np.isfinite(np.load(tmp_path / "exchange" / "version_4" / "forecasts.npz")["samples"]).all()


def test_cli_forecasting_with_a_learned_rotation_over_the_series(tmp_path: Path, archive_dir, capsys) -> None:
    """Q is D x D: it starts at the principal axes of the scaled training values, the SA refines it, the test
    report carries it, and the forecasts come back in the series' coordinates."""
    data_dir = archive_dir[0]
    main(["fit", *tiny(tmp_path, data_dir, "--model.init_args.rotation", "learned"), "--trainer.max_steps", "4"])
    assert "rotation learned: the process runs on the principal axes" in capsys.readouterr().out
    ckpt = tmp_path / "exchange" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    q = state["frame"].double()
    torch.testing.assert_close(q.T @ q, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-5)
    assert (q - torch.eye(8)).abs().max() > 0.1 and state["frame_rotation.angles"].abs().max() > 0
    main(["test", *tiny(tmp_path, data_dir, "--model.init_args.rotation", "learned"), "--ckpt_path", str(ckpt)])
    report = json.loads((tmp_path / "exchange" / "version_1" / "test_metrics.json").read_text())
    torch.testing.assert_close(torch.tensor(report["frame"]).double(), q)
    f = np.load(tmp_path / "exchange" / "version_1" / "forecasts.npz")
    assert np.isfinite(f["samples"]).all() and np.isfinite(report["metrics"]["crps_sum"])


def test_cli_nan_forecasts_give_null_metrics_and_exit_1(tmp_path: Path, archive_dir, capsys) -> None:
    """Issue 10, item 6, for forecasting: a network that outputs NaN is reported, not scored."""
    data_dir = archive_dir[0]
    main(["fit", *tiny(tmp_path, data_dir), "--trainer.max_steps", "2"])
    ckpt = torch.load(tmp_path / "exchange" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("net_ema.module.") and v.is_floating_point():
            v.fill_(float("nan"))
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    for sub, version in (("test", 1), ("predict", 2)):
        with pytest.raises(SystemExit) as err:
            main([sub, *tiny(tmp_path, data_dir), "--ckpt_path", str(bad)])
        assert err.value.code == 1
        assert "the forecasts are unusable" in capsys.readouterr().err
    report = json.loads((tmp_path / "exchange" / "version_1" / "test_metrics.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"bare {c} in test_metrics.json"))
    assert report["samples_problem"] and all(v is None for v in report["metrics"].values())
    assert (tmp_path / "exchange" / "version_2" / "forecasts.npz").is_file()  # kept for inspection


def test_cli_target_dim_mismatch(tmp_path: Path, archive_dir, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["fit", *tiny(tmp_path, archive_dir[0]), "--trainer.max_steps", "1", "--model.init_args.target_dim", "5"])
    assert err.value.code == 1
    assert "the data have 8 series but the model was built for target_dim=5" in capsys.readouterr().err


def test_cli_missing_data_offline(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path, tmp_path / "empty"), "--data.init_args.download", "false"])
    assert "Put the GP-Copula archive exchange_rate_nips.tar.gz" in capsys.readouterr().err
