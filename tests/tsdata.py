"""Small synthetic GluonTS datasets, in the GP-Copula archive layout and in the materialised layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from vsmd.datamodules.timeseries import write_materialised


def synthetic_series(n_series: int, length: int, seed: int = 0) -> np.ndarray:
    """Positive, correlated random walks with a weekly wave: (n_series, length) float64."""
    rng = np.random.default_rng(seed)
    common = np.cumsum(rng.normal(0, 0.01, length))
    own = np.cumsum(rng.normal(0, 0.005, (n_series, length)), axis=1)
    wave = 0.02 * np.sin(2 * np.pi * np.arange(length) / 5)
    return 1.0 + 0.1 * np.arange(n_series)[:, None] + common + own + wave


def _entries(values: np.ndarray, start: str, lengths: list[int]) -> list[dict]:
    return [{"start": start, "target": values[i, :n].tolist()} for n in lengths for i in range(len(values))]


def make_gp_copula_archive(data_dir: Path, n_train: int = 200, seed: int = 0) -> tuple[Path, np.ndarray]:
    """``data_dir/exchange_rate_nips.tar.gz`` in the GP-Copula layout (8 series, freq B, H = 30, 5 windows),
    with the old ``time_granularity`` metadata. Returns the archive and the full values (8, n_train + 150)."""
    h, windows = 30, 5
    values = synthetic_series(8, n_train + h * windows, seed)
    files = {
        "exchange_rate_nips/metadata/metadata.json": json.dumps({"time_granularity": "B"}),
        "exchange_rate_nips/train/train.json": "\n".join(
            json.dumps(e) for e in _entries(values, "1990-01-01 00:00:00", [n_train])),
        "exchange_rate_nips/test/test.json": "\n".join(
            json.dumps(e) for e in _entries(values, "1990-01-01 00:00:00",
                                            [n_train + h * k for k in range(1, windows + 1)])),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "exchange_rate_nips.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return archive, values


def make_materialised(data_dir: Path, name: str = "solar_nips", n_series: int = 5, n_train: int = 300,
                      h: int = 6, windows: int = 2, freq: str = "h", seed: int = 1) -> np.ndarray:
    """A materialised GluonTS dataset ``data_dir/name`` written with GluonTS's own writer."""
    values = synthetic_series(n_series, n_train + h * windows, seed)
    write_materialised(values, data_dir / name, "2020-01-01 00:00", freq, h, windows)
    return values
