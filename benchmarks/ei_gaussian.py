"""Exponential integrator on Gaussian data with the exact data estimate: error against NFE, grid and order.

Data N(1.7, 3^2) in 1-D, started from the exact marginal at T (so the only error is the integrator's); the
reference is Heun with 1000 points on the same starting points. Writes benchmarks/results/ei_gaussian.md.

    python benchmarks/ei_gaussian.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vsmd.diffusion import heun, make_process
from vsmd.diffusion.ei import EI_GRIDS, _Kernel, ei_grid, exponential_integrator

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
CASES = [("vp", 0.0, 20.0), ("vsdm", 0.6, 5.0), ("cld", 0.0, 10.0), ("uld", 0.0, 10.0), ("vscld", 1.3, 5.0),
         ("vsuld", 0.9, 5.0)]


def gaussian_flow(p, mu: float, s2: float):
    """Exact v-score, data estimate and marginal sampler of N(mu, s2) data under process p."""
    kern = _Kernel(p)

    def moments(t):
        k = kern.at(t.reshape(-1)[:1].to(F64))
        if not p.momentum:
            return (k["m"][0],), (s2 * k["m"][0] ** 2 + k["std"][0] ** 2,)
        lxx, lvx, lvv, mx, mv = (k[n][0] for n in ("lxx", "lvx", "lvv", "mx", "mv"))
        return (mx, mv), (lxx**2 + s2 * mx * mx, lxx * lvx + s2 * mx * mv, lvx**2 + lvv**2 + s2 * mv * mv)

    def whiten(a, t):  # C^{-1} (a - M mu)
        m, c = moments(t)
        if not p.momentum:
            return m, ((a - m[0] * mu) / c[0],)
        x, v = p.split(a)
        dx, dv = x - m[0] * mu, v - m[1] * mu
        det = c[0] * c[2] - c[1] ** 2
        return m, ((c[2] * dx - c[1] * dv) / det, (-c[1] * dx + c[0] * dv) / det)

    def score(a, t):
        return -whiten(a, t)[1][-1]

    def denoise(a, t):
        m, w = whiten(a, t)
        return mu + s2 * sum(mi * wi for mi, wi in zip(m, w))

    def sample(n, gen):
        m, c = moments(torch.tensor([p.t_max], dtype=F64))
        if not p.momentum:
            return m[0] * mu + c[0].sqrt() * torch.randn(n, 1, generator=gen, dtype=F64)
        cov = torch.stack([torch.stack([c[0], c[1]]), torch.stack([c[1], c[2]])]).reshape(2, 2)
        z = torch.randn(n, 2, generator=gen, dtype=F64) @ torch.linalg.cholesky(cov).T
        return torch.cat([z[:, :1] + m[0] * mu, z[:, 1:] + m[1] * mu], 1)

    return score, denoise, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="paths")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ei_gaussian.md")
    args = parser.parse_args()
    start = time.time()
    lines = ["# EI on Gaussian data with the exact data estimate", "",
             "Command: `python benchmarks/ei_gaussian.py`. Data N(1.7, 3^2), 1-D, "
             f"{args.n} paths from the exact marginal at T. Cell: sd of the EI samples / sd of Heun-1000 on the same "
             "starting points, minus 1 (0 is exact). Rows: process (rho, beta), grid, order; columns: NFE.", "",
             "| process | grid | order | " + " | ".join(f"NFE {k}" for k in args.nfe) + " |",
             "|---|---|---|" + "---|" * len(args.nfe)]
    for name, rho, beta in CASES:
        p = make_process(name, (1,), beta=beta)
        p.rho.data.fill_(rho)
        score, denoise, sample = gaussian_flow(p, 1.7, 9.0)
        a0 = sample(args.n, torch.Generator().manual_seed(0))
        ref = p.split(heun(p, score, a0, p.time_grid(1000).double()).state)[0].std()
        for grid in EI_GRIDS:
            for order in (1, 2, 3):
                cells = []
                for k in args.nfe:
                    res = exponential_integrator(p, denoise, a0, ei_grid(p, k + 1, grid).double(), order,
                                                 denoise_last=False)
                    cells.append(f"{float(p.split(res.state)[0].std() / ref) - 1:+.3f}")
                lines.append(f"| {name} ({rho}, {beta}) | {grid} | {order} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", f"{time.time() - start:.0f} s in all."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
