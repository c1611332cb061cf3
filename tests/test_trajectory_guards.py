"""Trajectory inference refuses what it cannot do and never reports garbage as a result (issue 23): time scales,
exploded simulations, files and options that are wrong, and checkpoints tested on other data."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from vsmd.cli import main
from vsmd.datamodules import TrajectoryDataModule
from vsmd.datamodules.trajectory import Snapshots, save_snapshots
from vsmd.diffusion import trajectory_time as units
from vsmd.diffusion.trajectory import MultiMarginalBridge
from vsmd.models import TrajectoryBridge

PETAL = str(Path(__file__).parents[1] / "configs/petal.yaml")


def _gauss_file(path, times=(0.0, 1.0, 2.0), d=2, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    save_snapshots(path, Snapshots(list(times), [torch.randn(n, d, generator=g) + 2 * k for k in range(len(times))]))
    return str(path)


def _common(path, *extra):
    return ["--config", PETAL, "--trainer.enable_progress_bar", "false", "--data.init_args.dataset", "file",
            "--data.init_args.path", str(path), "--data.init_args.batch_size", "16", "--model.init_args.hidden", "16",
            "--model.init_args.depth", "1", "--model.init_args.sample_steps", "10", *extra]


def _fails(args) -> None:
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 1


# ------------------------------------------------------------------------------------------------------------
# Item 4: time scales and exploded simulations.
@pytest.mark.parametrize("dynamics, scale", [("momentum", 1e7), ("momentum", 1e-4), ("first_order", 1e5)])
def test_the_internal_clock_is_the_same_reference_process(dynamics, scale):
    """On the internal clock u = t / 10^e with sigma rescaled, the bridge's position sd at corresponding times is the
    one on the data's clock (computed there by the kriging in the data's units, no rescaling)."""
    pins = [0.0, 1.3, 2.0, 4.5]
    e = units.time_exponent([p * scale for p in pins])
    assert 1 <= 4.5 * scale / 10.0 ** e < 10
    sigma = 0.3 / scale ** (1.5 if dynamics == "momentum" else 0.5)  # the same noise over the span
    data = MultiMarginalBridge([p * scale for p in pins], dynamics, sigma)
    internal = MultiMarginalBridge([units.to_internal(p * scale, e) for p in pins], dynamics,
                                   units.internal_sigma(sigma, dynamics, e))
    np.testing.assert_allclose(units.bridge_position_sd(data), units.bridge_position_sd(internal), rtol=1e-9)


def test_times_in_other_units_train_the_same_model():
    """Snapshot times [0, 1e7, 2e7] (seconds) and [0, 1, 2] give the same internal clock: with sigma 0 the same
    training gives the same paths, at times reported in the data's units (at b1072ca: a NaN simulation)."""
    g0 = torch.Generator().manual_seed(0)
    sets = [torch.randn(200, 2, generator=g0) + 2 * k for k in range(3)]
    out = []
    for c in (1.0, 1e7):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        model = TrajectoryBridge(sigma=0.0, hidden=16, depth=1, lr=3e-3, ema_decay=0, sample_steps=20)
        model._set_times([0.0, c, 2 * c], [0.0, c, 2 * c])
        opt = model.configure_optimizers()
        for _ in range(30):
            loss, _ = model.loss([s[torch.randint(200, (64,), generator=g)] for s in sets], g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        xs, grid, _ = model.trajectories(sets[0], [0.0, c, 2 * c])
        out.append((xs, grid / c))
    assert torch.isfinite(out[1][0]).all()
    torch.testing.assert_close(out[1][0], out[0][0], atol=0, rtol=0)
    torch.testing.assert_close(out[1][1], out[0][1])


def _fit_file(path, steps=2, **model):
    dm = TrajectoryDataModule("file", path=path, batch_size=16)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(TrajectoryBridge(hidden=16, depth=1, sample_steps=10, **model), datamodule=dm)


def test_time_scales_the_bridge_cannot_handle_are_refused(tmp_path):
    """A gap of 1e-9 of the span (trained at a loss of 1e18 at b1072ca) and sigma 0.1 per second over 2e7 seconds
    (a position noise of 1e9) are refused before training, naming the gap's fraction and the noise."""
    with pytest.raises(ValueError, match=r"1e-09 of the span 1 .*hold one out"):
        _fit_file(_gauss_file(tmp_path / "gap.npz", (0.0, 1e-9, 1.0)))
    with pytest.raises(ValueError, match=r"per unit of the snapshot times.*span 2e\+07.*Lower model.init_args.sigma"):
        _fit_file(_gauss_file(tmp_path / "seconds.npz", (0.0, 1e7, 2e7)))
    _fit_file(tmp_path / "seconds.npz", sigma=1e-11)  # the same noise per span as 0.1 over 2 units: trains


def test_times_far_from_zero_are_refused_before_training(tmp_path):
    """Snapshot times [1e9, 1e9 + 1, 1e9 + 2] (Unix timestamps): the fit exited 0 and vsmd test then died in a
    ZeroDivisionError (the float32 grid cannot resolve the span); now refused before training, saying what to do.
    Times a few spans from 0 still train."""
    with pytest.raises(ValueError, match=r"start at 1e\+09.*Subtract the first time"):
        _fit_file(_gauss_file(tmp_path / "unix.npz", (1e9, 1e9 + 1, 1e9 + 2)))
    _fit_file(_gauss_file(tmp_path / "offset.npz", (10.0, 11.0, 12.0)))


def test_exploded_trajectories_are_reported_not_scored(tmp_path, monkeypatch):
    """A model whose simulation explodes: vsmd test writes null metrics and samples_problem and exits 1 (at b1072ca:
    W1 0.0, a perfect score, exit 0); vsmd predict keeps samples.npz for inspection and exits 1."""
    monkeypatch.chdir(tmp_path)
    common = _common(_gauss_file(tmp_path / "s.npz"))
    main(["fit", *common, "--trainer.max_steps", "2"])
    ckpt = tmp_path / "runs/petal/version_0/checkpoints/last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    for key in [k for k in state["state_dict"] if k.startswith(("net.", "net_ema."))]:
        state["state_dict"][key] = state["state_dict"][key] * 1e30  # the drift overflows
    torch.save(state, ckpt)
    _fails(["test", *common, "--ckpt_path", str(ckpt)])
    report = json.loads((tmp_path / "runs/petal/version_1/test_metrics.json").read_text())
    assert "NaN or inf" in report["samples_problem"] or "exploded" in report["samples_problem"]
    assert report["metrics"]["w1_t1"] is None and report["metrics"]["w1_mean_observed"] is None
    assert report["metrics"]["mean_squared_acceleration"] is None
    assert (tmp_path / "runs/petal/version_1/test_samples.npz").is_file()
    _fails(["predict", *common, "--ckpt_path", str(ckpt)])
    samples = np.load(tmp_path / "runs/petal/version_2/samples.npz")["samples"]
    assert samples.shape == (3, 1000, 2) and not np.isfinite(samples).all()


# ------------------------------------------------------------------------------------------------------------
# Item 8: one-dimensional data.
@pytest.mark.parametrize("dim, extra", [(1, []), (2, ["--data.init_args.pca", "1"])])
def test_vsmd_test_draws_one_dimensional_data(tmp_path, monkeypatch, dim, extra):
    """data_dim 1 or pca 1: vsmd test draws position against time (an IndexError in plotting.py at b1072ca, after
    the metrics were written) and exits 0."""
    monkeypatch.chdir(tmp_path)
    common = _common(_gauss_file(tmp_path / "s.npz", (0.0, 1.0, 2.0, 3.0), d=dim), "--model.init_args.data_dim", "1",
                     "--data.init_args.holdout", "[1]", *extra)
    main(["fit", *common, "--trainer.max_steps", "2"])
    main(["test", *common, "--ckpt_path", "runs/petal/version_0/checkpoints/last.ckpt"])
    figure = tmp_path / "runs/petal/version_1/test_trajectories.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    assert json.loads((tmp_path / "runs/petal/version_1/test_metrics.json").read_text())["samples_problem"] is None


# ------------------------------------------------------------------------------------------------------------
# Items 7 and 11: files and options.
def _bad_file(tmp_path, case):
    """A file of the given kind of damage, and a pattern its error must match (the file's name, and the key)."""
    good = {"times": np.array([0.0, 1.0, 2.0]), **{f"x_{k}": np.ones((5, 2)) * k for k in range(3)}}
    if case == "duplicate column":
        (tmp_path / "f.csv").write_text("time,x,time\n0,1,0\n1,2,1\n2,3,2\n")
        return tmp_path / "f.csv", r"f.csv: the CSV header repeats the column name\(s\) 'time'"
    if case == "only time":
        (tmp_path / "f.csv").write_text("time\n0\n1\n2\n")
        return tmp_path / "f.csv", r"f.csv: the CSV has only the time column 'time'; add one column per coordinate"
    if case == "huge csv":
        (tmp_path / "f.csv").write_text("time,x,y\n0,1,2\n1,2,1e300\n2,3,4\n")
        return tmp_path / "f.csv", r"f.csv has 1 values too large for float32 .*1e\+300.*data row 2, column 'y'; rescale"
    if case == "text file":
        (tmp_path / "f.npz").write_text("time,x\n0,1\n")
        return tmp_path / "f.npz", r"f.npz is not an .npz archive"
    np.savez(tmp_path / "f.npz", **good)
    if case == "truncated":
        data = (tmp_path / "f.npz").read_bytes()
        (tmp_path / "f.npz").write_bytes(data[: len(data) // 2])
        return tmp_path / "f.npz", r"f.npz is a damaged .npz .*truncated"
    arrays = dict(good)
    if case == "strings":
        arrays["x_1"] = np.array([["a", "b"], ["c", "d"]])
        match = r"f.npz: array 'x_1' holds text"
    elif case == "objects":
        arrays["x_2"] = np.array([np.ones(2), np.ones(3)], dtype=object)
        match = r"f.npz: array 'x_2' holds Python objects"
    elif case == "complex":
        arrays["x_1"] = np.ones((5, 2)) * (1 + 2j)
        match = r"f.npz: array 'x_1' holds complex numbers"
    elif case == "huge npz":
        arrays["x_2"] = np.full((5, 2), 1e300)
        match = r"f.npz: array 'x_2' has 10 values too large for float32 .*index \(0, 0\)"
    np.savez(tmp_path / "f.npz", **arrays)
    return tmp_path / "f.npz", match


@pytest.mark.parametrize("case", ["duplicate column", "only time", "huge csv", "text file", "truncated", "strings",
                                  "objects", "complex", "huge npz"])
def test_bad_files_are_refused_naming_the_file_and_the_array(tmp_path, case):
    """At b1072ca: 'time,x,time' made the second time a coordinate, a complex npz lost its imaginary part with a
    warning, 1e300 was called NaN or inf, a CSV of times alone asked for data_dim 0, and the npz errors were numpy's
    (allow_pickle advice, 'File is not a zip file', 'could not convert string to float')."""
    path, match = _bad_file(tmp_path, case)
    with pytest.raises(ValueError, match=match):
        TrajectoryDataModule("file", path=str(path))


@pytest.mark.parametrize("times", [[], [0.5, float("nan")]])
def test_empty_or_nonfinite_predict_times_are_refused(tmp_path, times):
    """At b1072ca, times [] predicted at the snapshot times instead."""
    with pytest.raises(ValueError, match="non-empty list of finite times"):
        TrajectoryDataModule("semicircle", n_per_snapshot=20, times=times)


def test_a_checkpoint_tested_on_another_file_is_refused(tmp_path, monkeypatch, capsys):
    """A checkpoint meets a file of the same dimension with other snapshots: refused, naming the training file (at
    b1072ca it was scored, with PCA and whitening refitted on the other file). The same snapshots under another name
    are fine."""
    monkeypatch.chdir(tmp_path)
    trained = _gauss_file(tmp_path / "a.npz")
    main(["fit", *_common(trained), "--trainer.max_steps", "2"])
    ckpt = "runs/petal/version_0/checkpoints/last.ckpt"
    _fails(["test", *_common(_gauss_file(tmp_path / "b.npz", seed=1)), "--ckpt_path", ckpt])
    assert f"the checkpoint was trained on {tmp_path / 'a.npz'}" in capsys.readouterr().err
    (tmp_path / "moved.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    main(["test", *_common(tmp_path / "moved.npz"), "--ckpt_path", ckpt])
    _fails(["fit", *_common(tmp_path / "b.npz"), "--ckpt_path", ckpt, "--trainer.max_steps", "4"])


def test_snapshot_csv_header_spaces_and_long_headers(tmp_path):
    """``time, x, y`` names the columns time, x and y (as the vector and series loaders read it); a header of many
    columns is shown by its first names only."""
    from vsmd.datamodules.snapshot_files import load_snapshots

    (tmp_path / "s.csv").write_text("time, x , y\n0,1,2\n0,2,1\n1,3,4\n1,4,3\n")
    snaps = load_snapshots(tmp_path / "s.csv")
    assert snaps.times == [0.0, 1.0] and snaps.points[1].tolist() == [[3.0, 4.0], [4.0, 3.0]]
    (tmp_path / "w.csv").write_text(",".join(f"c{k}" for k in range(500)) + "\n" + ",".join(["1"] * 500) + "\n")
    with pytest.raises(ValueError, match=r"w\.csv: the CSV needs a header with a 'time' column \(set time_column\), "
                                         r"got \['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', \.\.\. "
                                         r"\(500 in all\)\]$"):
        load_snapshots(tmp_path / "w.csv")
