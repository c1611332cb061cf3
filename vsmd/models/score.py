"""VSMD and its relatives (VP, VSDM, CLD, ULD, VSCLD, VSULD): a score model on a linear forward diffusion, with the
adaptive variational scores A, the frame (rotation) and the data-informed start of A."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from vsmd.caller import option
from vsmd.diffusion import VariationalScoreSA, make_process
from vsmd.diffusion.grids import check_t_stop
from vsmd.diffusion.process import MOMENTUM
from vsmd.diffusion.registry import check_sampler
from vsmd.models.base import GenerativeModule
from vsmd.models.data_start import data_moments, describe
from vsmd.models.options import ProcessOptions, SAOptions, SamplingOptions, TrainingOptions, groups
from vsmd.models.sa_stages import SAStages
from vsmd.settings import SettingsPolicy


def no_data_estimate() -> str:
    """Why ei and t_stop are refused for a momentum model trained with init_velocity dsm, and what to change."""
    return ("the 'ei' sampler and t_stop need the data estimate of the marginal kernel, which a momentum model "
            "trained with init_velocity 'dsm' does not have; use sampler heun, em or sscs without t_stop, or train "
            f"with {option('model.init_velocity', 'hsm', training=True)}")


class VSMDModule(GenerativeModule):
    """Score-based generative model on a (momentum) forward process with adaptive variational scores.

    A task mixes in ``data_shape()``, ``build_net()`` and its evaluation (vsmd.models.base.GenerativeModule). The
    options come in self-checking groups (vsmd.models.options); the SA stages run in the SAStages callback
    (vsmd.models.sa_stages), the frame is vsmd.models.frame's, the data-informed start is below.

    Args:
        process: forward process: vp, vsdm (overdamped), cld, uld, vscld, vsuld (momentum). The AGM bridge is
            its own family: vsmd.models.agm.AGMModule.
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
    """

    SETTINGS = SettingsPolicy(  # each option's role on resume and at test/predict (vsmd.settings)
        weights=("process", "beta", "beta_schedule", "beta_min", "gamma", "damping", "init_velocity", "v0_var", "t_eps",
                 "parametrisation", "rotation"),
        resume=("lr", "weight_decay", "ema_decay", "t_levels", "sa_every", "sa_steps", "sa_paths", "sa_points",
                "sa_sampler", "sa_lr", "sa_lr_decay", "sa_lr_decay_every", "sa_warmup", "sa_cooldown", "zb_mode",
                "zeta"),
        start=("ema_warmup", "rho_init", "rho_init_kl", "rho_init_samples"),
        evaluation=("sampler", "sample_steps", "seed", "ei_order", "ei_grid", "t_stop"))

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
    ) -> None:
        super().__init__()
        proc, sa, sampling, training = groups(dict(locals()), ProcessOptions, SAOptions, SamplingOptions,
                                              TrainingOptions)
        check_sampler(process, sampler)
        momentum = process in MOMENTUM
        if parametrisation == "eps" and init_velocity != "hsm" and momentum:
            raise ValueError("parametrisation 'eps' needs init_velocity 'hsm'")
        if momentum and init_velocity != "hsm" and (sampler == "ei" or t_stop is not None):
            raise ValueError(no_data_estimate())  # before training, not at test
        check_t_stop(t_stop, t_eps, 1.0)
        self.save_hyperparameters()
        path = make_process(process, self.data_shape(), **proc.diffusion())
        if rotation != "none":
            shape = self.data_shape()
            if not self.supports_rotation or len(shape) != 1:
                raise ValueError(f"rotation {rotation!r} is available for vector data (the toy and forecasting "
                                 f"models) only; {type(self).__name__} (data shape {tuple(shape)}) needs rotation: "
                                 "none. For images a full d x d rotation (d = 3072) would be too large: its PCA "
                                 "alone needs a 3072 x 3072 covariance, and a diagonal A per pixel already adapts "
                                 "each pixel's rate.")
        if rotation == "learned":
            if not path.adaptive:
                raise ValueError(f"rotation 'learned' is refined by the SA stages, which process {process!r} does "
                                 "not have; use an adaptive process (vsdm, vscld, vsuld) or rotation: pca")
            if self.data_shape()[0] < 2:
                raise ValueError("rotation 'learned' needs data with at least 2 dimensions; use rotation: none")
        self.sa_options = sa
        self.build(path, training, sampling, rotation=rotation != "none", learned_rotation=rotation == "learned")
        self.sa = (VariationalScoreSA(self.process, sa.sa_lr, sa.sa_steps, sa.sa_paths, sa.points, sa.zb_mode,
                                      sa.zeta, sa.sa_lr_decay, sa.sa_lr_decay_every, sampler=sa.sa_sampler,
                                      rotation=self.frame_rotation)
                   if self.process.adaptive else None)

    def configure_callbacks(self) -> list[pl.Callback]:
        return super().configure_callbacks() + ([SAStages()] if self.sa is not None else [])

    def sa_score_fn(self, batch: Any, net: nn.Module, generator: torch.Generator):
        """The score function the SA stage simulates backward paths with (conditional tasks pick conditions)."""
        return lambda a, t: self.score(a, t, net)

    # ----------------------------------------------------------------------------------------------
    # Score and data estimate.
    @property
    def out_state(self) -> int:
        """Coordinates the network predicts eps for: 2 (x and v) for parametrisation "eps" of a momentum process."""
        return 2 if self.hparams.get("parametrisation", "eps_v") == "eps" and self.process.momentum else 1

    def score(self, a: Tensor, t: Tensor, net: nn.Module | None = None, cond: Tensor | None = None) -> Tensor:
        """s_theta(a, t[, cond]) = -eps_hat / noise_scale(t) (spec section 2)."""
        net = net if net is not None else self.eval_net
        return -self._eps_v(net, a, t, cond) / self._noise_scale(a, t)  # score_v = -(L^{-T} eps)_v = -eps_v / L_vv

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
        """The EI settings, t_stop (for the configured sampler only) and the data estimate where ei or t_stop
        needs it."""
        opts = super().sampler_options(net, cond, sampler)
        if (sampler or self.hparams.sampler) == "ei" or opts["t_stop"] is not None:
            if self.process.momentum and self.hparams.get("init_velocity", "hsm") != "hsm":
                raise ValueError(no_data_estimate())
            opts["denoise_fn"] = lambda a, t: self.denoise(a, t, net, cond)
        return opts

    # ----------------------------------------------------------------------------------------------
    # The data-informed start: the frame of rotation "pca"/"learned", then A.
    def start_from_data(self, moment_batches: Callable[[], Iterable] | None) -> None:
        h, done = self.hparams, self.data_start
        frame_moments = None
        if self.frame is not None and not (done.frame and done.rho):
            mean, cov = data_moments(self, moment_batches, h.rho_init_samples, full=True)
            if not done.frame:
                self.set_frame_axes(self.principal_axes(cov))
            q = self.frame.to(torch.float64)
            frame_moments = (mean @ q, torch.diagonal(q.T @ cov @ q).clamp_min(0.0))  # the data in the frame
            if not done.frame:
                done.frame = True
                angle = f", first axis at {self.frame_angle():.1f} degrees" if q.shape[0] == 2 else ""
                refined = " (at the start; the SA stages refine them)" if self.frame_rotation is not None else ""
                self.print(f"rotation {h.rotation}: the process runs on the principal axes of the data{angle}"
                           f"{refined}; variances {describe(frame_moments[1])}")
        if self.sa is None or h.rho_init != "data" or done.rho:
            return
        mean, var = (frame_moments if frame_moments is not None
                     else data_moments(self, moment_batches, h.rho_init_samples))
        rho = self.process.forgetting_rho(mean, var, h.rho_init_kl)
        self.process.rho.data.copy_(rho)
        done.rho = True
        if rho.numel() <= 16:
            desc = "[" + describe(rho, fmt=".2f") + "]"
        else:
            desc = f"min {float(rho.min()):.2f}, mean {float(rho.mean()):.2f}, max {float(rho.max()):.2f}"
        self.print(f"data-informed start of A (rho_init data, KL budget {h.rho_init_kl} nats per dimension): "
                   f"rho = {desc}")
        values = self.variational_scores_dict()
        if values and self.logger is not None:  # outside a training step: straight to the logger
            self.logger.log_metrics(values, step=self.global_step)

    # ----------------------------------------------------------------------------------------------
    # A, for the logs and the reports.
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

    def variational_summary(self) -> dict[str, Any]:
        if self.sa is None:
            return {}
        alpha, nu = self.process.variational_scores()
        out = {"A_x": alpha.tolist(), "A_v": nu.tolist() if nu is not None else None,
               "sa": {"stages": self.sa.stages, "steps": self.sa.steps, "seconds": self.sa.seconds}}
        if self.frame is not None:
            out["frame"] = self.frame.tolist()  # A is diagonal in these columns: A_full = Q diag(A) Q^T
        return out
