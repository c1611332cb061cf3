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


def run_one(config: str, process: str, beta: float, damping: float, steps: int, out: Path) -> dict:
    common = ["--config", str(ROOT / config),
              "--model.init_args.process", process, "--model.init_args.beta", str(beta),
              "--model.init_args.damping", str(damping),
              "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", process,
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    start = time.perf_counter()
    vsmd(["fit", *common, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0"])
    train_s = time.perf_counter() - start
    runs = sorted((out / process).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    ckpt = runs[-1] / "checkpoints" / "last.ckpt"
    vsmd(["test", *common, "--ckpt_path", str(ckpt)])
    test_dir = sorted((out / process).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    result = json.loads((test_dir / "test_metrics.json").read_text())
    result["train_seconds"] = train_s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="training steps of every model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy2d.json").write_text(json.dumps(results, indent=2) + "\n")
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
        base = rows.get("CLD-5", {}).get("train_seconds")
        lines += [f"## {ds}", "",
                  "| model | RMSE PMF | straightness (dim %d) | train s | train s / CLD-5 | sampler | NFE | A_x | A_v |"
                  % dim, "|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            m = r["metrics"]
            ratio = f"{r['train_seconds'] / base:.3f}" if base else "-"
            ax = ", ".join(f"{v:.3f}" for v in r["A_x"]) if r.get("A_x") else "0"
            av = ", ".join(f"{v:.3f}" for v in r["A_v"]) if r.get("A_v") else "-"
            lines.append(f"| {name} | {m['rmse_pmf']:.5f} | {m[f'straightness_{dim}']:.3f} | "
                         f"{r['train_seconds']:.1f} | {ratio} | {r['sampler']} | {r['nfe']} | {ax} | {av} |")
        lines.append("")
    (args.out / "toy2d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
