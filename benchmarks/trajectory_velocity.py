"""Why the DMSB stages need a velocity sampler (issue 14): the start velocity of each stage's simulation, measured.

1. GMM, middle snapshot held out, 3 stages of 500 steps (the stage rows of benchmarks/trajectory.py): the rms shift of
   every simulated snapshot onto the data, per stage, for three start velocities of the stage simulations: the
   default E[v | x] plus one bridge's spread; an oracle that starts each path from the velocity of its own chain in
   the previous pool (the exact v given x of the current chains, available only in training); and the conditional
   flow (velocity_flow_steps 20). The Langevin row is in trajectory.md.
2. 1-D Gaussian snapshots N(m_k, s_k^2) at t = 0, 1, 2, 3 (t = 2 held out), stages with the flow: the pools' rms
   shifts, and the final forward policy's sd at t = 3 simulated from the data with sampled velocities, against the
   same policy started from its last pool's own velocities, and against the default model (no stages).

Writes benchmarks/results/trajectory_velocity.md.

    python benchmarks/trajectory_velocity.py   # about 8 minutes on one core
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from vsmd.datamodules.trajectory import Snapshots, TrajectoryDataModule, save_snapshots
from vsmd.diffusion.trajectory import spline_kriging
from vsmd.diffusion.trajectory_sampling import simulate_paths, time_grid
from vsmd.models import TrajectoryBridge

ROOT = Path(__file__).resolve().parents[1]


class OracleStart(TrajectoryBridge):
    """Stage simulations start from each path's own chain velocity in the previous pool (kriging mean at the end
    pin plus one bridge's spread); test and predict are unchanged."""

    building = False

    def pool_velocity(self, x, t, generator):
        k = 0 if abs(t - self.pins[0]) < 1e-9 else len(self.pins) - 1
        pool = self.pool.double()
        idx = torch.cdist(x.double(), pool[:, k]).argmin(1)  # the start points are the pool's own data points
        W, _ = spline_kriging(self.reference.times, torch.tensor([t], dtype=torch.float64))
        v = torch.einsum("n,bnd->bd", W[0, 1], pool[idx]).float()
        return v + self.reference.velocity_spread(t) * torch.randn(x.shape, generator=generator)

    def start_velocity(self, x, t, generator):
        if self.building and self.pool is not None:
            return self.pool_velocity(x, t, generator)
        return super().start_velocity(x, t, generator)

    def build_pool(self, stage):
        self.building = True
        try:
            super().build_pool(stage)
        finally:
            self.building = False


def _fit(model, dm, steps):
    pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, gradient_clip_val=1.0).fit(model, datamodule=dm)
    return model


def gmm_rows() -> list[dict]:
    rows = []
    for name, cls, flow in (("mean of v given x + spread (default)", TrajectoryBridge, 0),
                            ("oracle: the chain's own", OracleStart, 0), ("conditional flow", TrajectoryBridge, 20)):
        dm = TrajectoryDataModule("gmm", holdout=[2], batch_size=256)
        torch.manual_seed(0)
        start = time.perf_counter()
        m = _fit(cls(hidden=128, depth=3, sigma=0.1, stages=3, stage_steps=500, pool_size=1000,
                     velocity_flow_steps=flow), dm, 2000)
        rows.append({"start velocity": name, "history": m.stage_history, "seconds": time.perf_counter() - start})
    return rows


def gaussian_1d(work: Path) -> dict:
    times, means, sds = [0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 3.0, 2.0], [1.0, 0.6, 0.8, 1.2]
    g = torch.Generator().manual_seed(0)
    sets = [m + s * torch.randn(2000, 1, generator=g) for m, s in zip(means, sds)]
    path = work / "gaussian_1d.npz"
    save_snapshots(path, Snapshots(times, sets))
    out = {}
    for name, kw, steps in (("default (no stages)", {}, 2400),
                            ("3 stages of 600 steps + flow", dict(stages=3, stage_steps=600, velocity_flow_steps=20),
                             2400)):
        dm = TrajectoryDataModule("file", path=str(path), holdout=[2], batch_size=256)
        torch.manual_seed(0)
        m = _fit(TrajectoryBridge(data_dim=1, sigma=0.1, hidden=64, depth=2, lr=1e-3, pool_size=2000, **kw), dm, steps)
        m.eval()
        xs, grid, _ = m.trajectories(sets[0], times, steps=120)
        row = {"sd_t3": float(xs[int((grid - 3.0).abs().argmin())].std()),
               "mean_t3": float(xs[int((grid - 3.0).abs().argmin())].mean()), "history": m.stage_history}
        if m.pool is not None:  # the same forward policy, started from its last pool's own chain velocities
            pool = m.pool.double()
            W, _ = spline_kriging(m.reference.times, torch.tensor([0.0], dtype=torch.float64))
            v0 = torch.einsum("n,bnd->bd", W[0, 1], pool).float()
            grid2 = time_grid(m.pins, 120)
            paths, _ = simulate_paths(m._dynamics().drift(m._evaluated("net")), pool[:, 0].float(), v0, grid2.float(),
                                      0.1, torch.Generator().manual_seed(4))
            row["sd_t3_own_velocities"] = float(paths[int((grid2 - 3.0).abs().argmin())].std())
        out[name] = row
    return out


def main() -> None:
    work = Path("/tmp/vsmd-bench-trajectory-velocity")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gmm = gmm_rows()
    g1 = gaussian_1d(work)
    lines = ["# Trajectory stages: the start velocity (issue 14)", "",
             "Command: `python benchmarks/trajectory_velocity.py`. One seed; see the script's docstring.", "",
             "## GMM, snapshot 2 held out: rms shift of each simulated snapshot onto the data (t0, t1, t3)", "",
             "| start velocity of the stage simulations | stage 1 (backward) | stage 2 (forward) | stage 3 (backward) "
             "| s |", "|---|---|---|---|---|"]
    for r in gmm:
        cells = [", ".join(f"{x:.2f}" for x in h["rms_projection_shift"]) for h in r["history"]]
        lines.append(f"| {r['start velocity']} | {' | '.join(cells)} | {r['seconds']:.0f} |")
    lines += ["", "## 1-D Gaussian snapshots (t = 2 held out): the last snapshot (t = 3, sd 1.2) from the forward "
              "policy", "", "| model | pools' rms shifts | mean at t = 3 | sd at t = 3 | sd from the last pool's own "
              "velocities |", "|---|---|---|---|---|"]
    for name, r in g1.items():
        shifts = "; ".join(", ".join(f"{x:.2f}" for x in h["rms_projection_shift"]) for h in r["history"]) or "-"
        own = f"{r['sd_t3_own_velocities']:.3f}" if "sd_t3_own_velocities" in r else "-"
        lines.append(f"| {name} | {shifts} | {r['mean_t3']:.3f} | {r['sd_t3']:.3f} | {own} |")
    lines.append("")
    out = ROOT / "benchmarks" / "results" / "trajectory_velocity.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
