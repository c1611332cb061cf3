"""Trajectory inference (issue 14): the momentum bridge against its first-order twin and OT-CFM, with a held-out
snapshot, on DMSB's petal and GMM toys and on the embryoid-body subset (../shared/data/eb_nlsb_val_rna.npz).

Every model trains through ``vsmd fit`` from configs/petal.yaml, gmm.yaml or eb.yaml with only the model's dynamics
and noise changed, and ``vsmd test`` scores the last checkpoint (test_metrics.json). Rows:

- momentum bridge: dynamics momentum, sigma 0.1 (bridge matching of the pinned Newtonian process), simulated in
  phase space;
- momentum bridge, marginal ODE: the same checkpoint simulated by dx/dt = E[v | x, t] (sampler marginal);
- momentum bridge, DMSB stages: the same model trained as DMSB alternates its policies: a quarter of the steps on
  OT chains, then 3 stages, each simulating one policy from the data at its end, OT-projecting every simulated
  snapshot onto the data and fitting the other policy on those chains (stages 3). The velocity at the start of
  each simulation: E[v | x] plus one bridge's spread (the default); "+ Langevin": then 20 Langevin steps with a
  learned velocity score (langevin_steps 20); "+ velocity flow": drawn from a conditional flow of v given x
  (velocity_flow_steps 20); "DMSB 5 stages": the same with 5 stages, each a sixth of the steps;
- momentum spline FM: dynamics momentum, sigma 0 (flow matching on cubic splines through the coupled points);
- first-order bridge: dynamics first_order, sigma 0.1 (an overdamped multi-marginal SB matching);
- OT-CFM: dynamics first_order, sigma 0, sigma_min 0.1 (minibatch-OT flow matching, piecewise-linear paths).

Writes benchmarks/results/trajectory.md, trajectory.json and trajectory.png (--name changes the stem).

    python benchmarks/trajectory.py --data-dir ../shared/data --jobs 2  # about an hour on 2 cores
    python benchmarks/trajectory.py --steps 50 --only petal:2 --out /tmp/smoke   # a smoke run
    python benchmarks/trajectory.py --data-dir ../shared/data --seeds 0 1 2 --name trajectory_seeds  # mean and sd
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (dynamics, sigma, sigma_min[, test-time sampler, the model whose checkpoint it tests])
    "momentum bridge": ("momentum", 0.1, 0.0),
    "momentum bridge, marginal ODE": ("momentum", 0.1, 0.0, "marginal", "momentum bridge"),
    "momentum bridge, DMSB stages": ("momentum", 0.1, 0.0),
    "momentum bridge, DMSB stages + Langevin": ("momentum", 0.1, 0.0),
    "momentum bridge, DMSB stages + velocity flow": ("momentum", 0.1, 0.0),
    "momentum bridge, DMSB 5 stages + velocity flow": ("momentum", 0.1, 0.0),
    "momentum spline FM": ("momentum", 0.0, 0.0),
    "first-order bridge": ("first_order", 0.1, 0.0),
    "OT-CFM": ("first_order", 0.0, 0.1),
}
STAGES = 3  # the stage rows: stage 0 on OT chains, then 3 alternating stages, each a quarter of the steps


def model_args(model: str, steps: int) -> list[str]:
    """The CLI options of a row beyond dynamics and noise (the stage rows')."""
    if "DMSB" not in model:
        return []
    n = 5 if "5 stages" in model else STAGES
    args = ["--model.init_args.stages", str(n), "--model.init_args.stage_steps", str(steps // (n + 1))]
    args += ["--model.init_args.langevin_steps", "20"] if "Langevin" in model else []
    return args + (["--model.init_args.velocity_flow_steps", "20"] if "velocity flow" in model else [])
SETTINGS = ["petal:2", "gmm:1", "gmm:2", "eb:1", "eb:2", "eb:3"]  # dataset:held-out snapshot
# also "eb100:k": the EB subset in all 100 principal components, each z-scored on the training snapshots (DMSB's
# space, except that DMSB z-scores on all cells), the eb config with pca null, whiten true, data_dim 100


def _vsmd(args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "from vsmd.cli import main; main()", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"vsmd {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def run_dir(setting: str, model: str, work: Path, seed: int = 0) -> Path:
    ds, hold = setting.split(":")
    return work / f"{ds}_{hold}_{model.replace(' ', '_').replace(',', '')}{f'_s{seed}' if seed else ''}"


def run_one(setting: str, model: str, steps: int, work: Path, data_dir: Path, seed: int = 0) -> dict:
    """One row: fit and test (the data stay the seed-0 draw; ``seed`` seeds the networks and the training stream)."""
    ds, hold = setting.split(":")
    out = run_dir(setting, model, work, seed)
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    dyn, sigma, sigma_min, *reuse = MODELS[model]
    config = "eb" if ds == "eb100" else ds
    args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "run",
            "--data.init_args.holdout", f"[{hold}]", "--model.init_args.dynamics", dyn,
            "--model.init_args.sigma", str(sigma), "--model.init_args.sigma_min", str(sigma_min),
            *model_args(model, steps)] + (["--seed_everything", str(seed)] if seed else [])
    if ds == "eb100":
        args += ["--data.init_args.pca", "null", "--data.init_args.whiten", "true", "--model.init_args.data_dim", "100"]
    if ds in ("eb", "eb100"):
        args += ["--data.init_args.path", str(data_dir / "eb_nlsb_val_rna.npz")]
    if reuse:  # another sampler on the checkpoint of an earlier row: test only
        sampler, base = reuse
        base_result = run_one(setting, base, steps, work, data_dir, seed)
        ckpt = run_dir(setting, base, work, seed) / "run/version_0/checkpoints/last.ckpt"
        if out.exists():
            shutil.rmtree(out)
        _vsmd(["test", *args, "--model.init_args.sampler", sampler, "--ckpt_path", str(ckpt)])
        result = json.loads((out / "run/version_0/test_metrics.json").read_text())
        result |= {"train_seconds": base_result["train_seconds"],
                   "figure": str(out / "run/version_0/test_trajectories.png")}
        cached.write_text(json.dumps(result))
        return result
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    _vsmd(["fit", *args, "--trainer.max_steps", str(steps)])
    train_s = time.perf_counter() - start
    _vsmd(["test", *args, "--ckpt_path", str(out / "run/version_0/checkpoints/last.ckpt")])
    result = json.loads((out / "run/version_1/test_metrics.json").read_text())
    result |= {"train_seconds": train_s, "figure": str(out / "run/version_1/test_trajectories.png")}
    if "DMSB" in model:  # the stage history: simulation seconds and how far each pool was from the data
        import torch
        ckpt = torch.load(out / "run/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
        result["stage_history"] = ckpt["vsmd_trajectory"]["stage_history"]
    cached.write_text(json.dumps(result))
    return result


def synthetic_100d(n: int = 3000, steps: int = 50, seed: int = 0) -> dict:
    """Time and memory at the EB shape: 5 snapshots of n points in 100-D (a drifting, rotating Gaussian cloud),
    the eb config's model (momentum bridge, MLP 128 x 3) with data_dim 100: seconds per training step (batch 256 per
    snapshot, OT chaining included), seconds to simulate n paths (100 steps), and the process's peak memory."""
    import resource

    import torch

    from vsmd.models import TrajectoryBridge

    torch.manual_seed(seed)
    d, times = 100, [0.0, 1.0, 2.0, 3.0, 4.0]
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    sets = [(torch.randn(n, d, generator=g) * (1 + 0.2 * k) + 0.5 * k * basis[0]) @ basis for k in range(5)]
    model = TrajectoryBridge(data_dim=d, dynamics="momentum", sigma=0.1, hidden=128, depth=3, ema_decay=0.999)
    model._set_times(times, times)
    opt = model.configure_optimizers()
    per = []
    for k in range(steps + 2):
        t0 = time.perf_counter()
        loss, _ = model.loss([p[torch.randint(n, (256,), generator=g)] for p in sets], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            per.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.trajectories(sets[0], times, steps=100)
    sample_s = time.perf_counter() - t0
    # one stage's pool at this shape: simulate n paths through the 5 pins, OT-project each simulated snapshot
    from vsmd.diffusion.trajectory import ot_project
    t0 = time.perf_counter()
    chain = model.simulate_pins("forward", sets[0], g, steps=100)
    project_s = time.perf_counter()
    for k in range(1, len(times)):
        chain[:, k] = ot_project(chain[:, k], sets[k], g)
    project_s, pool_s = time.perf_counter() - project_s, time.perf_counter() - t0
    pool_mib = chain.numel() * 4 / 2 ** 20
    # what DMSB caches per stage at its EB settings: 4000 paths x 400 steps of (x, v), the policy and the label
    dmsb_mib = 4000 * 400 * (2 * d + d + d) * 4 / 2 ** 20
    return {"points_per_snapshot": n, "dim": d, "train_step_seconds": float(np.median(per)),
            "sample_seconds": sample_s, "pool_seconds": pool_s, "pool_projection_seconds": project_s,
            "pool_mib": pool_mib, "dmsb_cache_mib": dmsb_mib,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def figure(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [ds for ds in ("petal:2", "gmm:2") if (ds, "momentum bridge") in results]
    cols = [m for m in ("momentum bridge", "momentum bridge, marginal ODE",
                        "momentum bridge, DMSB stages + velocity flow", "OT-CFM")
            if rows and (rows[0], m) in results]
    if not rows or not cols:
        return
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(7 * len(cols), 3.4 * len(rows)), squeeze=False)
    for i, setting in enumerate(rows):
        for j, model in enumerate(cols):
            ax = axes[i, j]
            if (setting, model) in results:
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
    ap.add_argument("--name", default="trajectory", help="the files written: NAME.md, NAME.json, NAME.png")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                    help=f"rows to run (default all: {', '.join(MODELS)})")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="seeds of the networks (the tables give the "
                    "mean and the sd over them; the data are the same)")
    args = ap.parse_args()
    keys = [(setting, model, seed) for setting in args.only for model in MODELS if model in args.models
            for seed in args.seeds]

    def one(key):
        print(f"=== {key[0]} {key[1]} seed {key[2]}", flush=True)
        return run_one(key[0], key[1], args.steps, args.work, args.data_dir, key[2])

    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:  # the fits first, then the rows that test their checkpoints
        for group in ([k for k in keys if len(MODELS[k[1]]) == 3], [k for k in keys if len(MODELS[k[1]]) > 3]):
            results |= dict(zip(group, pool.map(one, group)))
    args.out.mkdir(parents=True, exist_ok=True)
    runs, results = results, {(s_, m_): r for (s_, m_, sd), r in results.items() if sd == args.seeds[0]}
    figure(results, args.out / f"{args.name}.png")
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    synth = synthetic_100d()
    rows = [{"setting": s, "model": m, "seed": sd} | r for (s, m, sd), r in runs.items()]
    (args.out / f"{args.name}.json").write_text(json.dumps({"steps": args.steps, "rows": rows, "synthetic_100d": synth},
                                                         indent=1) + "\n")
    lines = ["# Trajectory inference: momentum bridge against first-order bridge and OT-CFM (issue 14)", "",
             f"Command: `python benchmarks/trajectory.py {shlex.join(sys.argv[1:])}`. {args.steps} training steps each "
             "through "
             "`vsmd fit` (the configs' MLP, batch and lr), `vsmd test` on the last checkpoint; "
             f"{'one seed' if len(args.seeds) == 1 else f'seeds {args.seeds} of the networks (mean, and ± the sd over seeds; the other columns are means)'}. The paths "
             "start from the first test snapshot. W1 is exact (POT); MMD: Gaussian kernels at 0.25..4 times the "
             "real set's median distance; sliced W1: 500 directions; acceleration: E|x''|^2 along the simulated "
             "paths (lower is smoother). Toys: fresh test draws of 1000 points per snapshot, in the data's "
             "coordinates. EB: the 1000-cell subset, 5 principal components whitened on the training snapshots, "
             "scored against the same cells (200 per time; the README's floor: two halves of t2 are 0.89 apart).",
             ""]
    for setting in args.only:
        ds, hold = setting.split(":")
        r0 = next(r for (s_, _), r in results.items() if s_ == setting)
        obs = [k for k in range(1, len(r0["snapshot_times"])) if k != int(hold)]
        lines += [f"## {ds}, snapshot {hold} (t = {r0['snapshot_times'][int(hold)]:g}) held out", ""]
        if ds == "eb100":
            lines += [f"In {r0['space']} (DMSB's protocol reports MMD and sliced Wasserstein here; its own numbers "
                      "use other kernels and its SWD, so compare within this table).", ""]
        lines += [
                  "| model | W1 held out | MMD held out | sliced W1 held out | "
                  f"W1 observed (t{', t'.join(map(str, obs))}) "
                  "| acceleration | NFE | train s | sample s |", "|---|---|---|---|---|---|---|---|---|"]
        tag = f"holdout_t{hold}"
        for model in [m_ for m_ in MODELS if (setting, m_) in results]:
            rs = [runs[(setting, model, sd)] for sd in args.seeds]

            def avg(key, fmt, spread=False):
                vals = [r["metrics"][key] if key in r["metrics"] else r[key] for r in rs]
                text = format(float(np.mean(vals)), fmt)
                return text + (f" ± {float(np.std(vals, ddof=1)):{fmt}}" if spread and len(vals) > 1 else "")
            lines.append(f"| {model} | {avg('w1_' + tag, '.3f', True)} | {avg('mmd_' + tag, '.4f', True)} | "
                         f"{avg('sliced_w1_' + tag, '.3f', True)} | "
                         f"{', '.join(avg('w1_t' + str(k), '.3f') for k in obs)} | "
                         f"{avg('mean_squared_acceleration', '.3g')} | "
                         f"{rs[0]['nfe']} | {avg('train_seconds', '.0f')} | {avg('sampling_seconds', '.2f')} |")
        m = r0["metrics"]
        lines += [f"| nothing moves (snapshot {int(hold) - 1}) | {m['baseline_w1_' + tag]:.3f} | "
                  f"{m['baseline_mmd_' + tag]:.4f} | {m['baseline_sliced_w1_' + tag]:.3f} | - | - | - | - | - |"]
        if "baseline_ot_interp_w1_" + tag in m:
            lines += [f"| OT interpolation (snapshots {int(hold) - 1} and {int(hold) + 1}) | "
                      f"{m['baseline_ot_interp_w1_' + tag]:.3f} | {m['baseline_ot_interp_mmd_' + tag]:.4f} | "
                      f"{m['baseline_ot_interp_sliced_w1_' + tag]:.3f} | - | - | - | - | - |"]
        lines.append("")
    staged = [(k, r) for k, r in results.items() if r.get("stage_history")]
    if staged:
        lines += ["## The DMSB stages", "",
                  f"Each stage row trains {args.steps // (STAGES + 1)} steps on OT chains (stage 0), then {STAGES} "
                  f"stages of as many steps (the 5-stage row: {args.steps // 6} steps each, 5 stages). A stage simulates one policy from the data at its own end through every "
                  "training snapshot (1000 paths), moves each simulated snapshot onto the data by exact OT, and fits "
                  "the other policy on those chains. The rms shift is the root mean square distance each simulated "
                  "point moved in that projection (0 at the start), a measure of how far the simulating policy's "
                  "marginal was from the data there (lower is better). Seconds: the simulation and the projection, "
                  "per stage.", "",
                  "| setting | row | stage | simulated | fitted | rms shift per training snapshot | s |",
                  "|---|---|---|---|---|---|---|"]
        for (setting, model), r in staged:
            for h in r["stage_history"]:
                lines.append(f"| {setting} | {model.replace('momentum bridge, ', '')} | {h['stage']} | "
                             f"{h['simulated']} | {', '.join(h['fits'])} | "
                             f"{', '.join(format(m, '.2f') for m in h['rms_projection_shift'])} | "
                             f"{h['seconds']:.1f} |")
        lines.append("")
    lines += ["## Time and memory at the EB shape (synthetic, 100-D)", "",
              f"5 snapshots of {synth['points_per_snapshot']} points in {synth['dim']}-D, the momentum bridge with "
              f"the eb config's MLP (threads: {torch_threads or 'all'}): {synth['train_step_seconds']:.3f} s per "
              "training step "
              f"(batch 256 per snapshot, OT chaining included), {synth['sample_seconds']:.1f} s to simulate "
              f"{synth['points_per_snapshot']} paths over 100 steps, peak memory {synth['peak_rss_mib']:.0f} MiB "
              "(the benchmark process).", "",
              f"One stage's pool at this shape: {synth['pool_seconds']:.1f} s ({synth['pool_projection_seconds']:.1f} s "
              f"of it the exact OT projections, {synth['points_per_snapshot']} x {synth['points_per_snapshot']} per "
              f"snapshot), held in {synth['pool_mib']:.1f} MiB: the chains' points at the snapshots only, because the "
              "paths between them are the closed-form pinned bridge. DMSB caches whole simulated trajectories "
              "instead: at its EB settings (4000 paths, 400 steps, the state (x, v), the policy's output and the "
              f"label) {synth['dmsb_cache_mib']:.0f} MiB per simulation, simulated afresh every 1000 (2000 in its "
              "README's runs) iterations.", "", f"![trajectories]({args.name}.png)", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
