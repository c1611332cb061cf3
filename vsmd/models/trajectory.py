"""Trajectory inference from snapshots: a multi-marginal bridge (momentum or first order) learned by bridge
matching, evaluated at every snapshot and at the held-out ones. The module orchestrates: the bridges, their
objective, DMSB's stages and the samplers are in vsmd.diffusion.trajectory*, the evaluation in
vsmd.metrics.trajectory."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vsmd.diffusion import trajectory_sampling as sampling
from vsmd.diffusion import trajectory_stages as stages_lib
from vsmd.diffusion import trajectory_time as units
from vsmd.diffusion.trajectory import MultiMarginalBridge, check_reference, ot_chain
from vsmd.diffusion.trajectory_objective import BridgeMatchingLoss
from vsmd.metrics.trajectory import METRIC_NOTES, evaluate_snapshots, write_predictions, write_test_outputs
from vsmd.models import ema as ema_lib
from vsmd.models.base import PhaseSpaceModule
from vsmd.models.nets import MLPScoreNet
from vsmd.settings import SettingsPolicy

NETS = {"net": "forward", "vnet": "velocity", "bnet": "backward", "snet": "velocity_score", "fnet": "velocity_flow"}


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
        sampler: momentum only, how test and predict simulate: "phase", the learned phase-space dynamics (x, v) with
            the drift network (smooth, Newtonian paths), or "marginal", the first-order ODE dx/dt = E[v | x, t] of
            the velocity network (Heun, 2 NFE a step; the x-marginals exactly, less smooth paths); see
            vsmd.diffusion.trajectory_sampling and benchmarks/results/trajectory.md.
        n_paths: trajectories simulated in test (None: one per point of the first test snapshot).
        seed: the seed of sampling.
        stages: DMSB's alternating stages after the first (0: only the first; vsmd.diffusion.trajectory_stages).
            Stage s >= 1 simulates one policy (odd s: the backward one, even s: the forward one) through every
            training snapshot, OT-projects each simulated snapshot onto the data, and fits the other policy on chains
            drawn from that pool. An odd count ends on the forward policy, which test and predict simulate. Stage s
            covers the steps [s, s + 1) * stage_steps, the last one runs to trainer.max_steps. The stage, its pool
            and the stage history are in the checkpoint, so a resumed run continues exactly.
        stage_steps: training steps per stage.
        pool_size: simulated chains per stage.
        langevin_steps: if > 0, a velocity score network is fitted (denoising, on the bridge samples) and the
            velocity at the start of every simulation (stage pools, test, predict) is refined by this many steps of
            Langevin dynamics in v with the position held (DMSB's velocity sampling at a snapshot). Momentum only.
        langevin_eta: the Langevin step as a fraction of the bridge's conditional velocity variance.
        velocity_flow_steps: if > 0, the velocity at the first and the last snapshot is drawn from the law of v given
            x there by a conditional flow (flow matching from N(0, I) on the bridge's closed-form pairs), integrated
            by Heun with this many steps; then refined by Langevin if langevin_steps > 0. Once the stages' chains
            come from simulations, v given x is broad or multimodal, which the default (E[v | x] plus one bridge's
            spread) collapses (benchmarks/results/trajectory.md). Momentum only.
    """

    SETTINGS = SettingsPolicy(  # each option's role on resume and at test/predict (vsmd.settings)
        weights=("data_dim", "dynamics", "sigma", "sigma_min", "hidden", "depth", "stages", "stage_steps", "pool_size",
                 "langevin_steps", "langevin_eta", "velocity_flow_steps"),
        resume=("lr", "weight_decay", "ema_decay"), evaluation=("sample_steps", "sampler", "n_paths", "seed"))

    def __init__(self, data_dim: int = 2, dynamics: str = "momentum", sigma: float = 0.1, sigma_min: float = 0.0,
                 hidden: int = 256, depth: int = 3, lr: float = 1e-3, weight_decay: float = 0.0,
                 ema_decay: float = 0.999, sample_steps: int = 100, sampler: str = "phase", n_paths: int | None = None,
                 seed: int = 0, stages: int = 0, stage_steps: int = 1000, pool_size: int = 1000,
                 langevin_steps: int = 0, langevin_eta: float = 0.05, velocity_flow_steps: int = 0) -> None:
        super().__init__()
        check_reference(dynamics, sigma, sigma_min)
        sampling.check_sampling(sampler, dynamics, sigma, langevin_steps, langevin_eta, velocity_flow_steps)
        stages_lib.check_stage_options(stages, stage_steps, pool_size)
        if data_dim < 1 or sample_steps < 2 or not lr > 0:
            raise ValueError(f"need data_dim >= 1, sample_steps >= 2 and lr > 0; got {data_dim}, {sample_steps}, {lr}")
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
        for name in NETS:  # each network's EMA copy (None without the network or with ema_decay 0)
            net = getattr(self, name)
            setattr(self, f"{name}_ema", ema_lib.make_ema(net, ema_decay) if net is not None else None)
        self.pins: list[float] | None = None  # training snapshot times on the internal clock (see _set_times)
        self.data_pins, self.time_exponent = None, 0  # the same in the data's units (kept in the checkpoint)
        self.data_identity: dict | None = None  # the training file's path and fingerprint (dm.identity)
        self.snapshot_times: list[float] | None = None
        self.reference: MultiMarginalBridge | None = None  # the reference process pinned at the training snapshots
        self.objective: BridgeMatchingLoss | None = None
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
        self.reference = MultiMarginalBridge(self.pins, self.hparams.dynamics, sigma)
        self.objective = BridgeMatchingLoss(self.reference, self.hparams.sigma_min)

    def _dm(self):
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "snapshots"):
            raise ValueError("TrajectoryBridge needs a TrajectoryDataModule (data: class_path "
                             "vsmd.datamodules.TrajectoryDataModule)")
        dm.check_model(self.hparams.data_dim, self.data_identity)
        return dm

    def on_fit_start(self) -> None:
        dm = self._dm()
        pins = [dm.times[i] for i in dm.train_indices]
        if self.pins is not None and not np.allclose(self.data_pins, pins):
            raise ValueError(f"the checkpoint was trained with snapshots at {self.data_pins}, the data now has {pins}")
        units.check_origin(pins)
        units.check_pin_gaps(pins)
        self.data_identity = dm.identity
        self._set_times(pins, dm.times, self.time_exponent if self.pins is not None else None)
        data_sd = float(torch.cat(dm.snapshots("train").points).double().std(0).max())
        units.check_noise(self.reference, data_sd, self.hparams.sigma, self.time_exponent)
        stages_lib.check_schedule(self.hparams.stages, self.hparams.stage_steps, self.trainer.max_steps)
        if hasattr(dm, "set_pairing"):  # the OT chains of stage 0's batches are made by the loader (its workers)
            dm.set_pairing(ot_chain, self.hparams.stage_steps if self.hparams.stages > 0 else None)

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
    # DMSB's stages (vsmd.diffusion.trajectory_stages).
    def stage_at(self, step: int) -> int:
        """The stage that training step ``step`` belongs to."""
        return stages_lib.stage_at(step, self.hparams.stage_steps, self.hparams.stages)

    stage_plan = staticmethod(stages_lib.stage_plan)

    def _evaluated(self, name: str) -> torch.nn.Module:
        """The network ``name`` as evaluation uses it: its EMA copy if it has one."""
        return ema_lib.evaluated(getattr(self, name), getattr(self, f"{name}_ema"))

    def _dynamics(self) -> sampling.LearnedDynamics:
        """The learned fields as evaluation uses them (the EMA copies), for the samplers."""
        net = {name: self._evaluated(name) if getattr(self, name) is not None else None for name in NETS}
        return sampling.LearnedDynamics(self.reference, net["net"], net["bnet"], net["vnet"], net["snet"], net["fnet"],
                                        *(self.hparams[k] for k in ("langevin_steps", "langevin_eta",
                                                                    "velocity_flow_steps")))

    def start_velocity(self, x: Tensor, t: float, generator: torch.Generator) -> Tensor:
        """The velocity at a snapshot at time t given positions x (vsmd.diffusion.trajectory_sampling)."""
        return self._dynamics().start_velocity(x, t, generator)

    @torch.no_grad()
    def simulate_pins(self, direction: str, x_start: Tensor, generator: torch.Generator,
                      steps: int | None = None) -> Tensor:
        """Simulate a policy from positions at its starting end (t_0 forward, t_K backward) through every pin;
        returns the positions at the pins in forward order, (B, K + 1, d)."""
        return self._dynamics().simulate_pins(direction, x_start.to(self.device).float(),
                                              steps or self.hparams.sample_steps, generator, self.start_velocity)

    @torch.no_grad()
    def build_pool(self, stage: int) -> None:
        """Stage ``stage``'s chains: the simulating policy's paths from resampled data at its end, each simulated
        snapshot OT-projected onto the data there (vsmd.diffusion.trajectory_stages.build_pool)."""
        dm = self._dm()
        snaps = dm.snapshots("train")
        data = [snaps.points[i].to(self.device) for i in dm.train_indices]
        pool = stages_lib.build_pool(stage, self.simulate_pins, data, self.hparams.pool_size,
                                     stages_lib.pool_generator(self.hparams.seed, stage))
        self.pool, self.pool_stage = pool.chains, stage
        self.stage_history.append(pool.history_entry(self.global_step))
        shift = float(np.mean(pool.rms_projection_shift))
        self.log_dict({"stage/index": float(stage), "stage/rms_projection_shift": shift})
        print(pool.summary(self.global_step))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        stage = self.stage_at(self.global_step)
        if stage > 0 and (stage != self.pool_stage or self.pool is None):
            self.build_pool(stage)

    # ----------------------------------------------------------------------------------------------
    def loss(self, batch: list[Tensor] | Tensor, generator: torch.Generator | None = None,
             fit: tuple[str, ...] = ("forward", "backward")) -> tuple[Tensor, dict[str, float]]:
        """Bridge matching on chains: OT chains of a list of snapshot batches, or given chains (B, K + 1, d). ``fit``
        names the policies to fit (the backward one only if the model has stages); the velocity networks are always
        fitted (vsmd.diffusion.trajectory_objective)."""
        chain = batch if isinstance(batch, Tensor) else ot_chain(batch)
        return self.objective(chain, {role: getattr(self, name) for name, role in NETS.items()}, fit, generator)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.hparams.stages > 0:  # randomness from (seed, step): a resumed stage continues exactly
            gen = stages_lib.step_generator(self.hparams.seed, self.global_step)
            stage = self.stage_at(self.global_step)
            if stage > 0:
                batch = sampling.resample(self.pool, len(batch[0]) if isinstance(batch, list) else len(batch), gen)
            loss, parts = self.loss(batch, gen, fit=self.stage_plan(stage)[1])
        else:
            loss, parts = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the bridge-matching loss is {loss.item()} at step {self.global_step}; " + (
                "the saved checkpoints are untouched: resume from the newest with a lower lr."
                if self._checkpoint_exists() else "no checkpoint was written yet, so there is nothing to resume: "
                "start the fit again with a lower lr."))
        self.log_train_step({"train/loss": loss} | {f"train/{k}": v for k, v in parts.items()})
        return loss

    def _nets(self) -> list[tuple[torch.nn.Module, Any]]:
        return [(getattr(self, n), getattr(self, f"{n}_ema")) for n in NETS if getattr(self, n) is not None]

    def configure_optimizers(self):
        params = [p for net, _ in self._nets() for p in net.parameters()]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                 foreach=True)  # one call per operation over all parameters (the same numbers)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        ema_lib.update_ema(self._nets())

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def trajectories(self, x0: Tensor, times: list[float], steps: int | None = None, seed: int | None = None
                     ) -> tuple[Tensor, Tensor, int]:
        """Simulate from x0 at t_0 on a grid through ``times``; returns (x paths (N, B, d), grid (N,), NFE). Times in
        the data's units, also the grid returned (the simulation runs on the internal clock)."""
        if self.pins is None:
            raise ValueError("the model has no snapshot times: it was never fitted (train it with vsmd fit, or pass "
                             "a checkpoint)")
        units.check_in_span(times, self.data_pins[0], self.data_pins[-1])
        gen = torch.Generator().manual_seed(self.hparams.seed if seed is None else seed)
        lo, hi, e = self.pins[0], self.pins[-1], self.time_exponent
        grid = sampling.time_grid([lo, hi, *(units.to_internal(t, e) for t in times)],
                                  steps or self.hparams.sample_steps)
        marginal = self.momentum and self.hparams.get("sampler", "phase") == "marginal"
        xs, nfe = self._dynamics().paths(x0.to(self.device).float(), grid, gen, marginal, self.start_velocity)
        return xs, units.to_data_units(grid, e), nfe

    # ----------------------------------------------------------------------------------------------
    def test_step(self, batch: Any, batch_idx: int) -> None:
        dm = self._dm()
        snaps = dm.snapshots("test")
        if not np.allclose(snaps.times, self.snapshot_times):
            raise ValueError(f"the checkpoint was trained on snapshots at {self.snapshot_times}; the data has "
                             f"{snaps.times}")
        h = self.hparams
        x0 = snaps.points[0] if h.n_paths is None else sampling.resample(snaps.points[0], h.n_paths, h.seed)
        start = time.perf_counter()
        xs, grid, nfe = self.trajectories(x0, snaps.times)
        wall = time.perf_counter() - start
        metrics, predicted, problem = evaluate_snapshots(snaps.times, snaps.points, xs, grid, dm.holdout,
                                                         dm.train_indices)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        self._test = {"metrics": metrics, "space": dm.space, "dynamics": h.dynamics, "sigma": h.sigma,
                      "sampler": h.get("sampler", "phase"), "sigma_min": h.sigma_min, "snapshot_times": snaps.times,
                      "holdout": dm.holdout,
                      "pins": self.data_pins, "nfe": nfe, "sample_steps": h.sample_steps, "n_paths": len(x0),
                      "sampling_seconds": wall, "trained_steps": max(self.trained_steps, self.global_step),
                      "stages": h.get("stages", 0), "stage_history": self.stage_history,
                      "metric_notes": METRIC_NOTES, "samples_problem": problem}
        self._figure = (snaps, xs, grid, dm.holdout, predicted)

    def on_test_epoch_end(self) -> None:
        if not self._test or not self.trainer.is_global_zero:
            return
        marginal = ", marginal ODE" if self.hparams.get("sampler") == "marginal" else ""
        snaps, xs, grid, holdout, predicted = self._figure
        write_test_outputs(self.run_dir(), self._test, snaps.points, snaps.times, xs, grid, holdout, predicted,
                           title=f"({self.hparams.dynamics}, sigma {self.hparams.sigma:g}{marginal})")

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        dm = self._dm()
        snaps = dm.snapshots("test")
        times = [float(t) for t in (dm.predict_times or snaps.times)]
        x0 = sampling.resample(snaps.points[0], dm.n_predict, self.hparams.seed + 2)
        xs, grid, nfe = self.trajectories(x0, times, seed=self.hparams.seed + 2)
        write_predictions(self.run_dir(), times, xs, grid, nfe, dm.space,
                          max(float(p.abs().max()) for p in snaps.points))
