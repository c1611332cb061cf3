"""Snapshot files for trajectory inference: reading, checking and writing the layouts that
``TrajectoryDataModule`` documents. Every error names the file, and the array, column or snapshot at fault."""

from __future__ import annotations

import csv
import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vsmd.caller import option
from vsmd.datamodules.checks import name_list, numeric_array, unusable_values


@dataclass
class Snapshots:
    """Point sets ``points[k]`` (n_k, d) observed at ``times[k]`` (increasing), optional velocities per set."""

    times: list[float]
    points: list[Tensor]
    velocities: list[Tensor] | None = None

    @property
    def dim(self) -> int:
        return self.points[0].shape[1]

    def fingerprint(self) -> str:
        """SHA-256 of the times and points (float32 bytes): the same snapshots give the same value wherever the file
        lies, other snapshots (another file, another time_column) another one."""
        h = hashlib.sha256(np.asarray(self.times, dtype=np.float64).tobytes())
        for p in self.points:
            h.update(np.asarray(p.shape, dtype=np.int64).tobytes())
            h.update(p.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()


def check_snapshots(snaps: Snapshots, source: str) -> Snapshots:
    """Clear errors for unsorted or repeated times, fewer than 2 snapshots, mixed dimensions, no coordinates, empty
    sets, NaN."""
    if len(snaps.times) != len(snaps.points):
        raise ValueError(f"{source}: {len(snaps.times)} times but {len(snaps.points)} point sets")
    if len(snaps.points) < 2:
        raise ValueError(f"{source}: trajectory inference needs at least 2 snapshots, got {len(snaps.points)}")
    t = np.asarray(snaps.times, dtype=np.float64)
    if not np.isfinite(t).all():
        raise ValueError(f"{source}: the snapshot times must be finite, got {t.tolist()}")
    if not (np.diff(t) > 0).all():
        raise ValueError(f"{source}: the snapshot times must be strictly increasing, got {t.tolist()}; sort the "
                         "snapshots by time (and merge repeated times)")
    dims = {p.shape[1] if p.dim() == 2 else None for p in snaps.points}
    if len(dims) != 1 or None in dims:
        raise ValueError(f"{source}: every snapshot must be an (n, d) array of one dimension d, got shapes "
                         f"{[tuple(p.shape) for p in snaps.points]}")
    if dims == {0}:
        shapes = [tuple(p.shape) for p in snaps.points]
        raise ValueError(f"{source}: the snapshots have no coordinates (shapes {shapes}); give at least one "
                         "coordinate per point (a CSV needs a column besides the time column)")
    for k, p in enumerate(snaps.points):
        if len(p) == 0:
            raise ValueError(f"{source}: snapshot {k} (t = {t[k]:g}) is empty")
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).any(1).sum())
            raise ValueError(f"{source}: snapshot {k} (t = {t[k]:g}) has {bad} rows with NaN or inf; remove or impute "
                             "them first")
    return snaps


def _values(a, where: str, columns: list[str] | None = None) -> np.ndarray:
    """Real numbers that survive float32, as float64, or an error naming ``where`` and the first bad entry."""
    a = numeric_array(a, where)
    found = unusable_values(a)
    if found:
        what, first, todo = found
        at = np.unravel_index(first, a.shape) if a.ndim else ()
        if columns is not None and len(at) == 2:
            place = f"data row {at[0] + 1}, column {columns[at[1]]!r}"
        else:
            place = f"index {tuple(int(i) for i in at)}"
        raise ValueError(f"{where} has {what}, the first at {place}; {todo}")
    return a


def _group(x: np.ndarray, ts: np.ndarray, v: np.ndarray | None, source: str) -> Snapshots:
    if x.ndim != 2 or ts.ndim != 1 or len(ts) != len(x):
        raise ValueError(f"{source}: need X (n, d) and ts (n,), got shapes {x.shape} and {ts.shape}")
    if v is not None and v.shape != x.shape:
        raise ValueError(f"{source}: v must have the shape of X {x.shape}, got {v.shape}")
    times = sorted(set(ts.tolist()))
    rows = [ts == t for t in times]
    pts = [torch.from_numpy(x[r].astype(np.float32)) for r in rows]
    vel = [torch.from_numpy(v[r].astype(np.float32)) for r in rows] if v is not None else None
    return Snapshots(times, pts, vel)


