"""The LightningModule every task shares: score loss, EMA, and the SA stage machine for A."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from vsmd.datamodules.moments import DataMoments
from vsmd.diffusion import ZB_MODES, VariationalScoreSA, make_process
from vsmd.diffusion import sample as run_sampler
from vsmd.diffusion.agm import AGM_T_MAX
from vsmd.diffusion.ei import EI_GRIDS
from vsmd.diffusion.grids import check_t_stop
from vsmd.diffusion.process import MOMENTUM
from vsmd.diffusion.registry import check_sampler
from vsmd.diffusion.rotation import Rotation
from vsmd.diffusion.variational import SA_SAMPLERS
from vsmd.models import ema as ema_lib
from vsmd.settings import SettingsPolicy

RHO_INITS = ("data", "zero")
ROTATIONS = ("none", "pca", "learned")
PARAMETRISATIONS = ("eps_v", "eps")
NO_DATA_ESTIMATE = ("the 'ei' sampler and t_stop need the data estimate of the marginal kernel, which a momentum "
                    "model trained with init_velocity 'dsm' does not have; use sampler heun, em or sscs without "
                    "t_stop, or train with --model.init_args.init_velocity hsm")


class PhaseSpaceModule(pl.LightningModule):
    """What every vsmd task module shares, and the base class ``vsmd fit/test/predict`` accept: the run folder, the
    TensorBoard writer and the sampling progress setting (the EMA copies come from vsmd.models.ema). VSMDModule (score models and the AGM bridge) and
    TrajectoryBridge (trajectory inference) build on it."""

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

    def tensorboard(self):
        """The TensorBoard SummaryWriter on rank 0, or None."""
        if self.trainer.is_global_zero and isinstance(self.logger, pl.loggers.TensorBoardLogger):
            return self.logger.experiment
        return None


class VSMDModule(PhaseSpaceModule):
    """Score-based generative model on a (momentum) forward process with adaptive variational scores.

    Subclasses provide ``build_net()`` and the task's evaluation. Evaluation and sampling use the EMA weights.

    Args:
        process: forward process: vp, vsdm (overdamped), cld, uld, vscld, vsuld (momentum).
        beta: constant rate beta, or beta_max of a linear schedule.
        beta_schedule: "constant", "linear" (from beta_min at t=0 to beta at t=1), or "auto" (linear for vp).
        beta_min: start of a linear schedule.
        gamma: friction (gamma = 2 makes A = 0, R = 1 exactly CLD).
        damping: R, the squared damping ratio, in (0, 1]: 1 for cld/vscld, < 1 for uld/vsuld (None: 1 for
            cld/vscld, the paper's 0.7 for uld/vsuld).
        init_velocity: "hsm" (Sigma_0 = diag(0, s^2), lower variance) or "dsm" (sampled v0).
        v0_var: s^2, the variance of the initial velocity.
        t_eps: smallest diffusion time used in training and sampling.
        t_levels: train on this many fixed times in [t_eps, 1] with a cached kernel (0: continuous t).
        lr: learning rate of the score network (Adam).
        weight_decay: AdamW weight decay of the score network.
        ema_decay: EMA decay of the score-network weights used for evaluation (0 disables EMA).
        ema_warmup: use decay min(ema_decay, (1 + n) / (10 + n)) at update n, so that short runs do not
            evaluate a network dominated by its initial weights.
        sa_every: N_b, score-network steps between two SA stages on A.
        sa_steps: N_f, A-steps per SA stage (on one cache of simulated backward paths).
        sa_paths: K, backward paths simulated per SA stage.
        sa_points: time points of the backward simulation (None: 100 for "em", as the VSMD code, and 50 for
            "heun", the same number of network calls).
        sa_sampler: how the SA stage simulates backward paths: "heun" (probability-flow ODE: the same
            marginals, second order, no drift of A from discretisation bias) or "em" (Euler-Maruyama on the
            backward SDE, VSMD code).
        sa_lr: step size of the A optimiser (Adam).
        sa_lr_decay: multiply the A step size by this ...
        sa_lr_decay_every: ... every this many A-steps.
        sa_warmup: A is frozen for the first this-many network steps.
        sa_cooldown: A is frozen for the last this-many network steps (needs trainer.max_steps).
        zb_mode: backward policy in the SA loss: "fbsde" (paper Eq. 13: its fixed points are the A for which
            the forward process forgets the data) or "full_score" (VSMD code: it pulls A back towards 0).
        zeta: weight of the cross term z_f . z_b.
        rho_init: start of A: "data" (at the start of fit, per dimension the least-energy A for which the
            forward process forgets the data at T, from the training data's mean and variance) or "zero"
            (A = 0, the paper).
        rho_init_kl: the KL budget (nats per dimension) of "forgets" in rho_init "data": the KL between the
            forward marginal at T and the prior, with the data taken as Gaussian. It leaves a prior mismatch of
            about sqrt(KL) in the sd at T: 0.01 cost the toys' stretched axes 4-6% of their spread with the exact
            score, 0.003 at most 0.4% (benchmarks/results/sa_analysis.md, section 4).
        rho_init_samples: training samples the data moments for rho_init "data" are computed on.
        sampler: evaluation sampler: "heun" (probability-flow ODE), "sscs" (splitting SDE), "em".
        sample_steps: grid points of the evaluation sampler (NFE: 2n - 1 for heun, n - 1 for em, sscs and ei).
        seed: seed of the SA simulations and evaluation sampling (independent of training randomness).
        parametrisation: what the network predicts: "eps_v" (the velocity part of the Cholesky eps; the score
            and the "ei" sampler need no more) or "eps" (eps_x too, for the full Tweedie estimate
            ``process.data_estimate``). Overdamped processes have one coordinate: both are the same.
        ei_order: order (1 to 3) of the multistep exponential integrator ("ei" sampler); 3 (on the quadratic grid)
            matches Heun-39 on forecasting at NFE 20; the toys default to 2 on the uniform grid (ToyVSMD).
        ei_grid: its time grid: "quadratic" (dense at the data end), "uniform" or "log".
        t_stop: stop every sampler at this time and return the data estimate there (None: run to t_eps).
        rotation: the frame the (diagonal) process runs in: "none" (the data's coordinates), "pca" (the
            principal axes of the training data, fixed at the start of fit and kept in the checkpoint) or
            "learned" (starts at the principal axes; the SA stages then refine Q with A, through Q = Q0 exp(K),
            K skew-symmetric: vsmd.diffusion.rotation). A diagonal A in a rotated frame is the full
            A = Q diag(alpha) Q^T in the data's coordinates, with the same exact kernels; it follows stretches off
            the coordinate axes. Vector data (the toys, forecasting) only.
        agm_p: process "agm" (the AGM bridge, vsmd.diffusion.agm): the noise scale p of g(t) = p (1 - t).
        agm_k: process "agm": the correlation -k of (x0, v0) at the noise end. AGM trains the network on the
            bridge's force (beta, gamma, damping, init_velocity, the SA and rho options do not apply), samples with
            sampler "ei" (its multistep integrator, ``ei_order``, grid "quadratic" or "uniform") and returns the
            hop's estimate of the data at ``t_stop`` (AGM's time, noise 0 -> data 1; None: 0.999).
        agm_scale: process "agm": "none" (the paper: the bridge runs on the data as they are) or "data" (on the
            data divided per dimension by its standard deviation, from the training data at the start of fit and
            kept in the checkpoint; samples are scaled back). AGM's start N(0, 1), noise p and hop times suit data
            of unit scale: with the exact force on Gaussian data of sd 8 the sampler keeps 63% of the spread at NFE
            10 against 100% at sd 1 (benchmarks/results/agm.md).
        guide: process "agm", vector data: velocity guidance toward this point (one value per data dimension) in
            sampling (test, predict): in the first quarter of the steps v is redrawn from the bridge's
            p(v | x; x1 = guide); the network is not changed. None: unguided.
    """

    supports_rotation = False  # vector-data tasks whose samples leave the process's frame (toy, forecasting)
    SETTINGS = SettingsPolicy(  # each option's role on resume and at test/predict (vsmd.settings)
        weights=("process", "beta", "beta_schedule", "beta_min", "gamma", "damping", "init_velocity", "v0_var", "t_eps",
                 "parametrisation", "rotation", "agm_p", "agm_k", "agm_scale"),
        resume=("lr", "weight_decay", "ema_decay", "t_levels", "sa_every", "sa_steps", "sa_paths", "sa_points",
                "sa_sampler", "sa_lr", "sa_lr_decay", "sa_lr_decay_every", "sa_warmup", "sa_cooldown", "zb_mode",
                "zeta"),
        start=("ema_warmup", "rho_init", "rho_init_kl", "rho_init_samples"),
        evaluation=("sampler", "sample_steps", "seed", "ei_order", "ei_grid", "t_stop", "guide"))

    def __init__(
        self,
        process: str = "vsuld",
        beta: float = 5.0,
        beta_schedule: str = "auto",
        beta_min: float = 0.1,
        gamma: float = 2.0,
        damping: float | None = None,
        init_velocity: str = "hsm",
        v0_var: float = 1.0,
        t_eps: float = 1e-3,
        t_levels: int = 1000,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = False,
        sa_every: int = 100,
        sa_steps: int = 5,
        sa_paths: int = 256,
        sa_points: int | None = None,
        sa_sampler: str = "heun",
        sa_lr: float = 1e-2,
        sa_lr_decay: float = 0.99,
        sa_lr_decay_every: int = 100,
        sa_warmup: int = 0,
        sa_cooldown: int = 0,
        zb_mode: str = "fbsde",
        zeta: float = 1.0,
        rho_init: str = "data",
        rho_init_kl: float = 0.003,
        rho_init_samples: int = 4096,
        sampler: str = "heun",
        sample_steps: int = 50,
        seed: int = 0,
        parametrisation: str = "eps_v",
        ei_order: int = 3,
        ei_grid: str = "quadratic",
        t_stop: float | None = None,
        rotation: str = "none",
        agm_p: float = 3.0,
        agm_k: float = 0.2,
        guide: list[float] | None = None,
        agm_scale: str = "none",
    ) -> None:
        super().__init__()
        check_sampler(process, sampler)
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
        if parametrisation == "eps" and init_velocity != "hsm" and process in MOMENTUM:
            raise ValueError("parametrisation 'eps' needs init_velocity 'hsm'")
        if process in MOMENTUM and init_velocity != "hsm" and (sampler == "ei" or t_stop is not None):
            raise ValueError(NO_DATA_ESTIMATE)  # before training, not at test
        if ei_order not in (1, 2, 3) or ei_grid not in EI_GRIDS:
            raise ValueError(f"need ei_order in 1..3 and ei_grid in {EI_GRIDS}, got {ei_order}, {ei_grid!r}")
        if process == "agm":
            if rotation != "none":
                raise ValueError("process agm has no variational scores to rotate: use rotation: none")
            if ei_grid not in ("quadratic", "uniform"):
                raise ValueError(f"process agm needs ei_grid quadratic or uniform, got {ei_grid!r}")
        check_t_stop(t_stop, t_eps, AGM_T_MAX if process == "agm" else 1.0, bridge=process == "agm")
        if agm_scale not in ("none", "data") or (agm_scale == "data" and process != "agm"):
            raise ValueError(f"agm_scale must be 'none' or 'data' (process agm only), got {agm_scale!r} for process "
                             f"{process!r}")
        if guide is not None and (process != "agm" or len(self.data_shape()) != 1
                                  or len(guide) != self.data_shape()[0]):
            raise ValueError(f"guide (velocity guidance) needs process agm and one value per data dimension "
                             f"{tuple(self.data_shape())}, got process {process!r} and {guide!r}")
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
        if zb_mode not in ZB_MODES:
            raise ValueError(f"zb_mode must be one of {ZB_MODES}, got {zb_mode!r}")
        if sa_sampler not in SA_SAMPLERS:
            raise ValueError(f"sa_sampler must be one of {SA_SAMPLERS}, got {sa_sampler!r}")
        if rho_init not in RHO_INITS:
            raise ValueError(f"rho_init must be one of {RHO_INITS}, got {rho_init!r}")
        if not rho_init_kl > 0 or rho_init_samples < 2:
            raise ValueError(f"need rho_init_kl > 0 (a KL budget in nats) and rho_init_samples >= 2, got "
                             f"{rho_init_kl} and {rho_init_samples}")
        if sa_points is not None and sa_points < 2:
            raise ValueError(f"sa_points must be >= 2, got {sa_points}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if sa_every < 1 or t_levels < 0 or sample_steps < 2:
            raise ValueError(f"need sa_every >= 1, t_levels >= 0, sample_steps >= 2; got {sa_every}, {t_levels}, "
                             f"{sample_steps}")
        self.save_hyperparameters()
        self.process = make_process(process, self.data_shape(), beta, beta_schedule, beta_min, gamma, damping,
                                    init_velocity, v0_var, t_eps, agm_p, agm_k)
        self.bridge = bool(getattr(self.process, "bridge", False))  # AGM: the network predicts a force
        if rotation != "none":
            shape = self.data_shape()
            if not self.supports_rotation or len(shape) != 1:
                raise ValueError(f"rotation {rotation!r} is available for vector data (the toy and forecasting "
                                 f"models) only; {type(self).__name__} (data shape {tuple(shape)}) needs rotation: "
                                 "none. For images a full d x d rotation (d = 3072) would be too large: its PCA "
                                 "alone needs a 3072 x 3072 covariance, and a diagonal A per pixel already adapts "
                                 "each pixel's rate.")
            self.register_buffer("frame", torch.eye(shape[0]))  # Q: frame coordinates are x @ Q (= Q^T x)
        else:
            self.frame = None
        self.frame_rotation = None  # rotation "learned": Q = Q0 exp(K); ``frame`` holds its current value
        if rotation == "learned":
            if not self.process.adaptive:
                raise ValueError(f"rotation 'learned' is refined by the SA stages, which process {process!r} does "
                                 "not have; use an adaptive process (vsdm, vscld, vsuld) or rotation: pca")
            if self.data_shape()[0] < 2:
                raise ValueError("rotation 'learned' needs data with at least 2 dimensions; use rotation: none")
            self.frame_rotation = Rotation(self.data_shape()[0])
        self._frame_initialised = False
        if agm_scale == "data":  # per-dimension sd; the process sees x / x_scale
            self.register_buffer("x_scale", torch.ones(self.data_shape()))
        else:
            self.x_scale = None
        self._scale_initialised = False
        self.net = self.build_net()
        self.net_ema = ema_lib.make_ema(self.net, ema_decay, ema_warmup)
        if sa_points is None:
            sa_points = 100 if sa_sampler == "em" else 50
        self.sa = (VariationalScoreSA(self.process, sa_lr, sa_steps, sa_paths, sa_points, zb_mode, zeta, sa_lr_decay,
                                      sa_lr_decay_every, sampler=sa_sampler, rotation=self.frame_rotation)
                   if self.process.adaptive else None)
        self._rho_initialised = False  # set once the data-informed start is done or a checkpoint is loaded
        self._sa_done_at = -1  # global step of the last SA stage (guards against a double stage)
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
        """The score loss of a batch (conditional tasks encode their condition here)."""
        return self.score_loss(self.batch_to_x0(batch), net)

    def stats_x0(self, batch: Any) -> Tensor:
        """The data x0 (B, *data_shape) of a training batch, for the data moments of rho_init "data"."""
        return self.batch_to_x0(batch)

    def sa_score_fn(self, batch: Any, net: nn.Module, generator: torch.Generator):
        """The score function the SA stage simulates backward paths with (conditional tasks pick conditions)."""
        return lambda a, t: self.score(a, t, net)

    # ----------------------------------------------------------------------------------------------
    # Score.
    @property
    def out_state(self) -> int:
        """Coordinates the network predicts eps for: 2 (x and v) for parametrisation "eps" of a momentum process."""
        return 2 if self.hparams.get("parametrisation", "eps_v") == "eps" and self.process.momentum else 1

    @property
    def eval_net(self) -> nn.Module:
        return ema_lib.evaluated(self.net, self.net_ema)

    def score(self, a: Tensor, t: Tensor, net: nn.Module | None = None, cond: Tensor | None = None) -> Tensor:
        """s_theta(a, t[, cond]) = -eps_hat / noise_scale(t) (spec section 2)."""
        net = net if net is not None else self.eval_net
        tt = t[:1] if bool((t == t[0]).all()) else t  # the samplers pass one time per call
        scale = self.process.noise_scale(tt).to(a.dtype)
        if self.bridge:  # AGM: the samplers integrate the force F = s(t) * output
            return self._eps(net, a, t, cond) * scale
        return -self._eps_v(net, a, t, cond) / scale  # score_v = -(L^{-T} eps)_v = -eps_v / L_vv

    def denoise(self, a: Tensor, t: Tensor, net: nn.Module | None = None, cond: Tensor | None = None) -> Tensor:
        """The data estimate the "ei" sampler and t_stop use: Tweedie's E[x0 | a_t] for overdamped processes, its
        v row (``flow_estimate``, from eps_v alone) for momentum processes."""
        net = net if net is not None else self.eval_net
        eps_v = self._eps_v(net, a, t, cond)
        if not self.process.momentum:
            return self.process.data_estimate(a, t, eps_v)
        return self.process.flow_estimate(a, t, eps_v)

    def _eps_v(self, net: nn.Module, a: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The velocity part of the network's eps (all of it, except for parametrisation "eps")."""
        eps = self._eps(net, a, t, cond)
        return eps.chunk(2, dim=1)[1] if self.out_state == 2 else eps

    def sampler_options(self, net: nn.Module, cond: Tensor | None = None, sampler: str | None = None) -> dict[str, Any]:
        """Keyword arguments of vsmd.diffusion.sample for ``sampler`` (default: the configured one): the EI settings,
        t_stop (for the configured sampler only) and the data estimate where ei or t_stop needs it."""
        h = self.hparams
        name = sampler or h.sampler
        opts: dict[str, Any] = {"ei_order": h.get("ei_order", 3), "ei_grid": h.get("ei_grid", "quadratic"),
                                "t_stop": h.get("t_stop") if name == h.sampler else None}
        if self.bridge:  # the hop comes from the force itself
            if h.get("guide") is not None:
                opts["guide"] = self.to_frame(torch.tensor(h.guide, dtype=torch.float32, device=self.device))
            return opts
        if name == "ei" or opts["t_stop"] is not None:
            if self.process.momentum and self.hparams.get("init_velocity", "hsm") != "hsm":
                raise ValueError(NO_DATA_ESTIMATE)
            opts["denoise_fn"] = lambda a, t: self.denoise(a, t, net, cond)
        return opts

    @staticmethod
    def _eps(net: nn.Module, a: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The network's eps_v prediction at c_noise = 999 t, with the condition when there is one."""
        return net(a, 999.0 * t) if cond is None else net(a, 999.0 * t, cond)

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
                 seed: int | None = None, progress: bool = False, cond: Tensor | None = None):
        """n samples with the EMA network (conditioned on ``cond`` (n, ...) when given), in float32 even under
        mixed precision; returns the sampler's SampleResult."""
        gen = torch.Generator(self.device).manual_seed(self.hparams.seed if seed is None else seed)
        with self.sampling_mode(self.eval_net) as net:
            opts = self.sampler_options(net, cond, sampler)
            res = run_sampler(sampler or self.hparams.sampler, self.process, lambda a, t: self.score(a, t, net, cond),
                              n, steps or self.hparams.sample_steps, gen, self.device, return_trajectory, progress,
                              **opts)
        if self.frame is not None or self.x_scale is not None:  # back from the process's frame to the data's
            res.state = self.state_from_frame(res.state)
            if res.trajectory is not None:
                res.trajectory = self.state_from_frame(res.trajectory.flatten(0, 1)).reshape(res.trajectory.shape)
        return res

    # ----------------------------------------------------------------------------------------------
    # The frame of the process (rotation "pca"): x_frame = x @ Q, and back with Q^T.
    def to_frame(self, x: Tensor) -> Tensor:
        if self.x_scale is not None:
            x = x / self.x_scale.to(x.dtype)
        return x if self.frame is None else x @ self.frame.to(x.dtype)

    def from_frame(self, x: Tensor) -> Tensor:
        x = x if self.frame is None else x @ self.frame.to(x.dtype).T
        return x if self.x_scale is None else x * self.x_scale.to(x.dtype)

    def state_from_frame(self, a: Tensor) -> Tensor:
        """A state (x[, v]) of the process's frame in the data's coordinates (x and v rotate alike)."""
        return self.process.join(*(self.from_frame(z) for z in self.process.split(a)))

    def frame_angle(self) -> float:
        """The angle (degrees) of the frame's first axis in the data's plane (2-D data)."""
        return math.degrees(math.atan2(float(self.frame[1, 0]), float(self.frame[0, 0])))

    @staticmethod
    def principal_axes(cov: Tensor) -> Tensor:
        """Q whose columns are the eigenvectors of a covariance, by decreasing variance; each column's largest
        entry is made positive (a symmetric matrix, not a drift: eigh is safe here)."""
        evals, vecs = torch.linalg.eigh(cov.to(torch.float64))
        vecs = vecs[:, torch.argsort(evals, descending=True)]
        idx = vecs.abs().argmax(0)
        return vecs * torch.sign(vecs[idx, torch.arange(vecs.shape[1])])

    # ----------------------------------------------------------------------------------------------
    # Score loss.
    def _sample_times(self, n: int) -> tuple[Tensor, dict[str, Tensor] | None]:
        p = self.process
        if self.hparams.t_levels:
            levels = torch.linspace(p.t_eps, p.t_max, self.hparams.t_levels, device=self.device)
            idx = torch.randint(0, len(levels), (n,), device=self.device)
            return levels[idx], {k: v[idx] for k, v in p.table(levels).items()}
        return p.t_eps + (p.t_max - p.t_eps) * torch.rand(n, device=self.device), None

    def score_loss(self, x0: Tensor, net: nn.Module, cond: Tensor | None = None) -> Tensor:
        """||eps_hat - eps_v||^2 summed over dimensions, averaged over the batch (AGM: the normalised force, each
        sample weighted by 1 / (1 - t))."""
        t, coeffs = self._sample_times(x0.shape[0])
        a, eps, _ = self.process.perturb(self.to_frame(x0), t, coeffs, full=self.out_state == 2)
        eps_hat = self._eps(net, a, t, cond)
        err = (eps_hat - eps).pow(2).flatten(1).sum(1)
        return (err * self.process.loss_weight(t)).mean() if self.bridge else err.mean()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch, self.net)
        if not torch.isfinite(loss):
            then = ("the checkpoints saved so far are untouched: resume from the newest with a lower lr"
                    if self._checkpoint_exists() else "no checkpoint was written yet, so there is nothing to resume: "
                    "start the fit again with a lower lr")
            raise FloatingPointError(f"the score loss is {loss.item()} at step {self.global_step}; training stopped "
                                     f"before this step changed any weight, and {then} (or check the data for "
                                     "NaN/inf).")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # A fixed generator so that validation losses are comparable over training.
        state = torch.get_rng_state()
        torch.manual_seed(self.hparams.seed + batch_idx)
        loss = self.batch_loss(batch, self.eval_net)
        torch.set_rng_state(state)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        ema_lib.update_ema([(self.net, self.net_ema)])  # a checkpoint taken after the step includes the update

    # ----------------------------------------------------------------------------------------------
    # The data-informed start of A.
    @torch.no_grad()
    def data_moments(self, full: bool = False) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and variance (float64, data_shape) of about rho_init_samples training samples (from
        the DataModule's moment_batches), averaged over DDP ranks; with ``full``, the mean and the covariance
        matrix of vector data."""
        moment_batches = getattr(self, "_moment_batches", None)  # the DataModule's, from start_from_data
        if moment_batches is None:
            raise RuntimeError("rho_init 'data' needs a DataModule to compute the data moments; pass one to "
                               "fit, or set model rho_init: zero")
        n, s1, s2 = 0, 0.0, 0.0
        for batch in moment_batches():
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            x0 = self.stats_x0(batch).to(torch.float64)
            outer = x0.T @ x0 if full else (x0 * x0).sum(0)
            n, s1, s2 = n + len(x0), s1 + x0.sum(0), s2 + outer
            if n >= self.hparams.rho_init_samples:
                break
        if n < 2:
            raise RuntimeError("rho_init 'data': the training data gave fewer than 2 samples")
        mean, second = s1 / n, s2 / n
        if self.trainer.world_size > 1:
            mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            second = self.trainer.strategy.reduce(second, reduce_op="mean")
        if not (torch.isfinite(mean).all() and torch.isfinite(second).all()):
            raise ValueError("the training data contain NaN or inf: the data moments for rho_init 'data' are not "
                             "finite; check the data")
        if full:
            return mean, second - torch.outer(mean, mean)
        return mean, (second - mean * mean).clamp_min(0.0)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [DataMoments()]  # calls start_from_data with the DataModule's moment_batches at the start of a fit

    def start_from_data(self, moment_batches: Callable[[], Iterable] | None) -> None:
        """At the start of a fit, from the DataModule's ``moment_batches`` (vsmd.datamodules.moments): the data
        scale of agm_scale "data", the frame of rotation "pca"/"learned" and the data-informed start of A, each
        unless the checkpoint of a resumed fit has it already."""
        self._moment_batches = moment_batches
        h = self.hparams
        if self.x_scale is not None and not self._scale_initialised:
            _, var = self.data_moments()
            self.x_scale.copy_(var.sqrt().clamp_min(1e-6).to(self.x_scale.dtype))
            self._scale_initialised = True
            desc = ", ".join(f"{float(v):.3g}" for v in self.x_scale.flatten()[:16])
            self.print(f"agm_scale data: the bridge runs on the data divided by their sd per dimension ({desc})")
        frame_moments = None
        if self.frame is not None and not (self._frame_initialised and self._rho_initialised):
            mean, cov = self.data_moments(full=True)
            if not self._frame_initialised:
                axes = self.principal_axes(cov)
                if self.frame_rotation is not None:
                    self.frame_rotation.reset(axes)
                self.frame.copy_(axes.to(self.frame.dtype))
            q = self.frame.to(torch.float64)
            frame_moments = (mean @ q, torch.diagonal(q.T @ cov @ q).clamp_min(0.0))  # the data in the frame
            if not self._frame_initialised:
                self._frame_initialised = True
                angle = f", first axis at {self.frame_angle():.1f} degrees" if q.shape[0] == 2 else ""
                desc = ", ".join(f"{float(v):.3g}" for v in frame_moments[1][:16])
                refined = " (at the start; the SA stages refine them)" if self.frame_rotation is not None else ""
                self.print(f"rotation {h.rotation}: the process runs on the principal axes of the data{angle}"
                           f"{refined}; variances {desc}")
        if self.sa is None or h.rho_init != "data" or self._rho_initialised:
            return
        mean, var = frame_moments if frame_moments is not None else self.data_moments()
        rho = self.process.forgetting_rho(mean, var, h.rho_init_kl)
        self.process.rho.data.copy_(rho)
        self._rho_initialised = True
        if rho.numel() <= 16:
            desc = "[" + ", ".join(f"{float(r):.2f}" for r in rho.flatten()) + "]"
        else:
            desc = f"min {float(rho.min()):.2f}, mean {float(rho.mean()):.2f}, max {float(rho.max()):.2f}"
        self.print(f"data-informed start of A (rho_init data, KL budget {h.rho_init_kl} nats per dimension): "
                   f"rho = {desc}")
        values = self.variational_scores_dict()
        if values and self.logger is not None:  # outside a training step: straight to the logger
            self.logger.log_metrics(values, step=self.global_step)

    # ----------------------------------------------------------------------------------------------
    # SA stages on A. They run at the start of a step so that a checkpoint written at the end of step S (by
    # ModelCheckpoint, before any module hook) resumes into the stage that step S + 1 begins with.
    def sa_due(self, step: int) -> bool:
        h = self.hparams
        if self.sa is None or step <= 0 or step < h.sa_warmup or step % h.sa_every:
            return False
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        return not (h.sa_cooldown and max_steps > 0 and step > max_steps - h.sa_cooldown)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if not self.sa_due(step) or self._sa_done_at == step:
            return
        self._sa_done_at = step
        seed = 1_000_003 * self.hparams.seed + 7919 * self.global_rank + self.sa.stages  # new paths per stage/rank
        gen = torch.Generator(self.device).manual_seed(seed)
        reduce = None
        if self.trainer.world_size > 1:
            reduce = lambda x: self.trainer.strategy.reduce(x, reduce_op="mean")  # noqa: E731
        with self.sampling_mode(self.net) as net:
            info = self.sa.stage(self.sa_score_fn(batch, net, gen), gen, reduce)
        self.log_dict({"sa/loss": info["loss_after"], "sa/grad_norm": info["grad_norm"], "sa/lr": self.sa.lr,
                       "sa/seconds_total": self.sa.seconds}, on_step=True, on_epoch=False)
        if self.frame_rotation is not None:  # the process now runs in the refined frame
            self.frame.copy_(self.frame_rotation.matrix().to(self.frame.dtype))
            self.log("sa/rotation_grad_norm", info["rotation_grad_norm"], on_step=True, on_epoch=False)
        self.log_variational_scores()  # A only changes here, so it is logged here rather than every step

    def variational_scores_dict(self) -> dict[str, float]:
        """rho, A_x and A_v per dimension for logging (empty for more than 16 dimensions)."""
        alpha, nu = self.process.variational_scores()
        if alpha.numel() > 16:
            return {}
        values = {f"rho/{i}": float(v) for i, v in enumerate(self.process.rho.detach().flatten())}
        if self.frame is not None and self.frame.shape[0] == 2:  # the direction of the frame's first axis
            values["frame/angle_deg"] = self.frame_angle()
        values |= {f"A_x/{i}": float(v) for i, v in enumerate(alpha.flatten())}
        if nu is not None:
            values |= {f"A_v/{i}": float(v) for i, v in enumerate(nu.flatten())}
        return values

    def log_variational_scores(self) -> None:
        """Log A per dimension (low-dimensional data); tasks with many dimensions override this."""
        values = self.variational_scores_dict()
        if values:
            self.log_dict(values, on_step=True, on_epoch=False)

    # ----------------------------------------------------------------------------------------------
    # Checkpoint: the SA optimiser, its schedule and counters (rho itself is in the state_dict).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.sa is not None:
            checkpoint["vsmd_sa"] = self.sa.state_dict() | {"done_at": self._sa_done_at}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))
        self._rho_initialised = True  # rho comes from the checkpoint
        self._frame_initialised = True  # and so does the frame (a buffer in the state dict)
        self._scale_initialised = True  # and the data scale of agm_scale "data"
        h, old = self.hparams, checkpoint.get("hyper_parameters", {})
        self._resume_changes = {k: (old[k], h[k]) for k in self.SETTINGS.resume
                                if k in old and k in h and old[k] != h[k]}
        self._match_ema(checkpoint.get("state_dict", {}))
        if self.sa is not None and "vsmd_sa" in checkpoint:
            self.sa.load_state_dict(checkpoint["vsmd_sa"])
            self._sa_done_at = int(checkpoint["vsmd_sa"].get("done_at", -1))
            self.sa.retune(h.sa_lr, h.sa_lr_decay, h.sa_lr_decay_every)  # the schedule of this run, not the old one

    def _match_ema(self, state: dict[str, Any]) -> None:
        """Let a resume switch EMA on or off (ema_decay 0 <-> > 0): Lightning loads the state dict strictly, so
        drop the checkpoint's EMA weights, or start the new EMA from the checkpoint's network."""
        has_ema = any(k.startswith("net_ema.") for k in state)
        if self.net_ema is None and has_ema:
            for k in [k for k in state if k.startswith("net_ema.")]:
                del state[k]
        elif self.net_ema is not None and not has_ema:
            state.update({f"net_ema.module.{k[4:]}": v.clone() for k, v in list(state.items()) if k.startswith("net.")})
            state["net_ema.n_averaged"] = torch.tensor(0, dtype=torch.long)  # the next update copies the network

    def on_train_start(self) -> None:
        """On resume: the network's step size is this run's lr (the optimiser state came with the old one), and
        the run says which training settings changed."""
        changes, self._resume_changes = getattr(self, "_resume_changes", {}), {}
        if "lr" in changes:
            old, new = changes["lr"]
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] *= new / old
                    if "initial_lr" in group:
                        group["initial_lr"] *= new / old
            for cfg in self.trainer.lr_scheduler_configs:
                cfg.scheduler.base_lrs = [b * new / old for b in cfg.scheduler.base_lrs]
        if "weight_decay" in changes:
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["weight_decay"] = changes["weight_decay"][1]
        if changes:
            self.print("resume with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                                                    changes.items()))

    # ----------------------------------------------------------------------------------------------
    def variational_summary(self) -> dict[str, Any]:
        """The learned A and the SA counters, for the JSON reports (empty for non-adaptive processes)."""
        if self.sa is None:
            return {}
        alpha, nu = self.process.variational_scores()
        out = {"A_x": alpha.tolist(), "A_v": nu.tolist() if nu is not None else None,
               "sa": {"stages": self.sa.stages, "steps": self.sa.steps, "seconds": self.sa.seconds}}
        if self.frame is not None:
            out["frame"] = self.frame.tolist()  # A is diagonal in these columns: A_full = Q diag(A) Q^T
        return out
