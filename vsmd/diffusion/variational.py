"""Stochastic-approximation updates of the diagonal variational scores A (spec section 5).

Per simulated backward state a = (x, v) at time t_n, with sigma^2 = g(t_n)^2, u = A_x x + A_v v (u = A x for
overdamped processes) and w = z_b / sigma, the loss density is

    Gamma = 1/2 |z_f|^2 + sigma div_v z_f + zeta z_f . z_b = sigma^2 [ 1/2 u^2 + A_v + zeta u w ]   (per dim)

and 𝓛(A) = sum_n h sum_i mean_b Gamma, minimised (the paper's leading minus sign is a typo). The divergence is
exact for a linear policy (no Hutchinson estimator). Given cached trajectories 𝓛 is quadratic in A, so the
whole stage reduces to a few per-dimension moments (``SAStats``) and the gradient is analytic.

With a learned rotation (vsmd.diffusion.rotation) A is diagonal in a frame Q: the stage keeps the full d x d
moments of the paths (simulated in the frame Q_sim), and 𝓛 in a turned frame Q is the diagonal 𝓛 on the
diagonals of r^T m r, r = Q_sim^T Q, so its gradient in Q is also analytic (``SAStats.rotation_grad``).

``zb_mode``: ``full_score`` (VSMD code) uses w = s_theta; ``fbsde`` (paper Eq. 13 literally, VSDM code) uses
w = s_theta - A_old a, with A_old the scores the trajectories were simulated with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vsmd.diffusion.process import ForwardProcess
from vsmd.diffusion.rotation import Rotation
from vsmd.diffusion.samplers import ScoreFn, euler_maruyama, heun

ZB_MODES = ("full_score", "fbsde")
SA_SAMPLERS = ("em", "heun")


@dataclass
class Trajectories:
    """Backward states and the scores evaluated on them, detached."""

    states: Tensor   # (N, K, n_state*C, ...)
    scores: Tensor   # (N, K, *data_shape)
    times: Tensor    # (N,)
    h: float         # time step between the N times
    alpha: Tensor    # A_x the paths were simulated with (float64, data_shape)
    nu: Tensor | None  # A_v likewise (None for overdamped)


@torch.no_grad()
def simulate(process: ForwardProcess, score_fn: ScoreFn, n_paths: int, n_points: int,
             generator: torch.Generator | None = None, device=None, sampler: str = "em") -> Trajectories:
    """K backward paths from the prior N(0, Sigma_T(A)) on ``n_points`` times T..t_eps.

    ``sampler="em"``: Euler-Maruyama on the backward SDE (VSMD code), states at the first n_points - 1 times.
    ``sampler="heun"``: Heun on the probability-flow ODE, states at the first n_points - 1 grid times (the
    Euler predictor states are not recorded), NFE 2 n_points - 3. The SA loss is a sum over times of
    expectations under the backward marginals, and the PF-ODE has the same marginals as the backward SDE,
    so both estimate the same loss. Heun is second order where EM is first order: with 100 EM points the
    time-discretisation bias moves the fbsde stage optimum by about +0.05 in rho per stage even with the
    exact score, which is the upward drift of A under fbsde (benchmarks/results/sa_analysis.md).
    """
    if sampler not in SA_SAMPLERS:
        raise ValueError(f"the SA sampler must be one of {SA_SAMPLERS}, got {sampler!r}")
    states, scores, times = [], [], []

    def record(a: Tensor, t: Tensor, s: Tensor) -> None:
        states.append(a)
        scores.append(s)
        times.append(t[0])

    def recording(a: Tensor, t: Tensor) -> Tensor:
        s = score_fn(a, t)
        record(a, t, s)
        return s

    grid = process.time_grid(n_points, device=device)
    prior = process.prior_sample(n_paths, generator, device)
    if sampler == "em":
        euler_maruyama(process, recording, prior, grid, generator)
    else:
        heun(process, score_fn, prior, grid, final_euler_to_zero=False, on_state=record)
    alpha, nu = process.variational_scores()
    return Trajectories(torch.stack(states), torch.stack(scores), torch.stack(times),
                        float(grid[0] - grid[1]), alpha, nu)


def _target(process: ForwardProcess, traj: Trajectories, zb_mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(w, x, v) in float64 with w = z_b / sigma for the chosen zb_mode."""
    parts = [p.to(torch.float64) for p in process.split(traj.states.flatten(0, 1))]
    x, v = parts[0], (parts[1] if process.momentum else None)
    w = traj.scores.flatten(0, 1).to(torch.float64)
    if zb_mode == "fbsde":
        w = w - traj.alpha * x - (traj.nu * v if v is not None else 0)
    elif zb_mode != "full_score":
        raise ValueError(f"zb_mode must be one of {ZB_MODES}, got {zb_mode!r}")
    n, k = traj.states.shape[:2]
    shape = (n, k, *x.shape[1:])
    return w.reshape(shape), x.reshape(shape), (v.reshape(shape) if v is not None else None)


