"""AGM beside VSULD-5 and CLD-10 on the paper's toys at NFE 5, 10 and 20 (issue 13).

AGM trains through ``vsmd fit`` from configs/spiral8y_agm.yaml and configs/checkerboard6x_agm.yaml (the same
network, batch size and 5000 steps as the VSMD toys), as the paper (row "AGM": ``agm_scale none``, the bridge
on the data as they are) and with ``agm_scale data`` (on the data divided by their sd per dimension, the configs'
default). VSULD-5 and CLD-10 are the toy benchmark's runs (benchmarks/toy2d.py, reused from its --work folder,
trained there if missing). Every checkpoint is then scored by ``vsmd test`` at each NFE: AGM with its integrator
and the hop, at the paper's hop times (t_stop 0.4 / 0.7 / 0.9 for NFE 5 / 10 / 20) and at a late hop (t_stop 0.99);
VSULD-5 and CLD-10 with the exponential integrator (``sampler ei``, order 3, NFE = sample_steps - 1). Writes
benchmarks/results/agm.md, agm.json and agm_paths.png (probability-flow paths of AGM and VSULD-5, seed 0).

    python benchmarks/agm.py                         # 3 seeds, about 40 minutes on 2 cores
    python benchmarks/agm.py --seeds 0 --steps 200   # a smoke run (numbers meaningless)
    python benchmarks/agm.py --models "AGM, agm_scale data" --datasets spiral-8Y --out /tmp/agm  # ~4 min a seed
"""

from __future__ import annotations

import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy2d import DATASETS, MODELS, ROOT, _args, _latest, _ms, _vsmd, run_one, toy_parser  # noqa: E402

AGM_CONFIGS = {"spiral-8Y": "configs/spiral8y_agm.yaml", "checkerboard-6X": "configs/checkerboard6x_agm.yaml"}
NFES = (5, 10, 20)
PAPER_STOP = {5: 0.4, 10: 0.7, 20: 0.9}  # the official AGM settings (images in [-1, 1])
AGM_SCALED = "AGM, agm_scale data"  # the bridge on the data divided by their sd per dimension


def evaluate(config: str, spec: tuple, ckpt: Path, out: Path, seed: int, overrides: list[str]) -> dict:
    """``vsmd test`` of ``ckpt`` with ``overrides``; returns its test_metrics.json."""
    _vsmd(["test", *_args(config, *spec, out, seed), *overrides, "--ckpt_path", str(ckpt)], 1)
    return json.loads((_latest(out) / "test_metrics.json").read_text())


def run_model(name: str, ds: str, seed: int, args) -> dict:
    cached = args.work / "agm" / f"{name.replace(', ', '_').replace(' ', '_')}_{ds}_{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if name.startswith("AGM"):
        scaled = name == AGM_SCALED
        config, spec = AGM_CONFIGS[ds], ("agm", 5.0, 1.0, ("--model.init_args.agm_scale", "data" if scaled else "none"))
        out = args.work / "agm" / f"{'AGM_scaled' if scaled else 'AGM'}_{ds}_{seed}"
    else:
        config, spec = DATASETS[ds][0], MODELS[name]
        out = args.work / ds / f"{name.replace('-', '_')}_{seed}"
    base = run_one(config, *spec, args.steps, out, seed)  # fit (or reuse) and the config's own test
    ckpt = sorted((out / "run").glob("version_*/checkpoints/last.ckpt"),
                  key=lambda p: int(p.parent.parent.name.split("_")[1]))[0]
    rows = {}
    for nfe in NFES:
        if name.startswith("AGM"):
            for stop in (PAPER_STOP[nfe], 0.99):
                rows[f"{nfe}:{stop}"] = evaluate(config, spec, ckpt, out, seed, [
                    "--model.init_args.sample_steps", str(nfe), "--model.init_args.t_stop", str(stop)])
        else:
            rows[f"{nfe}"] = evaluate(config, spec, ckpt, out, seed, [
                "--model.init_args.sampler", "ei", "--model.init_args.sample_steps", str(nfe + 1),
                "--model.init_args.ei_order", "3", "--model.init_args.ei_grid", "quadratic",
                "--model.init_args.ei_t_stop", "null"])  # the setting of the table, not the toys' recommended one
    result = {"ckpt": str(ckpt), "config": config, "train_seconds": base["train_seconds"],
              "rows": {k: {"metrics": r["metrics"], "nfe": r["nfe"]} for k, r in rows.items()}}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


