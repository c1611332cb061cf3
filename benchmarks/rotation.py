"""Full A through a rotation (issue 12): VSULD-5 on spiral-8Y turned by 45 degrees, diagonal A against A on the
data's principal axes (rotation pca) and on a frame the SA refines (rotation learned), beside diagonal VSULD-5 on
the unrotated spiral.

Every model trains through ``vsmd fit`` from configs/spiral8y_rot45.yaml (configs/spiral8y.yaml for the unrotated
row), with only ``rotation`` changed, then ``vsmd test`` scores the last checkpoint; the metrics along the stretch
direction and across it are computed here from the test samples, so that all rows are measured the same way.
Writes benchmarks/results/rotation.md, rotation.json and rotation.png (samples and the learned axes, seed 0).

    python benchmarks/rotation.py                          # 4 rows x 3 seeds, about 30 minutes on 2 cores
    python benchmarks/rotation.py --steps 200 --seeds 0    # a smoke run (numbers meaningless)

The unrotated row is the toy benchmark's VSULD-5 spiral-8Y run; with the same --work as benchmarks/toy2d.py
(the default) its finished runs are reused.
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy2d import ROOT, _ms, _slug, noise_floor, run_one, toy_parser  # noqa: E402

ROWS = {  # name: (config, rotation of the process's frame or None for the config's, angle of the data)
    "diagonal A, spiral-8Y not rotated": ("configs/spiral8y.yaml", None, 0.0),
    "diagonal A, rotated 45": ("configs/spiral8y_rot45.yaml", "none", 45.0),
    "rotation pca, rotated 45": ("configs/spiral8y_rot45.yaml", "pca", 45.0),
    "rotation learned, rotated 45": ("configs/spiral8y_rot45.yaml", "learned", 45.0),
}


def directions(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(stretch, across): spiral-8Y's y axis and x axis, turned by ``angle`` degrees."""
    a = math.radians(angle)
    return np.array([-math.sin(a), math.cos(a)]), np.array([math.cos(a), math.sin(a)])


