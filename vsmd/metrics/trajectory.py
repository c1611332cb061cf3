"""Distances between point clouds and the smoothness of paths, for trajectory inference (arrays in, floats out).

- ``w1``, ``mmd``, ``sliced_w1``: exact W1, MMD and sliced W1 between point sets (vsmd.metrics.distances, shared
  with the vector metrics).
- ``mean_squared_acceleration``: E |x''(t)|^2 along sampled paths, by second differences, averaged over time.
- ``ot_interpolation``: the displacement (McCann) interpolation of two snapshots under their exact OT plan, a
  trivial prediction of a snapshot between them that any trajectory model should beat.
- ``snapshot_metrics``: the test report's table of all of these at every snapshot, with the trivial baselines.
- ``evaluate_snapshots``: simulated paths in, that table plus the paths' smoothness out (what ``vsmd test`` reports).
- ``write_test_outputs`` and ``write_predictions``: the files ``vsmd test`` and ``vsmd predict`` write for a
  trajectory model (the report, the figure, the samples), and the refusal of diverged paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vsmd.metrics.distances import mmd, sliced_w1, w1
from vsmd.metrics.distances import point_set as _np
from vsmd.metrics.health import DivergedSamplesError, sample_problem, write_json
from vsmd.plotting import plt, snapshot_trajectories_figure

DIVERGED_ADVICE = ("The learned dynamics diverged: a barely trained model, too few sample_steps or a reference noise "
                   "far larger than the data; train longer or with a lower lr, or raise sample_steps.")
METRIC_NOTES = {"w1": "exact W1, Euclidean cost (POT)",
                "mmd": "sqrt of the biased MMD^2, Gaussian kernels at 0.25..4 x the real set's median distance",
                "sliced_w1": "500 random directions, 1-D W1 of the projections",
                "baseline": "the last observed snapshot before the held-out one",
                "baseline_ot_interp": "the OT (McCann) interpolation of the observed snapshots on either side of "
                                      "the held-out one",
                "mean_squared_acceleration": "E|x''|^2 along the simulated paths"}


def ot_interpolation(a, b, s: float, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Points (1 - s) x + s y for pairs (x, y) of the exact OT plan (squared Euclidean cost, uniform weights) between
    the (n_a, d) and (n_b, d) sets: every pair of the plan for equal sizes, else ``n`` (default n_a) pairs drawn
    from the plan (seeded)."""
    import ot

    a, b = _np(a), _np(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the point sets have dimensions {a.shape[1]} and {b.shape[1]}")
    if not 0 <= s <= 1:
        raise ValueError(f"the interpolation fraction must be in [0, 1], got {s}")
    plan = ot.emd(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), ot.dist(a, b),
                  numItermax=10_000_000)
    if len(a) == len(b) and n is None:
        i, j = np.arange(len(a)), plan.argmax(1)  # a permutation: the LP optimum of an assignment is a vertex
    else:
        flat = plan.ravel() / plan.sum()
        pick = np.random.default_rng(seed).choice(flat.size, size=n or len(a), p=flat)
        i, j = np.unravel_index(pick, plan.shape)
    return (1 - s) * a[i] + s * b[j]


def mean_squared_acceleration(paths: Tensor, times: Tensor) -> float:
    """E |x''|^2 of paths (N, B, d) on an increasing grid ``times`` (N,), by second differences on the
    (possibly uneven) grid, averaged over the interior points weighted by their spacing."""
    if paths.dim() != 3 or len(paths) < 3 or len(times) != len(paths):
        raise ValueError(f"need paths (N >= 3, B, d) on N times, got {tuple(paths.shape)} and {len(times)} times")
    x, t = paths.detach().double(), times.detach().double().to(paths.device)
    h = t[1:] - t[:-1]
    slope = (x[1:] - x[:-1]) / h[:, None, None]
    acc = 2 * (slope[1:] - slope[:-1]) / (h[1:] + h[:-1])[:, None, None]
    w = (h[1:] + h[:-1]) / 2
    return float(((acc.pow(2).sum(-1).mean(-1)) * w).sum() / w.sum())


def _scores(gen, real, prefix: str, null: bool) -> dict[str, float]:
    if null:
        return {f"{m}_{prefix}": float("nan") for m in ("w1", "mmd", "sliced_w1")}
    return {f"w1_{prefix}": w1(gen, real), f"mmd_{prefix}": mmd(gen, real), f"sliced_w1_{prefix}": sliced_w1(gen, real)}


