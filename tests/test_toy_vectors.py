"""The vector task on a user's own vectors (vsmd.models.toy with VectorDataModule): the standardisation reaches the
model through the DataModule, is kept in the checkpoint and undone on sampling, so test metrics, samples and figures
are in the data's own units; the metric bundle is vsmd.metrics.vector_metrics; checkpoints from before the
standardisation was kept still load (the toys' and the vectors')."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import tiny as toy_args
from test_cli import versions
from test_vector_cli import tiny

from vsmd.cli import main
from vsmd.datamodules import VectorDataModule
from vsmd.metrics import vector_metrics
from vsmd.models import ToyAGM, ToyVSMD

MEANS, SCALES = [0.0, 1.0, 2.0, 3.0, 100.0], [1.0, 2.0, 5.0, 0.5, 10.0]
NEW_KEYS = ("sliced_w1", "mmd", "w1")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    g = np.random.default_rng(1)
    x = g.standard_normal((300, 5)) * SCALES + MEANS
    p = tmp_path_factory.mktemp("data") / "measurements.csv"
    pd.DataFrame(x, columns=["mass", "width", "height", "depth", "energy"]).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def fitted(csv_file: Path, tmp_path_factory) -> Path:
    """A 3-step fit of configs/vectors.yaml on the 5-D CSV; returns its save_dir (run vectors/version_0)."""
    save_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:  # as conftest's _plain_argv, which a module fixture runs before
        mp.setattr(sys, "argv", ["vsmd"])
        main(["fit", *tiny(save_dir, csv_file), "--trainer.max_steps", "3"])
    return save_dir


def _ckpt(save_dir: Path) -> Path:
    return save_dir / "vectors" / "version_0" / "checkpoints" / "last.ckpt"


def _runs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "vectors").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def _without_units(ckpt: Path, out: Path) -> Path:
    """The checkpoint as vsmd wrote it before it kept the standardisation: no data_mean / data_std."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["state_dict"]["data_mean"], state["state_dict"]["data_std"]
    torch.save(state, out)
    return out


def test_the_checkpoint_keeps_the_datamodules_standardisation(fitted: Path, csv_file: Path) -> None:
    dm = VectorDataModule(str(csv_file))
    mean, std = dm.standardisation
    state = torch.load(_ckpt(fitted), map_location="cpu", weights_only=True)["state_dict"]
    assert state["data_mean"].dtype == torch.float64
    assert torch.equal(state["data_mean"], mean) and torch.equal(state["data_std"], std)
    model = ToyVSMD.load_from_checkpoint(_ckpt(fitted), map_location="cpu")  # the Python API's way in
    x = torch.randn(7, 5)
    torch.testing.assert_close(model.to_data_units(x), dm.unstandardised(x), rtol=0, atol=0)


def test_test_scores_the_data_in_their_own_units(fitted: Path, csv_file: Path) -> None:
    main(["test", *tiny(fitted, csv_file), "--ckpt_path", str(_ckpt(fitted))])
    run = _runs(fitted)[-1]
    report = json.loads((run / "test_metrics.json").read_text())
    dm = VectorDataModule(str(csv_file))
    with np.load(run / "test_samples.npz") as f:
        real, generated = f["real"], f["generated"]
    raw = pd.read_csv(csv_file).to_numpy()[dm.heldout_rows]
    np.testing.assert_allclose(real, raw, rtol=1e-6, atol=1e-5)  # the held-out rows as the file has them
    assert abs(generated[:, 4].mean() - 100) < abs(generated[:, 4].mean())  # about 100, not about 0
    expected = vector_metrics(torch.from_numpy(real), torch.from_numpy(generated))
    for k, v in expected.items():
        if k != "rmse_pmf":
            assert report["metrics"][k] == pytest.approx(v, rel=1e-9), k
    assert all(np.isfinite(report["metrics"][k]) for k in NEW_KEYS)
    assert set(report["metric_notes"]) >= {"sliced_w1", "mmd", "w1"}
    assert report["standardisation"]["mean"] == dm.standardisation[0].tolist()
    assert (run / "test_samples.png").stat().st_size > 0  # the 5-D figure on the principal axes


def test_predict_writes_samples_in_the_datas_units(fitted: Path, csv_file: Path) -> None:
    main(["predict", *tiny(fitted, csv_file), "--ckpt_path", str(_ckpt(fitted))])
    run = _runs(fitted)[-1]
    with np.load(run / "samples.npz") as f:
        samples = f["samples"]
    assert (run / "samples.png").stat().st_size > 0
    model = ToyVSMD.load_from_checkpoint(_ckpt(fitted), map_location="cpu")
    x = model.process.split(model.generate(30, seed=model.hparams.seed + 2).state)[0]  # predict's seed, batch 0
    np.testing.assert_allclose(samples, VectorDataModule(str(csv_file)).unstandardised(x).numpy(), rtol=1e-6)