def _time_weights(process: ForwardProcess, traj: Trajectories) -> Tensor:
    """h * sigma(t_n)^2, shape (N, 1, ..., 1) broadcasting over (N, *data_shape)."""
    wt = traj.h * process.diffusion_sq(traj.times.to(torch.float64))
    return wt.reshape(-1, *([1] * len(process.data_shape)))


def forward_loss(process: ForwardProcess, traj: Trajectories, alpha: Tensor, nu: Tensor | None,
                 zb_mode: str = "full_score", zeta: float = 1.0, r: Tensor | None = None) -> Tensor:
    """𝓛(A) evaluated directly on the trajectories; differentiable in (alpha, nu) and in ``r``, an orthogonal
    turn of the frame (A diagonal in the coordinates r^T a of the simulation frame's states). Used as a check."""
    w, x, v = _target(process, traj, zb_mode)
    if r is not None:
        w, x, v = w @ r, x @ r, (v @ r if v is not None else None)
    u = alpha * x + (nu * v if v is not None else 0)
    div = nu if v is not None else alpha  # A on the noise coordinate
    gamma = 0.5 * u * u + zeta * u * w + div
    return (_time_weights(process, traj) * gamma.mean(1)).sum()


@dataclass
class SAStats:
    """Weighted second moments sum_n h sigma_n^2 mean_b[.] of one stage: 𝓛 is quadratic in (A_x, A_v)."""

    mxx: Tensor
    mxv: Tensor | None
    mvv: Tensor | None
    bx: Tensor
    bv: Tensor | None
    n: Tensor          # sum_n h sigma_n^2 (scalar)
    zeta: float
    momentum: bool

    @classmethod
    def from_trajectories(cls, process: ForwardProcess, traj: Trajectories, zb_mode: str = "full_score",
                          zeta: float = 1.0, full: bool = False) -> "SAStats":
        """The moments of a stage; with ``full`` (vector data), the d x d matrices m_ij = sum_n h sigma^2
        mean_b[a_i b_j] that a rotation of the frame needs (``rotated``), with w first in the cross moments."""
        w, x, v = _target(process, traj, zb_mode)
        wt = _time_weights(process, traj)
        if full and len(process.data_shape) != 1:
            raise ValueError(f"full SA moments need vector data, got data shape {process.data_shape}")

        def m(a: Tensor, b: Tensor) -> Tensor:
            if full:
                return torch.einsum("n,nki,nkj->ij", wt.flatten(), a, b) / a.shape[1]
            return (wt * (a * b).mean(1)).sum(0)

        mom = v is not None
        return cls(m(x, x), m(x, v) if mom else None, m(v, v) if mom else None, m(w, x), m(w, v) if mom else None,
                   wt.sum(), zeta, mom)

    def reduce(self, fn: Callable[[Tensor], Tensor]) -> "SAStats":
        """Apply ``fn`` (e.g. a mean over distributed ranks) to every moment."""
        f = {k: (fn(getattr(self, k)) if isinstance(getattr(self, k), Tensor) else getattr(self, k))
             for k in self.__dataclass_fields__}
        return SAStats(**f)

    @property
    def full(self) -> bool:
        return self.mxx.dim() == 2

    def _pairs(self, alpha: Tensor, nu: Tensor | None) -> list[tuple[Tensor | None, Tensor]]:
        """(moment, coefficient c_i) with 𝓛 = sum over pairs of sum_i c_i moment_ii + n sum(div)."""
        if not self.momentum:
            return [(self.mxx, 0.5 * alpha**2), (self.bx, self.zeta * alpha)]
        return [(self.mxx, 0.5 * alpha**2), (self.mxv, alpha * nu), (self.mvv, 0.5 * nu**2),
                (self.bx, self.zeta * alpha), (self.bv, self.zeta * nu)]

    def rotated(self, r: Tensor) -> "SAStats":
        """The per-dimension moments in the frame turned by the orthogonal r (new coordinates r^T a): the
        diagonals of r^T m r of full moments. 𝓛 depends on the frame only through these."""
        if not self.full:
            raise ValueError("rotated() needs full moments (from_trajectories(..., full=True))")
        f = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("mxx", "mxv", "mvv", "bx", "bv"):
            if f[k] is not None:
                f[k] = torch.diagonal(r.T @ f[k] @ r)
        return SAStats(**f)

    def rotation_grad(self, r: Tensor, alpha: Tensor, nu: Tensor | None) -> Tensor:
        """d𝓛/dr for 𝓛 = sum_pairs tr(C r^T m r) (C = diag(c)): sum_pairs (m + m^T) r C."""
        out = torch.zeros_like(r)
        for m, c in self._pairs(alpha, nu):
            out = out + (m + m.T) @ r * c
        return out

    def loss(self, alpha: Tensor, nu: Tensor | None) -> Tensor:
        if self.full:
            return self.rotated(torch.eye(self.mxx.shape[0], dtype=self.mxx.dtype, device=self.mxx.device)).loss(
                alpha, nu)
        if not self.momentum:
            return (0.5 * alpha**2 * self.mxx + self.zeta * alpha * self.bx + self.n * alpha).sum()
        quad = alpha**2 * self.mxx + 2 * alpha * nu * self.mxv + nu**2 * self.mvv
        return (0.5 * quad + self.zeta * (alpha * self.bx + nu * self.bv) + self.n * nu).sum()

    def grad(self, alpha: Tensor, nu: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Analytic (d𝓛/dA_x, d𝓛/dA_v) (spec 5.3)."""
        if self.full:
            return self.rotated(torch.eye(self.mxx.shape[0], dtype=self.mxx.dtype, device=self.mxx.device)).grad(
                alpha, nu)
        if not self.momentum:
            return alpha * self.mxx + self.zeta * self.bx + self.n, None
        ga = alpha * self.mxx + nu * self.mxv + self.zeta * self.bx
        gv = alpha * self.mxv + nu * self.mvv + self.zeta * self.bv + self.n
        return ga, gv


class VariationalScoreSA:
    """The SA optimiser of rho: Adam with gradient clipping and a stepwise-decayed step size.

    ``stage(score_fn)`` simulates ``n_paths`` backward paths with the frozen score, then takes ``n_steps``
    Adam steps on rho over that cache. The step size is multiplied by ``lr_decay`` every ``lr_decay_every``
    A-steps. All of its state round-trips through ``state_dict``.
    """

    def __init__(self, process: ForwardProcess, lr: float = 1e-2, n_steps: int = 5, n_paths: int = 256,
                 n_points: int = 100, zb_mode: str = "full_score", zeta: float = 1.0, lr_decay: float = 0.99,
                 lr_decay_every: int = 100, clip: float = 1.0, sampler: str = "em",
                 rotation: Rotation | None = None) -> None:
        if zb_mode not in ZB_MODES:
            raise ValueError(f"zb_mode must be one of {ZB_MODES}, got {zb_mode!r}")
        if sampler not in SA_SAMPLERS:
            raise ValueError(f"the SA sampler must be one of {SA_SAMPLERS}, got {sampler!r}")
        for name, val in (("lr", lr), ("lr_decay", lr_decay)):
            if not val > 0:
                raise ValueError(f"{name} must be > 0, got {val}")
        for name, val in (("n_steps", n_steps), ("n_paths", n_paths), ("lr_decay_every", lr_decay_every)):
            if val < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        if n_points < 2:
            raise ValueError(f"n_points must be >= 2, got {n_points}")
        self.process = process
        self.n_steps, self.n_paths, self.n_points = n_steps, n_paths, n_points
        self.zb_mode, self.zeta, self.clip, self.sampler = zb_mode, zeta, clip, sampler
        self.rotation = rotation
        if rotation is not None and (len(process.data_shape) != 1 or rotation.d != process.data_shape[0]):
            raise ValueError(f"a learned rotation of dimension {rotation.d} does not fit data of shape "
                             f"{process.data_shape}")
        groups = [{"params": [process.rho]}] + ([{"params": [rotation.angles]}] if rotation is not None else [])
        self.optimizer = torch.optim.Adam(groups, lr=lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, lr_decay_every, lr_decay)
        self.stages = 0
        self.steps = 0
        self.seconds = 0.0  # wall time spent in stages (simulation and A-steps)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def stage(self, score_fn: ScoreFn, generator: torch.Generator | None = None,
              reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """One SA stage; returns the loss before/after and the gradient norm of its first step."""
        start = time.perf_counter()
        p = self.process
        traj = simulate(p, score_fn, self.n_paths, self.n_points, generator, device=p.rho.device,
                        sampler=self.sampler)
        rot = self.rotation
        stats = SAStats.from_trajectories(p, traj, self.zb_mode, self.zeta, full=rot is not None)
        if reduce is not None:
            stats = stats.reduce(reduce)
        q_sim = rot.matrix() if rot is not None else None  # the frame the paths were simulated in
        info: dict[str, float] = {}
        for i in range(self.n_steps):
            alpha, nu = p.variational_scores()
            r = q_sim.T @ rot.matrix() if rot is not None else None  # the current frame relative to q_sim
            diag = stats.rotated(r) if rot is not None else stats
            loss = diag.loss(alpha, nu)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the SA loss for A is {loss.item()} at A-step {self.steps}: the "
                                         "backward simulation diverged; lower sa_lr or check the score network")
            grads = [p.rho_grad(*diag.grad(alpha, nu)).to(p.rho.dtype)]
            if rot is not None:
                grads.append(rot.grad(q_sim @ stats.rotation_grad(r, alpha, nu)))
            norms = [g.norm() for g in grads]
            if not all(torch.isfinite(n) for n in norms):  # clipping would freeze A silently with a NaN step
                raise FloatingPointError(f"the SA gradient for A is not finite ({[n.item() for n in norms]}) at "
                                         f"A-step {self.steps}: the backward simulation diverged; A was not changed. "
                                         "Resume from the last checkpoint with a lower sa_lr (or lr), or check the "
                                         "score network")
            if self.clip:  # rho and the rotation's angles are clipped separately (different units)
                grads = [g * (self.clip / n) if n > self.clip else g for g, n in zip(grads, norms)]
            if i == 0:
                info |= {"loss_before": loss.item(), "grad_norm": norms[0].item()}
                if rot is not None:
                    info["rotation_grad_norm"] = norms[1].item()
            params = [p.rho] + ([rot.angles] if rot is not None else [])
            for param, g in zip(params, grads):
                param.grad = g
            self.optimizer.step()
            for param in params:
                param.grad = None
            p.clamp_rho()
            self.scheduler.step()
            self.steps += 1
        self.stages += 1
        final = stats.rotated(q_sim.T @ rot.matrix()) if rot is not None else stats
        info["loss_after"] = final.loss(*p.variational_scores()).item()
        self.seconds += time.perf_counter() - start
        return info

    def retune(self, lr: float, lr_decay: float, lr_decay_every: int) -> None:
        """Set a new step-size schedule (after ``load_state_dict``, on resume) as if it had been used from the start:
        the step size becomes lr * lr_decay ** (A-steps taken // lr_decay_every); Adam's moments are kept."""
        sched = self.scheduler
        sched.base_lrs, sched.gamma, sched.step_size = [lr] * len(self.optimizer.param_groups), lr_decay, lr_decay_every
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * lr_decay ** (sched.last_epoch // lr_decay_every)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "stages": self.stages, "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        # Optimizer.load_state_dict copies only shallowly: without the deep copy an in-memory round trip
        # would share Adam's moment tensors between the source and this copy.
        state = copy.deepcopy(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stages, self.steps = int(state["stages"]), int(state["steps"])
        self.seconds = float(state.get("seconds", 0.0))
