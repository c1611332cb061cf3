"""Image throughput on this machine (issues 4, 11, 13): training images per second and sampling seconds per image
per NFE for the networks of configs/cifar10_tiny.yaml and configs/cifar10.yaml (the paper-size U-Net) at batch 8,
and whole sampler runs with the paper-size U-Net: VSCLD with Heun-125 (NFE 249, the paper's sampler) and the
exponential integrator at NFE 10 and 20 (configs/cifar10.yaml), and AGM's integrator with its hop at NFE 10 and 20
(configs/cifar10_agm.yaml).

Training steps run the module's own loss (per-pixel VSCLD kernel, U-Net forward and backward, AdamW); the per-NFE
time is one probability-flow drift evaluation of the EMA network, which is what one NFE of the Heun sampler costs;
the sampler rows time ``generate`` end to end (the sampler's own arithmetic included) and report its NFE.
Random weights and images stand in for trained ones and CIFAR-10 (the cost does not depend on them).

    python benchmarks/images.py                    # CPU, about 10 minutes on 2 cores
    python benchmarks/images.py --device cuda --precision bf16 --batch 128 --out /tmp/images_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsmd.models import ImageVSMD  # noqa: E402


SAMPLERS = [  # (config, sampler, sample_steps, t_stop): whole sampler runs with the paper-size U-Net
    ("configs/cifar10.yaml", "heun", 125, None),
    ("configs/cifar10.yaml", "ei", 11, None),  # NFE = sample_steps - 1
    ("configs/cifar10.yaml", "ei", 21, None),
    ("configs/cifar10_agm.yaml", "ei", 10, 0.7),
    ("configs/cifar10_agm.yaml", "ei", 20, 0.9),
]


def build(config: str, **overrides) -> ImageVSMD:
    args = yaml.safe_load((ROOT / config).read_text())["model"]["init_args"]
    return ImageVSMD(**(args | overrides))


def time_sampler(config: str, sampler: str, steps: int, t_stop: float | None, n: int, device: str) -> dict:
    """Seconds per image of a whole ``generate`` call for n images. A sampler that caches per grid and A (the EI's
    float64 weights, AGM's multistep weights) runs twice: the second call is timed, and the first call's extra time
    is what it computes once (``once_per_grid_seconds``)."""
    torch.manual_seed(0)
    extra = {} if t_stop is None else {"t_stop": t_stop}
    model = build(config, sampler=sampler, sample_steps=steps, **extra).to(device)
    model.eval()

    def timed() -> tuple[float, int]:
        t0 = time.perf_counter()
        res = model.generate(n)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, res.nfe

    first, nfe = timed()
    wall = first if sampler == "heun" else timed()[0]
    return {"config": config, "process": model.hparams.process, "sampler": sampler, "sample_steps": steps,
            "t_stop": t_stop, "nfe": nfe, "images": n, "seconds": wall, "seconds_per_image": wall / n,
            "once_per_grid_seconds": max(first - wall, 0.0)}


def measure(config: str, batch: int, steps: int, device: str, precision: str) -> dict:
    torch.manual_seed(0)
    model = build(config).to(device)
    opt = model.configure_optimizers()["optimizer"]
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    y = torch.zeros(batch, dtype=torch.long, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for k in range(steps + 2):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=precision == "bf16"):
            loss = model.batch_loss((x, y), model.net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if k >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    a = model.process.prior_sample(batch, device=device)
    t = torch.full((batch,), 0.5, device=device)
    net = model.eval_net.eval()
    nfe_times = []
    with torch.no_grad():
        for k in range(steps + 1):
            sync()
            t0 = time.perf_counter()
            model.process.reverse_drift(a, t, model.score(a, t, net), probability_flow=True)
            sync()
            if k >= 1:
                nfe_times.append(time.perf_counter() - t0)
    nfe_s = float(np.median(nfe_times))
    return {"config": config, "params": sum(p.numel() for p in model.net.parameters()), "batch": batch,
            "device": device, "precision": precision, "train_step_seconds": step_s,
            "train_images_per_second": batch / step_s, "seconds_per_nfe_batch": nfe_s,
            "seconds_per_image_per_nfe": nfe_s / batch,
            "seconds_per_image_heun_125": nfe_s / batch * (2 * 125 - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("32", "bf16"), default="32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sample-batch", type=int, default=4, help="images per whole-sampler run")
    ap.add_argument("--sampling-only", action="store_true",
                    help="measure the sampler runs only; keep the training rows of the existing <out>.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "images")
    args = ap.parse_args()
    old = args.out.with_suffix(".json")
    if args.sampling_only and not old.is_file():
        raise SystemExit(f"--sampling-only keeps the training rows of {old}, which does not exist; run without it")
    previous = json.loads(old.read_text()) if args.sampling_only else None
    rows = previous["rows"] if previous else \
        [measure(c, args.batch, args.steps, args.device, args.precision)
         for c in ("configs/cifar10_tiny.yaml", "configs/cifar10.yaml")]
    sampling = []
    for cfg, sampler, steps, t_stop in SAMPLERS:
        sampling.append(time_sampler(cfg, sampler, steps, t_stop, args.sample_batch, args.device))
        print(sampling[-1], flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"
    result = {"machine": f"{dev}, torch {torch.__version__}", "rows": rows, "sampling": sampling}
    if previous:
        result["rows_machine"] = previous.get("rows_machine", previous["machine"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Image throughput (`python benchmarks/images.py`)", "",
             f"Machine: {result.get('rows_machine', result['machine'])}. Median of {args.steps} steps after warm-up; "
             "random 32x32 images; VSCLD per-pixel kernel; AdamW.", "",
             "| network | params | batch | precision | train images/s | s per train step | s per image per NFE | "
             "s per image, Heun 125 (NFE 249) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['precision']} | "
                     f"{r['train_images_per_second']:.2f} | {r['train_step_seconds']:.3f} | "
                     f"{r['seconds_per_image_per_nfe']:.4f} | {r['seconds_per_image_heun_125']:.1f} |")
    heun = next(r["seconds_per_image"] for r in sampling if r["sampler"] == "heun")
    lines += ["", f"Whole sampler runs ({result['machine']}), paper-size U-Net (35.75 M parameters), "
              f"{args.sample_batch} images a run, float32, random weights; the time of `generate`, sampler arithmetic "
              "included. once per grid: what a sampler computes "
              "once per time grid and A and then caches (the EI's float64 weights over the 3072 pixels' kernels, "
              "AGM's multistep weights; a first call's time less a second's), paid once per `vsmd test` or "
              "`predict`, not per batch:", "",
              "| config | process | sampler | NFE | t_stop (hop) | s per image | vs Heun-125 | once per grid (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sampling:
        speedup = "-" if r["sampler"] == "heun" else f"{heun / r['seconds_per_image']:.1f}x faster"
        lines.append(f"| {r['config']} | {r['process']} | {r['sampler']} | {r['nfe']} | "
                     f"{'-' if r['t_stop'] is None else r['t_stop']} | {r['seconds_per_image']:.2f} | {speedup} | "
                     f"{r['once_per_grid_seconds']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
