"""Trajectory inference from a CSV of snapshots, from Python (docs/python.md, docs/tasks/trajectories.md).

A population is seen at 5 times as unpaired points (a CSV: a time column and one column per coordinate); the middle
snapshot is held out of training, and the model predicts the population there and at times it never saw.

    python examples/trajectories_from_csv.py            # configs/semicircle.yaml's 3000 steps (minutes on a CPU)
    python examples/trajectories_from_csv.py --quick    # 20 steps of a tiny network (the test suite runs this)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import vsmd

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_snapshots(path: Path, n: int = 300) -> None:
    """A blob moving along a half circle, seen at t = 0, 1, 2, 3, 4 (each time a fresh set of points)."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(5):
        angle = np.pi * (1 - t / 4)
        centre = 3 * np.array([np.cos(angle), np.sin(angle)])
        points = centre + 0.3 * rng.standard_normal((n, 2))
        rows.append(pd.DataFrame({"time": float(t), "x": points[:, 0], "y": points[:, 1]}))
    pd.concat(rows).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps of a tiny network (seconds)")
    parser.add_argument("--save_dir", default="runs", help="where the run folder goes (runs/semicircle/version_N)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "snapshots.csv"
        write_snapshots(csv)

        model = vsmd.fit(CONFIGS / "semicircle.yaml", data={"dataset": "file", "path": str(csv), "holdout": [2]},
                         model={"sample_steps": 40, **({"hidden": 32, "depth": 1} if args.quick else {})},
                         trainer={"logger": {"init_args": {"save_dir": args.save_dir}},
                                  **({"max_steps": 20, "enable_progress_bar": False} if args.quick else {})})
        positions = model.trajectories([0.5, 2.0, 3.5], n=500)   # (3, 500, 2) at those times
        metrics = vsmd.evaluate(model)                            # W1, MMD, sliced W1 per snapshot, baselines

    print(f"trained: {model.run_dir}")
    mean = ", ".join(f"{v:.2f}" for v in positions[1].mean(0).tolist())
    print(f"positions: {tuple(positions.shape)}; mean at t = 2 (held out): ({mean}), the data's: (0.00, 3.00)")
    print("metrics at the held-out snapshot: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()
                                                         if "holdout" in k and v is not None))


if __name__ == "__main__":
    main()
