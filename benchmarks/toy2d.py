"""Paper section 5.1 benchmark: CLD-5, CLD-10, ULD-5, VSCLD-5, VSULD-5, VSDM-5 on spiral-8Y and checkerboard-6X.

Every model trains through the real ``vsmd fit`` entry point from the same YAML config (same network, seed,
batch size and step budget; only the process, beta and R change), then ``vsmd test`` scores its last
checkpoint. Writes benchmarks/results/toy2d.md and toy2d.json.

    python benchmarks/toy2d.py               # the full table (about 15-20 minutes on 2 CPU cores)
    python benchmarks/toy2d.py --steps 200   # a quick smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from vsmd.cli import main as vsmd
from vsmd.datamodules import make_toy
from vsmd.diffusion import SAStats, simulate
from vsmd.metrics import pmf_rmse
from vsmd.models import ToyVSMD

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (process, beta, R, extra overrides)
    "CLD-5": ("cld", 5.0, 1.0, ()),
    "CLD-10": ("cld", 10.0, 1.0, ()),
    "ULD-5": ("uld", 5.0, 0.7, ()),
    "VSCLD-5": ("vscld", 5.0, 1.0, ()),
    "VSULD-5": ("vsuld", 5.0, 0.7, ()),
    "VSDM-5": ("vsdm", 5.0, 1.0, ()),
}
# Diagnostic, not one of the paper's rows: the same VSULD-5 with the SA loss read as paper Eq. 13 (z_b = FB-SDE policy).
DIAGNOSTICS = {"VSULD-5 fbsde": ("vsuld", 5.0, 0.7, ("--model.init_args.zb_mode", "fbsde"))}
DATASETS = {  # name: (config, index of the non-stretched dimension)
    "spiral-8Y": ("configs/spiral8y.yaml", 0),
    "checkerboard-6X": ("configs/checkerboard6x.yaml", 1),
}


def _args(config: str, process: str, beta: float, damping: float, extra: tuple, out: Path) -> list[str]:
    return [*extra, "--config", str(ROOT / config),
            "--model.init_args.process", process, "--model.init_args.beta", str(beta),
            "--model.init_args.damping", str(damping),
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", process,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def _latest(out: Path, process: str) -> Path:
    return sorted((out / process).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def fit(config: str, process: str, beta: float, damping: float, extra: tuple, steps: int, out: Path) -> float:
    """Train through ``vsmd fit``; returns the wall time."""
    start = time.perf_counter()
    vsmd(["fit", *_args(config, process, beta, damping, extra, out), "--trainer.max_steps", str(steps),
          "--trainer.limit_val_batches", "0"])
    return time.perf_counter() - start


def run_one(config: str, process: str, beta: float, damping: float, extra: tuple, steps: int, out: Path) -> dict:
    train_s = fit(config, process, beta, damping, extra, steps, out)
    ckpt = _latest(out, process) / "checkpoints" / "last.ckpt"
    vsmd(["test", *_args(config, process, beta, damping, extra, out), "--ckpt_path", str(ckpt)])
    result = json.loads((_latest(out, process) / "test_metrics.json").read_text())
    result["train_seconds"] = train_s
    if process in ("vscld", "vsuld"):
        result["stage_optimum"] = stage_optimum(ckpt)
    return result


@torch.no_grad()
def stage_optimum(ckpt: Path, paths: int = 2000) -> dict[str, list[float]]:
    """Where one SA stage would put rho per dimension if solved exactly (grid search on the quadratic 𝓛),
    from 2000 fresh backward paths of the trained model, for both readings of z_b."""
    model = ToyVSMD.load_from_checkpoint(ckpt, map_location="cpu")
    p = model.process
    traj = simulate(p, lambda a, t: model.score(a, t), paths, model.hparams.sa_points, torch.Generator().manual_seed(0))
    rho0, grid, out = p.rho.detach().clone(), torch.linspace(-3, 5, 801), {}
    for mode in ("full_score", "fbsde"):
        stats = SAStats.from_trajectories(p, traj, mode, model.hparams.zeta)
        best = []
        for i in range(len(rho0)):
            losses = []
            for r in grid:
                p.rho.data.copy_(rho0)
                p.rho.data[i] = r
                losses.append(float(stats.loss(*p.variational_scores())))
            best.append(float(grid[int(torch.tensor(losses).argmin())]))
        out[mode] = best
    p.rho.data.copy_(rho0)
    out["rho"] = rho0.tolist()
    return out


def noise_floor(config: str, pairs: int = 5) -> tuple[float, float, float]:
    """RMSE PMF between independent real sample sets: what a perfect model would score."""
    import yaml
    data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
    vals = []
    for i in range(pairs):
        g = torch.Generator().manual_seed(10_000 + i)
        real, other = (make_toy(data["dataset"], 3000, data["stretch"], g) for _ in range(2))
        vals.append(pmf_rmse(real, other))
    return sum(vals) / len(vals), min(vals), max(vals)


def sa_overhead(steps: int, repeats: int, out: Path) -> list[tuple[float, float]]:
    """Interleaved fits of CLD-5 and VSULD-5 on spiral-8Y at equal steps: [(cld_s, vsuld_s), ...]."""
    config = DATASETS["spiral-8Y"][0]
    pairs = []
    for r in range(repeats):
        cld = fit(config, *MODELS["CLD-5"], steps, out / f"t{r}")
        vsuld = fit(config, *MODELS["VSULD-5"], steps, out / f"t{r}")
        pairs.append((cld, vsuld))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="training steps of every model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--models", nargs="*", default=list(MODELS) + list(DIAGNOSTICS))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="interleaved CLD-5 / VSULD-5 fits for the SA-overhead ratio (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            config, _ = DATASETS[ds]
            for name in args.models:
                print(f"=== {ds} {name}", flush=True)
                results.setdefault(ds, {})[name] = run_one(config, *(MODELS | DIAGNOSTICS)[name], args.steps,
                                                           Path(tmp) / ds / name.replace(" ", "_"))
        timing = sa_overhead(args.steps, args.timing_repeats, Path(tmp) / "timing")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy2d.json").write_text(json.dumps({"results": results, "sa_overhead": timing}, indent=2) + "\n")
    lines = [
        "# Toy 2-D benchmark (paper section 5.1)",
        "",
        f"Command: `python benchmarks/toy2d.py --steps {args.steps}`; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}.",
        "Same config per dataset (MLP 3x128, batch 256, Adam 1e-3, EMA 0.999, seed 0); only process/beta/R change.",
        "RMSE of PMFs: 3000 generated vs 3000 real samples, 100x100 grid over the real range x 1.025 (lower is "
        "better). Straightness: rectified-flow straightness of 1000 PF-ODE paths (Heun, 100 points) on the "
        "non-stretched dimension (lower is straighter). Sampler for RMSE: Heun PF-ODE, 50 points.",
        "",
    ]
    for ds, rows in results.items():
        dim = DATASETS[ds][1]
        other = 1 - dim  # the stretched dimension
        floor = noise_floor(DATASETS[ds][0])
        base = rows.get("CLD-5", {}).get("train_seconds")
        lines += [f"## {ds}", "",
                  f"| model | RMSE PMF | straightness (dim {dim}) | W1 dim {other} | std ratio dim {other} | train s | "
                  "train s / CLD-5 | SA s | sampler | NFE | rho | A_x | A_v |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            m = r["metrics"]
            ratio = f"{r['train_seconds'] / base:.3f}" if base else "-"
            ax = ", ".join(f"{v:.3f}" for v in r["A_x"]) if r.get("A_x") else "0"
            av = ", ".join(f"{v:.3f}" for v in r["A_v"]) if r.get("A_v") else "-"
            sa_s = f"{r['sa']['seconds']:.1f}" if r.get("sa") else "-"
            rho = ", ".join(f"{v:.2f}" for v in r["stage_optimum"]["rho"]) if r.get("stage_optimum") else "-"
            lines.append(f"| {name} | {m['rmse_pmf']:.5f} | {m[f'straightness_{dim}']:.3f} | {m[f'w1_{other}']:.2f} | "
                         f"{m[f'std_ratio_{other}']:.2f} | {r['train_seconds']:.1f} | {ratio} | {sa_s} | "
                         f"{r['sampler']} | {r['nfe']} | {rho} | {ax} | {av} |")
        opt = [(n, r["stage_optimum"]) for n, r in rows.items() if r.get("stage_optimum")]
        if opt:
            lines += ["", "Exact optimum of one SA stage (rho per dimension, grid search on the quadratic stage loss, "
                      "2000 fresh backward paths of the trained model):", "",
                      "| model | rho now | optimum, zb_mode full_score | optimum, zb_mode fbsde |", "|---|---|---|---|"]
            lines += [f"| {n} | {', '.join(f'{v:.2f}' for v in o['rho'])} | "
                      f"{', '.join(f'{v:.2f}' for v in o['full_score'])} | {', '.join(f'{v:.2f}' for v in o['fbsde'])} |"
                      for n, o in opt]
        lines += ["", f"Noise floor: RMSE PMF between two independent sets of 3000 real samples = {floor[0]:.5f} "
                  f"(mean of 5 pairs; min {floor[1]:.5f}, max {floor[2]:.5f}).", ""]
    if timing:
        ratios = sorted(v / c for c, v in timing)
        lines += ["## SA overhead", "",
                  f"Interleaved fits of CLD-5 and VSULD-5 on spiral-8Y, {args.steps} steps each, {len(timing)} repeats "
                  "(train s / CLD-5 in the tables above is one unrepeated run and noisier).", "",
                  "| repeat | CLD-5 s | VSULD-5 s | ratio |", "|---|---|---|---|"]
        lines += [f"| {i} | {c:.1f} | {v:.1f} | {v / c:.3f} |" for i, (c, v) in enumerate(timing)]
        lines += ["", f"Median ratio VSULD-5 / CLD-5: **{ratios[len(ratios) // 2]:.3f}** (goal: at most 1.15).", ""]
    (args.out / "toy2d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
