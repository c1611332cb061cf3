"""AGM's sampler with the exact force on Gaussian data: error against NFE, the hop time t_stop, the grid and the order.

Data N((1.5, -0.5), diag(2.0, 0.3)^2), 40 000 paths from AGM's prior; the force is the exact marginal force (the
conditional force at the posterior mean of x1, the helper of tests/test_agm.py), so the only errors are the
integrator's and the hop's. Cells: the largest error over the two dimensions of the mean (in sd) and of the sd
(relative). Writes benchmarks/results/agm_gaussian.md.

    python benchmarks/agm_gaussian.py        # a minute on 2 cores
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_agm import _gaussian_force  # noqa: E402

from vsmd.diffusion.agm import AGMProcess, agm_grid, agm_sample  # noqa: E402

F64 = torch.float64
STOPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def main() -> None:
    p = AGMProcess((2,))
    m, sd = torch.tensor([1.5, -0.5], dtype=F64), torch.tensor([2.0, 0.3], dtype=F64)
    force, _ = _gaussian_force(p, m, sd)
    lines = ["# AGM's sampler with the exact force on Gaussian data", "",
             "Command: `python benchmarks/agm_gaussian.py`. Data N((1.5, -0.5), diag(2.0, 0.3)^2), 40 000 paths; "
             "cell: mean error (in sd) / sd error (relative), the largest over the two dimensions. Columns: the hop "
             "time t_stop.", ""]
    for nfe in (10, 20, 40):
        lines += [f"## NFE {nfe}", "", "| grid | order | " + " | ".join(f"t_stop {s}" for s in STOPS) + " |",
                  "|---|---|" + "---|" * len(STOPS)]
        for grid in ("quadratic", "uniform"):
            for order in (1, 2, 3):
                cells = []
                for stop in STOPS:
                    gen = torch.Generator().manual_seed(2)
                    res = agm_sample(p, force, p.prior_sample(40000, gen).double(), agm_grid(nfe, stop, grid),
                                     order=order)
                    x = p.split(res.state)[0]
                    em = float(((x.mean(0) - m).abs() / sd).max())
                    es = float((x.std(0) / sd - 1).abs().max())
                    cells.append(f"{em:.3f} / {es:.3f}")
                lines.append(f"| {grid} | {order} | " + " | ".join(cells) + " |")
        lines.append("")
    out = ROOT / "benchmarks" / "results" / "agm_gaussian.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
