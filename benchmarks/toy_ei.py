"""Few-step sampling on the toys: quality against NFE for ei (orders 1-3, quadratic and uniform grids, with and
without the data estimate at t_stop), heun, sscs and em, on checkpoints trained from the default configs
(parametrisation eps_v), and the issue's goals checked per setting: ei at <= 20 NFE against heun at NFE 99
(RMSE-PMF within 10%, W1 within 20%), ei at 10 NFE against heun at NFE 19.

Writes benchmarks/results/toy_ei.md, .json and toy_ei.png. Fits are cached under --work (a rerun only samples).

    python benchmarks/toy_ei.py                      # VSULD-5 on spiral-8Y and checkerboard-6X, seed 0
    python benchmarks/toy_ei.py --models VSULD-5 CLD-10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from toy2d import DATASETS, MODELS, ROOT, _latest, fit

NFES = (5, 10, 20, 40, 99)
GRIDS = ("quadratic", "uniform")
T_STOP = 0.02  # the data estimate taken here ("+ x0" rows): one extra network call


def steps_for(sampler: str, nfe: int, stop: bool) -> int:
    """Grid points giving at most ``nfe`` network calls (heun: 2n - 1; others: n - 1; +1 for the data estimate)."""
    budget = nfe - (1 if stop else 0)
    return max(2, (budget + 1) // 2 if sampler == "heun" else budget + 1)


@torch.no_grad()
def sweep(ckpt: Path, config: str, seed: int, stretched: int) -> list[dict]:
    from vsmd.datamodules import Toy2DDataModule
    from vsmd.metrics import pmf_rmse, sample_problem, wasserstein1d
    from vsmd.models import ToyVSMD
    data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
    real = Toy2DDataModule(data["dataset"], data["stretch"], seed=seed).fixed_set("test")
    rows = []
    variants = [("heun", None, False, None), ("sscs", None, False, None), ("em", None, False, None)]
    variants += [("ei", k, stop, grid) for grid in GRIDS for k in (1, 2, 3) for stop in (False, True)]
    for sampler, order, stop, grid in variants:
        for nfe in NFES:
            model = ToyVSMD.load_from_checkpoint(ckpt, map_location="cpu", sampler=sampler, ei_order=order or 3,
                                                 ei_grid=grid or "quadratic", t_stop=T_STOP if stop else None,
                                                 ei_t_stop=None)  # no estimate unless the row asks for one
            start = time.perf_counter()
            res = model.generate(len(real), steps=steps_for(sampler, nfe, stop), seed=seed)
            wall = time.perf_counter() - start
            fake = model.process.split(res.state)[0]
            bad = sample_problem(fake, real.abs().max())
            rows.append({"sampler": sampler, "order": order, "x0": stop, "grid": grid, "nfe": res.nfe, "seconds": wall,
                         "rmse_pmf": None if bad else pmf_rmse(real, fake),
                         "w1": None if bad else float(wasserstein1d(real, fake)[stretched]),
                         "std_ratio": None if bad else float(fake.std(0)[stretched] / real.std(0)[stretched])})
    return rows


def label(r: dict) -> str:
    if r["sampler"] != "ei":
        return r["sampler"]
    return f"ei-{r['order']} {r.get('grid') or 'quadratic'}" + (" + x0" if r["x0"] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=["VSULD-5"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vsmd-bench-toy-ei-v")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    jobs = [(d, m, s) for d in args.datasets for m in args.models for s in args.seeds]

    def train(job):
        d, m, s = job
        out = args.work / f"{d}_{m}_{s}"
        ckpt_file = out / "ckpt.txt"
        if not ckpt_file.is_file():
            process, beta, damping, extra = MODELS[m]
            fit(DATASETS[d][0], process, beta, damping, extra,
                args.steps, out, s)
            ckpt_file.write_text(str(_latest(out) / "checkpoints" / "last.ckpt"))
        return Path(ckpt_file.read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        ckpts = list(pool.map(train, jobs))
    results = {}
    for (d, m, s), ckpt in zip(jobs, ckpts):
        stretched = 1 - DATASETS[d][1]
        results[f"{d}|{m}|{s}"] = sweep(ckpt, DATASETS[d][0], s, stretched)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy_ei.json").write_text(json.dumps(results, indent=1))
    write_table(results, args)
    plot(results, args.out / "toy_ei.png")


def _fmt(vals, f):
    v = [x for x in vals if x is not None]
    if len(v) < len(vals):
        return "diverged" if not v else f"{np.mean(v):{f}} ({len(vals) - len(v)} diverged)"
    return f"{np.mean(v):{f}}" + (f" ± {np.std(v, ddof=1):{f}}" if len(v) > 1 else "")


def write_table(results: dict, args) -> None:
    lines = ["# Few-step sampling on the toys", "",
             f"Command: `python benchmarks/toy_ei.py --models {' '.join(args.models)} --seeds "
             f"{' '.join(map(str, args.seeds))}`. Default configs ({args.steps} steps, "
             "parametrisation eps_v); 3000 samples against the test set; W1 and std ratio on the "
             f"stretched axis; '+ x0': stop at t = {T_STOP} and return the data estimate (one more call). "
             "Seconds: sampling wall time on CPU (2 threads, other work on the machine).", ""]
    for key in dict.fromkeys(k.rsplit("|", 1)[0] for k in results):
        runs = [v for k, v in results.items() if k.rsplit("|", 1)[0] == key]
        d, m = key.split("|")
        lines += [f"## {d}, {m} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
                  "| sampler | NFE | RMSE PMF | W1 | std ratio | s |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(runs[0]):
            col = [run[i] for run in runs]
            lines.append(f"| {label(r)} | {r['nfe']} | {_fmt([c['rmse_pmf'] for c in col], '.5f')} | "
                         f"{_fmt([c['w1'] for c in col], '.2f')} | {_fmt([c['std_ratio'] for c in col], '.3f')} | "
                         f"{np.mean([c['seconds'] for c in col]):.2f} |")
        lines.append("")
    lines += goals(results)
    (args.out / "toy_ei.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _mean(runs: list[list[dict]], name: str, nfe: int, key: str) -> float | None:
    vals = [r[key] for run in runs for r in run if label(r) == name and r["nfe"] == nfe]
    return None if not vals or any(v is None for v in vals) else float(np.mean(vals))


def goals(results: dict) -> list[str]:
    """The issue's goals per ei setting, on the means over seeds: at NFE 20 against heun at NFE 99 (RMSE-PMF within
    10%, W1 within 20%); at NFE 10 (W1) against heun at NFE 19."""
    lines = ["## Goals per ei setting (means over seeds)", "",
             "NFE 20 against heun-99: RMSE-PMF ratio (goal <= 1.10) and W1 ratio (goal <= 1.20); NFE 10 against "
             "heun-19: W1 ratio (goal < 1).", ""]
    for key in dict.fromkeys(k.rsplit("|", 1)[0] for k in results):
        runs = [v for k, v in results.items() if k.rsplit("|", 1)[0] == key]
        ref_rmse, ref_w1 = _mean(runs, "heun", 99, "rmse_pmf"), _mean(runs, "heun", 99, "w1")
        ref10 = _mean(runs, "heun", 19, "w1")
        lines += [f"### {key.replace('|', ', ')}: heun-99 RMSE-PMF {ref_rmse:.5f}, W1 {ref_w1:.2f}; heun-19 W1 "
                  f"{ref10:.2f}", "", "| ei setting | NFE 20 RMSE ratio | NFE 20 W1 ratio | NFE 10 W1 ratio | "
                  "all goals |", "|---|---|---|---|---|"]
        for name in dict.fromkeys(label(r) for r in runs[0] if r["sampler"] == "ei"):
            r20, w20, w10 = (_mean(runs, name, 20, "rmse_pmf"), _mean(runs, name, 20, "w1"),
                             _mean(runs, name, 10, "w1"))
            if None in (r20, w20, w10):
                lines.append(f"| {name} | diverged | | | no |")
                continue
            ok = r20 / ref_rmse <= 1.10 and w20 / ref_w1 <= 1.20 and w10 < ref10
            lines.append(f"| {name} | {r20 / ref_rmse:.2f} | {w20 / ref_w1:.2f} | {w10 / ref10:.2f} | "
                         f"{'yes' if ok else 'no'} |")
        lines.append("")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(dict.fromkeys(k.rsplit("|", 1)[0] for k in results))
    fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 7), squeeze=False)
    for j, key in enumerate(keys):
        runs = [v for k, v in results.items() if k.rsplit("|", 1)[0] == key]
        shown = ["heun", "em", "sscs", "ei-3 quadratic", "ei-3 quadratic + x0", "ei-1 uniform", "ei-2 uniform",
                 "ei-2 uniform + x0", "ei-3 uniform"]
        for name in shown:
            pts = [(nfe, _mean(runs, name, nfe, "rmse_pmf"), _mean(runs, name, nfe, "w1"))
                   for nfe in sorted({r["nfe"] for r in runs[0] if label(r) == name})]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                n, rm, w = zip(*pts)
                style = "--" if "x0" in name else ("-" if name.startswith("ei") else ":")
                axes[0, j].plot(n, rm, "o" + style, label=name, ms=3)
                axes[1, j].plot(n, w, "o" + style, label=name, ms=3)
        axes[0, j].set_title(f"{key.replace('|', ', ')} ({len(runs)} seed{'s' if len(runs) > 1 else ''}, mean)")
        for i, yl in enumerate(("RMSE PMF", "W1 (stretched axis)")):
            axes[i, j].set_xscale("log")
            axes[i, j].set_yscale("log")
            axes[i, j].set_ylabel(yl)
            axes[i, j].set_xlabel("NFE")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
