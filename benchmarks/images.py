"""Image throughput on this machine (issue 4): training images per second and sampling seconds per image per NFE
for the networks of configs/cifar10_tiny.yaml and configs/cifar10.yaml (the paper-size U-Net) at batch 8.

Training steps run the module's own loss (per-pixel VSCLD kernel, U-Net forward and backward, AdamW); sampling
times one probability-flow drift evaluation of the EMA network, which is what one NFE of the Heun sampler costs.
Random images stand in for CIFAR-10 (the cost does not depend on the pixels).

    python benchmarks/images.py                    # CPU, a few minutes on 2 cores
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


def build(config: str) -> ImageVSMD:
    args = yaml.safe_load((ROOT / config).read_text())["model"]["init_args"]
    return ImageVSMD(**args)


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
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "images")
    args = ap.parse_args()
    rows = [measure(c, args.batch, args.steps, args.device, args.precision)
            for c in ("configs/cifar10_tiny.yaml", "configs/cifar10.yaml")]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"
    result = {"machine": f"{dev}, torch {torch.__version__}", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Image throughput (`python benchmarks/images.py`)", "",
             f"Machine: {result['machine']}. Median of {args.steps} steps after warm-up; random 32x32 images; "
             "VSCLD per-pixel kernel; AdamW.", "",
             "| network | params | batch | precision | train images/s | s per train step | s per image per NFE | "
             "s per image, Heun 125 (NFE 249) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['precision']} | "
                     f"{r['train_images_per_second']:.2f} | {r['train_step_seconds']:.3f} | "
                     f"{r['seconds_per_image_per_nfe']:.4f} | {r['seconds_per_image_heun_125']:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
