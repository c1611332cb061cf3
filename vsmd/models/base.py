"""The LightningModules every task builds on.

- :class:`PhaseSpaceModule`: what every vsmd module shares (run folder, TensorBoard, progress), the class
  ``vsmd fit/test/predict`` accept.
- :class:`GenerativeModule`: the orchestrator of a generative model on a Gaussian path (VSMD and its relatives in
  vsmd.models.score, the AGM bridge in vsmd.models.agm): the network and its EMA copy, the training step on the
  family's objective, sampling through the sampler registry, the frame, and the checkpoint hooks. A family
  provides the path, its objective, ``score`` and ``sampler_options``; a task provides the data shape, the network
  and its evaluation (vsmd.models.toy, images, timeseries).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from vsmd.datamodules.moments import DataMoments
from vsmd.diffusion import sample as run_sampler
from vsmd.diffusion.objectives import eps_matching
from vsmd.diffusion.types import GaussianPath, SampleResult
from vsmd.models import ema as ema_lib
from vsmd.models.data_start import DataStart
from vsmd.models.frame import FrameMixin
from vsmd.models.options import SamplingOptions, TrainingOptions
from vsmd.models.resume import ResumeChanges
from vsmd.settings import SettingsPolicy


class PhaseSpaceModule(pl.LightningModule):
    """What every vsmd task module shares, and the base class ``vsmd fit/test/predict`` accept: the run folder, the
    TensorBoard writer and the sampling progress setting (the EMA copies come from vsmd.models.ema). GenerativeModule
    (VSMD and its relatives, the AGM bridge) and TrajectoryBridge (trajectory inference) build on it."""

    def run_dir(self) -> Path:
        """The run's log directory (where test/predict write their files), created if needed."""
        out = Path(self.trainer.log_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        return out

    @property
    def show_progress(self) -> bool:
        """Whether sampling loops draw a progress bar: only on rank 0 of a trainer that draws its own
        (``--trainer.enable_progress_bar``)."""
        trainer = self._trainer
        return trainer is not None and trainer.progress_bar_callback is not None and trainer.is_global_zero

    def _checkpoint_exists(self) -> bool:
        """Whether this fit has a checkpoint to resume from: the one it resumed from, or one it saved (a blow-up
        at step 1 or 2 of a new fit comes long before the first checkpoint)."""
        trainer = self._trainer
        if trainer is None:
            return self.global_step > 0
        return bool(trainer.ckpt_path) or any(getattr(cb, "_last_global_step_saved", 0) > 0
                                              for cb in trainer.checkpoint_callbacks)

    def log_train_step(self, values: dict[str, Any], prog_bar: str = "train/loss") -> None:
        """Log a training step's values (on_step) at the steps the logger writes (every
        ``trainer.log_every_n_steps``; each step under fast_dev_run): the value of that step, as logging every step
        wrote it, without Lightning's per-call cost at the steps it drops. The progress bar shows ``prog_bar`` as of
        the last written step. Outside a trainer's fit loop every call logs."""
        trainer = self._trainer
        conn = getattr(trainer, "_logger_connector", None)
        if conn is not None and getattr(trainer, "_active_loop", None) is not None and not trainer.fast_dev_run \
                and not conn.should_update_logs:
            return
        for key, value in values.items():
            self.log(key, value, prog_bar=key == prog_bar, on_step=True, on_epoch=False)

    def tensorboard(self):
        """The TensorBoard SummaryWriter on rank 0, or None."""
        if self.trainer.is_global_zero and isinstance(self.logger, pl.loggers.TensorBoardLogger):
            return self.logger.experiment
        return None


class GenerativeModule(FrameMixin, PhaseSpaceModule):
    """A generative model on a Gaussian path: the orchestrator that VSMDModule and AGMModule share.

    A family's ``__init__`` checks its option groups, saves the hyperparameters and calls :meth:`build` with its
    path. Evaluation and sampling use the EMA weights. A task mixes in ``data_shape()``, ``build_net()`` (read the
    task's options from ``self.hparams``), ``batch_to_x0`` / ``batch_loss`` / ``stats_x0`` where its batches are not
    plain tensors, and its evaluation.
    """

    objective: Callable[..., Tensor] = staticmethod(eps_matching)  # the family's loss (vsmd.diffusion.objectives)
    path_sampler = "heun"  # the sampler of path figures and straightness: a deterministic one of the family
    supports_rotation = False  # vector-data tasks whose samples leave the process's frame (toy, forecasting)
    sa = None  # the SA optimiser of A (VSMDModule with an adaptive process)
    SETTINGS = SettingsPolicy()  # no options of its own: each family declares its own

    def build(self, process: GaussianPath, training: TrainingOptions, sampling: SamplingOptions, *,
              rotation: bool = False, learned_rotation: bool = False, scale: bool = False) -> None:
        """The path, the frame it runs in, the network and its EMA copy (in this order: the network's initial weights
        are the first random draws)."""
        self.training_options, self.sampling = training, sampling
        self.process = process
        self.init_frame(self.data_shape(), rotation=rotation, learned=learned_rotation, scale=scale)
        self.net = self.build_net()
        self.net_ema = ema_lib.make_ema(self.net, training.ema_decay, training.ema_warmup)
        self.data_start = DataStart()  # which parts of the data-informed start are done (all, once loaded)
        self.trained_steps = 0  # optimizer steps of the loaded checkpoint (reported by test/predict)

    # ----------------------------------------------------------------------------------------------
    # What tasks provide.
    def data_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    def batch_to_x0(self, batch: Any) -> Tensor:
        return batch

    def batch_loss(self, batch: Any, net: nn.Module) -> Tensor:
        """The loss of a batch (conditional tasks encode their condition here)."""
        return self.score_loss(self.batch_to_x0(batch), net)

    def stats_x0(self, batch: Any) -> Tensor:
        """The data x0 (B, *data_shape) of a training batch, for the data moments of the data-informed start."""
        return self.batch_to_x0(batch)

    # ----------------------------------------------------------------------------------------------
    # What families provide.
    def score(self, a: Tensor, t: Tensor, net: nn.Module | None = None, cond: Tensor | None = None) -> Tensor:
        """What the family's samplers integrate (a score, or AGM's force)."""
        raise NotImplementedError

    def sampler_options(self, net: nn.Module, cond: Tensor | None = None, sampler: str | None = None) -> dict[str, Any]:
        """Keyword arguments of vsmd.diffusion.sample for ``sampler`` (default: the configured one)."""
        h = self.hparams
        name = sampler or h.sampler
        return {"ei_order": h.get("ei_order", 3), "ei_grid": h.get("ei_grid", "quadratic"),
                "t_stop": h.get("t_stop") if name == h.sampler else None}

    def start_from_data(self, moment_batches: Callable[[], Iterable] | None) -> None:
        """At the start of a fit (DataMoments): the family's data-informed start, from the DataModule's
        ``moment_batches`` (vsmd.datamodules.moments), each part unless a checkpoint has it already."""

    def variational_summary(self) -> dict[str, Any]:
        """The learned A and the SA counters, for the JSON reports (empty for a family without them)."""
        return {}

    def configure_callbacks(self) -> list[pl.Callback]:
        return [DataMoments(), ResumeChanges()]

    # ----------------------------------------------------------------------------------------------
    # Training.
    @property
    def out_state(self) -> int:
        """Coordinates the network predicts for (1: the velocity part, or all of an overdamped state)."""
        return 1

    @property
    def eval_net(self) -> nn.Module:
        return ema_lib.evaluated(self.net, self.net_ema)

    @staticmethod
    def _eps(net: nn.Module, a: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The network's output at c_noise = 999 t, with the condition when there is one."""
        return net(a, 999.0 * t) if cond is None else net(a, 999.0 * t, cond)

    def _noise_scale(self, a: Tensor, t: Tensor) -> Tensor:
        """The path's noise_scale at t in a's dtype, from one time where the samplers pass one time per call."""
        tt = t[:1] if bool((t == t[0]).all()) else t
        return self.process.noise_scale(tt).to(a.dtype)

    def _sample_times(self, n: int) -> tuple[Tensor, dict[str, Tensor] | None]:
        p = self.process
        if self.hparams.t_levels:
            levels = torch.linspace(p.t_eps, p.t_max, self.hparams.t_levels, device=self.device)
            idx = torch.randint(0, len(levels), (n,), device=self.device)
            return levels[idx], {k: v[idx] for k, v in p.table(levels).items()}
        return p.t_eps + (p.t_max - p.t_eps) * torch.rand(n, device=self.device), None

    def score_loss(self, x0: Tensor, net: nn.Module, cond: Tensor | None = None) -> Tensor:
        """The family's objective on a batch of data: times drawn, a_t drawn from the path, the network's output."""
        t, coeffs = self._sample_times(x0.shape[0])
        a, target, _ = self.process.perturb(self.to_frame(x0), t, coeffs, full=self.out_state == 2)
        return self.objective(self.process, self._eps(net, a, t, cond), target, t)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch, self.net)
        if not torch.isfinite(loss):
            then = ("the checkpoints saved so far are untouched: resume from the newest with a lower lr"
                    if self._checkpoint_exists() else "no checkpoint was written yet, so there is nothing to resume: "
                    "start the fit again with a lower lr")
            raise FloatingPointError(f"the score loss is {loss.item()} at step {self.global_step}; training stopped "
                                     f"before this step changed any weight, and {then} (or check the data for "
                                     "NaN/inf).")
        self.log_train_step({"train/loss": loss})
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # A fixed generator so that validation losses are comparable over training.
        state = torch.get_rng_state()
        torch.manual_seed(self.hparams.seed + batch_idx)
        loss = self.batch_loss(batch, self.eval_net)
        torch.set_rng_state(state)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                 foreach=True)  # one call per operation over all parameters (the same numbers)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        ema_lib.update_ema([(self.net, self.net_ema)])  # a checkpoint taken after the step includes the update

    # ----------------------------------------------------------------------------------------------
    # Sampling.
    @contextlib.contextmanager
    def sampling_mode(self, net: nn.Module):
        """Run ``net`` in eval mode and in float32 (no autocast) for sampling, restoring its mode afterwards."""
        was_training = net.training
        net.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                yield net
        finally:
            net.train(was_training)

    @torch.no_grad()
    def generate(self, n: int, sampler: str | None = None, steps: int | None = None, return_trajectory: bool = False,
                 seed: int | None = None, progress: bool = False, cond: Tensor | None = None) -> SampleResult:
        """n samples with the EMA network (conditioned on ``cond`` (n, ...) when given), in float32 even under
        mixed precision, in the data's coordinates; returns the sampler's SampleResult."""
        gen = torch.Generator(self.device).manual_seed(self.hparams.seed if seed is None else seed)
        with self.sampling_mode(self.eval_net) as net:
            opts = self.sampler_options(net, cond, sampler)
            res = run_sampler(sampler or self.hparams.sampler, self.process, lambda a, t: self.score(a, t, net, cond),
                              n, steps or self.hparams.sample_steps, gen, self.device, return_trajectory, progress,
                              **opts)
        if self.has_frame:  # back from the process's frame to the data's
            res.state = self.state_from_frame(res.state)
            if res.trajectory is not None:
                res.trajectory = self.state_from_frame(res.trajectory.flatten(0, 1)).reshape(res.trajectory.shape)
        return res

    # ----------------------------------------------------------------------------------------------
    # Checkpoint.
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))
        self.data_start.loaded()  # rho, the frame and the data scale come from the checkpoint
        ema_lib.match_ema(checkpoint.get("state_dict", {}), self.net_ema is not None)