@torch.no_grad()
def paths_figure(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vsmd.models import ToyAGM, ToyVSMD
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for col, name in enumerate(("AGM", "VSULD-5")):
        pin = {} if name == "AGM" else {"ei_order": 3, "ei_grid": "quadratic", "ei_t_stop": None}
        cls = ToyAGM if name == "AGM" else ToyVSMD
        model = cls.load_from_checkpoint(results["spiral-8Y"][name][0]["ckpt"], map_location="cpu", **pin)
        res = model.generate(40, sampler="ei", steps=100, return_trajectory=True, seed=3)
        x = model.process.split(res.trajectory.flatten(0, 1))[0].reshape(*res.trajectory.shape[:2], -1).numpy()
        s = res.times.numpy()[: len(x)]  # time to the data: 1 -> 0
        for row, (dim, label) in enumerate(((0, "x (the other axis)"), (1, "y (stretched x8)"))):
            ax = axes[row, col]
            ax.plot(s, x[:, :, dim], lw=0.7, alpha=0.7)
            ax.set(ylabel=label, xlabel="time to the data" if row else None)
            if row == 0:
                ax.set_title(f"{name}: 40 probability-flow paths (ei, 100 points)", fontsize=9)
    fig.suptitle("spiral-8Y, seed 0: each coordinate along the paths, from the noise (time 1) to the data "
                 "(time 0; AGM hops there from 0.1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def guidance(results: dict, radius: float = 5.0, n: int = 3000) -> list[dict]:
    """Velocity guidance on the trained AGM (spiral-8Y, every seed) toward the top of the spiral: the fraction of
    samples within ``radius`` of the target, and the fraction on the data (within 1.0 of a real test point)."""
    import yaml

    from vsmd.datamodules import Toy2DDataModule
    from vsmd.models import ToyAGM
    data = yaml.safe_load((ROOT / AGM_CONFIGS["spiral-8Y"]).read_text())["data"]["init_args"]
    rows = []
    for model_name, run in [(m, r) for m in ("AGM", AGM_SCALED) for r in results["spiral-8Y"].get(m, [])]:
        real = Toy2DDataModule(data["dataset"], data["stretch"], seed=run["seed"]).fixed_set("test").double()
        target = real[real[:, 1].argmax()]
        row = {"model": model_name, "seed": run["seed"], "target": target.tolist()}
        for name, guide in (("unguided", None), ("guided", target.tolist())):
            model = ToyAGM.load_from_checkpoint(run["ckpt"], map_location="cpu", guide=guide)
            x = model.process.split(model.generate(n, seed=run["seed"] + 7).state)[0].double()
            on_data = torch.cdist(x, real).min(1).values < 1.0
            row[name] = {"in_target": float(((x - target).norm(dim=1) < radius).double().mean()),
                         "on_data": float(on_data.double().mean())}
        rows.append(row)
    return rows


def main() -> None:
    ap = toy_parser(__doc__)
    ap.add_argument("--models", nargs="+", default=["AGM", AGM_SCALED, "VSULD-5", "CLD-10"],
                    help="a subset of the models (the paths figure needs AGM and VSULD-5 on spiral-8Y)")
    ap.add_argument("--datasets", nargs="+", default=list(AGM_CONFIGS), choices=list(AGM_CONFIGS))
    args = ap.parse_args()
    jobs = [(name, ds, seed) for seed in args.seeds for ds in args.datasets for name in args.models]

    def work(job):
        print(f"=== {job}", flush=True)
        return job, run_model(*job, args)

    results: dict = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for (name, ds, seed), res in pool.map(work, jobs):
            results.setdefault(ds, {}).setdefault(name, []).append(res | {"seed": seed})
    args.out.mkdir(parents=True, exist_ok=True)
    if {"AGM", "VSULD-5"} <= results.get("spiral-8Y", {}).keys():
        paths_figure(results, args.out / "agm_paths.png")
    guided = guidance(results) if "spiral-8Y" in results else []
    (args.out / "agm.json").write_text(json.dumps({"steps": args.steps, "results": results, "guidance": guided},
                                                  indent=1) + "\n")
    lines = ["# AGM beside VSULD-5 and CLD-10 on the toys (issue 13)", "",
             f"Command: `python benchmarks/agm.py --seeds {' '.join(map(str, args.seeds))}"
             + ("" if len(jobs) == len(args.seeds) * 8 else
                f" --models {shlex.join(args.models)} --datasets {' '.join(args.datasets)}")
             + f"`. {args.steps} steps, the "
             "toy configs' network (MLP 3x128), batch 256, Adam 1e-3, EMA 0.999; mean ± std over seeds. AGM: "
             "`agm_scale none` (the paper: the bridge on the data as they are); AGM, agm_scale data: on the data "
             "divided by their sd per dimension. Both: its "
             "integrator (order 3, quadratic grid) and the hop at t_stop; NFE = sample_steps (the last call is the "
             "hop). VSULD-5 and CLD-10: `sampler ei` (order 3, quadratic grid), NFE = sample_steps - 1. W1 and the std "
             "ratio on the stretched axis; straightness (1000 paths, 100 points of each model's path sampler) on "
             "the other axis.", ""]
    for ds, (_, other) in ((ds, DATASETS[ds]) for ds in results):
        stretched = 1 - other
        lines += [f"## {ds}", "", "| model | sampler | NFE | seeds | RMSE PMF | W1 | std ratio | straightness |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, runs in results[ds].items():
            for key in runs[0]["rows"]:
                ms = [r["rows"][key]["metrics"] for r in runs]
                nfe = runs[0]["rows"][key]["nfe"]
                sampler = f"hop at t_stop {key.split(':')[1]}" if ":" in key else "ei"
                rmse = _ms([m["rmse_pmf"] for m in ms], ".5f")
                lines.append(f"| {name} | {sampler} | {nfe} | {len(runs)} | {rmse} | "
                             f"{_ms([m[f'w1_{stretched}'] for m in ms], '.2f')} | "
                             f"{_ms([m[f'std_ratio_{stretched}'] for m in ms], '.2f')} | "
                             f"{_ms([m[f'straightness_{other}'] for m in ms], '.2f')} |")
        lines.append("")
    lines += ["## Velocity guidance (AGM, spiral-8Y, the config's sampler: NFE 20, hop at 0.9)", "",
              "Target: the top of the spiral (the test point with the largest y); `guide` redraws v from the bridge's "
              "p(v | x; x1 = target) in the first quarter of the steps. In target: within 5 of it; on data: within 1 "
              "of a real test point. 3000 samples per seed.", "",
              "| model | seeds | in target, unguided | in target, guided | on data, unguided | on data, guided |",
              "|---|---|---|---|---|---|"]
    for model_name in dict.fromkeys(g["model"] for g in guided):
        gs = [g for g in guided if g["model"] == model_name]
        lines.append(f"| {model_name} | {len(gs)} | {_ms([g['unguided']['in_target'] for g in gs], '.3f')} | "
                     f"{_ms([g['guided']['in_target'] for g in gs], '.3f')} | "
                     f"{_ms([g['unguided']['on_data'] for g in gs], '.3f')} | "
                     f"{_ms([g['guided']['on_data'] for g in gs], '.3f')} |")
    lines.append("")
    lines += ["Straightness is measured on each model's own time axis (AGM: 1 - t over [0.001, 1]; VSMD: the "
              "diffusion time over [t_eps, 1]); both span about one unit.", ""]
    if (args.out / "agm_paths.png").is_file():
        lines += ["![paths](agm_paths.png)", ""]
    (args.out / "agm.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
