"""Your own CSV of 3 series, forecast and scored by CRPS-Sum from Python (docs/python.md).

The same run from the command line is `vsmd fit --config configs/csv_forecast.yaml --data.init_args.path my.csv`
and `vsmd test ... --ckpt_path runs/csv_forecast/version_0/checkpoints/last.ckpt`.

    python examples/own_forecast.py            # configs/csv_forecast.yaml as it is: 2000 steps (minutes on a CPU)
    python examples/own_forecast.py --quick    # 3 steps of a tiny network, in seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import vsmd
from vsmd.metrics import crps_sum

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK_MODEL = dict(hidden=8, layers=1, cond_dim=8, channels=4, residual_layers=2, sa_every=2, sa_steps=2, sa_warmup=0,
                   sa_paths=16, sa_points=8, sample_steps=3, num_samples=16)
QUICK_DATA = dict(prediction_length=5, test_windows=2, batch_size=8, num_batches_per_epoch=3, n_val=8)


def write_series(path: Path, days: int = 200) -> None:
    """Three daily series in wide form: a date column and one column per series."""
    rng = np.random.default_rng(0)
    t = np.arange(days)
    weekly = np.sin(2 * np.pi * t / 7)
    table = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=days, freq="D").strftime("%Y-%m-%d")})
    for name, level, season in (("north", 10.0, 1.0), ("south", 20.0, 2.0), ("east", 5.0, 0.5)):
        table[name] = level + season * weekly + np.cumsum(rng.normal(0, 0.2, days))
    table.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps of a tiny network (seconds)")
    parser.add_argument("--save_dir", default="runs", help="where the run folder goes (runs/csv_forecast/version_N)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "sales.csv"
        write_series(csv)

        model = vsmd.fit(CONFIGS / "csv_forecast.yaml", data={"path": str(csv), **(QUICK_DATA if args.quick else {})},
                         model={"target_dim": 3, **(QUICK_MODEL if args.quick else {})},
                         trainer={"logger": {"init_args": {"save_dir": args.save_dir}},
                                  **({"max_steps": 3, "enable_progress_bar": False} if args.quick else {})})
        windows = model.test_windows()            # the rolling test windows at the end of the series
        forecasts = model.forecast()              # (windows, samples, horizon, 3), in the CSV's units
        metrics = vsmd.evaluate(model)            # CRPS-Sum and the rest of `vsmd test`
        ahead = model.forecast(future=True)       # (1, samples, horizon, 3): the days after the CSV's last row
        future = model.future_window()            # their dates and the series' names

    print(f"trained: {model.run_dir}")
    print(f"forecasts: {tuple(forecasts.shape)} from {windows['forecast_start']}")
    print(f"CRPS-Sum (vsmd.evaluate): {metrics['crps_sum']:.4f}")
    print(f"CRPS-Sum of these forecasts (vsmd.metrics.crps_sum): "
          f"{crps_sum(forecasts.numpy(), windows['future'].numpy()):.4f}")
    median = ahead[0].median(dim=0).values      # (horizon, 3)
    print(f"after the last row: {future['times'][0][0]} .. {future['times'][0][-1]}, median of "
          f"{future['series'][0]}: " + ", ".join(f"{v:.2f}" for v in median[:, 0].tolist()))


if __name__ == "__main__":
    main()
