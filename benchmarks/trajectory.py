"""Trajectory inference (issue 14): the momentum bridge against its first-order twin and OT-CFM, with a held-out
snapshot, on DMSB's petal and GMM toys and on the embryoid-body subset (../shared/data/eb_nlsb_val_rna.npz).

Every model trains through ``vsmd fit`` from configs/petal.yaml, gmm.yaml or eb.yaml with only the model's dynamics
and noise changed, and ``vsmd test`` scores the last checkpoint (test_metrics.json). Rows:

- momentum bridge: dynamics momentum, sigma 0.1 (bridge matching of the pinned Newtonian process);
- momentum spline FM: dynamics momentum, sigma 0 (flow matching on cubic splines through the coupled points);
- first-order bridge: dynamics first_order, sigma 0.1 (an overdamped multi-marginal SB matching);
- OT-CFM: dynamics first_order, sigma 0, sigma_min 0.1 (minibatch-OT flow matching, piecewise-linear paths).

Writes benchmarks/results/trajectory.md, trajectory.json and trajectory.png.

    python benchmarks/trajectory.py --data-dir ../shared/data           # about an hour on 2 busy cores
    python benchmarks/trajectory.py --steps 50 --only petal:2 --out /tmp/smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (dynamics, sigma, sigma_min)
    "momentum bridge": ("momentum", 0.1, 0.0),
    "momentum spline FM": ("momentum", 0.0, 0.0),
    "first-order bridge": ("first_order", 0.1, 0.0),
    "OT-CFM": ("first_order", 0.0, 0.1),
}
SETTINGS = ["petal:2", "gmm:1", "gmm:2", "eb:1", "eb:2", "eb:3"]  # dataset:held-out snapshot


def _vsmd(args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "from vsmd.cli import main; main()", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"vsmd {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def run_one(setting: str, model: str, steps: int, work: Path, data_dir: Path) -> dict:
    ds, hold = setting.split(":")
    out = work / f"{ds}_{hold}_{model.replace(' ', '_')}"
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if out.exists():
        shutil.rmtree(out)
    dyn, sigma, sigma_min = MODELS[model]
    args = ["--config", str(ROOT / "configs" / f"{ds}.yaml"), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "run",
            "--data.init_args.holdout", f"[{hold}]", "--model.init_args.dynamics", dyn,
            "--model.init_args.sigma", str(sigma), "--model.init_args.sigma_min", str(sigma_min)]
    if ds == "eb":
        args += ["--data.init_args.path", str(data_dir / "eb_nlsb_val_rna.npz")]
    start = time.perf_counter()
    _vsmd(["fit", *args, "--trainer.max_steps", str(steps)])
    train_s = time.perf_counter() - start
    _vsmd(["test", *args, "--ckpt_path", str(out / "run/version_0/checkpoints/last.ckpt")])
    result = json.loads((out / "run/version_1/test_metrics.json").read_text())
    result |= {"train_seconds": train_s, "figure": str(out / "run/version_1/test_trajectories.png")}
    cached.write_text(json.dumps(result))
    return result


def figure(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    picks = [("petal:2", "momentum bridge"), ("petal:2", "OT-CFM"), ("gmm:2", "momentum bridge"), ("gmm:2", "OT-CFM")]
    picks = [p for p in picks if p in results]
    if not picks:
        return
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 4.6 * len(picks)))
    for ax, (setting, model) in zip(np.atleast_1d(axes), picks):
        ax.imshow(plt.imread(results[(setting, model)]["figure"]))
        ax.set_axis_off()
        ax.set_title(f"{setting.replace(':', ', held out ')}: {model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--only", nargs="*", default=SETTINGS, help="dataset:held-out settings")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vsmd-bench-trajectory"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    results = {}
    for setting in args.only:
        for model in MODELS:
            print(f"=== {setting} {model}", flush=True)
            results[(setting, model)] = run_one(setting, model, args.steps, args.work, args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    figure(results, args.out / "trajectory.png")
    rows = [{"setting": s, "model": m} | r for (s, m), r in results.items()]
    (args.out / "trajectory.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1) + "\n")
    lines = ["# Trajectory inference: momentum bridge against first-order bridge and OT-CFM (issue 14)", "",
             f"Command: `python benchmarks/trajectory.py --data-dir ../shared/data"
             f"{'' if args.steps == 2000 else f' --steps {args.steps}'}`. {args.steps} training steps each through "
             "`vsmd fit` (the configs' MLP, batch and lr), `vsmd test` on the last checkpoint, one seed. The paths "
             "start from the first test snapshot. W1 is exact (POT); MMD: Gaussian kernels at 0.25..4 times the "
             "real set's median distance; sliced W1: 500 directions; acceleration: E|x''|^2 along the simulated "
             "paths (lower is smoother). Toys: fresh test draws of 1000 points per snapshot, in the data's "
             "coordinates. EB: the 1000-cell subset, 5 principal components whitened on the training snapshots, "
             "scored against the same cells (200 per time; the README's floor: two halves of t2 are 0.89 apart).",
             ""]
    for setting in args.only:
        ds, hold = setting.split(":")
        r0 = results[(setting, next(iter(MODELS)))]
        obs = [k for k in range(1, len(r0["snapshot_times"])) if k != int(hold)]
        lines += [f"## {ds}, snapshot {hold} (t = {r0['snapshot_times'][int(hold)]:g}) held out", "",
                  f"| model | W1 held out | MMD held out | sliced W1 held out | W1 observed (t{', t'.join(map(str, obs))}) "
                  "| acceleration | NFE | train s | sample s |", "|---|---|---|---|---|---|---|---|---|"]
        tag = f"holdout_t{hold}"
        for model in MODELS:
            m = results[(setting, model)]["metrics"]
            r = results[(setting, model)]
            lines.append(f"| {model} | {m['w1_' + tag]:.3f} | {m['mmd_' + tag]:.4f} | {m['sliced_w1_' + tag]:.3f} | "
                         f"{', '.join(format(m['w1_t' + str(k)], '.3f') for k in obs)} | {m['mean_squared_acceleration']:.3g} | "
                         f"{r['nfe']} | {r['train_seconds']:.0f} | {r['sampling_seconds']:.2f} |")
        m = r0["metrics"]
        lines += [f"| nothing moves (snapshot {int(hold) - 1}) | {m['baseline_w1_' + tag]:.3f} | "
                  f"{m['baseline_mmd_' + tag]:.4f} | {m['baseline_sliced_w1_' + tag]:.3f} | - | - | - | - | - |", ""]
    lines += ["![trajectories](trajectory.png)", ""]
    (args.out / "trajectory.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
