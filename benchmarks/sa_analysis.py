"""Why the SA hardly moved A, where fbsde's upward drift comes from, and why SSCS squashes stretched data.

Everything here uses the exact score of 1-D Gaussian data whose sd is that of spiral-8Y's stretched axis,
pushed through VSULD-5 (beta 5, R 0.7); no network is trained, so every number isolates the math.

1. The exact optimum of one SA stage (grid search on the quadratic stage loss) against the rho the paths were
   simulated with, for both readings of z_b, with backward paths from the true marginal q_T (no prior
   mismatch) or from the prior, simulated by Euler-Maruyama (100 or 1000 points) or by Heun on the PF-ODE (50
   points, the same number of network calls as EM 100).
2. The std of the samples (over the data's) of each sampler with the exact score, started from q_T.
3. The KL between q_T and the prior against rho, and the data-informed start of A on the two toys.
4. What the KL budget of that start costs the samples: the exact-score sample spread from the prior.

    python benchmarks/sa_analysis.py        # about 3 minutes on 2 CPU cores; writes results/sa_analysis.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vsmd.datamodules import make_toy
from vsmd.diffusion import SAStats, Trajectories, euler_maruyama, heun, make_process, splitting
from vsmd.diffusion.process import ForwardProcess

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def toy_moments(name: str, stretch: list[float], n: int = 200_000) -> tuple[torch.Tensor, torch.Tensor]:
    x = make_toy(name, n, stretch, torch.Generator().manual_seed(0)).double()
    return x.mean(0), x.var(0)


class Gaussian1D:
    """Exact forward marginal and v-score of N(0, s^2) data (1-D) under ``process``."""

    def __init__(self, process: ForwardProcess, sd: float) -> None:
        self.p, self.s2 = process, sd * sd

    def cov(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.p.coefficients(t.reshape(1), dtype=F64, prior=True)
        sxx, sxv, svv = k["lxx"] ** 2, k["lxx"] * k["lvx"], k["lvx"] ** 2 + k["lvv"] ** 2
        return (sxx + self.s2 * k["p11"] ** 2, sxv + self.s2 * k["p11"] * k["p21"], svv + self.s2 * k["p21"] ** 2)

    def score(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, v = self.p.split(a)
        sxx, sxv, svv = self.cov(t[:1])
        return -(-sxv * x + sxx * v) / (sxx * svv - sxv**2)

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        sxx, sxv, svv = (float(c) for c in self.cov(torch.tensor(self.p.t_max)))
        chol = torch.linalg.cholesky(torch.tensor([[sxx, sxv], [sxv, svv]], dtype=F64))
        return torch.randn(n, 2, generator=gen, dtype=F64) @ chol.T


def vsuld5(rho: float, sd: float) -> tuple[ForwardProcess, Gaussian1D]:
    """VSULD-5 (beta 5, R 0.7) at a fixed rho, and N(0, sd^2) data under it."""
    p = make_process("vsuld", (1,), beta=5.0)
    p.rho.data.fill_(rho)
    return p, Gaussian1D(p, sd)


def paths(p: ForwardProcess, score, a0: torch.Tensor, kind: str, points: int, gen: torch.Generator) -> Trajectories:
    states, scores, times = [], [], []

    def record(a, t, s):
        states.append(a)
        scores.append(s)
        times.append(t[0])

    def recording(a, t):
        s = score(a, t)
        record(a, t, s)
        return s

    grid = p.time_grid(points).double()
    if kind == "em":
        euler_maruyama(p, recording, a0, grid, gen)
    else:
        heun(p, score, a0, grid, final_euler_to_zero=False, on_state=record)
    alpha, nu = p.variational_scores()
    return Trajectories(torch.stack(states), torch.stack(scores), torch.stack(times), float(grid[0] - grid[1]),
                        alpha, nu)


def stage_optimum(p: ForwardProcess, traj: Trajectories, mode: str) -> float:
    stats = SAStats.from_trajectories(p, traj, mode, 1.0)
    rho0, grid, losses = p.rho.detach().clone(), torch.linspace(-2, 5, 701), []
    for r in grid:
        p.rho.data.fill_(float(r))
        losses.append(float(stats.loss(*p.variational_scores())))
    p.rho.data.copy_(rho0)
    return float(grid[int(torch.tensor(losses).argmin())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_default_dtype(F64)
    mean_s, var_s = toy_moments("spiral", [1.0, 8.0])
    sd = float(var_s[1].sqrt())
    lines = ["# The SA for A, analysed with the exact score", "",
             f"Command: `python benchmarks/sa_analysis.py --paths {args.paths}`. 1-D Gaussian data N(0, {sd:.1f}^2) "
             "(the sd of spiral-8Y's stretched axis), VSULD-5 (beta 5, R 0.7, gamma 2), the exact score, "
             f"{args.paths} paths. No network is trained.", ""]

    # 1. Stage optima.
    rhos = [0.0, 1.0, 1.5, 2.0, 2.5]
    sims = [("q_T", "em", 100), ("prior", "em", 100), ("prior", "em", 1000), ("prior", "heun", 50)]
    lines += ["## 1. Where one SA stage puts rho (exact stage optimum)", "",
              "Columns: the start of the backward paths (q_T: the true forward marginal at T, so no prior mismatch; "
              "prior: N(0, Sigma_T(A)), as in training) and the simulator with its grid points. Each cell is "
              "`fbsde optimum / full_score optimum`.", "",
              "| rho of the paths | KL(q_T, prior) | " + " | ".join(f"{s} {k} {n}" for s, k, n in sims) + " |",
              "|---|---|" + "---|" * len(sims)]
    for rho in rhos:
        p, g = vsuld5(rho, sd)
        kl = float(p.prior_kl(torch.zeros(1), torch.tensor([sd * sd]))[0])
        cells = []
        for start, kind, points in sims:
            gen = torch.Generator().manual_seed(1)
            a0 = g.sample_t(args.paths, gen) if start == "q_T" else p.prior_sample(args.paths, gen).double()
            traj = paths(p, g.score, a0, kind, points, gen)
            cells.append(f"{stage_optimum(p, traj, 'fbsde'):+.2f} / {stage_optimum(p, traj, 'full_score'):+.2f}")
        lines.append(f"| {rho:.1f} | {kl:.3g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Reading: with paths from q_T and an unbiased simulator, fbsde's optimum is the rho the paths were "
              "made with (a fixed point for every rho) and full_score's stays near 0 (Stein's identity). "
              "Euler-Maruyama with 100 points moves the fbsde optimum up by about +0.04 per stage even so: that "
              "is a discretisation bias, and stage after stage it is the upward drift seen in training. With 1000 EM "
              "points or with Heun on the PF-ODE (same marginals, second order) the bias is gone. From the prior, "
              "fbsde moves rho up only where the data are not forgotten (rho <= 1 here), and the PF-ODE paths carry "
              "that signal more strongly than EM paths. full_score pulls rho towards 0 at every rho.", ""]

    # 2. Sampler accuracy.
    samplers = [("heun", 50), ("sscs", 100), ("sscs", 400), ("sscs", 1600), ("em", 100), ("em", 1000)]
    lines += ["## 2. Sampler accuracy with the exact score (sample sd / data sd, start from q_T)", "",
              "| rho | " + " | ".join(f"{k} {n}" for k, n in samplers) + " |", "|---|" + "---|" * len(samplers)]
    for rho in [0.0, 1.5, 2.5]:
        p, g = vsuld5(rho, sd)
        cells = []
        for kind, n in samplers:
            gen = torch.Generator().manual_seed(2)
            a0 = g.sample_t(args.paths, gen)
            fn = {"heun": heun, "sscs": splitting, "em": euler_maruyama}[kind]
            out = fn(p, g.score, a0, p.time_grid(n).double(), generator=gen).state
            cells.append(f"{float(p.split(out)[0].std()) / sd:.3f}")
        lines.append(f"| {rho:.1f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Reading: SSCS's score kick is an explicit step on the stiff part of the score. With stretched data "
              "and a fast A it loses spread (sd ratio well below 1 at 100 points, the same as the 0.70 measured with "
              "the learned network at rho_y = 1.5) and converges only slowly with the number of steps. The math "
              "is exact (the error vanishes with the step), so this is the sampler's discretisation error, not "
              "the network's. Use Heun (or more SSCS steps) for fast A.", ""]

    # 3. KL against rho and the data-informed start.
    lines += ["## 3. How much of the data is left at T: KL(q_T || prior) per dimension against rho", "",
              "| rho | " + " | ".join(f"{n}" for n in ("spiral-8Y x", "spiral-8Y y", "checkerboard-6X x",
                                                            "checkerboard-6X y")) + " |", "|---|---|---|---|---|"]
    mean_c, var_c = toy_moments("checkerboard", [6.0, 1.0])
    p = make_process("vsuld", (2,), beta=5.0)
    for rho in [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]:
        r = torch.full((2,), rho)
        ks = p.prior_kl(mean_s, var_s, r).tolist() + p.prior_kl(mean_c, var_c, r).tolist()
        lines.append(f"| {rho:.1f} | " + " | ".join(f"{k:.3g}" for k in ks) + " |")
    lines += ["", "The dip at rho = 1.5 against 2.0 is the under-damped oscillation; the start takes the smallest "
              "rho >= 0 whose KL stays within the budget at every larger rho (rho = 0, A = 0, where the data are "
              "already forgotten).", "",
              "Data-informed start (rho per dimension, x then y) from the data's mean and variance:", "",
              "| process | KL budget | spiral-8Y | checkerboard-6X |", "|---|---|---|---|"]
    for name in ("vsuld", "vscld", "vsdm"):
        p = make_process(name, (2,), beta=5.0)
        for kl in (0.005, 0.01, 0.02, 0.05):
            a = p.forgetting_rho(mean_s, var_s, kl).tolist()
            b = p.forgetting_rho(mean_c, var_c, kl).tolist()
            lines.append(f"| {name.upper()}-5 | {kl} | {a[0]:.2f}, {a[1]:.2f} | {b[0]:.2f}, {b[1]:.2f} |")

    # 4. What the KL budget costs the samples.
    budgets = (0.01, 0.003, 0.001, 0.0003)
    lines += ["", "## 4. What the KL budget of the start costs the samples (VSULD-5, exact score, from the prior)", "",
              "Per dimension of each toy: Gaussian data with that dimension's sd, rho from the data-informed start "
              "with the budget, the exact score, Heun with 50 points started from the prior N(0, Sigma_T(A)) as in "
              "sampling. Each cell is `rho: sample sd / data sd`. A budget of KL nats leaves a prior mismatch of "
              "about sqrt(KL) in the sd at T, which the backward flow carries, partly, into the samples.", "",
              "| KL budget | spiral-8Y x | spiral-8Y y | checkerboard-6X x | checkerboard-6X y |",
              "|---|---|---|---|---|"]
    p2 = make_process("vsuld", (2,), beta=5.0)
    for kl in budgets:
        cells = []
        for mean, var in ((mean_s, var_s), (mean_c, var_c)):
            rho = p2.forgetting_rho(mean, var, kl)
            for d in range(2):
                sd_d = float(var[d].sqrt())
                p, g = vsuld5(float(rho[d]), sd_d)
                gen = torch.Generator().manual_seed(3)
                out = heun(p, g.score, p.prior_sample(args.paths, gen).double(), p.time_grid(50).double()).state
                cells.append(f"{float(rho[d]):.2f}: {float(p.split(out)[0].std()) / sd_d:.3f}")
        lines.append(f"| {kl} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Reading: the budget 0.01 nats (the first default) leaves the stretched axes 4-6% too narrow "
              "with the exact score, which matches the std ratio of 0.95 to 0.97 measured with trained networks at "
              "that default: that gap comes from the start, not from the network. At 0.003 the prior mismatch costs at "
              "most 0.4%; smaller budgets give larger rho and Heun 50 then over-spreads by 1-2% (its own "
              "discretisation error, section 2). The default is 0.003, the largest of these budgets whose "
              "exact-score error stays within 1% on every axis of both toys.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sa_analysis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
