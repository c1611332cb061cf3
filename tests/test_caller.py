"""Errors speak the caller's language (issue 25): an option to change is named as the command line writes it
(``--ckpt_path``, ``--data.init_args.delimiter``), as ``vsmd.fit`` takes it (``data={"delimiter": ...}``), or as the
Python API takes it (``vsmd.load(path)``, the DataModule's argument ``path=``); and ``vsmd test`` / ``vsmd.evaluate``
say which evaluation settings differ from the training run's."""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vsmd
from vsmd.caller import called_from, caller, option
from vsmd.checkpointing import CheckpointError
from vsmd.cli import main
from vsmd.datamodules import VectorDataModule
from vsmd.model import Model
from vsmd.models import ToyVSMD

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": 16, "depth": 1, "sample_steps": 5, "n_straight": 20, "straight_steps": 10}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Model, Path]:
    """3 steps of a tiny ToyVSMD on a 3-D CSV, through vsmd.fit (sampler heun, 5 grid points)."""
    tmp = tmp_path_factory.mktemp("caller")
    x = np.random.default_rng(0).standard_normal((200, 3)) * [1.0, 2.0, 3.0]
    csv = tmp / "measurements.csv"
    pd.DataFrame(x, columns=["a", "b", "c"]).to_csv(csv, index=False)
    model = vsmd.fit(ROOT / "configs" / "vectors.yaml", data={"path": str(csv), "batch_size": 64},
                     model={"data_dim": 3, **TINY},
                     trainer={"max_steps": 3, "enable_progress_bar": False, "enable_model_summary": False,
                              "logger": {"init_args": {"save_dir": str(tmp / "runs")}}})
    return model, csv


def cli(model: Model, *more: str) -> list[str]:
    return ["test", "--config", str(model.run_dir / "config.yaml"), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(model.run_dir.parents[1] / "tests"), *more]


def cli_error(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args)
    return capsys.readouterr().err


def test_option_names_a_setting_as_each_caller_writes_it() -> None:
    assert caller() == "cli"  # the default: the command line (and a DataModule built by hand)
    assert option("ckpt_path") == "--ckpt_path" and option("trainer.max_steps", "9") == "--trainer.max_steps 9"
    assert option("data.delimiter", "';'") == "--data.init_args.delimiter ';'"
    assert option("model.sample_steps") == "--model.init_args.sample_steps"
    with called_from("fit"):
        assert option("data.path", "/x/my.csv") == """data={"path": '/x/my.csv'}"""
        assert option("trainer.logger.init_args.save_dir") == 'trainer={"logger": {"init_args": {"save_dir": ...}}}'
        assert option("ckpt_path") == "ckpt_path=..." and option("trainer.max_steps", "9") == 'trainer={"max_steps": 9}'
    with called_from("python"):
        assert option("ckpt_path") == "the path of vsmd.load(path)" and option("ckpt_path", "r") == "vsmd.load('r')"
        assert option("data.delimiter", "';'") == "the DataModule's argument delimiter=';'"
        assert option("model.sample_steps", "50") == "vsmd.evaluate(model, sample_steps=50)"
    assert caller() == "cli"
    with pytest.raises(ValueError, match="caller 'notebook': one of cli, fit, python"):
        with called_from("notebook"):
            pass


def test_a_missing_checkpoint(fitted, capsys) -> None:
    model, _ = fitted
    missing = model.checkpoint.parent / "step=99.ckpt"
    advice = f"the newest loadable checkpoint of that run is {model.checkpoint} (step 3); pass it as "
    assert f"checkpoint not found: {missing} ({advice}--ckpt_path)" in cli_error(cli(model, "--ckpt_path",
                                                                                      str(missing)), capsys)
    with pytest.raises(CheckpointError, match=re.escape(f"({advice}the path of vsmd.load(path))")):
        vsmd.load(missing)
    with pytest.raises(CheckpointError, match=re.escape(f"({advice}ckpt_path=...)")):  # resume in vsmd.fit
        vsmd.fit(model.run_dir / "config.yaml", ckpt_path=str(missing))
    folder = model.checkpoint.parent
    assert f"--ckpt_path {folder} is a folder" in cli_error(cli(model, "--ckpt_path", str(folder)), capsys)
    with pytest.raises(CheckpointError, match=re.escape(f"vsmd.load({str(folder)!r}) is a folder")):
        vsmd.load(folder)


