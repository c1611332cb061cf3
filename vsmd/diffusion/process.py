"""Forward processes: overdamped (vp, vsdm) and momentum (cld, uld, vscld, vsuld), one interface (``ForwardProcess``,
here); the two kinds are in ``vsmd.diffusion.forward``.

The state ``a`` is ``x`` for overdamped processes and ``cat(x, v, dim=1)`` for momentum ones; data is
``(B, *data_shape)``. Per-dimension coefficients have ``data_shape`` and broadcast over the batch.
The learned variational scores are one unconstrained ``rho`` per dimension (spec section 1.2):

* momentum: omega = e^rho, kappa = (2 sqrt(R)/gamma) e^(rho/2), c = gamma kappa (critical-damping transform,
  paper Eq. 14), alpha = (1 - omega)/(2 gamma) = A_x, nu = (1 - kappa)/2 = A_v;
* overdamped: the drift rate d = 1 - 2 alpha = e^rho, i.e. alpha = (1 - e^rho)/2 = A.

rho = 0 is A = 0 (CLD for R = 1, gamma = 2; ULD's drift for R < 1; the plain VP/VE-free OU for overdamped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vsmd.diffusion.grids import uniform_grid

PROCESSES = ("vp", "vsdm", "cld", "uld", "vscld", "vsuld")  # forward diffusions from the data
BRIDGES = ("agm",)  # phase-space bridges to the data (vsmd.diffusion.agm)
MOMENTUM = ("cld", "uld", "vscld", "vsuld")
ADAPTIVE = ("vsdm", "vscld", "vsuld")
INIT_VELOCITY = ("hsm", "dsm")
RHO_MIN, RHO_MAX = math.log(1e-3), math.log(1e3)


def pad_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) tensor to (B, 1, ..., 1) so it broadcasts against x of shape (B, *shape)."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class BetaSchedule:
    """beta(t) constant (``beta``) or linear from ``beta_min`` at t = 0 to ``beta`` at t = 1."""

    beta: float
    kind: str = "constant"
    beta_min: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear"):
            raise ValueError(f"beta_schedule must be 'constant' or 'linear', got {self.kind!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}; the forward process needs a positive rate")
        if self.kind == "linear" and not 0 < self.beta_min <= self.beta:
            raise ValueError(f"a linear schedule needs 0 < beta_min <= beta, got beta_min={self.beta_min}, "
                             f"beta={self.beta}")

    def __call__(self, t: Tensor) -> Tensor:
        if self.kind == "constant":
            return torch.full_like(t, self.beta)
        return self.beta_min + t * (self.beta - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        if self.kind == "constant":
            return self.beta * t
        return self.beta_min * t + 0.5 * t * t * (self.beta - self.beta_min)


class ForwardProcess(nn.Module):
    """Shared machinery: the schedule, the variational-score parameter ``rho``, time grids, kernel cache."""

    momentum: bool = False

    def __init__(self, name: str, data_shape: tuple[int, ...], schedule: BetaSchedule, adaptive: bool,
                 t_eps: float = 1e-3, t_max: float = 1.0) -> None:
        super().__init__()
        if not 0 < t_eps < t_max:
            raise ValueError(f"need 0 < t_eps < t_max, got t_eps={t_eps}, t_max={t_max}")
        self.name = name
        self.data_shape = tuple(int(s) for s in data_shape)
        self.schedule = schedule
        self.adaptive = adaptive
        self.t_eps, self.t_max = float(t_eps), float(t_max)
        # Not trained by the score loss: the SA stage sets .grad by hand (see vsmd.diffusion.variational).
        self.rho = nn.Parameter(torch.zeros(self.data_shape), requires_grad=False)
        self._cache: tuple[Tensor, Tensor, dict[str, Tensor]] | None = None

    # ----------------------------------------------------------------------------------------------
    # State layout.
    @property
    def n_state(self) -> int:
        return 2 if self.momentum else 1

    def split(self, a: Tensor) -> tuple[Tensor, ...]:
        return a.chunk(self.n_state, dim=1)

    def join(self, *parts: Tensor) -> Tensor:
        return torch.cat(parts, dim=1)

    def _check_data(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"data of shape {tuple(x.shape)} does not match the process's data shape "
                             f"(B, {', '.join(map(str, self.data_shape))}); check the model's data_dim")

    # ----------------------------------------------------------------------------------------------
    # Coefficients (float64 inside, returned in the dtype asked for).
    def beta(self, t: Tensor) -> Tensor:
        return self.schedule(t)

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)^2 of the noise coordinate (v for momentum, x for overdamped)."""
        raise NotImplementedError

    def coefficients(self, t: Tensor, dtype: torch.dtype = torch.float32, prior: bool = False) -> dict[str, Tensor]:
        """Kernel coefficients at times t (shape (n,)): a dict of tensors of shape (n, *data_shape).

        ``prior=True`` uses Sigma_0 = diag(0, s^2) whatever the initial-velocity mode, which is the marginal
        at x0 = 0 (the prior, spec section 3).
        """
        t64 = t.detach().to(torch.float64)
        big_b = self.schedule.integral(t64).reshape(-1, *([1] * len(self.data_shape)))
        out = self._coefficients64(big_b, prior)
        return {k: v.to(dtype) for k, v in out.items()}

    def _coefficients64(self, big_b: Tensor, prior: bool) -> dict[str, Tensor]:
        raise NotImplementedError

    def table(self, levels: Tensor) -> dict[str, Tensor]:
        """Coefficients on a fixed time grid, cached until rho or the grid changes."""
        rho = self.rho.detach()
        if (self._cache is None or self._cache[0].shape != levels.shape or not torch.equal(self._cache[0], levels)
                or not torch.equal(self._cache[1], rho)):
            self._cache = (levels.clone(), rho.clone(), self.coefficients(levels))
        return self._cache[2]

    def noise_scale(self, t: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        """The preconditioner: score = -eps_hat / noise_scale (L_vv for momentum, the std for overdamped)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # Variational scores.
    def variational_scores(self) -> tuple[Tensor, Tensor | None]:
        """(A_x, A_v) per dimension, float64; A_v is None for overdamped processes."""
        raise NotImplementedError

    def rho_grad(self, g_alpha: Tensor, g_nu: Tensor | None) -> Tensor:
        """Chain rule from (dL/dA_x, dL/dA_v) to dL/drho."""
        raise NotImplementedError

    @torch.no_grad()
    def clamp_rho(self) -> None:
        self.rho.clamp_(RHO_MIN, RHO_MAX)

    def prior_kl(self, mean: Tensor, var: Tensor, rho: Tensor | None = None) -> Tensor:
        """Per-dimension KL(q_T || prior) in nats, for data with per-dimension ``mean`` and ``var`` (data_shape)
        taken as Gaussian, at the variational scores ``rho`` (shape (..., *data_shape); default: the current).

        q_T is the forward marginal at T: mean m phi and covariance P + s^2 phi phi^T, where phi is the
        x0-column of the transition (p11, p21) (m_T for overdamped processes) and P the prior covariance
        Sigma_{T|0} (spec section 3). With q = phi^T P^-1 phi,

            KL = 1/2 [s^2 q - log(1 + s^2 q) + m^2 q].

        It measures how much of the data is left at T: with the exact score, a sampler started from the prior
        instead of q_T ends this far (in KL) from the data distribution (data processing inequality).
        """
        rho = self.rho.detach() if rho is None else rho
        rho = rho.to(torch.float64)
        big_b = self.schedule.integral(torch.tensor(self.t_max, dtype=torch.float64))
        q = self._forgetting_q(big_b, rho)
        s2q = var.to(q) * q
        return 0.5 * (s2q - torch.log1p(s2q) + mean.to(q) ** 2 * q)

    def _forgetting_q(self, big_b: Tensor, rho: Tensor) -> Tensor:
        """phi^T P^-1 phi at T (see ``prior_kl``), float64, shape of rho."""
        raise NotImplementedError

    @torch.no_grad()
    def forgetting_rho(self, mean: Tensor, var: Tensor, kl: float = 0.01, resolution: float = 0.01) -> Tensor:
        """The data-informed start of A: per dimension, the smallest rho >= 0 such that ``prior_kl`` <= ``kl``
        at rho and at every larger rho (on a grid of step ``resolution`` over [0, RHO_MAX]).

        rho (omega = e^rho) is the speed of the forward transport. The energy of the forward policy,
        E|z_f|^2 = g^2 E|A_x x + A_v v|^2, is 0 at A = 0 (rho = 0) and grows with |A| in both directions, so
        this is the least-energy A for which the forward process forgets the data at T: the least-energy fixed
        point of the SA (IPF) iteration on A. Data already forgotten at A = 0 keep rho = 0 (slowing the
        transport down, rho < 0, does not save energy: A_x tends to 1/(2 gamma) as rho -> -inf). Under-damped
        processes oscillate, so the KL is not monotone in rho; asking for every larger rho skips the windows
        where an oscillation happens to cancel the data's trace. Dimensions that no rho within RHO_MAX makes
        forget get RHO_MAX.
        """
        if not kl > 0:
            raise ValueError(f"the KL budget of the data-informed start must be > 0, got {kl}")
        if tuple(mean.shape) != self.data_shape or tuple(var.shape) != self.data_shape:
            raise ValueError(f"data moments of shape {tuple(mean.shape)} / {tuple(var.shape)} do not match the "
                             f"process's data shape {self.data_shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all() and (var >= 0).all()):
            raise ValueError("data moments for the data-informed start of A must be finite with var >= 0; "
                             "check the data for NaN/inf")
        grid = torch.arange(0.0, RHO_MAX + resolution / 2, resolution, dtype=torch.float64)
        shape = (len(grid), *self.data_shape)
        rho = grid.reshape(-1, *([1] * len(self.data_shape))).expand(shape)
        mean64, var64 = mean.detach().cpu().to(torch.float64), var.detach().cpu().to(torch.float64)
        ok = self.prior_kl(mean64, var64, rho) <= kl                       # (G, *data_shape)
        ok_above = ok.flip(0).cumprod(0).flip(0).bool()                     # ok here and at every larger rho
        first = torch.where(ok_above.any(0), ok_above.to(torch.uint8).argmax(0), torch.tensor(len(grid) - 1))
        return grid[first].to(self.rho.dtype).to(self.rho.device)

    # ----------------------------------------------------------------------------------------------
    # Sampling from the kernel and the prior.
    def perturb(self, x0: Tensor, t: Tensor, coeffs: dict[str, Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw a_t ~ p(a_t | x0): returns (a_t, eps target, noise_scale)."""
        raise NotImplementedError

    def prior_sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        raise NotImplementedError

    def time_grid(self, n: int, device=None) -> Tensor:
        """n points from t_max down to t_eps (inclusive), float32."""
        return uniform_grid(self.t_max, self.t_eps, n, device=device)

    # ----------------------------------------------------------------------------------------------
    # Reverse time (s = T - t): da/ds for the backward SDE or the probability-flow ODE.
    def reverse_drift(self, a: Tensor, t: Tensor, score: Tensor, probability_flow: bool = False) -> Tensor:
        raise NotImplementedError

    def add_noise(self, a: Tensor, t: Tensor, h: float, generator: torch.Generator | None = None) -> Tensor:
        """Euler-Maruyama noise sqrt(g^2 h) xi on the noise coordinate."""
        parts = list(self.split(a))
        g2 = pad_like(self.diffusion_sq(t), parts[-1])
        parts[-1] = parts[-1] + (g2 * h).sqrt() * randn_like(parts[-1], generator)
        return self.join(*parts)

    def linear_step(self, a: Tensor, t: float, t_next: float, generator: torch.Generator | None = None) -> Tensor:
        """Exact step of the stable linear OU part of the reverse SDE from t to t_next < t (spec 4.2)."""
        raise NotImplementedError

    def score_kick(self, a: Tensor, t: Tensor, h: float, score: Tensor) -> Tensor:
        """The non-linear part of the splitting: noise coordinate += h g^2 (score + d * noise coordinate)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name}, data_shape={self.data_shape}, schedule={self.schedule}, adaptive={self.adaptive}"


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# ----------------------------------------------------------------------------------------------
# The checks of options that more than one layer applies (the module before training, the process and the samplers
# when they run), each written once: the damping here, t_stop in grids.py (check_t_stop), the sampler a path accepts
# in registry.py (check_sampler).
def check_damping(damping: float, name: str | None = None) -> None:
    """The damping ratio R in (0, 1]; for process ``name``, R = 1 exactly for cld/vscld and R < 1 for uld/vsuld."""
    if not 0 < damping <= 1:
        raise ValueError(f"damping ratio R must be in (0, 1] (R = 1 critical, R < 1 under-damped), got {damping}")
    if name in ("uld", "vsuld") and damping == 1:
        raise ValueError(f"process {name!r} is under-damped and needs damping ratio R < 1, got {damping}; "
                         "use cld/vscld for R = 1")
    if name in ("cld", "vscld") and damping != 1:
        raise ValueError(f"process {name!r} is critically damped (R = 1), got damping={damping}; "
                         "use uld/vsuld for R < 1")
