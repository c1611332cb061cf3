"""Trajectory inference from snapshots: a multi-marginal bridge (momentum or first order) learned by bridge
matching (vsmd.diffusion.trajectory), evaluated at every snapshot and at the held-out ones."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vsmd.diffusion import trajectory_time as units
from vsmd.diffusion.trajectory import (DYNAMICS, MultiMarginalBridge, langevin_velocity, ot_chain, ot_project,
                                       simulate, time_grid)
from vsmd.metrics import DivergedSamplesError, sample_problem, write_json
from vsmd.metrics.trajectory import METRIC_NOTES, mean_squared_acceleration, snapshot_metrics
from vsmd.models.base import PhaseSpaceModule
from vsmd.models.nets import MLPScoreNet
from vsmd.plotting import plt, snapshot_trajectories_figure


SAMPLERS = ("phase", "marginal")
DIVERGED_ADVICE = ("The learned dynamics diverged: a barely trained model, too few sample_steps or a reference noise "
                   "far larger than the data; train longer or with a lower lr, or raise sample_steps.")


def _heun(field, x: Tensor, knots: list[float]) -> list[Tensor]:
    """Heun's method for dy/ds = field(y, s) through ``knots`` from y = x; returns the states at every knot."""
    states = [x]
    for a, b in zip(knots[:-1], knots[1:]):
        k1 = field(x, a)
        k2 = field(x + (b - a) * k1, b)
        x = x + (b - a) / 2 * (k1 + k2)
        states.append(x)
    return states


