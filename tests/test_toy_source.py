"""The 2-D toys as a source of VectorDataModule (``dataset: spiral``): the same stream and fixed sets as
Toy2DDataModule, the options of the other source refused, and checkpoints of either form tested with configs of
either form (the old form's numbers unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import vsmd
from vsmd.checkpointing import CheckpointError
from vsmd.cli import check_same_data, main
from vsmd.datamodules import FileSource, Toy2DDataModule, ToySource, VectorDataModule

ROOT = Path(__file__).resolve().parents[1]
TOY2D = "vsmd.datamodules.Toy2DDataModule"
VECTORS = "vsmd.datamodules.VectorDataModule"


def batches(dm, n: int = 3) -> list[torch.Tensor]:
    """n training batches, then the val, test and predict sets as their loaders give them."""
    it = iter(dm.train_dataloader())
    out = [next(it) for _ in range(n)]
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        out += [b[0] if isinstance(b, (list, tuple)) else b for b in loader]
    return out


@pytest.mark.parametrize("kwargs", [
    dict(dataset="spiral", stretch=[1, 8], batch_size=64, n_val=100, n_test=150, n_predict=40, seed=3),
    dict(dataset="checkerboard", stretch=[6, 1], batch_size=64, n_val=100, n_test=150, n_predict=40, seed=0,
         rotate=30.0)], ids=["spiral", "checkerboard"])
def test_the_toy_source_gives_the_batches_and_sets_of_toy2d(kwargs) -> None:
    old, new = Toy2DDataModule(**kwargs), VectorDataModule(**kwargs)
    assert all(torch.equal(a, b) for a, b in zip(batches(old), batches(new), strict=True))
    for split in ("val", "test", "predict"):
        assert torch.equal(old.fixed_set(split), new.fixed_set(split))
    assert isinstance(new.source, ToySource) and isinstance(old, VectorDataModule)
    assert new.data_dim == old.data_dim == 2
    assert new.standardisation is None and new.column_names is None and new.identity is None and new.path is None
    resumed = VectorDataModule(**kwargs).train_dataloader()  # the stream's position comes back from a checkpoint
    first = new.train_dataloader()
    it = iter(first)
    next(it), next(it)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(next(iter(resumed)), next(it))


def test_the_toy_source_defaults() -> None:
    new = VectorDataModule(dataset="spiral")
    old = Toy2DDataModule("spiral", [1.0, 1.0], batch_size=256, n_predict=1000)  # no stretch; the file's loaders
    assert all(torch.equal(a, b) for a, b in zip(batches(new, 1), batches(old, 1), strict=True))
    assert [len(new.fixed_set(s)) for s in ("val", "test", "predict")] == [2000, 3000, 1000]
    assert new.hparams["dataset"] == "spiral" and new.hparams["stretch"] is None  # the options as given


def test_toy2d_keeps_its_own_options_and_roles() -> None:
    dm = Toy2DDataModule()
    assert dict(dm.hparams) == {"dataset": "spiral", "stretch": [1.0, 8.0], "batch_size": 512, "n_val": 2000,
                                "n_test": 3000, "n_predict": 3000, "seed": 0, "rotate": 0.0}
    assert (dm.dataset, dm.stretch, dm.rotate, dm.n_val, dm.n_test) == ("spiral", [1.0, 8.0], 0.0, 2000, 3000)
    assert Toy2DDataModule.DATA_SETTINGS.role("seed") == "loading"
    assert VectorDataModule.DATA_SETTINGS.role("dataset") == "data"
    with pytest.raises(ValueError, match="batch_size, n_val, n_test and n_predict must be >= 1"):
        Toy2DDataModule(n_val=0)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "VectorDataModule needs its vectors: path (a .npy, .npz, .csv or .parquet file of your own) or dataset "
         "(a generated 2-D toy: spiral or checkerboard)"),
    ({"path": "x.csv", "dataset": "spiral"}, "give path (a file of vectors) or dataset (a generated toy), not both: "
                                             "path 'x.csv', dataset 'spiral'"),
    ({"dataset": "spiral", "columns": [0, 1]}, "columns applies to a file (path) only; the toy dataset 'spiral' is "
                                               "generated in its own units, with fixed sets of n_val and n_test "
                                               "points: leave columns out"),
    ({"dataset": "spiral", "key": "x"}, "key applies to a file (path) only"),
    ({"dataset": "checkerboard", "standardise": False, "val_fraction": 0.2},
     "val_fraction and standardise apply to a file (path) only; the toy dataset 'checkerboard'"),
    ({"dataset": "spiral", "delimiter": ";", "encoding": "latin-1"}, "delimiter and encoding apply to a file"),
    ({"path": "x.csv", "stretch": [1, 8]}, "x.csv: stretch applies to a generated toy (dataset: spiral or "
                                           "checkerboard) only; a file's vectors are used as they are, and its "
                                           "held-out rows are val_fraction of them: leave stretch out"),
    ({"path": "x.csv", "rotate": 45, "n_val": 10, "n_test": 10}, "x.csv: rotate, n_val and n_test apply to a "
                                                                 "generated toy"),
    ({"dataset": "moons"}, "unknown toy dataset 'moons'; choose one of spiral, checkerboard"),
    ({"dataset": "spiral", "stretch": [1.0]}, "stretch must be two positive factors [x, y], got [1.0]"),
    ({"dataset": "spiral", "rotate": float("inf")}, "rotate must be a finite angle in degrees, got inf"),
    ({"dataset": "spiral", "n_test": 0}, "n_val and n_test must be >= 1 (the sizes of the toy's validation and test "
                                         "sets), got 2000 and 0"),
    ({"dataset": "spiral", "batch_size": 0}, "batch_size and n_predict must be >= 1, got 0 and 1000"),
])
def test_mixed_or_bad_source_options_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        VectorDataModule(**kwargs)
    assert message in str(err.value)


def test_a_toy_has_no_rows_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(AttributeError, match=r"the vectors are generated \(ToySource\('spiral', stretch=\[1.0, 8.0\], "
                                             r"rotate=0\)\), not read from a file"):
        Toy2DDataModule().train_rows
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 3)))
    dm = VectorDataModule(str(path))
    assert isinstance(dm.source, FileSource) and dm.path == str(path) and len(dm.train_set()) == 36


def test_the_data_check_compares_the_two_forms_of_a_toy() -> None:
    old = dict(Toy2DDataModule("checkerboard", [6.0, 1.0], batch_size=256).hparams)
    new = {"dataset": "checkerboard", "stretch": [6, 1], "batch_size": 256, "n_predict": 3000}
    for trained, given in (((TOY2D, old), (VECTORS, new)), ((VECTORS, new), (TOY2D, old))):
        check_same_data("c.ckpt", trained, given, "(hint)")  # the same data: accepted both ways
    with pytest.raises(CheckpointError, match=r"c.ckpt was trained on data with stretch=\[6.0, 1.0\], but the "
                                              r"config gives data stretch=\[1, 6\]; the metrics would be "
                                              r"meaningless \(hint\)"):
        check_same_data("c.ckpt", (TOY2D, old), (VECTORS, new | {"stretch": [1, 6]}), "(hint)")
    with pytest.raises(CheckpointError, match="trained on data with dataset='checkerboard', but the config gives data "
                                              "dataset=None"):
        check_same_data("c.ckpt", (TOY2D, old), (VECTORS, {"path": "x.csv"}), "(hint)")
    with pytest.raises(CheckpointError, match="trained on data with dataset=None, but the config gives data "
                                              "dataset='checkerboard'"):  # a file's checkpoint from before the toys
        check_same_data("c.ckpt", (VECTORS, {"path": "x.csv", "seed": 0}), (TOY2D, old), "(hint)")
    # a toy's options left out stand for their defaults; a toy's seed draws other fixed sets from the same law, so
    # another one may be tested (in both forms), while a file's seed decides which rows are held out
    check_same_data("c.ckpt", (VECTORS, {"dataset": "spiral"}), (VECTORS, {"dataset": "spiral", "stretch": [1, 1],
                                                                           "rotate": 0}), "(hint)")
    check_same_data("c.ckpt", (TOY2D, old), (VECTORS, new | {"seed": 5}), "(hint)")
    check_same_data("c.ckpt", (VECTORS, new), (VECTORS, new | {"seed": 5}), "(hint)")
    with pytest.raises(CheckpointError, match="seed=0, but the config gives data seed=5"):
        check_same_data("c.ckpt", (VECTORS, {"path": "x.csv", "seed": 0}), (VECTORS, {"path": "x.csv", "seed": 5}),
                        "(hint)")
    with pytest.raises(CheckpointError, match="was trained on a Toy2DDataModule but the config gives a "
                                              "TrajectoryDataModule: the checkpoint belongs to another task"):
        check_same_data("c.ckpt", (TOY2D, old), ("vsmd.datamodules.TrajectoryDataModule", {}), "(hint)")


# ------------------------------------------------------------------------------------------------------------
# a checkpoint of either config form, tested with either form
OLD_DATA = {"class_path": TOY2D, "init_args": {"dataset": "spiral", "stretch": [1.0, 8.0], "batch_size": 256}}


def shrunk(save_dir: Path, config: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.logger.init_args.name", "run", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.val_check_interval", "10",
            "--trainer.limit_val_batches", "1", "--model.init_args.hidden", "16", "--model.init_args.depth", "1",
            "--model.init_args.sa_every", "5", "--model.init_args.sa_warmup", "0", "--model.init_args.sa_paths", "16",
            "--model.init_args.sa_points", "6", "--model.init_args.sample_steps", "5",
            "--model.init_args.n_straight", "20", "--model.init_args.straight_steps", "10",
            "--data.init_args.batch_size", "64", "--data.init_args.n_val", "64", "--data.init_args.n_test", "300",
            *extra]


@pytest.fixture(scope="module")
def both_forms(tmp_path_factory) -> dict:
    """The shipped spiral-8Y config (the new form) and the same config with the Toy2DDataModule of before, each
    fitted for 12 steps and tested."""
    tmp = tmp_path_factory.mktemp("forms")
    new = ROOT / "configs" / "spiral8y.yaml"
    cfg = yaml.safe_load(new.read_text())
    assert cfg["data"]["class_path"] == VECTORS and cfg["data"]["init_args"]["dataset"] == "spiral"
    old = tmp / "spiral8y_toy2d.yaml"
    old.write_text(yaml.safe_dump(cfg | {"data": OLD_DATA}))
    out = {"config": {"old": old, "new": new}}
    for form, config in out["config"].items():
        main(["fit", *shrunk(tmp / form, config), "--trainer.max_steps", "12"])
        ckpt = tmp / form / "run" / "version_0" / "checkpoints" / "last.ckpt"
        main(["test", *shrunk(tmp / form, config), "--ckpt_path", str(ckpt)])
        out[form] = {"ckpt": ckpt, "metrics": json.loads((tmp / form / "run" / "version_1" /
                                                          "test_metrics.json").read_text())["metrics"]}
    out["tmp"] = tmp
    return out


def test_both_config_forms_train_the_same_weights(both_forms) -> None:
    old, new = (torch.load(both_forms[f]["ckpt"], map_location="cpu", weights_only=True) for f in ("old", "new"))
    assert old["datamodule_hyper_parameters"]["_class_path"] == TOY2D
    assert new["datamodule_hyper_parameters"]["_class_path"] == VECTORS
    assert old["state_dict"].keys() == new["state_dict"].keys()
    assert all(torch.equal(old["state_dict"][k], new["state_dict"][k]) for k in old["state_dict"])
    assert both_forms["old"]["metrics"] == both_forms["new"]["metrics"]


@pytest.mark.parametrize("ckpt_form, config_form", [("old", "new"), ("new", "old")])
def test_a_checkpoint_of_one_form_is_tested_with_a_config_of_the_other(both_forms, ckpt_form: str,
                                                                       config_form: str) -> None:
    save = both_forms["tmp"] / f"{ckpt_form}_with_{config_form}"
    main(["test", *shrunk(save, both_forms["config"][config_form]), "--ckpt_path",
          str(both_forms[ckpt_form]["ckpt"])])
    metrics = json.loads((save / "run" / "version_0" / "test_metrics.json").read_text())["metrics"]
    assert metrics == both_forms[ckpt_form]["metrics"]


def test_another_toy_than_the_checkpoints_is_refused_in_the_new_form(both_forms, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["test", *shrunk(both_forms["tmp"] / "refused", both_forms["config"]["new"]),
              "--data.init_args.dataset", "checkerboard", "--ckpt_path", str(both_forms["old"]["ckpt"])])
    assert "was trained on data with dataset='spiral', but the config gives data dataset='checkerboard'" in \
        capsys.readouterr().err


def test_an_old_form_checkpoint_loads_through_the_api(both_forms) -> None:
    model = vsmd.load(both_forms["old"]["ckpt"])
    assert model.data_class == TOY2D and type(model.datamodule) is Toy2DDataModule
    model.datamodule = VectorDataModule(dataset="spiral", stretch=[1, 8], batch_size=64, n_val=64, n_test=300)
    metrics = vsmd.evaluate(model)
    assert metrics == both_forms["old"]["metrics"]
    assert torch.equal(model.sample(50, seed=1), vsmd.load(both_forms["new"]["ckpt"]).sample(50, seed=1))
    with pytest.raises(CheckpointError, match="stretch=\\[1.0, 8.0\\], but the config gives data stretch=\\[8, 1\\]"):
        model.datamodule = VectorDataModule(dataset="spiral", stretch=[8, 1])


def test_a_fit_of_one_form_resumes_with_the_other(both_forms) -> None:
    """fit --ckpt_path of an old-form checkpoint with the new config draws on the same stream as with its own."""
    states = []
    for form in ("old", "new"):
        save = both_forms["tmp"] / f"resumed_with_{form}"
        main(["fit", *shrunk(save, both_forms["config"][form]), "--trainer.max_steps", "16", "--ckpt_path",
              str(both_forms["old"]["ckpt"])])
        ckpt = torch.load(save / "run" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)
        assert ckpt["global_step"] == 16
        states.append(ckpt["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
