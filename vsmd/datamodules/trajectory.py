"""Snapshot data for trajectory inference: a population seen at a few times t_0 < ... < t_K as unpaired point sets.

File layouts (``dataset: file``, ``path``):

- ``.npz`` with snapshot arrays: ``times`` (K + 1,) and ``x_0``, ..., ``x_K`` (n_k, d) (any sizes n_k).
- ``.npz`` with one flat array: ``X`` (n, d), ``ts`` (n,) (the time of each row; its distinct values are the
  snapshot times) and optionally ``v`` (n, d) (velocities, e.g. RNA velocity; kept, not used for training). The
  embryoid-body files of NLSB use it. TrajectoryNet's ``eb_velocity_v5.npz`` (keys ``pcs`` and ``sample_labels``)
  is read the same way.
- ``.csv`` with a header: a time column (``time_column``, default "time") and one column per coordinate.

Toys (``dataset``: petal, gmm, semicircle) are generated from the seed, with DMSB's parameters: petal (MIOFlow's
diamonds times 5, 5 snapshots over T = 2), gmm (N(0, 0.15 I), mixtures of 4 and then 8 Gaussians of variance 0.15 on
the radius-4 circle, N(0, 0.15 I); 4 snapshots over T = 4), semicircle (4 Gaussians of variance 0.1 at (-2, 0),
(-2, 4), (2, 4), (2, 0); T = 3).

Preprocessing: ``pca`` keeps the first k principal components, fitted on the training snapshots (``holdout`` ones
left out), and ``whiten`` scales them (or, without ``pca``, each coordinate) to unit variance. Every model and metric
works in that space; ``test_metrics.json`` says which space it is.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

from vsmd.caller import option
from vsmd.datamodules.snapshot_files import Snapshots, check_snapshots, load_snapshots, save_snapshots
from vsmd.settings import SettingsPolicy

__all__ = ["Snapshots", "TrajectoryDataModule", "check_snapshots", "load_snapshots", "make_toy_snapshots",
           "save_snapshots"]

TOYS = ("petal", "gmm", "semicircle")


# ------------------------------------------------------------------------------------------------------------
# DMSB's toys.
def _diamond(per_petal: int, width: float, vertical: bool) -> np.ndarray:
    """Two opposite diamond petals along one axis (MIOFlow's construction): outline points, mirrored."""
    side = per_petal // 2
    across = np.concatenate([np.linspace(0, width, side // 2), np.linspace(width, 0, side - side // 2)])
    along = np.linspace(0, 1, side)
    pts = np.stack([across, along] if vertical else [along, across], axis=1)
    pts = np.concatenate([pts, -pts])
    return np.concatenate([pts, pts * np.array([1.0, -1.0])])


def petal(n: int, rng: np.random.Generator) -> Snapshots:
    """MIOFlow's petals, times 5, in 5 rings from the centre outward over t = 0, 0.5, ..., 2 (DMSB's petal)."""
    base = np.concatenate([_diamond(4000, 0.25, True), _diamond(4000, 0.25, False)])
    pts = base + rng.standard_normal(base.shape) / 30
    ring = np.full(len(pts), 4)  # outside the largest square: the last snapshot
    for k, edge in enumerate(np.linspace(1, 1 / 6, 5)):  # nested squares; the smallest one a point is in wins
        ring[(np.abs(pts) <= edge).all(1)] = 4 - k
    out = []
    for k in range(5):
        cand = pts[ring == k] * 5
        out.append(torch.from_numpy(cand[rng.choice(len(cand), n, replace=len(cand) < n)].astype(np.float32)))
    return Snapshots([0.0, 0.5, 1.0, 1.5, 2.0], out)


def _mixture(n: int, means: np.ndarray, var: float, rng: np.random.Generator) -> Tensor:
    comp = rng.integers(len(means), size=n)
    return torch.from_numpy((means[comp] + math.sqrt(var) * rng.standard_normal((n, 2))).astype(np.float32))


def _circle(num: int, radius: float) -> np.ndarray:
    a = 2 * np.pi * np.arange(num) / num
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def gmm(n: int, rng: np.random.Generator) -> Snapshots:
    centre = np.zeros((1, 2))
    sets = [_mixture(n, m, 0.15, rng) for m in (centre, _circle(4, 4.0), _circle(8, 4.0), centre)]
    return Snapshots([0.0, 4 / 3, 8 / 3, 4.0], sets)


def semicircle(n: int, rng: np.random.Generator) -> Snapshots:
    means = [[-2.0, 0.0], [-2.0, 4.0], [2.0, 4.0], [2.0, 0.0]]
    return Snapshots([0.0, 1.0, 2.0, 3.0], [_mixture(n, np.array([m]), 0.1, rng) for m in means])


def make_toy_snapshots(name: str, n: int, seed: int) -> Snapshots:
    if name not in TOYS:
        raise ValueError(f"unknown trajectory toy {name!r}; choose one of {', '.join(TOYS)} (or dataset: file)")
    return {"petal": petal, "gmm": gmm, "semicircle": semicircle}[name](n, np.random.default_rng(seed))


# ------------------------------------------------------------------------------------------------------------
class _SnapshotStream(IterableDataset):
    """Endless training batches: ``batch_size`` points drawn with replacement from each training snapshot; batch k
    is a function of (seed, k) only, and the position of the next batch a step receives is saved in checkpoints
    (see _ConsumedStreamLoader).

    ``pair`` (set by the model, see TrajectoryDataModule.set_pairing) turns the batches before ``pair_until`` into
    what the training step consumes (the bridge's OT chains), in the loader: with ``workers`` > 0 in worker
    processes, in parallel with the training step. Worker w of n makes batches k = position + w, w + n, ...; the
    loader takes them from the workers in turn, so the order is the same as in one process."""

    def __init__(self, sets: list[Tensor], batch_size: int, seed: int) -> None:
        self.sets, self.batch_size, self.seed, self.position = sets, batch_size, seed, 0
        self.consumed = 0  # batches handed to a training step (Lightning prefetches one beyond it)
        self.pair: Callable[[list[Tensor]], Any] | None = None
        self.pair_until: int | None = None  # batches from here on are not paired (None: all are)

    def batch(self, k: int) -> Any:
        """Batch k of the stream (paired if k is before pair_until)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        out = [s[torch.randint(len(s), (self.batch_size,), generator=gen)] for s in self.sets]
        if self.pair is not None and (self.pair_until is None or k < self.pair_until):
            return self.pair(out)
        return out

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            while True:
                self.position += 1
                yield self.batch(self.position - 1)
        k = self.position + info.id
        while True:
            yield self.batch(k)
            k += info.num_workers


class _ConsumedStreamLoader(DataLoader):
    """Saves the position of the next batch a training step will receive, not of the next one the stream yields:
    Lightning fetches one batch ahead, so a checkpoint at step s would otherwise resume at batch s + 1 and a
    resumed run would skip one batch (the count comes from TrajectoryDataModule.on_before_batch_transfer)."""

    def state_dict(self) -> dict:
        return {"position": self.dataset.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.position = self.dataset.consumed = int(state["position"])


class TrajectoryDataModule(pl.LightningDataModule):
    """Snapshots of a population for trajectory inference (layouts and toys: the module docstring).

    Args:
        dataset: "petal", "gmm", "semicircle" (generated from ``seed``) or "file" (``path``).
        path: an .npz or .csv file of snapshots (dataset "file").
        time_column: the CSV's time column.
        pca: keep this many principal components (fitted on the training snapshots); None keeps the coordinates.
        whiten: scale to unit variance (the components with ``pca``, else each coordinate) over the training
            snapshots.
        holdout: indices of intermediate snapshots left out of training (evaluated at their times).
        n_per_snapshot: points per snapshot of the toys (their test sets are fresh draws of the same size).
        batch_size: training points per snapshot per step.
        times: the times ``vsmd predict`` writes samples at (None: the snapshot times).
        n_predict: trajectories ``vsmd predict`` simulates.
        seed: the seed of the toys and of the training stream.
        num_workers: worker processes that draw the training batches and pair them (the bridge's minibatch OT
            chains) in parallel with the training step; 0 does it in the training process. The batches and their
            pairing are the same for any number (a worker runs its exact OT solves with one thread). None (the
            default): 1 when this process may use more CPUs than torch's thread count (a core is left for the worker);
            when torch holds every CPU (and there are 2 or more), 1 worker, and torch gives up one thread for the fit
            (said on stderr; restored at the end, also after an error). On 2 cores, petal: 35 ms a step with 2
            torch threads and no worker, 41 ms with 2 threads and a worker, 18 ms with 1 thread and a worker.
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings)
    DATA_SETTINGS = SettingsPolicy(data=("dataset", "pca", "whiten", "holdout"),
                                   loading=("path", "time_column", "n_per_snapshot", "batch_size", "times", "n_predict",
                                            "seed", "num_workers"))

    def __init__(self, dataset: str = "petal", path: str | None = None, time_column: str = "time",
                 pca: int | None = None, whiten: bool = False, holdout: list[int] = [], n_per_snapshot: int = 1000,
                 batch_size: int = 256, times: list[float] | None = None, n_predict: int = 1000,
                 seed: int = 0, num_workers: int | None = None) -> None:
        super().__init__()
        if dataset != "file" and dataset not in TOYS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(TOYS)} or file (with path)")
        if dataset == "file" and not path:
            raise ValueError("dataset 'file' needs path: an .npz or .csv of snapshots")
        if pca is not None and pca < 1:
            raise ValueError(f"pca must be a number of components >= 1 (or null), got {pca}")
        if min(batch_size, n_per_snapshot, n_predict) < 1:
            raise ValueError("batch_size, n_per_snapshot and n_predict must be >= 1")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: batches made in the training process), got {num_workers}")
        if times is not None and (len(times) == 0 or not np.isfinite(np.asarray(times, dtype=np.float64)).all()):
            raise ValueError(f"times {list(times)} must be a non-empty list of finite times for vsmd predict (e.g. "
                             "[0.5, 1.0]), or null for the snapshot times")
        self.save_hyperparameters()
        self.dataset, self.path, self.time_column = dataset, path, time_column
        self.pca, self.whiten, self.holdout = pca, whiten, sorted(int(h) for h in holdout)
        self.n_per_snapshot, self.batch_size, self.n_predict, self.seed = n_per_snapshot, batch_size, n_predict, seed
        self.predict_times, self.num_workers = times, num_workers
        self._pairing: tuple[Callable[[list[Tensor]], Any] | None, int | None] = (None, None)
        self._threads_before: int | None = None  # torch's threads before the fit handed one to the pairing worker
        self._raw: dict[str, Snapshots] = {}
        self._transform: tuple[Tensor, Tensor] | None = None  # (mean (d,), projection (d, k)): x -> (x - m) @ P
        self._stream: _SnapshotStream | None = None
        self._prepare()

    # ------------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.dataset == "file":
            train = load_snapshots(self.path, self.time_column)
            test = train  # a file is one sample: the metrics compare against the same points
        else:
            train = make_toy_snapshots(self.dataset, self.n_per_snapshot, self.seed)
            test = make_toy_snapshots(self.dataset, self.n_per_snapshot, self.seed + 10_007)
        k = len(train.times)
        for h in self.holdout:
            if not 0 < h < k - 1:
                raise ValueError(f"holdout {h} is not an intermediate snapshot: with {k} snapshots (times "
                                 f"{train.times}) choose among 1..{k - 2}; the first and last ones pin the ends")
        if len(self.holdout) != len(set(self.holdout)):
            raise ValueError(f"holdout has repeated indices: {self.holdout}")
        d = train.dim
        if self.pca is not None and self.pca > d:
            raise ValueError(f"pca {self.pca} is more components than the data's dimension {d}")
        self._raw = {"train": train, "test": test}
        self.identity = {"path": str(Path(self.path).resolve()), "sha256": train.fingerprint()} \
            if self.dataset == "file" else None
        fit = torch.cat([p.double() for i, p in enumerate(train.points) if i not in self.holdout])
        mean = fit.mean(0)
        proj = torch.eye(d, dtype=torch.float64)
        if self.pca is not None:
            cov = torch.cov((fit - mean).T).reshape(d, d)
            evals, evecs = torch.linalg.eigh(cov)  # ascending
            order = evals.flip(0)[: self.pca].clamp_min(1e-12), evecs.flip(1)[:, : self.pca]
            proj = order[1] * (1 / order[0].sqrt() if self.whiten else 1.0)
        elif self.whiten:
            sd = fit.std(0).clamp_min(1e-12)
            proj = torch.diag(1 / sd)
        else:
            mean = torch.zeros(d, dtype=torch.float64)
        self._transform = (mean, proj)

    def check_model(self, data_dim: int, trained: dict | None) -> None:
        """The model was built for these data: its ``data_dim``, and (``trained``: the identity in its checkpoint)
        the same snapshots (``check_identity``)."""
        if self.data_dim != data_dim:
            raise ValueError(f"the data have dimension {self.data_dim} (after pca) but the model was built for "
                             f"data_dim={data_dim}; set model.init_args.data_dim: {self.data_dim}")
        self.check_identity(trained)

    def check_identity(self, trained: dict | None) -> None:
        """A clear error when a checkpoint trained on ``trained`` (its ``identity``) meets other snapshots: PCA,
        whitening and the metrics would be refitted on them, and the numbers would mean nothing. The file may have
        moved (the fingerprint of its snapshots decides, not the path)."""
        if trained and self.identity and trained["sha256"] != self.identity["sha256"]:
            raise ValueError(f"the checkpoint was trained on {trained['path']}, but {option('data.path', self.path)} "
                             f"holds other snapshots (their fingerprints differ); pass the file the checkpoint was "
                             f"trained on: {option('data.path', trained['path'])}")

    def transform(self, x: Tensor) -> Tensor:
        mean, proj = self._transform
        return ((x.double() - mean) @ proj).float()

    @property
    def data_dim(self) -> int:
        return self._transform[1].shape[1]

    @property
    def space(self) -> str:
        """Which space the models and metrics work in (for the reports)."""
        if self.pca is not None:
            return f"first {self.pca} principal components{', whitened' if self.whiten else ''}, fitted on the " \
                   "training snapshots"
        return "coordinates z-scored on the training snapshots" if self.whiten else "the data's coordinates"

    def snapshots(self, split: str = "train") -> Snapshots:
        """All snapshots (held-out ones included) of 'train' or 'test', in the model's space."""
        raw = self._raw[split]
        return Snapshots(list(raw.times), [self.transform(p) for p in raw.points])

    @property
    def times(self) -> list[float]:
        return list(self._raw["train"].times)

    @property
    def train_indices(self) -> list[int]:
        return [i for i in range(len(self.times)) if i not in self.holdout]

    # ------------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        snaps = self.snapshots("train")
        sets = [snaps.points[i] for i in self.train_indices]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self._stream = _SnapshotStream(sets, self.batch_size, self.seed + 7919 * rank)
        self._stream.pair, self._stream.pair_until = self._pairing
        workers = self.loader_workers()
        return _ConsumedStreamLoader(self._stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    def loader_workers(self) -> int:
        """The training loader's worker processes: ``num_workers``, or by default 1 when this process may use more CPUs
        than torch's intra-op threads, else 0."""
        if self.num_workers is not None:
            return self.num_workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = torch.get_num_threads()
        if cpus > threads:
            return 1
        if cpus < 2 or self._pairing[0] is None:
            return 0
        # torch holds every CPU: hand one to the pairing worker for the fit (teardown gives it back). The bridge's
        # small networks gain little from the last thread; the pairing leaves the step (petal on 2 cores: 35 ms a step
        # with 2 threads and no worker, 18 ms with 1 thread and a worker; the same numbers either way)
        torch.set_num_threads(cpus - 1)
        self._threads_before = threads
        print(f"vsmd: the minibatch OT pairing runs in 1 loader worker beside the training step, which uses "
              f"{cpus - 1} of the {cpus} CPUs (--data.init_args.num_workers 0 pairs in the training process instead)",
              file=sys.stderr)
        return 1

    def teardown(self, stage: str) -> None:
        """Gives torch back the thread the pairing worker had (loader_workers)."""
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def on_exception(self, exception: BaseException) -> None:
        """A fit that stops on an error gives the thread back too (Lightning skips teardown then)."""
        self.teardown("fit")

    def set_pairing(self, pair: Callable[[list[Tensor]], Any] | None, until: int | None = None) -> None:
        """Let the loader turn each training batch (a list of per-snapshot batches) into ``pair(batch)``, for the
        batches before ``until`` (None: all), in its workers when it has some. The model sets it (TrajectoryBridge
        pairs by minibatch OT) before the fit builds the loader; the function must be picklable (a module-level
        one)."""
        self._pairing = (pair, until)
        if self._stream is not None:
            self._stream.pair, self._stream.pair_until = pair, until

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts the training batches handed to the model (the position a checkpoint saves)."""
        if self._stream is not None and self.trainer is not None and self.trainer.training:
            self._stream.consumed += 1
        return batch

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)  # the model reads the snapshots itself

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)