def _load_csv(p: Path, time_column: str) -> Snapshots:
    with open(p, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, None) or []]  # "time, x, y" names x and y
        if not header or time_column not in header:
            raise ValueError(f"{p}: the CSV needs a header with a {time_column!r} column (set time_column), "
                             f"got [{name_list(header)}]")
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise ValueError(f"{p}: the CSV header repeats the column name(s) {name_list(repeated)} "
                             f"({name_list(header)}); give every column its own name")
        if len(header) == 1:
            raise ValueError(f"{p}: the CSV has only the time column {time_column!r}; add one column per coordinate")
        rows = [r for r in reader if r]
    try:
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as err:
        raise ValueError(f"{p}: every CSV cell must be a number ({err})") from None
    arr = _values(arr, str(p), header)
    j = header.index(time_column)
    return _group(np.delete(arr, j, axis=1), arr[:, j], None, str(p))


def _open_npz(p: Path):
    try:
        f = np.load(p, allow_pickle=False)
    except ValueError as err:  # not a zip and not an .npy: numpy falls back to pickle, which is off
        why = "neither a zip archive nor an .npy array: text?" if "pickle" in str(err) else str(err)
        raise ValueError(f"{p} is not an .npz archive ({why}); "
                         "write the snapshots with numpy.savez (layouts: vsmd/datamodules/trajectory.py) or use a "
                         ".csv") from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{p} is a damaged .npz ({err}: e.g. a truncated copy); copy or write it again") from None
    if not hasattr(f, "files"):
        raise ValueError(f"{p} holds a single .npy array, not an .npz archive of named arrays; save it with "
                         "numpy.savez (layouts: vsmd/datamodules/trajectory.py)")
    return f


def _read(f, key: str, p: Path) -> np.ndarray:
    """Array ``key`` of the archive as float64, or an error naming the file and the key."""
    try:
        a = f[key]
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(f"{p}: array {key!r} holds Python objects (dtype object), which vsmd does not load "
                             "(pickled code could run); save it as a number array "
                             f"(np.asarray(values, dtype=float))") from None
        raise ValueError(f"{p}: array {key!r} cannot be read ({err})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{p}: array {key!r} is damaged ({err}); copy or write the file again") from None
    return _values(a, f"{p}: array {key!r}")


def _load_npz(p: Path) -> Snapshots:
    with _open_npz(p) as f:
        keys = set(f.files)
        if "times" in keys:
            times = _read(f, "times", p).ravel()
            missing = [f"x_{k}" for k in range(len(times)) if f"x_{k}" not in keys]
            if missing:
                raise ValueError(f"{p}: the snapshot layout needs x_0 ... x_{len(times) - 1} beside times; missing "
                                 f"{', '.join(missing)}")
            pts = [torch.from_numpy(_read(f, f"x_{k}", p).astype(np.float32)) for k in range(len(times))]
            return Snapshots(times.tolist(), pts)
        if {"X", "ts"} <= keys:
            return _group(_read(f, "X", p), _read(f, "ts", p), _read(f, "v", p) if "v" in keys else None, str(p))
        if {"pcs", "sample_labels"} <= keys:  # TrajectoryNet's eb_velocity_v5.npz
            return _group(_read(f, "pcs", p), _read(f, "sample_labels", p), None, str(p))
        raise ValueError(f"{p}: unknown npz layout (keys {sorted(keys)}); use times + x_0..x_K, or X + ts "
                         "(+ v), or pcs + sample_labels")


def load_snapshots(path: str | Path, time_column: str = "time") -> Snapshots:
    """Read snapshots from one of the documented layouts (.npz or .csv)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"snapshot file not found: {p}; pass {option('data.path')} with an .npz or .csv file "
                                "(layouts: vsmd/datamodules/trajectory.py)")
    if p.suffix not in (".csv", ".npz"):
        raise ValueError(f"{p}: unknown snapshot format {p.suffix!r}; use .npz or .csv")
    snaps = _load_csv(p, time_column) if p.suffix == ".csv" else _load_npz(p)
    return check_snapshots(snaps, str(p))


def save_snapshots(path: str | Path, snaps: Snapshots) -> None:
    """Write snapshots in the .npz snapshot layout (times, x_0..x_K)."""
    np.savez(path, times=np.asarray(snaps.times), **{f"x_{k}": p.numpy() for k, p in enumerate(snaps.points)})
