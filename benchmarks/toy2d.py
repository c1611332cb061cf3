"""Paper section 5.1 benchmark: CLD-5, CLD-10, ULD-5, VSCLD-5, VSULD-5, VSDM-5 on spiral-8Y and checkerboard-6X,
an ablation of what makes A adapt, the three samplers at about 100 NFE, and the SA overhead.

Every model trains through the real ``vsmd fit`` entry point from the same YAML config (same network, batch size
and step budget; only the process, beta and R change, plus the ablation's SA options), once per seed, then
``vsmd test`` scores its last checkpoint. Two runs go in parallel, one thread each. Writes
benchmarks/results/toy2d.md, toy2d.json, toy2d_samples.png (models x datasets, seed 0), toy2d_rho.png (rho over
training) and toy2d_main_job.png (the README's main job: VSULD-5 on spiral-8Y with the default config, seed 0).

    python benchmarks/toy2d.py                              # everything, 3 seeds (about 75 minutes on 2 cores)
    python benchmarks/toy2d.py --steps 200 --seeds 0 --timing-repeats 0   # a smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (process, beta, R, extra overrides)
    "CLD-5": ("cld", 5.0, 1.0, ()),
    "CLD-10": ("cld", 10.0, 1.0, ()),
    "ULD-5": ("uld", 5.0, 0.7, ()),
    "VSCLD-5": ("vscld", 5.0, 1.0, ()),
    "VSULD-5": ("vsuld", 5.0, 0.7, ()),
    "VSDM-5": ("vsdm", 5.0, 1.0, ()),
}


def _m(**kw) -> tuple[str, ...]:
    return tuple(x for k, v in kw.items() for x in (f"--model.init_args.{k}", str(v)))


PAPER = _m(rho_init="zero", zb_mode="full_score", sa_sampler="em", sa_points=100)
# Which change buys what: VSULD-5 with one option at a time away from the default (data start, fbsde, Heun paths).
ABLATION = {
    "paper: zero start, full_score, EM paths (old default)": ("vsuld", 5.0, 0.7, PAPER),
    "zero start, fbsde, EM paths": ("vsuld", 5.0, 0.7, _m(rho_init="zero", sa_sampler="em", sa_points=100)),
    "zero start, fbsde, Heun paths": ("vsuld", 5.0, 0.7, _m(rho_init="zero")),
    "data start, no SA": ("vsuld", 5.0, 0.7, _m(sa_every=1000000)),
    "data start, full_score, Heun paths": ("vsuld", 5.0, 0.7, _m(zb_mode="full_score")),
    "data start, fbsde, EM paths": ("vsuld", 5.0, 0.7, _m(sa_sampler="em", sa_points=100)),
    "data start, fbsde, Heun paths (default)": ("vsuld", 5.0, 0.7, ()),
}
DATASETS = {  # name: (config, index of the non-stretched dimension)
    "spiral-8Y": ("configs/spiral8y.yaml", 0),
    "checkerboard-6X": ("configs/checkerboard6x.yaml", 1),
}
EXTRA_SAMPLERS = (("sscs", 100), ("em", 100))  # beside the config's heun 50 (NFE 99)


def _args(config: str, process: str, beta: float, damping: float, extra: tuple, out: Path, seed: int) -> list[str]:
    model = ([] if process == "agm" else  # an AGM config names its own class (ToyAGM), without these options
             ["--model.init_args.process", process, "--model.init_args.beta", str(beta),
              "--model.init_args.damping", str(damping)])
    return ["--config", str(ROOT / config), "--seed_everything", str(seed), *model, "--model.init_args.seed", str(seed),
            "--data.init_args.seed", str(seed),
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "run",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def _vsmd(args: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    code = f"import torch; torch.set_num_threads({threads}); from vsmd.cli import main; main({args!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _latest(out: Path) -> Path:
    return sorted((out / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def fit(config, process, beta, damping, extra, steps, out, seed, threads=1) -> float:
    start = time.perf_counter()
    _vsmd(["fit", *_args(config, process, beta, damping, extra, out, seed), "--trainer.max_steps", str(steps),
           "--trainer.limit_val_batches", "0"], threads)
    return time.perf_counter() - start


def rho_history(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"] if t.startswith("rho/")}


def toy_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options the toy benchmarks share (agm.py and rotation.py reuse this script's runs)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="training steps of every model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vsmd-bench-toy2d",
                    help="run folders (outside the repository), shared by the toy benchmarks; finished runs there "
                    "are reused")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    return ap


def run_one(config, process, beta, damping, extra, steps, out: Path, seed: int) -> dict:
    """Fit, test and score one model; the result is cached in out/result.json, so a rerun skips finished runs."""
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if out.exists():
        shutil.rmtree(out)  # an interrupted run starts again
    train_s = fit(config, process, beta, damping, extra, steps, out, seed)
    fit_run = _latest(out)
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    _vsmd(["test", *_args(config, process, beta, damping, extra, out, seed), "--ckpt_path", str(ckpt)], 1)
    test_run = _latest(out)
    result = json.loads((test_run / "test_metrics.json").read_text())
    result["train_seconds"] = train_s
    result["rho_history"] = rho_history(fit_run)
    result["samples"] = str(test_run / "test_samples.npz")
    result["samples_png"] = str(test_run / "test_samples.png")
    if process in ("vscld", "vsuld", "vsdm"):
        result["samplers"] = other_samplers(ckpt, config, seed)
    cached.write_text(json.dumps(result))
    return result


@torch.no_grad()
def other_samplers(ckpt: Path, config: str, seed: int) -> dict[str, dict]:
    """The same checkpoint sampled with SSCS and EM at about 100 NFE: RMSE PMF, W1 and std ratio per axis."""
    import yaml

    from vsmd.datamodules import Toy2DDataModule
    from vsmd.metrics import pmf_rmse, wasserstein1d
    from vsmd.models import ToyVSMD
    model = ToyVSMD.load_from_checkpoint(ckpt, map_location="cpu")  # in a worker thread of this process
    data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
    dm = Toy2DDataModule(data["dataset"], data["stretch"], seed=seed, rotate=data.get("rotate", 0.0))
    real = dm.fixed_set("test")
    out = {}
    for name, steps in EXTRA_SAMPLERS:
        res = model.generate(len(real), sampler=name, steps=steps, seed=seed)
        fake = model.process.split(res.state)[0]
        out[f"{name} {steps}"] = {"nfe": res.nfe, "rmse_pmf": pmf_rmse(real, fake),
                                  "w1": wasserstein1d(real, fake).tolist(),
                                  "std_ratio": (fake.std(0) / real.std(0)).tolist()}
    return out


def noise_floor(config: str, pairs: int = 5) -> float:
    """RMSE PMF between independent real sample sets: what a perfect model would score."""
    import yaml

    from vsmd.datamodules import make_toy
    from vsmd.metrics import pmf_rmse
    data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
    vals = []
    for i in range(pairs):
        g = torch.Generator().manual_seed(10_000 + i)
        real, other = (make_toy(data["dataset"], 3000, data["stretch"], g, data.get("rotate", 0.0)) for _ in range(2))
        vals.append(pmf_rmse(real, other))
    return sum(vals) / len(vals)


def sa_overhead(steps: int, repeats: int, out: Path) -> list[tuple[float, float]]:
    """Interleaved fits of CLD-5 and VSULD-5 on spiral-8Y at equal steps, alone on the machine, all threads."""
    config, threads = DATASETS["spiral-8Y"][0], os.cpu_count() or 1
    cache = out / "pairs.json"  # finished pairs (steps, cld s, vsuld s); a rerun measures only the missing ones
    done = [p for p in json.loads(cache.read_text()) if p[0] == steps] if cache.is_file() else []
    for r in range(len(done), repeats):
        for leg in "cv":
            shutil.rmtree(out / f"t{r}{leg}", ignore_errors=True)
        cld = fit(config, *MODELS["CLD-5"], steps, out / f"t{r}c", 0, threads)
        vsuld = fit(config, *MODELS["VSULD-5"], steps, out / f"t{r}v", 0, threads)
        done.append([steps, cld, vsuld])
        out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(done) + "\n")
    return [(c, v) for _, c, v in done[:repeats]]


def _ms(values: list[float], fmt: str) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) == 1:
        return format(a[0], fmt)
    return f"{format(a.mean(), fmt)} ± {format(a.std(ddof=1), fmt)}"


def table(rows: dict[str, list[dict]], dim: int) -> list[str]:
    other = 1 - dim  # the stretched dimension
    lines = [f"| model | seeds | RMSE PMF | W1 dim {other} | std ratio dim {other} | straightness dim {dim} | "
             f"rho (x, y) | train s | SA s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        m = [r["metrics"] for r in runs]
        rho = "-"
        if runs[0].get("rho_history"):
            final = [[h[-1][1] for _, h in sorted(r["rho_history"].items())] for r in runs]
            rho = ", ".join(_ms([f[i] for f in final], ".2f") for i in range(len(final[0])))
        sa = _ms([r["sa"]["seconds"] for r in runs], ".1f") if runs[0].get("sa") else "-"
        lines.append(f"| {name} | {len(runs)} | {_ms([x['rmse_pmf'] for x in m], '.5f')} | "
                     f"{_ms([x[f'w1_{other}'] for x in m], '.2f')} | "
                     f"{_ms([x[f'std_ratio_{other}'] for x in m], '.2f')} | "
                     f"{_ms([x[f'straightness_{dim}'] for x in m], '.2f')} | {rho} | "
                     f"{_ms([r['train_seconds'] for r in runs], '.0f')} | {sa} |")
    return lines


def figures(results: dict, ablation: dict, out: Path, steps: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(MODELS)
    fig, axes = plt.subplots(len(results), len(names) + 1, figsize=(2.3 * (len(names) + 1), 2.5 * len(results)),
                             squeeze=False)
    for i, (ds, rows) in enumerate(results.items()):
        first = next(iter(rows.values()))[0]
        real = np.load(first["samples"])["real"]
        lo, hi = real.min(0) * 1.05, real.max(0) * 1.05
        panels = [("data", real)] + [(n, np.load(rows[n][0]["samples"])["generated"]) for n in names if n in rows]
        for ax, (title, pts) in zip(axes[i], panels):
            ax.scatter(pts[:, 0], pts[:, 1], s=0.3, alpha=0.4)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{ds}\n{title}" if title == "data" else title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "toy2d_samples.png", dpi=110)
    plt.close(fig)
    # rho over training, seed 0: the paper rows and the ablation (spiral-8Y).
    series = [(f"{ds}: {n}", rows[n][0]["rho_history"]) for ds, rows in results.items()
              for n in ("VSULD-5", "VSCLD-5", "VSDM-5") if n in rows]
    series += [(f"spiral-8Y ablation: {n}", runs[0]["rho_history"]) for n, runs in ablation.items()
               if "default" not in n]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for k, (label, hist) in enumerate(series):
        for j, ax in enumerate(axes):
            h = hist.get(f"rho/{j}", [])
            if h:  # A = 0 before the first logged value (rho_init zero), and constant after the last one
                h = ([(0, 0.0)] if h[0][0] > 0 else []) + h + [(steps, h[-1][1])]
                ax.plot([s for s, _ in h], [v for _, v in h], color=f"C{k % 10}", ls="-" if "ablation" not in label
                        else "--", label=label if j == 0 else None)
    for j, ax in enumerate(axes):
        ax.set_title(f"rho of dimension {j} ({'x' if j == 0 else 'y'}) over training, seed 0")
        ax.set_xlabel("training step")
    axes[0].set_ylabel("rho = log omega")
    fig.legend(loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(out / "toy2d_rho.png", dpi=110)
    plt.close(fig)
    shutil.copy(results["spiral-8Y"]["VSULD-5"][0]["samples_png"], out / "toy2d_main_job.png")


def main() -> None:
    parser = toy_parser(__doc__)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--ablation", nargs="*", default=list(ABLATION), help="ablation rows (spiral-8Y)")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument("--all-seeds-for", nargs="*", default=None,
                        help="models that run every seed; the others run the first seed only (default: all)")
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="interleaved CLD-5 / VSULD-5 fits for the SA-overhead ratio (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the extra-sampler evaluations run in this process's worker threads
    start = time.perf_counter()
    ablation_seeds = args.ablation_seeds or args.seeds
    # The first seed of every model and ablation row first, so that an interrupted run still has all rows.
    every = set(args.models if args.all_seeds_for is None else args.all_seeds_for)
    main_jobs = [(ds, name, seed, MODELS[name]) for seed in args.seeds for ds in args.datasets for name in args.models
                 if seed == args.seeds[0] or name in every]
    abl_jobs = [("ablation", name, seed, ABLATION[name]) for seed in ablation_seeds for name in args.ablation
                if not name.endswith("(default)")]
    first = len(args.datasets) * len(args.models)
    jobs = main_jobs[:first] + abl_jobs + main_jobs[first:]

    def work(job):
        ds, name, seed, spec = job
        config = DATASETS["spiral-8Y" if ds == "ablation" else ds][0]
        print(f"=== {ds} {name} seed {seed}", flush=True)
        return job, run_one(config, *spec, args.steps, args.work / ds / f"{_slug(name)}_{seed}", seed)

    results: dict[str, dict[str, list]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (ds, name, seed, _), res in pool.map(work, jobs):
            res["seed"] = seed
            results.setdefault(ds, {}).setdefault(name, []).append(res)
    ablation = results.pop("ablation", {})
    if "spiral-8Y" in results and "VSULD-5" in results["spiral-8Y"] and args.ablation:
        ablation["data start, fbsde, Heun paths (default)"] = [
            r for r in results["spiral-8Y"]["VSULD-5"] if r["seed"] in ablation_seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    if "spiral-8Y" in results and all(n in results["spiral-8Y"] for n in MODELS):
        figures(results, ablation, args.out, args.steps)
    timing = sa_overhead(args.steps, args.timing_repeats, args.work / "timing") if args.timing_repeats else []
    for group in (results, ablation):
        for rows in group.values():
            for runs in rows.values() if isinstance(rows, dict) else [rows]:
                for r in runs:
                    r.pop("samples", None)
                    r.pop("samples_png", None)
    (args.out / "toy2d.json").write_text(json.dumps({"results": results, "ablation": ablation, "sa_overhead": timing},
                                                    indent=1) + "\n")
    lines = [
        "# Toy 2-D benchmark (paper section 5.1)", "",
        f"Command: `python benchmarks/toy2d.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))} "
        f"--ablation-seeds {' '.join(map(str, ablation_seeds))}"
        + (f" --all-seeds-for {' '.join(sorted(every))}" if args.all_seeds_for is not None else "") + "`; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; {args.jobs} runs in parallel, "
        f"one thread each; {time.perf_counter() - start:.0f} s in all.",
        "Same config per dataset (MLP 3x128, batch 256, Adam 1e-3, EMA 0.999, 5000 steps); only process/beta/R "
        "change. Each cell is the mean ± sample std over the seeds (seed_everything, data stream and SA/sampling "
        "seed all set to the seed).",
        "RMSE of PMFs: 3000 generated vs 3000 real samples, 100x100 grid over the real range x 1.025 (lower is "
        "better). W1 and the std ratio (generated / real) on the stretched axis. Straightness: rectified-flow "
        "straightness of 1000 PF-ODE paths (Heun, 100 points) on the non-stretched axis (lower is straighter). "
        "Sampler: Heun PF-ODE, 50 points (NFE 99). rho: the learned log omega at the end (x, y).", ""]
    for ds, rows in results.items():
        dim = DATASETS[ds][1]
        lines += [f"## {ds}", "", *table(rows, dim), "",
                  "Noise floor of RMSE PMF (two independent real sets of 3000): "
                  f"{noise_floor(DATASETS[ds][0]):.5f}.", ""]
        sampler_rows = [(n, runs) for n, runs in rows.items() if runs[0].get("samplers")]
        if sampler_rows:
            other = 1 - dim
            lines += [f"Samplers at about 100 NFE on the same checkpoints ({ds}; stretched axis):", "",
                      "| model | sampler | NFE | RMSE PMF | W1 | std ratio |", "|---|---|---|---|---|---|"]
            for n, runs in sampler_rows:
                m = [r["metrics"] for r in runs]
                lines.append(f"| {n} | heun 50 | {runs[0]['nfe']} | {_ms([x['rmse_pmf'] for x in m], '.5f')} | "
                             f"{_ms([x[f'w1_{other}'] for x in m], '.2f')} | "
                             f"{_ms([x[f'std_ratio_{other}'] for x in m], '.2f')} |")
                for s in runs[0]["samplers"]:
                    v = [r["samplers"][s] for r in runs]
                    lines.append(f"| {n} | {s} | {v[0]['nfe']} | {_ms([x['rmse_pmf'] for x in v], '.5f')} | "
                                 f"{_ms([x['w1'][other] for x in v], '.2f')} | "
                                 f"{_ms([x['std_ratio'][other] for x in v], '.2f')} |")
            lines.append("")
    if ablation:
        lines += ["## Ablation: what makes A adapt (VSULD-5, spiral-8Y)", "",
                  "One option at a time away from the default: the start of A (`rho_init`: data or zero), the SA "
                  "loss (`zb_mode`: fbsde or full_score) and the simulator of the SA paths (`sa_sampler`: Heun on "
                  "the PF-ODE with 50 points, or Euler-Maruyama with 100 points; the same NFE).", "",
                  *table(ablation, 0), ""]
    if timing:
        ratios = sorted(v / c for c, v in timing)
        lines += ["## SA overhead", "",
                  f"Interleaved fits of CLD-5 and VSULD-5 (default config) on spiral-8Y, {args.steps} steps each, "
                  f"alone on the machine with {os.cpu_count()} threads, {len(timing)} repeats.", "",
                  "| repeat | CLD-5 s | VSULD-5 s | ratio |", "|---|---|---|---|"]
        lines += [f"| {i} | {c:.1f} | {v:.1f} | {v / c:.3f} |" for i, (c, v) in enumerate(timing)]
        lines += ["", f"Median ratio VSULD-5 / CLD-5: **{ratios[len(ratios) // 2]:.3f}** (goal: at most 1.15).", ""]
    (args.out / "toy2d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
