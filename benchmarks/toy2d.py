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
from vsmd.metrics import pmf_rmse

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (process, beta, R)
    "CLD-5": ("cld", 5.0, 1.0),
    "CLD-10": ("cld", 10.0, 1.0),
    "ULD-5": ("uld", 5.0, 0.7),
    "VSCLD-5": ("vscld", 5.0, 1.0),
    "VSULD-5": ("vsuld", 5.0, 0.7),
    "VSDM-5": ("vsdm", 5.0, 1.0),
}
DATASETS = {  # name: (config, index of the non-stretched dimension)
    "spiral-8Y": ("configs/spiral8y.yaml", 0),
    "checkerboard-6X": ("configs/checkerboard6x.yaml", 1),
}


def _args(config: str, process: str, beta: float, damping: float, out: Path) -> list[str]:
    return ["--config", str(ROOT / config),
            "--model.init_args.process", process, "--model.init_args.beta", str(beta),
            "--model.init_args.damping", str(damping),
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", process,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _latest(out: Path, process: str) -> Path:
    return sorted((out / process).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]


def fit(config: str, process: str, beta: float, damping: float, steps: int, out: Path) -> float:
    """Train through ``vsmd fit``; returns the wall time."""
    start = time.perf_counter()
    vsmd(["fit", *_args(config, process, beta, damping, out), "--trainer.max_steps", str(steps),
          "--trainer.limit_val_batches", "0"])
    return time.perf_counter() - start


def run_one(config: str, process: str, beta: float, damping: float, steps: int, out: Path) -> dict:
    train_s = fit(config, process, beta, damping, steps, out)
    ckpt = _latest(out, process) / "checkpoints" / "last.ckpt"
    vsmd(["test", *_args(config, process, beta, damping, out), "--ckpt_path", str(ckpt)])
    result = json.loads((_latest(out, process) / "test_metrics.json").read_text())
    result["train_seconds"] = train_s
    return result


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
    parser.add_argument("--models", nargs="*", default=list(MODELS))
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
                process, beta, damping = MODELS[name]
                print(f"=== {ds} {name}", flush=True)
                results.setdefault(ds, {})[name] = run_one(config, process, beta, damping, args.steps,
                                                           Path(tmp) / ds)
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
        floor = noise_floor(DATASETS[ds][0])
        base = rows.get("CLD-5", {}).get("train_seconds")
        lines += [f"## {ds}", "",
                  "| model | RMSE PMF | straightness (dim %d) | train s | train s / CLD-5 | SA s | sampler | NFE | A_x | A_v |"
                  % dim, "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            m = r["metrics"]
            ratio = f"{r['train_seconds'] / base:.3f}" if base else "-"
            ax = ", ".join(f"{v:.3f}" for v in r["A_x"]) if r.get("A_x") else "0"
            av = ", ".join(f"{v:.3f}" for v in r["A_v"]) if r.get("A_v") else "-"
            sa_s = f"{r['sa']['seconds']:.1f}" if r.get("sa") else "-"
            lines.append(f"| {name} | {m['rmse_pmf']:.5f} | {m[f'straightness_{dim}']:.3f} | "
                         f"{r['train_seconds']:.1f} | {ratio} | {sa_s} | {r['sampler']} | {r['nfe']} | {ax} | {av} |")
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