def w1(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein-1 between two equal-size samples (sorted differences)."""
    return float(np.abs(np.sort(a) - np.sort(b)).mean())


@torch.no_grad()
def straightness_along(out: Path, angle: float, seed: int) -> dict[str, float]:
    """Straightness of the test's probability-flow paths (same sampler, grid, count and seed as ``vsmd test``)
    projected onto the stretch direction and across it; cached in out/straightness.json."""
    cached = out / "straightness.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from vsmd.metrics import straightness
    from vsmd.models import ToyVSMD
    model = ToyVSMD.load_from_checkpoint(_fit_run(out) / "checkpoints" / "last.ckpt", map_location="cpu")
    h = model.hparams
    paths = model.generate(h.n_straight, sampler=model.path_sampler, steps=h.straight_steps, return_trajectory=True,
                           seed=h.seed + 1)
    x, times = model._x_paths(paths.trajectory[:-1]).double(), paths.times[:-1]
    res = {f"straightness_{key}": float(straightness(x @ torch.from_numpy(d)[:, None], times)[0])
           for key, d in zip(("stretch", "across"), directions(angle))}
    res["straightness_axes"] = straightness(x, times).tolist()  # the test's per-axis values, a cross-check
    cached.write_text(json.dumps(res))
    return res


def _fit_run(out: Path) -> Path:
    return sorted((out / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[0]


def score(result: dict, angle: float) -> dict:
    f = np.load(result["samples"])
    real, gen = f["real"].astype(np.float64), f["generated"].astype(np.float64)
    out = {"rmse_pmf": result["metrics"]["rmse_pmf"]}
    for key, d in zip(("stretch", "across"), directions(angle)):
        pr, pg = real @ d, gen @ d
        out[f"std_ratio_{key}"] = float(pg.std() / pr.std())
        out[f"w1_{key}"] = w1(pr, pg)
    hist = result.get("rho_history") or {}
    out["rho"] = [h[-1][1] for _, h in sorted((k, v) for k, v in hist.items() if k.startswith("rho/"))]
    frame = result.get("frame")
    if frame is not None:
        q = np.array(frame)
        out["frame"] = frame
        out["frame_angle"] = math.degrees(math.atan2(q[1, 0], q[0, 0]))  # of the first (fast) axis
        out["stretch_alignment"] = float(abs(q[:, 0] @ directions(angle)[0]))
    out["train_seconds"] = result["train_seconds"]
    return out


def figure(rows: dict[str, list[dict]], raw: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4.4))
    for ax, (name, runs) in zip(axes, rows.items()):
        f = np.load(raw[name]["samples"])
        real, gen = f["real"], f["generated"]
        ax.scatter(real[:, 0], real[:, 1], s=1, c="0.75", label="real")
        ax.scatter(gen[:, 0], gen[:, 1], s=1, c="tab:blue", alpha=0.5, label="generated")
        r = runs[0]
        if "frame" in r:
            q = np.array(r["frame"])
            for i, colour in enumerate(("tab:red", "tab:orange")):
                sd = float((real @ q[:, i]).std())
                rho = f", rho {r['rho'][i]:.2f}" if len(r["rho"]) > i else ""
                ax.annotate("", xy=2 * sd * q[:, i], xytext=(0, 0),
                            arrowprops={"arrowstyle": "->", "color": colour, "lw": 2})
                ax.text(*(2.1 * sd * q[:, i]), f"axis {i}{rho}", color=colour, fontsize=8)
        lim = float(np.abs(real).max()) * 1.1
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal",
               title=f"{name}\nstd ratio {r['std_ratio_stretch']:.2f}, W1 {r['w1_stretch']:.2f}")
        ax.title.set_fontsize(9)
    axes[0].legend(loc="lower left", markerscale=6, fontsize=8)
    fig.suptitle("VSULD-5, seed 0: samples, and the frame of A (arrows: 2 sd of the data along each axis)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = toy_parser(__doc__).parse_args()

    def work(job):
        name, seed = job
        config, rotation, _ = ROWS[name]
        out = args.work / "rotation" / f"{_slug(name)}_{seed}"
        if rotation is None and args.steps == 5000:  # the toy benchmark's own VSULD-5 spiral-8Y run
            out = args.work / "spiral-8Y" / f"VSULD_5_{seed}"
        extra = ("--model.init_args.rotation", rotation) if rotation else ()
        print(f"=== {name} seed {seed}", flush=True)
        res = run_one(config, "vsuld", 5.0, 0.7, extra, args.steps, out, seed)
        straight = straightness_along(out, ROWS[name][2], seed)
        tested = [res["metrics"][f"straightness_{i}"] for i in range(2)]
        if not np.allclose(straight["straightness_axes"], tested, rtol=1e-3):
            raise RuntimeError(f"{out}: the paths are not the test's: straightness per axis "
                               f"{straight['straightness_axes']} here against {tested} in vsmd test")
        return job, res, straight

    jobs = [(name, seed) for seed in args.seeds for name in ROWS]
    rows: dict[str, list[dict]] = {}
    raw: dict[str, dict] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (name, seed), res, straight in pool.map(work, jobs):
            rows.setdefault(name, []).append(score(res, ROWS[name][2]) | straight | {"seed": seed})
            if seed == args.seeds[0]:
                raw[name] = res
    args.out.mkdir(parents=True, exist_ok=True)
    figure(rows, raw, args.out / "rotation.png")
    (args.out / "rotation.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1) + "\n")
    lines = ["# Full A through a rotation: VSULD-5 on spiral-8Y turned by 45 degrees (issue 12)", "",
             f"Command: `python benchmarks/rotation.py --seeds {' '.join(map(str, args.seeds))}"
             f"{'' if args.steps == 5000 else f' --steps {args.steps}'}`. {args.steps} steps, the configs' "
             "network, sampler (Heun, 50 points) and SA settings; only `rotation` changes. Mean ± std over seeds. "
             "The stretch direction is spiral-8Y's y axis turned with the data; W1 and std ratio are measured on "
             "the projections of the 3000 test samples onto it and onto the direction across it.", "",
             "| model | seeds | RMSE PMF | std ratio stretch | W1 stretch | std ratio across | W1 across | "
             "straightness stretch | straightness across | first axis (deg) | alignment | rho (axis 0, 1) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        def col(key: str, fmt: str) -> str:
            return _ms([r[key] for r in runs], fmt) if key in runs[0] else "-"
        rho = ", ".join(_ms([r["rho"][i] for r in runs], ".2f") for i in range(len(runs[0]["rho"])))
        lines.append(f"| {name} | {len(runs)} | {col('rmse_pmf', '.5f')} | {col('std_ratio_stretch', '.2f')} | "
                     f"{col('w1_stretch', '.2f')} | {col('std_ratio_across', '.2f')} | {col('w1_across', '.2f')} | "
                     f"{col('straightness_stretch', '.2f')} | {col('straightness_across', '.2f')} | "
                     f"{col('frame_angle', '.1f')} | {col('stretch_alignment', '.4f')} | {rho or '-'} |")
    floors = {c: noise_floor(c) for c in dict.fromkeys(c for c, _, _ in ROWS.values())}
    lines += ["", "RMSE PMF noise floor (two independent real sets of 3000): " + "; ".join(
        f"{c} {f:.5f}" for c, f in floors.items()) + ". The PMF grid spans the data's bounding box, so the rotated "
        "and the unrotated rows are not on the same grid; compare the rotated rows with each other.",
        "", "first axis: the direction of the frame's first column (the stretch is at 135 degrees, the same "
              "line as -45); alignment: |cos| of the angle between it and the stretch direction. rho is per axis "
              "of the process's frame (the data's axes for diagonal A). Straightness: the test's 1000 "
              "probability-flow paths (Heun, 100 points), projected onto each direction; the rectified-flow "
              "measure int E[(dx/T - xdot)^2] ds, lower is straighter.", "",
              "![samples and axes](rotation.png)", ""]
    (args.out / "rotation.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