class TrajectoryBridge(PhaseSpaceModule):
    """Snapshots in, trajectories out (``TrajectoryDataModule``).

    Training chains a batch of every training snapshot by minibatch OT between consecutive snapshots, draws a time
    and a state of the reference process pinned at the chain, and regresses the pinned process's drift there
    (simulation-free; see vsmd.diffusion.trajectory). Test and predict simulate the learned dynamics from the first
    snapshot's points.

    Args:
        data_dim: the dimension of the data (after the DataModule's PCA).
        dynamics: "momentum" (dx = v dt, dv = a dt + sigma dW; the velocity at the first snapshot comes from a second
            network) or "first_order" (dx = u dt + sigma dW).
        sigma: the reference noise; 0 gives flow matching (cubic splines for momentum, OT-CFM's straight segments
            for first order), and deterministic sampling.
        sigma_min: first order only: a constant Gaussian blur of the paths' states (torchcfm's sigma of OT-CFM).
        hidden, depth: the MLP of the drift (and of the velocity).
        lr, weight_decay: AdamW.
        ema_decay: EMA of the weights used for evaluation (0: none).
        sample_steps: simulation steps over [t_0, t_K] (every snapshot time is on the grid).
        sampler: momentum only, how test and predict simulate. "phase": the learned phase-space dynamics (x, v)
            with the drift network, from v_0 = E[v | x_0] plus the bridge's spread: smooth, Newtonian paths.
            "marginal": the first-order ODE dx/dt = E[v | x, t] of the velocity network (Heun, 2 NFE a step). Since
            x' = v on every bridge path, this field carries the bridge mixture's x-marginals exactly, whatever the
            drift network's error, which in the phase-space simulation compounds through v; its paths are less
            smooth (benchmarks/results/trajectory.md measures both).
        n_paths: trajectories simulated in test (None: one per point of the first test snapshot).
        seed: the seed of sampling.
        stages: DMSB's alternating stages after the first (0: only the first). Stage 0 fits both policies on OT
            chains of the data batches. Stage s >= 1 starts by simulating one policy from the data at its own end
            (odd s: the backward policy from the last snapshot; even s: the forward one from the first), through
            every training snapshot, with ``pool_size`` paths; each simulated snapshot is OT-projected onto the data
            there (``ot_project``, IPF's projection onto that marginal), and the stage fits the *other* policy (plus
            the velocity networks) by bridge matching on chains drawn from that pool. An odd count ends on the
            forward policy, which test and predict simulate. Stage s covers the steps [s, s + 1) * stage_steps; the
            last one runs to trainer.max_steps. The stage, its pool and the stage history are in the checkpoint,
            and stage steps draw their randomness from (seed, step), so a resumed run continues exactly.
        stage_steps: training steps per stage.
        pool_size: simulated chains per stage.
        langevin_steps: if > 0, a velocity score network is fitted (denoising, on the bridge samples) and the
            velocity at the start of every simulation (stage pools, test, predict) is refined by this many steps of
            Langevin dynamics in v with the position held (DMSB's velocity sampling at a snapshot). Momentum only.
        langevin_eta: the Langevin step as a fraction of the bridge's conditional velocity variance.
        velocity_flow_steps: if > 0, the velocity at the first and the last snapshot is drawn from the law of v given
            x there by a conditional flow (flow matching from N(0, I), simulation-free: the pairs (x, v) are the
            bridge's closed-form law at the end pins of each chain), integrated by Heun with this many steps; then
            refined by Langevin if langevin_steps > 0. Once the stages' chains come from simulations, v given x is
            broad or multimodal (chains through one point head to different places), and E[v | x] plus one bridge's
            spread, the default, collapses it (benchmarks/results/trajectory.md measures the three). Momentum only.
    """

    def __init__(self, data_dim: int = 2, dynamics: str = "momentum", sigma: float = 0.1, sigma_min: float = 0.0,
                 hidden: int = 256, depth: int = 3, lr: float = 1e-3, weight_decay: float = 0.0,
                 ema_decay: float = 0.999, sample_steps: int = 100, sampler: str = "phase", n_paths: int | None = None,
                 seed: int = 0, stages: int = 0, stage_steps: int = 1000, pool_size: int = 1000,
                 langevin_steps: int = 0, langevin_eta: float = 0.05, velocity_flow_steps: int = 0) -> None:
        super().__init__()
        if dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}, got {dynamics!r}")
        if not sigma >= 0 or not sigma_min >= 0:
            raise ValueError(f"sigma and sigma_min must be >= 0, got {sigma} and {sigma_min}")
        if sigma_min > 0 and dynamics == "momentum":
            raise ValueError("sigma_min is the first-order (OT-CFM) blur; the momentum bridge's noise is sigma")
        if sampler not in SAMPLERS or (sampler != "phase" and dynamics != "momentum"):
            raise ValueError(f"sampler must be one of {SAMPLERS} ('marginal' for dynamics momentum only), got "
                             f"{sampler!r} with dynamics {dynamics!r}")
        if data_dim < 1 or sample_steps < 2 or not lr > 0:
            raise ValueError(f"need data_dim >= 1, sample_steps >= 2 and lr > 0; got {data_dim}, {sample_steps}, {lr}")
        if stages < 0 or stage_steps < 1 or pool_size < 2 or langevin_steps < 0 or not 0 < langevin_eta < 2:
            raise ValueError(f"need stages >= 0, stage_steps >= 1, pool_size >= 2, langevin_steps >= 0 and "
                             f"0 < langevin_eta < 2; got {stages}, {stage_steps}, {pool_size}, {langevin_steps}, "
                             f"{langevin_eta}")
        if (langevin_steps > 0 or velocity_flow_steps > 0) and dynamics != "momentum":
            raise ValueError("langevin_steps and velocity_flow_steps sample the velocity: they are for dynamics "
                             "momentum")
        if velocity_flow_steps < 0:
            raise ValueError(f"velocity_flow_steps must be >= 0, got {velocity_flow_steps}")
        if langevin_steps > 0 and not sigma > 0:
            raise ValueError("langevin_steps needs sigma > 0 (with sigma 0 the velocity given the position is a point "
                             "mass on each bridge and has no score)")
        self.save_hyperparameters()
        self.momentum = dynamics == "momentum"
        order = 2 if self.momentum else 1
        self.net = MLPScoreNet(data_dim, order, hidden, depth)  # the forward drift a(x, v, t) or u(x, t)
        self.vnet = MLPScoreNet(data_dim, 1, hidden, depth) if self.momentum else None  # E[v | x, t]
        # the backward policy (the drift on the mirrored clock, velocity negated) and the velocity score (as noise)
        self.bnet = MLPScoreNet(data_dim, order, hidden, depth) if stages > 0 else None
        self.snet = MLPScoreNet(data_dim, 2, hidden, depth) if langevin_steps > 0 else None
        # the conditional flow of v given x at the end snapshots (time input: [0, 499] at t_0, [500, 999] at t_K)
        self.fnet = MLPScoreNet(data_dim, 2, hidden, depth) if velocity_flow_steps > 0 else None
        self.net_ema = self.make_ema(self.net, ema_decay)
        self.vnet_ema = self.make_ema(self.vnet, ema_decay) if self.vnet is not None else None
        self.bnet_ema = self.make_ema(self.bnet, ema_decay) if self.bnet is not None else None
        self.snet_ema = self.make_ema(self.snet, ema_decay) if self.snet is not None else None
        self.fnet_ema = self.make_ema(self.fnet, ema_decay) if self.fnet is not None else None
        self.pins: list[float] | None = None  # training snapshot times on the internal clock (see _set_times)
        self.data_pins, self.time_exponent = None, 0  # the same in the data's units (kept in the checkpoint)
        self.data_identity: dict | None = None  # the training file's path and fingerprint (dm.identity)
        self.snapshot_times: list[float] | None = None
        self.bridge: MultiMarginalBridge | None = None
        self.pool: Tensor | None = None  # the current stage's chains (pool_size, K + 1, d)
        self.pool_stage = 0
        self.stage_history: list[dict[str, Any]] = []
        self._test: dict[str, Any] = {}
        self.trained_steps = 0

    # ----------------------------------------------------------------------------------------------
    def _set_times(self, pins: list[float], all_times: list[float], exponent: int | None = None) -> None:
        """Pins and snapshot times in the data's units; the bridge runs on the internal clock t / 10^exponent
        (vsmd.diffusion.trajectory_time; checkpoints without one ran on the data's clock)."""
        self.data_pins, self.snapshot_times = [float(t) for t in pins], [float(t) for t in all_times]
        self.time_exponent = units.time_exponent(pins) if exponent is None else int(exponent)
        self.pins = [units.to_internal(t, self.time_exponent) for t in self.data_pins]
        sigma = units.internal_sigma(self.hparams.sigma, self.hparams.dynamics, self.time_exponent)
        self.bridge = MultiMarginalBridge(self.pins, self.hparams.dynamics, sigma)
        self.bridge_rev = self.bridge.reversed()

    def _dm(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "snapshots"):
            raise ValueError("TrajectoryBridge needs a TrajectoryDataModule (data: class_path "
                             "vsmd.datamodules.TrajectoryDataModule)")
        if dm.data_dim != self.hparams.data_dim:
            raise ValueError(f"the data have dimension {dm.data_dim} (after pca) but the model was built for "
                             f"data_dim={self.hparams.data_dim}; set model.init_args.data_dim: {dm.data_dim}")
        dm.check_identity(self.data_identity)
        return dm

    def on_fit_start(self) -> None:
        dm = self._dm()
        pins = [dm.times[i] for i in dm.train_indices]
        if self.pins is not None and not np.allclose(self.data_pins, pins):
            raise ValueError(f"the checkpoint was trained with snapshots at {self.data_pins}, the data now has {pins}")
        units.check_pin_gaps(pins)
        self.data_identity = dm.identity
        self._set_times(pins, dm.times, self.time_exponent if self.pins is not None else None)
        data_sd = float(torch.cat(dm.snapshots("train").points).double().std(0).max())
        units.check_noise(self.bridge, data_sd, self.hparams.sigma, self.time_exponent)
        h, max_steps = self.hparams, self.trainer.max_steps
        if h.stages > 0 and max_steps is not None and 0 < max_steps <= h.stages * h.stage_steps:
            raise ValueError(f"trainer.max_steps {max_steps} ends before the last stage starts (stage {h.stages} at "
                             f"step {h.stages * h.stage_steps}); raise max_steps, or lower stages or stage_steps")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vsmd_trajectory"] = {"pins": self.data_pins, "snapshot_times": self.snapshot_times,
                                         "time_exponent": self.time_exponent, "data": self.data_identity,
                                         "stage": self.pool_stage, "pool": self.pool,
                                         "stage_history": self.stage_history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))
        info = checkpoint.get("vsmd_trajectory") or {}
        if info.get("pins"):
            self._set_times(info["pins"], info["snapshot_times"], info.get("time_exponent", 0))
        self.pool_stage, self.pool, self.data_identity = int(info.get("stage", 0)), info.get("pool"), info.get("data")
        self.stage_history = list(info.get("stage_history", []))

    # ----------------------------------------------------------------------------------------------
    # DMSB's stages.
    def stage_at(self, step: int) -> int:
        """The stage that training step ``step`` belongs to."""
        return min(step // self.hparams.stage_steps, self.hparams.stages)

    @staticmethod
    def stage_plan(stage: int) -> tuple[str | None, tuple[str, ...]]:
        """(the policy a stage simulates, the policies it fits): stage 0 simulates none and fits both on OT chains;
        odd stages simulate the backward policy and fit the forward one; even stages the reverse."""
        if stage == 0:
            return None, ("forward", "backward")
        return ("backward", ("forward",)) if stage % 2 else ("forward", ("backward",))

    def _evaluated(self, name: str) -> torch.nn.Module:
        """The network ``name`` as evaluation uses it: its EMA copy if it has one."""
        ema = getattr(self, f"{name}_ema")
        return ema.module if ema is not None else getattr(self, name)

    def _policy(self, direction: str):
        return self._evaluated("net" if direction == "forward" else "bnet")

    def start_velocity(self, x: Tensor, t: float, generator: torch.Generator) -> Tensor:
        """The velocity at a snapshot at time t given positions x: from the conditional flow at the first and last
        snapshot if the model has one, else E[v | x, t] plus the bridge's conditional spread; then (with a velocity
        score) ``langevin_steps`` of Langevin dynamics in v with the learned score -eps(x, v, t) / spread, steps
        scaled by the spread (the score varies on that scale)."""
        c = self._c(torch.full((len(x),), t, device=x.device))
        spread = self.bridge.velocity_spread(t)
        if self.fnet is not None and t in (self.pins[0], self.pins[-1]):
            v = self.flow_velocity(x, t == self.pins[-1], generator)
        else:
            v = self._evaluated("vnet")(x, c) + spread * torch.randn(x.shape, generator=generator).to(x)
        if self.snet is None or self.hparams.langevin_steps == 0:
            return v
        snet = self._evaluated("snet")
        return langevin_velocity(lambda u: -snet(torch.cat([x, u], 1), c) / spread, v, spread,
                                 self.hparams.langevin_steps, self.hparams.langevin_eta, generator)

    def _flow_c(self, tau: Tensor, last: bool) -> Tensor:
        return 499.0 * tau + (500.0 if last else 0.0)

    @torch.no_grad()
    def flow_velocity(self, x: Tensor, last: bool, generator: torch.Generator) -> Tensor:
        """v given x at the first (or last) snapshot by the conditional flow: Heun from N(0, I) over tau in [0, 1]."""
        net = self._evaluated("fnet")
        v = torch.randn(x.shape, generator=generator).to(x)
        taus = torch.linspace(0, 1, self.hparams.velocity_flow_steps + 1).tolist()
        return _heun(lambda u, s: net(torch.cat([x, u], 1), self._flow_c(torch.full((len(x),), s, device=x.device),
                                                                          last)), v, taus)[-1]

    def _flow_loss(self, chain: Tensor, generator: torch.Generator | None) -> Tensor:
        """Flow matching of v given x at both end pins: pairs from the bridge's closed-form law there (x is the
        chain's point, v its kriging law), straight paths from N(0, I)."""
        losses = []
        for last, t in ((False, self.pins[0]), (True, self.pins[-1])):
            tt = torch.full((len(chain),), t, dtype=torch.float64)
            x, v = self.bridge.sample(chain, tt, generator)[:2]
            z = torch.randn(v.shape, generator=generator).to(v)
            tau = torch.rand(len(v), generator=generator).to(v)
            v_tau = (1 - tau[:, None]) * z + tau[:, None] * v
            pred = self.fnet(torch.cat([x, v_tau], 1), self._flow_c(tau, last))
            losses.append((pred - (v - z)).pow(2).sum(1).mean())
        return sum(losses) / 2

    def _drift(self, policy):
        """The simulator's drift(x, v, t) of a policy network (v is None for first-order dynamics)."""
        if self.momentum:
            return lambda x, v, t: policy(torch.cat([x, v], 1), self._c(t))
        return lambda x, v, t: policy(x, self._c(t))

    @torch.no_grad()
    def simulate_pins(self, direction: str, x_start: Tensor, generator: torch.Generator,
                      steps: int | None = None) -> Tensor:
        """Simulate a policy from positions at its starting end (t_0 forward, t_K backward) through every pin;
        returns the positions at the pins in forward order, (B, K + 1, d)."""
        bridge = self.bridge if direction == "forward" else self.bridge_rev
        grid = time_grid(bridge.times.tolist(), steps or self.hparams.sample_steps)
        policy = self._policy(direction)
        x0 = x_start.to(self.device).float()
        v0 = None
        if self.momentum:
            t_start = self.pins[0] if direction == "forward" else self.pins[-1]
            v0 = self.start_velocity(x0, t_start, generator)
            v0 = v0 if direction == "forward" else -v0  # the backward clock runs the velocity backwards
        xs, _ = simulate(self._drift(policy), x0, v0, grid.to(torch.float32), self.bridge.sigma, generator)
        at = [int((grid - float(p)).abs().argmin()) for p in bridge.times]
        chain = xs[at].transpose(0, 1)
        return chain if direction == "forward" else chain.flip(1)

    @torch.no_grad()
    def build_pool(self, stage: int) -> None:
        """Stage ``stage``'s chains: the simulating policy's paths from resampled data at its end, each simulated
        snapshot OT-projected onto the data there."""
        simulated, fits = self.stage_plan(stage)
        dm = self._dm()
        snaps = dm.snapshots("train")
        data = [snaps.points[i].to(self.device) for i in dm.train_indices]
        gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + 7919 * stage + 1)
        start = time.perf_counter()
        end = data[0] if simulated == "forward" else data[-1]
        x_start = end[torch.randint(len(end), (self.hparams.pool_size,), generator=gen)]
        chain = self.simulate_pins(simulated, x_start, gen)
        sim_seconds = time.perf_counter() - start
        moved, k_start = [], 0 if simulated == "forward" else chain.shape[1] - 1  # the start: data already
        for k in range(chain.shape[1]):
            if k == k_start:
                moved.append(0.0)
                continue
            projected = ot_project(chain[:, k], data[k], gen)
            moved.append(float((projected - chain[:, k]).pow(2).sum(1).mean().sqrt()))
            chain[:, k] = projected
        self.pool, self.pool_stage = chain.float(), stage
        entry = {"stage": stage, "step": int(self.global_step), "simulated": simulated, "fits": list(fits),
                 "simulate_seconds": sim_seconds, "seconds": time.perf_counter() - start,
                 "rms_projection_shift": moved}
        self.stage_history.append(entry)
        self.log_dict({"stage/index": float(stage), "stage/rms_projection_shift": float(np.mean(moved))})
        print(f"stage {stage} at step {entry['step']}: simulated the {simulated} policy ({len(chain)} paths, "
              f"{entry['seconds']:.1f} s); rms shift onto the data per snapshot "
              f"{', '.join(f'{m:.3f}' for m in moved)}; fitting the {' and '.join(fits)} policy")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        stage = self.stage_at(self.global_step)
        if stage > 0 and (stage != self.pool_stage or self.pool is None):
            self.build_pool(stage)

    def _c(self, t: Tensor) -> Tensor:
        """The network's time input: 999 (t - t_0) / (t_K - t_0)."""
        t0, t1 = self.pins[0], self.pins[-1]
        return 999.0 * (t - t0) / (t1 - t0)

    # ----------------------------------------------------------------------------------------------
    def _drift_loss(self, net, bridge: MultiMarginalBridge, chain: Tensor, generator: torch.Generator | None
                    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        t = bridge.sample_times(len(chain), generator).to(chain.device)
        sample = bridge.sample(chain, t, generator, velocity_noise=self.snet is not None and bridge is self.bridge)
        x, v, target = sample[0], sample[1], sample[2]
        if self.hparams.sigma_min > 0:
            x = x + self.hparams.sigma_min * torch.randn(x.shape, generator=generator).to(x)
        c, w = self._c(t).float(), bridge.loss_weight(t).float()
        if net is None:  # only the samples (the drift is not fitted in this stage)
            return None, (x, *sample[1:]), c
        pred = net(torch.cat([x, v], 1), c) if self.momentum else net(x, c)
        return ((pred - target).pow(2).sum(1) * w).mean(), (x, *sample[1:]), c

    def loss(self, batch: list[Tensor] | Tensor, generator: torch.Generator | None = None,
             fit: tuple[str, ...] = ("forward", "backward")) -> tuple[Tensor, dict[str, float]]:
        """Bridge matching on chains: OT chains of a list of snapshot batches, or given chains (B, K + 1, d). ``fit``
        names the policies to fit (the backward one only if the model has stages); the velocity networks are always
        fitted."""
        chain = batch if isinstance(batch, Tensor) else ot_chain(batch)
        drift_loss, sample, c = self._drift_loss(self.net if "forward" in fit else None, self.bridge, chain,
                                                 generator)
        parts = {}
        total = drift_loss if drift_loss is not None else chain.new_zeros(())
        if drift_loss is not None:
            parts["drift"] = float(drift_loss.detach())
        if self.momentum:
            x, v, _, v_target = sample[:4]
            v_loss = (self.vnet(x, c) - v_target).pow(2).sum(1).mean()
            total, parts["velocity"] = total + v_loss, float(v_loss.detach())
            if self.snet is not None:  # denoising: the noise of v given x on its bridge
                eps = sample[4]
                s_loss = (self.snet(torch.cat([x, v], 1), c) - eps).pow(2).sum(1).mean()
                total, parts["velocity_score"] = total + s_loss, float(s_loss.detach())
            if self.fnet is not None:
                f_loss = self._flow_loss(chain, generator)
                total, parts["velocity_flow"] = total + f_loss, float(f_loss.detach())
        if self.bnet is not None and "backward" in fit:
            b_loss = self._drift_loss(self.bnet, self.bridge_rev, chain.flip(1), generator)[0]
            total, parts["backward_drift"] = total + b_loss, float(b_loss.detach())
        return total, parts

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.hparams.stages > 0:  # randomness from (seed, step): a resumed stage continues exactly
            gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + int(self.global_step) + 17)
            stage = self.stage_at(self.global_step)
            if stage > 0:
                batch = self.pool[torch.randint(len(self.pool), (len(batch[0]),), generator=gen)]
            loss, parts = self.loss(batch, gen, fit=self.stage_plan(stage)[1])
        else:
            loss, parts = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the bridge-matching loss is {loss.item()} at step {self.global_step}; " + (
                "the saved checkpoints are untouched: resume from the newest with a lower lr."
                if self._checkpoint_exists() else "no checkpoint was written yet, so there is nothing to resume: "
                "start the fit again with a lower lr."))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False)
        return loss

    def _nets(self) -> list[tuple[torch.nn.Module, Any]]:
        return [(n, e) for n, e in ((self.net, self.net_ema), (self.vnet, self.vnet_ema), (self.bnet, self.bnet_ema),
                                    (self.snet, self.snet_ema), (self.fnet, self.fnet_ema)) if n is not None]

    def configure_optimizers(self):
        params = [p for net, _ in self._nets() for p in net.parameters()]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        for net, ema in self._nets():
            if ema is not None:
                ema.update_parameters(net)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def trajectories(self, x0: Tensor, times: list[float], steps: int | None = None, seed: int | None = None
                     ) -> tuple[Tensor, Tensor, int]:
        """Simulate from x0 at t_0 on a grid through ``times``; returns (x paths (N, B, d), grid (N,), NFE). Times in
        the data's units, also the grid returned (the simulation runs on the internal clock)."""
        if self.pins is None:
            raise ValueError("the model has no snapshot times: it was never fitted (train it with vsmd fit, or pass "
                             "a checkpoint)")
        lo, hi = self.data_pins[0], self.data_pins[-1]
        bad = [t for t in times if not lo - 1e-9 * (hi - lo) <= t <= hi + 1e-9 * (hi - lo)]
        if bad:
            raise ValueError(f"times {bad} are outside the trained span [{lo:g}, {hi:g}]; the bridge is only defined "
                             "between the first and the last training snapshot")
        gen = torch.Generator().manual_seed(self.hparams.seed if seed is None else seed)
        lo, hi, e = self.pins[0], self.pins[-1], self.time_exponent
        grid = time_grid([lo, hi, *(units.to_internal(t, e) for t in times)], steps or self.hparams.sample_steps)
        x0 = x0.to(self.device).float()
        if self.momentum and self.hparams.get("sampler", "phase") == "marginal":  # dx/dt = E[v | x, t]
            vnet = self._evaluated("vnet")
            xs = _heun(lambda x, s: vnet(x, self._c(torch.full((len(x),), s, device=x.device))), x0, grid.tolist())
            return torch.stack(xs), units.to_data_units(grid, e), 2 * (len(grid) - 1)
        v0 = self.start_velocity(x0, lo, gen) if self.momentum else None
        xs, _ = simulate(self._drift(self._evaluated("net")), x0, v0, grid.to(torch.float32), self.bridge.sigma, gen)
        return xs, units.to_data_units(grid, e), len(grid) - 1 + (1 if self.momentum else 0)

    def _at(self, xs: Tensor, grid: Tensor, t: float) -> Tensor:
        return xs[int((grid - t).abs().argmin())]

    # ----------------------------------------------------------------------------------------------
    def test_step(self, batch: Any, batch_idx: int) -> None:
        dm = self._dm()
        snaps = dm.snapshots("test")
        if not np.allclose(snaps.times, self.snapshot_times):
            raise ValueError(f"the checkpoint was trained on snapshots at {self.snapshot_times}; the data has "
                             f"{snaps.times}")
        h = self.hparams
        x0 = snaps.points[0]
        if h.n_paths is not None:
            g = torch.Generator().manual_seed(h.seed)
            x0 = x0[torch.randint(len(x0), (h.n_paths,), generator=g)]
        start = time.perf_counter()
        xs, grid, nfe = self.trajectories(x0, snaps.times)
        wall = time.perf_counter() - start
        predicted = {k: self._at(xs, grid, t).cpu() for k, t in enumerate(snaps.times) if k > 0}
        problem = sample_problem(xs, max(float(p.abs().max()) for p in snaps.points))  # NaN scores as 0 in POT
        metrics = snapshot_metrics(snaps.times, snaps.points, predicted, dm.holdout, dm.train_indices, bool(problem))
        metrics["mean_squared_acceleration"] = float("nan") if problem else mean_squared_acceleration(xs, grid)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        self._test = {"metrics": metrics, "space": dm.space, "dynamics": h.dynamics, "sigma": h.sigma,
                      "sampler": h.get("sampler", "phase"),
                      "sigma_min": h.sigma_min, "snapshot_times": snaps.times, "holdout": dm.holdout,
                      "pins": self.data_pins, "nfe": nfe, "sample_steps": h.sample_steps, "n_paths": len(x0),
                      "sampling_seconds": wall, "trained_steps": max(self.trained_steps, self.global_step),
                      "stages": h.get("stages", 0), "stage_history": self.stage_history,
                      "metric_notes": METRIC_NOTES, "samples_problem": problem}
        self._figure = (snaps, xs, grid, dm.holdout, predicted)

    def on_test_epoch_end(self) -> None:
        if not self._test or not self.trainer.is_global_zero:
            return
        out = self.run_dir()
        path = write_json(out / "test_metrics.json", self._test)
        snaps, xs, grid, holdout, predicted = self._figure
        if self._test["samples_problem"]:
            np.savez(out / "test_samples.npz", paths=xs.cpu().numpy(), times=np.asarray(snaps.times))
            raise DivergedSamplesError(f"the simulated trajectories are unusable: {self._test['samples_problem']}. "
                                       f"The metrics in {path} are null; the paths are in {out / 'test_samples.npz'} "
                                       f"for inspection. {DIVERGED_ADVICE}")
        marginal = ", marginal ODE" if self.hparams.get("sampler") == "marginal" else ""
        fig = snapshot_trajectories_figure(snaps.points, snaps.times, xs, holdout, predicted, grid=grid,
                                           title=f"({self.hparams.dynamics}, sigma {self.hparams.sigma:g}{marginal})")
        fig.savefig(out / "test_trajectories.png", dpi=110)
        plt.close(fig)
        lines = [f"  {k:<34} {v:.5g}" for k, v in self._test["metrics"].items()]
        print("\n".join([f"test metrics ({self._test['space']}; NFE {self._test['nfe']}, "
                         f"{self._test['sampling_seconds']:.2f} s):", *lines, f"written to {path}"]))

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        dm = self._dm()
        snaps = dm.snapshots("test")
        times = [float(t) for t in (dm.predict_times or snaps.times)]
        g = torch.Generator().manual_seed(self.hparams.seed + 2)
        x0 = snaps.points[0][torch.randint(len(snaps.points[0]), (dm.n_predict,), generator=g)]
        xs, grid, nfe = self.trajectories(x0, times, seed=self.hparams.seed + 2)
        samples = torch.stack([self._at(xs, grid, t) for t in times]).cpu().numpy()
        out = self.run_dir()
        np.savez(out / "samples.npz", times=np.asarray(times), samples=samples, paths=xs.cpu().numpy(),
                 grid=grid.numpy())
        problem = sample_problem(xs, max(float(p.abs().max()) for p in snaps.points))
        if problem:
            raise DivergedSamplesError(f"the simulated trajectories are unusable: {problem}. They are in "
                                       f"{out / 'samples.npz'} for inspection. {DIVERGED_ADVICE}")
        (out / "samples.json").write_text(json.dumps({"times": times, "shape": list(samples.shape), "nfe": nfe,
                                                      "space": dm.space}) + "\n")
        print(f"wrote {samples.shape[1]} samples at times {times} to {out / 'samples.npz'} (samples: (times, n, d); "
              "paths: the whole simulation on grid)")