def test_a_damaged_checkpoint(fitted, capsys) -> None:
    model, _ = fitted
    damaged = model.checkpoint.parent / "damaged.ckpt"
    data = bytearray(model.checkpoint.read_bytes())
    with zipfile.ZipFile(model.checkpoint) as zf:  # a byte in the middle of the largest tensor flips
        entry = max(zf.infolist(), key=lambda e: e.file_size)
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    data[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    try:
        said = cli_error(cli(model, "--ckpt_path", str(damaged)), capsys)
        assert re.search(rf"checkpoint {re.escape(str(damaged))} is corrupt.*pass it as --ckpt_path", said)
        with pytest.raises(CheckpointError, match=r"damaged\.ckpt is corrupt.*pass it as the path of "
                                                  r"vsmd\.load\(path\)$"):
            vsmd.load(damaged)
    finally:
        damaged.unlink()


def test_other_data_than_the_checkpoints(fitted, tmp_path: Path, capsys) -> None:
    model, csv = fitted
    csv, other = csv.resolve(), tmp_path.resolve() / "other.csv"
    frame = pd.read_csv(csv)
    frame.iloc[0, 0] += 1.0  # one value differs
    frame.to_csv(other, index=False)
    said = cli_error(cli(model, "--ckpt_path", str(model.checkpoint), "--data.init_args.path", str(other)), capsys)
    assert (f"but --data.init_args.path {other} holds other vectors (their fingerprints differ); pass the file the "
            f"checkpoint was trained on: --data.init_args.path {csv}") in said
    with pytest.raises(ValueError, match=re.escape(
            f"but the DataModule's argument path={str(other)!r} holds other vectors (their fingerprints differ); pass "
            f"the file the checkpoint was trained on: the DataModule's argument path={str(csv)!r}")):
        vsmd.evaluate(model, datamodule=VectorDataModule(str(other)))


def test_a_loader_error(fitted, tmp_path: Path, capsys) -> None:
    """A CSV with another delimiter: --data.init_args.delimiter, data={"delimiter": ...}, delimiter=."""
    model, csv = fitted
    semi = tmp_path / "semi.csv"
    pd.read_csv(csv).to_csv(semi, index=False, sep=";")
    said = cli_error(["fit", "--config", str(model.run_dir / "config.yaml"), "--data.init_args.path", str(semi)],
                     capsys)
    assert "but its header holds ';': set --data.init_args.delimiter ';' (in YAML" in said
    with pytest.raises(ValueError, match=re.escape("""but its header holds ';': set data={"delimiter": ';'}""")):
        vsmd.fit(model.run_dir / "config.yaml", data={"path": str(semi)})
    moved = Model(model.module, model.checkpoint, model.data_class, model.data_settings | {"path": str(semi)})
    with pytest.raises(ValueError, match=re.escape("but its header holds ';': set the DataModule's argument "
                                                   "delimiter=';'")):
        moved.datamodule
    with pytest.raises(FileNotFoundError, match=re.escape("pass the DataModule's argument path=... with a")):
        Model(model.module, model.checkpoint, model.data_class, model.data_settings | {"path": "gone.csv"}).datamodule
    with pytest.raises(FileNotFoundError, match=re.escape("pass --data.init_args.path with a")):
        VectorDataModule("gone.csv")  # built by hand, outside the API: the command line's words, as before


# ------------------------------------------------------------------------------------------------------------
# evaluation settings other than the training run's are said
def notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("vsmd: evaluating with")]


def test_vsmd_test_says_which_evaluation_settings_differ(fitted, capsys) -> None:
    model, _ = fitted
    capsys.readouterr()
    main(cli(model, "--ckpt_path", str(model.checkpoint), "--trainer.limit_test_batches", "1"))
    assert notes(capsys.readouterr().err) == []  # the run's own config: nothing differs
    main(cli(model, "--ckpt_path", str(model.checkpoint), "--trainer.limit_test_batches", "1",
             "--model.init_args.sampler", "em", "--model.init_args.sample_steps", "4"))
    assert notes(capsys.readouterr().err) == [
        "vsmd: evaluating with sampler=em (the checkpoint was trained with sampler=heun)",
        "vsmd: evaluating with sample_steps=4 (the checkpoint was trained with sample_steps=5)"]


def test_evaluate_says_which_evaluation_settings_differ(fitted, capsys) -> None:
    model, _ = fitted
    capsys.readouterr()
    vsmd.evaluate(model, sample_steps=5)  # the checkpoint's own value
    assert notes(capsys.readouterr().err) == []
    vsmd.evaluate(model, sampler="em", nfe=3)
    assert notes(capsys.readouterr().err) == [
        "vsmd: evaluating with sampler=em (the checkpoint was trained with sampler=heun)",
        "vsmd: evaluating with sample_steps=4 (the checkpoint was trained with sample_steps=5)"]
    assert model.module.hparams.sampler == "heun"


def test_a_training_option_is_named_as_a_fit_option() -> None:
    """The 'ei' sampler on a momentum model trained with init_velocity dsm: retrain with init_velocity hsm."""
    with pytest.raises(ValueError, match="or train with --model.init_args.init_velocity hsm$"):
        ToyVSMD(data_dim=2, hidden=8, depth=1, process="vsuld", init_velocity="dsm", sampler="ei")
    model = Model(ToyVSMD(data_dim=2, hidden=8, depth=1, process="vsuld", init_velocity="dsm"))
    with pytest.raises(ValueError, match=re.escape("""or train with vsmd.fit(..., model={"init_velocity": 'hsm'})""")):
        model.sample(10, sampler="ei")
    with called_from("python"):
        assert option("trainer.max_steps", "9") == 'vsmd.fit(..., trainer={"max_steps": 9})'
        assert option("trainer.logger.init_args.save_dir", "out") == "save_dir='out'"