def test_a_vector_checkpoint_from_before_takes_the_datamodules_standardisation(fitted: Path, csv_file: Path,
                                                                               tmp_path: Path) -> None:
    main(["test", *tiny(fitted, csv_file), "--ckpt_path", str(_ckpt(fitted))])
    new = json.loads((_runs(fitted)[-1] / "test_metrics.json").read_text())
    old = _without_units(_ckpt(fitted), tmp_path / "old.ckpt")
    main(["test", *tiny(fitted, csv_file), "--ckpt_path", str(old)])
    assert json.loads((_runs(fitted)[-1] / "test_metrics.json").read_text())["metrics"] == new["metrics"]


def test_a_toy_checkpoint_from_before_loads_and_scores_the_same(tmp_path: Path) -> None:
    main(["fit", *toy_args(tmp_path), "--trainer.max_steps", "2"])
    ckpt = versions(tmp_path)[-1] / "checkpoints" / "last.ckpt"
    old = _without_units(ckpt, tmp_path / "old.ckpt")
    scores = []
    for path in (ckpt, old):
        main(["test", *toy_args(tmp_path), "--ckpt_path", str(path)])
        report = json.loads((versions(tmp_path)[-1] / "test_metrics.json").read_text())
        scores.append(report["metrics"])
        assert report["standardisation"] is None
    assert scores[0] == scores[1] and np.isfinite(scores[0]["rmse_pmf"])
    model = ToyVSMD.load_from_checkpoint(old, map_location="cpu")  # strict loading, the identity inserted
    assert model.standardisation is None


@pytest.mark.parametrize("cls", [ToyVSMD, ToyAGM])
def test_the_toys_have_no_standardisation_and_no_arithmetic(cls) -> None:
    model = cls(data_dim=2, hidden=8, depth=1)
    x = torch.randn(4, 2)
    assert model.standardisation is None and model.to_data_units(x) is x
    model.take_data_units(None)  # Toy2DDataModule: nothing to take
    assert model.standardisation is None


def test_a_different_standardisation_is_refused() -> None:
    model = ToyVSMD(data_dim=2, hidden=8, depth=1)
    units = (torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([3.0, 0.5], dtype=torch.float64))
    model.take_data_units(units)
    torch.testing.assert_close(model.to_data_units(torch.ones(1, 2)), torch.tensor([[4.0, -1.5]]))
    model.take_data_units(tuple(u.clone() for u in units))  # the same: taken again (a resumed fit)
    with pytest.raises(ValueError, match=r"the model learned data standardised with mean \[1, -2\], std \[3, 0.5\] "
                                         r"\(kept in its checkpoint\), but the data module gives mean \[0, -2\]"):
        model.take_data_units((torch.tensor([0.0, -2.0], dtype=torch.float64), units[1]))
    with pytest.raises(ValueError, match=r"gives unstandardised data \(standardise: false\): use the file, columns"):
        model.take_data_units(None)


def test_diverged_samples_give_null_for_every_metric(fitted: Path, csv_file: Path, tmp_path: Path) -> None:
    state = torch.load(_ckpt(fitted), map_location="cpu", weights_only=True)
    for k, v in state["state_dict"].items():
        if k.startswith("net_ema.module.") and v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(state, tmp_path / "nan.ckpt")
    with pytest.raises(SystemExit):
        main(["test", *tiny(fitted, csv_file), "--ckpt_path", str(tmp_path / "nan.ckpt")])
    metrics = json.loads((_runs(fitted)[-1] / "test_metrics.json").read_text())["metrics"]
    assert set(metrics) >= {"rmse_pmf", "w1_4", "std_ratio_4", "straightness_4", *NEW_KEYS}
    assert all(v is None for v in metrics.values())


def test_one_column_fits_tests_and_draws_its_histogram(csv_file: Path, tmp_path: Path) -> None:
    one = ["--data.init_args.columns", "[energy]", "--model.init_args.data_dim", "1"]
    main(["fit", *tiny(tmp_path, csv_file, *one), "--trainer.max_steps", "2"])
    main(["test", *tiny(tmp_path, csv_file, *one), "--ckpt_path", str(_ckpt(tmp_path))])
    run = _runs(tmp_path)[-1]
    assert np.isfinite(json.loads((run / "test_metrics.json").read_text())["metrics"]["w1"])
    assert (run / "test_samples.png").stat().st_size > 0


def test_a_checkpoint_refuses_another_file_and_takes_the_same_file_moved(fitted: Path, csv_file: Path,
                                                                         tmp_path: Path, capsys) -> None:
    assert torch.load(_ckpt(fitted), map_location="cpu", weights_only=True)["vsmd_vector_data"]["path"] == \
        str(csv_file.resolve())
    moved = tmp_path / "moved.csv"
    moved.write_bytes(csv_file.read_bytes())
    main(["test", *tiny(fitted, moved), "--ckpt_path", str(_ckpt(fitted))])  # the same vectors: scored
    other = tmp_path / "other.csv"
    frame = pd.read_csv(csv_file)
    frame.iloc[0, 0] += 1.0  # one value differs
    frame.to_csv(other, index=False)
    with pytest.raises(SystemExit):
        main(["test", *tiny(fitted, other), "--ckpt_path", str(_ckpt(fitted))])
    assert (f"the checkpoint was trained on {csv_file.resolve()}, but --data.init_args.path {other.resolve()} holds "
            "other vectors (their fingerprints differ)") in capsys.readouterr().err
