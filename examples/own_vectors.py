"""Your own vectors from Python: a 5-D CSV trained, sampled and scored (docs/python.md).

    python examples/own_vectors.py            # configs/vectors.yaml as it is: 5000 steps, a few minutes on a CPU
    python examples/own_vectors.py --quick    # 20 steps of a tiny network, in seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import vsmd

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = dict(hidden=32, depth=1, sample_steps=5, n_straight=20, straight_steps=10)  # a tiny network, few grid points


def write_measurements(path: Path, n: int = 2000) -> None:
    """Five correlated measurements on very different scales (what a user's table looks like)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 5))
    x = z @ np.array([[1.0, 0.5, 0, 0, 0], [0, 2.0, 0, 0, 0], [0, 0, 5.0, 0, 1.0], [0, 0, 0, 0.5, 0],
                      [0, 0, 0, 0, 10.0]]) + [0.0, 1.0, 2.0, 3.0, 100.0]
    pd.DataFrame(x, columns=["mass", "width", "height", "depth", "energy"]).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps of a tiny network (seconds)")
    parser.add_argument("--save_dir", default="runs", help="where the run folder goes (runs/vectors/version_N)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "measurements.csv"
        write_measurements(csv)

        model = vsmd.fit(CONFIGS / "vectors.yaml", data={"path": str(csv)},
                         model={"data_dim": 5, **(QUICK if args.quick else {})},
                         trainer={"logger": {"init_args": {"save_dir": args.save_dir}},
                                  **({"max_steps": 20, "enable_progress_bar": False} if args.quick else {})})
        samples = model.sample(1000)       # (1000, 5), in the CSV's units
        metrics = vsmd.evaluate(model)     # the metrics of `vsmd test`: W1, std ratio and straightness per column

    print(f"trained: {model.run_dir}")
    print(f"samples: {tuple(samples.shape)}, column means " + ", ".join(f"{v:.2f}" for v in samples.mean(0).tolist()))
    print("metrics: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if v is not None))


if __name__ == "__main__":
    main()
