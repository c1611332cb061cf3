"""Every script of examples/ runs (issue 25): each as a subprocess with --quick (a few training steps of a tiny
network), as a user runs it from the repository root, on one thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_examples_are_these() -> None:
    assert [p.stem for p in EXAMPLES] == ["own_forecast", "own_vectors", "sample_checkpoint", "trajectories_from_csv"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A spiral-8Y checkpoint of 10 steps of a tiny network, for sample_checkpoint.py."""
    import vsmd

    save_dir = tmp_path_factory.mktemp("runs")
    model = vsmd.fit(ROOT / "configs" / "spiral8y.yaml", data={"n_test": 300},
                     model={"hidden": 16, "depth": 1, "n_straight": 20, "straight_steps": 10, "sample_steps": 10},
                     trainer={"max_steps": 10, "enable_progress_bar": False, "enable_model_summary": False,
                              "logger": {"init_args": {"save_dir": str(save_dir)}}})
    return model.checkpoint


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path, request) -> None:
    if script.stem == "sample_checkpoint":  # a user's checkpoint, sampled with ei at NFE 6
        args = [str(request.getfixturevalue("checkpoint")), "--sampler", "ei", "--nfe", "6", "--n", "500"]
    else:
        args = ["--quick"]
    out = run(script, tmp_path, *args)
    assert out.returncode == 0, f"{script.name} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    text = out.stdout
    if script.stem == "own_vectors":
        assert "samples: (1000, 5)" in text
        means = [float(v) for v in re.search(r"column means (.*)", text).group(1).split(", ")]
        assert 50 < means[4] < 150  # the CSV's units (the energy column is about 100), not the standardised ones
        assert re.search(r"metrics: .*w1_4 [\d.]+", text)
    elif script.stem == "own_forecast":
        assert "forecasts: (2, 16, 5, 3)" in text
        api = re.search(r"CRPS-Sum \(vsmd.evaluate\): ([\d.]+)", text).group(1)
        own = re.search(r"CRPS-Sum of these forecasts \(vsmd.metrics.crps_sum\): ([\d.]+)", text).group(1)
        assert api == own  # the test step's forecasts are model.forecast()'s (the same windows and seed)
        # the CSV's 200 days start on 2024-01-01: the 5 days after its last row (2024-07-18)
        assert "after the last row: 2024-07-19 .. 2024-07-23, median of north: " in text
    elif script.stem == "sample_checkpoint":
        assert "wrote (500, 2) samples to samples.npy" in text and (tmp_path / "samples.npy").is_file()
        assert re.search(r"metrics: rmse_pmf [\d.]+", text)
        return
    else:
        assert "positions: (3, 500, 2)" in text and re.search(r"w1_holdout_t2 [\d.]+", text)
    assert (tmp_path / "runs").is_dir()  # the run folder, where vsmd fit puts it
