"""configs/vectors.yaml through the real ``vsmd`` entry point: a user's 5-D CSV trained (a few steps) and tested."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vsmd.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "vectors.yaml")


def tiny(save_dir: Path, path: Path, *extra: str) -> list[str]:
    """configs/vectors.yaml on ``path``, shrunk to run in seconds."""
    return ["--config", CONFIG, "--data.init_args.path", str(path), "--model.init_args.data_dim", "5",
            "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.init_args.hidden", "32", "--model.init_args.depth", "1",
            "--model.init_args.sample_steps", "5", "--model.init_args.n_straight", "20",
            "--model.init_args.straight_steps", "10", "--data.init_args.batch_size", "64",
            "--data.init_args.n_predict", "30", *extra]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    g = np.random.default_rng(0)
    x = g.standard_normal((300, 5)) @ np.diag([1.0, 2.0, 5.0, 0.5, 10.0]) + [0, 1, 2, 3, 100]
    p = tmp_path_factory.mktemp("data") / "measurements.csv"
    pd.DataFrame(x, columns=["mass", "width", "height", "depth", "energy"]).to_csv(p, index=False)
    return p


def test_fit_and_test_on_a_5d_csv(csv_file: Path, tmp_path: Path) -> None:
    main(["fit", *tiny(tmp_path, csv_file), "--trainer.max_steps", "3"])
    run = tmp_path / "vectors" / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 3
    main(["test", *tiny(tmp_path, csv_file), "--ckpt_path", str(ckpt)])
    out = json.loads((tmp_path / "vectors" / "version_1" / "test_metrics.json").read_text())
    m = out["metrics"]
    assert m["rmse_pmf"] is None  # the 2-D PMF of the toys: NaN (null in the JSON) for d = 5
    assert all(math.isfinite(m[f"{k}_{j}"]) and m[f"{k}_{j}"] > 0 for k in ("w1", "std_ratio", "straightness")
               for j in range(5))
    assert out["n_samples"] == 30  # the held-out rows: 10 % of 300
    # the run's own config reproduces the data (it names the file): test through it
    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "vectors" / "version_0" / "test_metrics.json").read_text())
    assert again["metrics"] == m


def test_predict_writes_finite_samples(csv_file: Path, tmp_path: Path) -> None:
    main(["fit", *tiny(tmp_path, csv_file), "--trainer.max_steps", "2"])
    main(["predict", *tiny(tmp_path, csv_file), "--ckpt_path",
          str(tmp_path / "vectors" / "version_0" / "checkpoints" / "last.ckpt")])
    with np.load(tmp_path / "vectors" / "version_1" / "samples.npz") as f:
        assert f["samples"].shape == (30, 5) and np.isfinite(f["samples"]).all()


@pytest.mark.parametrize("extra, message", [
    (["--data.init_args.columns", "[mass, energy, width]"],
     "the data have dimension 3 but the model was built for data_dim=5; set model.data_dim: 3"),
    (["--data.init_args.columns", "[mass, colour]"], "has no column 'colour'; its columns are 'mass', 'width'"),
    (["--data.init_args.delimiter", ";"], "reads as a single column 'mass,width,height,depth,energy' with delimiter "
                                          "';', but its header holds ','"),
], ids=["data_dim", "column", "delimiter"])
def test_bad_input_is_a_clear_error(csv_file: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path, csv_file, "--trainer.max_steps", "2", *extra)])
    assert message in capsys.readouterr().err


def test_the_config_without_a_file_says_how_to_give_one(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's placeholder path, my_vectors.csv, is not there
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--trainer.max_steps", "2"])
    assert "vector file not found: my_vectors.csv; pass --data.init_args.path" in capsys.readouterr().err
