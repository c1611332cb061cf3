"""Forecasting benchmark (issue 3): CRPS-Sum on Exchange, throughput at Solar and Electricity sizes.

Exchange: every model is trained and tested through the ``vsmd`` command with ``configs/exchange.yaml``
(one protocol, one budget; only the process and the seeds change), beside a naive baseline (last value plus
Gaussian random-walk noise with the step covariance of the train split) and the paper's Table 1. Runs are
interleaved (vsuld, cld, vscld, vsdm for seed 0, then the other seeds), and the table is rewritten after each
run, so an interrupted benchmark resumes where it stopped (``--resume``).

Solar and Electricity have no data offline: their throughput is measured on synthetic data of the same shape
(137 and 370 series, hourly, horizon 24) with the models of configs/solar.yaml and configs/electricity.yaml:
training steps per second and forecast paths per second. Quality needs the real data.

    python benchmarks/timeseries.py --data-dir ../shared/data            # about 60 min on 2 CPU cores
    python benchmarks/timeseries.py --data-dir ../shared/data --steps 30 --runs vsuld:0 --out /tmp/smoke
    python benchmarks/timeseries.py --runs vsuld:0,vsuld:1,vsuld:2,cld:0 --samplers heun:6 ei:11 ei:21 ei:11:0.02 \
        --throughput-steps 0 --out benchmarks/results/timeseries_ei    # few-step samplers on the same checkpoints
    python benchmarks/timeseries.py --runs agm:0,agm:1,agm:2 --samplers ei:10:0.7 ei:5:0.4 --throughput-steps 0 \
        --out benchmarks/results/timeseries_agm    # AGM (its integrator, NFE 20 / 10 / 5 with the hop)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsmd.cli import main as vsmd_main  # noqa: E402
from vsmd.datamodules import GluonTSDataModule  # noqa: E402
from vsmd.metrics import crps_sum, gluonts_metrics, random_walk_samples  # noqa: E402

PAPER = {"cld": 0.0069, "vsdm": 0.0070, "vscld": 0.0137, "vsuld": 0.0098}  # Table 1, Exchange
DEFAULT_RUNS = "vsuld:0,cld:0,vscld:0,vsdm:0,vsuld:1,cld:1,vsuld:2,cld:2"
DAMPING = {"vsuld": 0.7, "uld": 0.7, "cld": 1.0, "vscld": 1.0}
# AGM is its own class and samples with its own integrator only: the official code's NFE 20 setting (hop at t = 0.9)
PROCESS_ARGS = {"agm": ["--model", "vsmd.models.TimeSeriesAGM", "--model.init_args.sampler", "ei",
                        "--model.init_args.sample_steps", "20",
                        "--model.init_args.t_stop", "0.9"]}


def newest_version(folder: Path) -> Path:
    return max(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def run_exchange(process: str, seed: int, args, work: Path) -> dict:
    """One fit and test; ``process`` may name a frame too, as process+rotation (vsuld+learned: full A)."""
    name = f"{process}-seed{seed}"
    process, _, rotation = process.partition("+")
    common = ["--config", str(ROOT / "configs/exchange.yaml"), "--seed_everything", str(seed),
              *PROCESS_ARGS.get(process, ["--model.init_args.process", process,
                                          "--model.init_args.damping", str(DAMPING.get(process, "null"))]),
              "--model.init_args.seed", str(seed), *(["--model.init_args.rotation", rotation] if rotation else []),
              "--data.init_args.seed", str(seed), "--data.init_args.data_dir", str(args.data_dir),
              "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    t0 = time.perf_counter()
    vsmd_main(["fit", *common, "--trainer.max_steps", str(args.steps)])
    fit_s = time.perf_counter() - t0
    ckpt = newest_version(work / name) / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        vsmd_main(["test", *common, "--ckpt_path", str(ckpt)])
    test_s = time.perf_counter() - t0
    report = json.loads((newest_version(work / name) / "test_metrics.json").read_text())
    samplers = {}
    for spec in args.samplers:  # the same checkpoint with other samplers (few-step sampling, issue 11)
        sampler, steps, *stop = spec.split(":")
        extra = ["--model.init_args.sampler", sampler, "--model.init_args.sample_steps", steps]
        extra += ["--model.init_args.t_stop", stop[0]] if stop else []
        with contextlib.redirect_stdout(io.StringIO()):
            vsmd_main(["test", *common, *extra, "--ckpt_path", str(ckpt)])
        r = json.loads((newest_version(work / name) / "test_metrics.json").read_text())
        samplers[spec] = {"crps_sum": r["metrics"]["crps_sum"], "nfe_per_step": r["nfe_per_step"],
                          "sampling_seconds": r["sampling_seconds"]}
    process = f"{process}+{rotation}" if rotation else process
    return {"process": process, "seed": seed, "steps": args.steps, "fit_seconds": fit_s, "test_seconds": test_s,
            **report["metrics"], "nfe_per_step": report["nfe_per_step"], "nfe_per_path": report["nfe_per_path"],
            "sampling_seconds": report["sampling_seconds"], "A_x": report.get("A_x"), "A_v": report.get("A_v"),
            "frame": report.get("frame"),
            "samplers": samplers}


def naive_baseline(args) -> list[dict]:
    dm = GluonTSDataModule(data_dir=str(args.data_dir), history=61)
    dm.setup()
    b = dm.test_windows()
    hist, fut = b["target"].numpy(), b["future"].numpy()
    rows = []
    for seed in range(3):
        s = random_walk_samples(dm.series.train, hist, dm.prediction_length, 100, seed)
        m = gluonts_metrics(s, hist, fut, b["forecast_start"], dm.freq)
        assert abs(m["crps_sum"] - crps_sum(s, fut)) < 1e-9
        rows.append({"process": "naive random walk", "seed": seed, **m})
    return rows


def throughput(config: str, n_steps: int, seed: int = 0) -> dict:
    """Training steps/s and forecast paths/s of a config's model on synthetic data of its dataset's shape."""
    from vsmd.datamodules.timeseries import write_materialised
    from vsmd.models import TimeSeriesVSMD

    cfg = yaml.safe_load((ROOT / config).read_text())
    margs, dargs = cfg["model"]["init_args"], cfg["data"]["init_args"]
    d, h = margs["target_dim"], 24
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(seed)
        length = 1200 + 7 * h
        values = np.abs(rng.normal(1, 0.3, (d, length))).cumsum(1) / np.arange(1, length + 1)
        write_materialised(values, Path(tmp) / dargs["dataset"], "2014-01-01 00:00", "h", h, 7)
        dm = GluonTSDataModule(dataset=dargs["dataset"], data_dir=tmp, download=False,
                               batch_size=dargs["batch_size"], seed=seed)
        torch.manual_seed(seed)
        model = TimeSeriesVSMD(**margs)
        model.prediction_length = h
        dm.hparams.history = model.window_history(h)
        dm.setup()
        opt = model.configure_optimizers()
        batches = iter(dm.train_dataloader())
        times = []
        for k in range(n_steps + 2):
            batch = next(batches)
            t0 = time.perf_counter()
            loss = model.batch_loss(batch, model.net)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if k >= 2:  # the first steps warm up allocators
                times.append(time.perf_counter() - t0)
        w = dm.test_windows()
        t0 = time.perf_counter()
        model.forecast(w["target"][:1], w["time_feat"][:1], num_samples=margs["num_samples"])
        fc_s = time.perf_counter() - t0
    nfe = 2 * margs["sample_steps"] - 1
    step_s = float(np.median(times))
    return {"config": config, "target_dim": d, "batch_size": dargs["batch_size"],
            "train_step_seconds_median": step_s, "train_steps_per_second": 1 / step_s,
            "forecast_paths": margs["num_samples"], "horizon": h, "nfe_per_step": nfe,
            "forecast_seconds": fc_s, "forecast_paths_per_second": margs["num_samples"] / fc_s,
            "params": sum(p.numel() for p in model.net.parameters())}


def write_tables(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Forecasting benchmark (`python benchmarks/timeseries.py`)", "",
             f"Machine: {results['machine']}. Exchange: `configs/exchange.yaml` through `vsmd fit` / `vsmd test`, "
             f"{results['steps']} steps of 64 windows, Heun PF-ODE sampler (AGM: its integrator with the hop, "
             "sample_steps 20, t_stop 0.9), 100 paths, CRPS-Sum from GluonTS's "
             "MultivariateEvaluator over the 5 rolling test windows. Lower is better.", "",
             "## Exchange (real data, `exchange_rate_nips`)", "",
             "| model | seeds | CRPS-Sum | CRPS | ND-Sum | NRMSE-Sum | paper Table 1 | fit s | test s | NFE per step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list[dict]] = {}
    for r in results["runs"] + results["naive"]:
        groups.setdefault(r["process"], []).append(r)

    def stat(rows, key, fmt="{:.4f}"):
        v = np.array([r[key] for r in rows])
        return fmt.format(v.mean()) + (f" ± {fmt.format(v.std(ddof=1))}" if len(v) > 1 else "")

    for proc, rows in groups.items():
        timing = [stat(rows, k, "{:.0f}") if k in rows[0] else "-" for k in ("fit_seconds", "test_seconds")]
        lines.append(f"| {proc} | {len(rows)} | {stat(rows, 'crps_sum')} | {stat(rows, 'crps')} | "
                     f"{stat(rows, 'nd_sum')} | {stat(rows, 'nrmse_sum')} | {PAPER.get(proc, '-')} | {timing[0]} | "
                     f"{timing[1]} | {rows[0].get('nfe_per_step', '-')} |")
    lines += ["", "± is the standard deviation over seeds (the naive baseline: over 3 noise seeds). Single runs:", "",
              "| model | seed | CRPS-Sum | fit s | A_x (per series) |", "|---|---|---|---|---|"]
    for r in results["runs"]:
        ax = ", ".join(f"{a:.3f}" for a in r["A_x"]) if r.get("A_x") else "-"
        lines.append(f"| {r['process']} | {r['seed']} | {r['crps_sum']:.5f} | {r['fit_seconds']:.0f} | {ax} |")
    specs = list(dict.fromkeys(k for r in results["runs"] for k in r.get("samplers", {})))
    if specs:
        lines += ["", "## Samplers on the same checkpoints", "",
                  "`sampler:sample_steps[:t_stop]` given to `vsmd test`; the config's sampler (heun, 20 points) is the "
                  "first row. Sampling seconds: the 5 test windows x 100 paths x 30 steps.", "",
                  "| model | sampler | seeds | NFE per step | CRPS-Sum | sampling s |", "|---|---|---|---|---|---|"]
        for proc, rows in groups.items():
            if not rows[0].get("samplers"):
                continue
            config = "ei:20:0.9 (AGM)" if proc == "agm" else "heun:20 (config)"
            lines.append(f"| {proc} | {config} | {len(rows)} | {rows[0]['nfe_per_step']} | "
                         f"{stat(rows, 'crps_sum')} | {stat(rows, 'sampling_seconds', '{:.1f}')} |")
            for spec in specs:
                sub = [r["samplers"][spec] for r in rows if spec in r.get("samplers", {})]
                if sub:
                    lines.append(f"| {proc} | {spec} | {len(sub)} | {sub[0]['nfe_per_step']} | "
                                 f"{stat(sub, 'crps_sum')} | {stat(sub, 'sampling_seconds', '{:.1f}')} |")
    if results.get("throughput"):
        lines += ["", "## Throughput at Solar and Electricity sizes (synthetic data, no quality)", "",
                  "| config | D | batch | train steps/s | s/step | forecast paths/s (24 steps, NFE/step) | params |",
                  "|---|---|---|---|---|---|---|"]
        for t in results["throughput"]:
            lines.append(f"| {t['config']} | {t['target_dim']} | {t['batch_size']} | {t['train_steps_per_second']:.2f}"
                         f" | {t['train_step_seconds_median']:.2f} | {t['forecast_paths_per_second']:.1f} "
                         f"({t['nfe_per_step']}) | {t['params']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated process:seed list; process+rotation "
                    "(e.g. vsuld+learned) runs the process in that frame (full A)")
    ap.add_argument("--throughput-steps", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vsmd-bench-timeseries",
                    help="run folders (outside the repository)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "timeseries")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in <out>.json")
    ap.add_argument("--samplers", nargs="*", default=[],
                    help="extra tests of each checkpoint, as sampler:sample_steps[:t_stop], e.g. ei:11 ei:21:0.02")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
                          f"{torch.__version__}", "steps": args.steps, "runs": [], "naive": [], "throughput": []}
    if args.resume and args.out.with_suffix(".json").is_file():
        results = json.loads(args.out.with_suffix(".json").read_text())
    t_start = time.perf_counter()
    results["naive"] = naive_baseline(args)
    write_tables(results, args.out)
    done = {(r["process"], r["seed"]) for r in results["runs"]}
    for item in args.runs.split(","):
        process, seed = item.split(":")
        if (process, int(seed)) in done:
            continue
        row = run_exchange(process, int(seed), args, args.work)
        results["runs"].append(row)
        write_tables(results, args.out)
        print(f"[{time.perf_counter() - t_start:.0f} s] {process} seed {seed}: CRPS-Sum {row['crps_sum']:.5f}, "
              f"fit {row['fit_seconds']:.0f} s", flush=True)
    if args.throughput_steps > 0:
        results["throughput"] = [throughput(c, args.throughput_steps) for c in ("configs/solar.yaml",
                                                                               "configs/electricity.yaml")]
        write_tables(results, args.out)
    results["total_seconds"] = time.perf_counter() - t_start
    write_tables(results, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