def snapshot_metrics(times: list[float], real: list, predicted: dict, holdout: list[int], train: list[int],
                     null: bool = False) -> dict[str, float]:
    """The test report's distances at every snapshot k >= 1 between the model's points ``predicted[k]`` and the
    ``real[k]`` ones (``w1_tK``, or ``w1_holdout_tK`` at held-out snapshots), their means, and at each held-out
    snapshot the two trivial predictions (``baseline_*``: the last observed snapshot before it;
    ``baseline_ot_interp_*``: the OT interpolation of the observed ones on either side). ``null``: the model's
    scores are NaN (unusable samples), the baselines are still computed (they do not depend on the model)."""
    metrics: dict[str, float] = {}
    for k in range(1, len(times)):
        tag = f"holdout_t{k}" if k in holdout else f"t{k}"
        metrics |= _scores(predicted.get(k), real[k], tag, null)
        if k in holdout:
            ia, ib = max(i for i in train if i < k), min(i for i in train if i > k)
            metrics |= {f"baseline_{m}": v for m, v in _scores(real[ia], real[k], tag, False).items()}
            s = (times[k] - times[ia]) / (times[ib] - times[ia])
            mid = ot_interpolation(real[ia], real[ib], s)
            metrics |= {f"baseline_ot_interp_{m}": v for m, v in _scores(mid, real[k], tag, False).items()}
    metrics["w1_mean_observed"] = float(np.mean([metrics[f"w1_t{k}"] for k in range(1, len(times))
                                                 if k not in holdout]))
    if holdout:
        metrics["w1_mean_holdout"] = float(np.mean([metrics[f"w1_holdout_t{k}"] for k in holdout]))
        metrics["baseline_w1_mean_holdout"] = float(np.mean([metrics[f"baseline_w1_holdout_t{k}"] for k in holdout]))
    return metrics


def state_at(paths: Tensor, grid: Tensor, t: float) -> Tensor:
    """The paths' (N, B, d) state at the grid point nearest to time t."""
    return paths[int((grid - t).abs().argmin())]


def evaluate_snapshots(times: list[float], real: list, paths: Tensor, grid: Tensor, holdout: list[int],
                       train: list[int]) -> tuple[dict[str, float], dict[int, Tensor], str | None]:
    """The test report of paths (N, B, d) simulated on ``grid`` (N,) from the first snapshot: ``snapshot_metrics``
    of their states at every later snapshot time (the grid point nearest to it) against the ``real`` points, with
    the trivial baselines, and ``mean_squared_acceleration`` along the paths. Returns (metrics, the predicted points
    per snapshot k >= 1, None or what is wrong with the paths: the model's scores are then NaN)."""
    predicted = {k: state_at(paths, grid, t).cpu() for k, t in enumerate(times) if k > 0}
    problem = sample_problem(paths, max(float(p.abs().max()) for p in real))  # NaN scores as 0 in POT
    metrics = snapshot_metrics(times, real, predicted, holdout, train, bool(problem))
    metrics["mean_squared_acceleration"] = float("nan") if problem else mean_squared_acceleration(paths, grid)
    return metrics, predicted, problem


def write_test_outputs(out: Path, report: dict, snapshots: list[Tensor], times: list[float], paths: Tensor,
                       grid: Tensor, holdout: list[int], predicted: dict[int, Tensor], title: str) -> Path:
    """Write the test report (``report``, with its ``metrics`` and ``samples_problem``) to test_metrics.json and the
    paths over the snapshots to test_trajectories.png in ``out``, and print the metrics. Unusable paths: write them
    to test_samples.npz instead of the figure and raise DivergedSamplesError. Returns the report's path."""
    path = write_json(out / "test_metrics.json", report)
    if report["samples_problem"]:
        np.savez(out / "test_samples.npz", paths=paths.cpu().numpy(), times=np.asarray(times))
        raise DivergedSamplesError(f"the simulated trajectories are unusable: {report['samples_problem']}. "
                                   f"The metrics in {path} are null; the paths are in {out / 'test_samples.npz'} "
                                   f"for inspection. {DIVERGED_ADVICE}")
    fig = snapshot_trajectories_figure(snapshots, times, paths, holdout, predicted, grid=grid, title=title)
    fig.savefig(out / "test_trajectories.png", dpi=110)
    plt.close(fig)
    lines = [f"  {k:<34} {v:.5g}" for k, v in report["metrics"].items()]
    print("\n".join([f"test metrics ({report['space']}; NFE {report['nfe']}, {report['sampling_seconds']:.2f} s):",
                     *lines, f"written to {path}"]))
    return path


def write_predictions(out: Path, times: list[float], paths: Tensor, grid: Tensor, nfe: int, space: str,
                      scale: float) -> None:
    """Write the paths' states at ``times`` (samples (times, n, d)) and the whole paths on ``grid`` to samples.npz,
    and samples.json; ``scale`` is the data's largest absolute value (paths far beyond it count as diverged, and
    raise DivergedSamplesError after samples.npz is written)."""
    samples = torch.stack([state_at(paths, grid, t) for t in times]).cpu().numpy()
    np.savez(out / "samples.npz", times=np.asarray(times), samples=samples, paths=paths.cpu().numpy(),
             grid=grid.numpy())
    problem = sample_problem(paths, scale)
    if problem:
        raise DivergedSamplesError(f"the simulated trajectories are unusable: {problem}. They are in "
                                   f"{out / 'samples.npz'} for inspection. {DIVERGED_ADVICE}")
    (out / "samples.json").write_text(json.dumps({"times": times, "shape": list(samples.shape), "nfe": nfe,
                                                  "space": space}) + "\n")
    print(f"wrote {samples.shape[1]} samples at times {times} to {out / 'samples.npz'} (samples: (times, n, d); "
          "paths: the whole simulation on grid)")
