"""Forward processes: overdamped (vp, vsdm) and momentum (cld, uld, vscld, vsuld), one interface.

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

from vsmd.diffusion import kernel
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
        parts[-1] = parts[-1] + (g2 * h).sqrt() * _randn_like(parts[-1], generator)
        return self.join(*parts)

    def linear_step(self, a: Tensor, t: float, t_next: float, generator: torch.Generator | None = None) -> Tensor:
        """Exact step of the stable linear OU part of the reverse SDE from t to t_next < t (spec 4.2)."""
        raise NotImplementedError

    def score_kick(self, a: Tensor, t: Tensor, h: float, score: Tensor) -> Tensor:
        """The non-linear part of the splitting: noise coordinate += h g^2 (score + d * noise coordinate)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name}, data_shape={self.data_shape}, schedule={self.schedule}, adaptive={self.adaptive}"


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class OverdampedProcess(ForwardProcess):
    """dx = -1/2 beta(t) (1 - 2A) x dt + sqrt(beta(t)) dW with diagonal A (VSDM; A = 0 is the VP SDE)."""

    momentum = False

    def _rate(self) -> Tensor:
        return self.rho.detach().to(torch.float64).exp()

    def _forgetting_q(self, big_b: Tensor, rho: Tensor) -> Tensor:
        d = rho.exp()
        return torch.exp(-big_b * d) * d / (-torch.expm1(-big_b * d))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def _coefficients64(self, big_b: Tensor, prior: bool) -> dict[str, Tensor]:
        d = self._rate()
        return {"m": torch.exp(-0.5 * big_b * d), "std": (-torch.expm1(-big_b * d) / d).sqrt()}

    def noise_scale(self, t: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        return (coeffs or self.coefficients(t))["std"]

    def variational_scores(self) -> tuple[Tensor, None]:
        return (1 - self._rate()) / 2, None

    def rho_grad(self, g_alpha: Tensor, g_nu: Tensor | None) -> Tensor:
        return g_alpha * (-self._rate() / 2)

    def perturb(self, x0, t, coeffs=None, generator=None, full: bool = False):
        self._check_data(x0)
        k = coeffs if coeffs is not None else self.coefficients(t.to(x0.device))
        eps = _randn_like(x0, generator)
        return k["m"] * x0 + k["std"] * eps, eps, k["std"]

    def prior_sample(self, n, generator=None, device=None):
        t = torch.tensor([self.t_max], device=device)
        std = self.coefficients(t)["std"]
        return std * torch.randn((n, *self.data_shape), generator=generator, device=device)

    def reverse_drift(self, a, t, score, probability_flow=False):
        beta = pad_like(self.beta(t), a)
        d = self._rate().to(a.dtype)
        return 0.5 * beta * d * a + (0.5 if probability_flow else 1.0) * beta * score

    def data_estimate(self, a: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """E[x0 | a_t] from the network's eps (Tweedie for a linear Gaussian kernel): (x - std eps) / m."""
        k = self.coefficients(t[:1], dtype=a.dtype)
        return (a - k["std"] * eps) / k["m"]

    def linear_step(self, a, t, t_next, generator=None):
        db = self.schedule.integral(torch.tensor(t, dtype=torch.float64)) - \
            self.schedule.integral(torch.tensor(t_next, dtype=torch.float64))
        d = self._rate()
        m = torch.exp(-0.5 * db * d).to(a.dtype)
        std = (-torch.expm1(-db * d) / d).sqrt().to(a.dtype)
        return m * a + std * _randn_like(a, generator)

    def score_kick(self, a, t, h, score):
        beta = pad_like(self.beta(t), a)
        return a + h * beta * (score + self._rate().to(a.dtype) * a)


class MomentumProcess(ForwardProcess):
    """Critically- or under-damped Langevin forward process with diagonal variational scores (spec 1.1-1.3)."""

    momentum = True

    def __init__(self, name: str, data_shape: tuple[int, ...], schedule: BetaSchedule, adaptive: bool,
                 gamma: float = 2.0, damping: float = 1.0, init_velocity: str = "hsm", v0_var: float = 1.0,
                 t_eps: float = 1e-3, t_max: float = 1.0) -> None:
        super().__init__(name, data_shape, schedule, adaptive, t_eps, t_max)
        if not gamma > 0:
            raise ValueError(f"gamma (friction) must be > 0, got {gamma}")
        if not 0 < damping <= 1:
            raise ValueError(f"damping ratio R must be in (0, 1] (R = 1 critical, R < 1 under-damped), got {damping}")
        if init_velocity not in INIT_VELOCITY:
            raise ValueError(f"init_velocity must be one of {INIT_VELOCITY}, got {init_velocity!r}")
        if not v0_var > 0:
            raise ValueError(f"v0_var (variance of the initial velocity) must be > 0, got {v0_var}")
        self.gamma, self.damping = float(gamma), float(damping)
        self.init_velocity, self.v0_var = init_velocity, float(v0_var)

    def drift_params(self, rho: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(omega, c, kappa) per dimension in float64, from rho (default: the current) through the damping
        transform."""
        rho = (self.rho.detach() if rho is None else rho).to(torch.float64)
        omega = rho.exp()
        kappa = (2 * math.sqrt(self.damping) / self.gamma) * (rho / 2).exp()
        return omega, self.gamma * kappa, kappa

    def diffusion_sq(self, t: Tensor) -> Tensor:
        return self.beta(t) * self.gamma

    def _coefficients64(self, big_b: Tensor, prior: bool) -> dict[str, Tensor]:
        omega, c, kappa = self.drift_params()
        phi = kernel.transition(big_b, omega, c)
        var0v = self.v0_var if (prior or self.init_velocity == "hsm") else 0.0
        lxx, lvx, lvv = kernel.cholesky2x2(*kernel.covariance(phi, omega, kappa, var0v))
        return dict(zip(("p11", "p12", "p21", "p22"), phi)) | {"lxx": lxx, "lvx": lvx, "lvv": lvv}

    def noise_scale(self, t: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        return (coeffs or self.coefficients(t))["lvv"]

    def _forgetting_q(self, big_b: Tensor, rho: Tensor) -> Tensor:
        omega, c, kappa = self.drift_params(rho)
        phi = kernel.transition(big_b, omega, c)
        sxx, sxv, svv = kernel.covariance(phi, omega, kappa, self.v0_var)  # the prior: Sigma_0 = diag(0, s^2)
        p11, p21 = phi[0], phi[2]
        return (svv * p11**2 - 2 * sxv * p11 * p21 + sxx * p21**2) / (sxx * svv - sxv**2)

    def variational_scores(self) -> tuple[Tensor, Tensor]:
        omega, _, kappa = self.drift_params()
        return (1 - omega) / (2 * self.gamma), (1 - kappa) / 2

    def rho_grad(self, g_alpha: Tensor, g_nu: Tensor | None) -> Tensor:
        omega, _, kappa = self.drift_params()
        return g_alpha * (-omega / (2 * self.gamma)) + g_nu * (-kappa / 4)

    def perturb(self, x0, t, coeffs=None, generator=None, full: bool = False):
        """Draw a_t ~ p(a_t | x0): (a_t, eps target, L_vv); the target is eps_v, or (eps_x, eps_v) when ``full``."""
        self._check_data(x0)
        if full and self.init_velocity != "hsm":
            raise ValueError("the full eps target (parametrisation 'eps') needs init_velocity 'hsm'")
        k = coeffs if coeffs is not None else self.coefficients(t.to(x0.device))
        mx, mv = k["p11"] * x0, k["p21"] * x0
        if self.init_velocity == "dsm":  # sampled v0, Sigma_0 = 0
            v0 = math.sqrt(self.v0_var) * _randn_like(x0, generator)
            mx, mv = mx + k["p12"] * v0, mv + k["p22"] * v0
        ex, ev = _randn_like(x0, generator), _randn_like(x0, generator)
        x = mx + k["lxx"] * ex
        v = mv + k["lvx"] * ex + k["lvv"] * ev
        return self.join(x, v), (self.join(ex, ev) if full else ev), k["lvv"]

    def prior_sample(self, n, generator=None, device=None):
        k = self.coefficients(torch.tensor([self.t_max], device=device), prior=True)
        ex = torch.randn((n, *self.data_shape), generator=generator, device=device)
        ev = torch.randn((n, *self.data_shape), generator=generator, device=device)
        return self.join(k["lxx"] * ex, k["lvx"] * ex + k["lvv"] * ev)

    def reverse_drift(self, a, t, score, probability_flow=False):
        x, v = self.split(a)
        omega, c, _ = (p.to(a.dtype) for p in self.drift_params())
        beta = pad_like(self.beta(t), x)
        dx = -0.5 * beta * v
        dv = 0.5 * beta * (omega * x + c * v) + (0.5 if probability_flow else 1.0) * beta * self.gamma * score
        return self.join(dx, dv)

    def data_estimate(self, a: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """E[x0 | a_t] from the full eps = (eps_x, eps_v) (Tweedie): a - L eps = M x0_hat, solved by least squares
        over the two rows (M = (p11, p21) is never zero, unlike either of its entries)."""
        if eps.shape[1] != a.shape[1]:
            raise ValueError("the data estimate of a momentum process needs the full eps (eps_x, eps_v): a model "
                             "trained with parametrisation 'eps'")
        k = self.coefficients(t[:1], dtype=a.dtype, prior=True)
        x, v = self.split(a)
        ex, ev = self.split(eps)
        rx, rv = x - k["lxx"] * ex, v - k["lvx"] * ex - k["lvv"] * ev
        return (k["p11"] * rx + k["p21"] * rv) / (k["p11"] ** 2 + k["p21"] ** 2)

    def flow_estimate(self, a: Tensor, t: Tensor, eps_v: Tensor) -> Tensor:
        """The data estimate of the probability-flow ODE from eps_v alone (the v row of Tweedie's formula).

        With z = L^{-1} a and i = L^{-1} M: z_v = i_v x0 + eps_v for a single data point, so
        x0_v = (z_v - eps_v) / i_v is exact there, and since G G^T acts on v alone the PF-ODE equals
        da/dt = (F + 1/2 G G^T P) a + c x0_v with the same score the other samplers use (no eps_x needed).
        i_v can cross zero for under-damped processes at large rho; c has the same zero there.
        """
        k = self.coefficients(t[:1], dtype=a.dtype, prior=True)
        return (self.whiten_v(k, *self.split(a)) - eps_v) / self.whiten_v(k, k["p11"], k["p21"])

    @staticmethod
    def whiten_v(k: dict[str, Tensor], x: Tensor, v: Tensor) -> Tensor:
        """The v entry of L^{-1} (x, v) for the Cholesky factor L = [[lxx, 0], [lvx, lvv]] in ``k``."""
        return (v - k["lvx"] * x / k["lxx"]) / k["lvv"]

    def linear_step(self, a, t, t_next, generator=None):
        x, v = self.split(a)
        db = self.schedule.integral(torch.tensor(t, dtype=torch.float64)) - \
            self.schedule.integral(torch.tensor(t_next, dtype=torch.float64))
        omega, c, kappa = self.drift_params()
        phi = kernel.transition(db.to(omega.device), omega, c, reverse=True)
        lxx, lvx, lvv = (z.to(a.dtype) for z in kernel.cholesky2x2(*kernel.covariance(phi, omega, kappa, 0.0)))
        p11, p12, p21, p22 = (p.to(a.dtype) for p in phi)
        ex, ev = _randn_like(x, generator), _randn_like(v, generator)
        return self.join(p11 * x + p12 * v + lxx * ex, p21 * x + p22 * v + lvx * ex + lvv * ev)

    def score_kick(self, a, t, h, score):
        x, v = self.split(a)
        _, _, kappa = self.drift_params()
        g2 = pad_like(self.diffusion_sq(t), v)
        return self.join(x, v + h * g2 * (score + kappa.to(a.dtype) * v))


def make_forward_process(name: str, data_shape: tuple[int, ...] | list[int], beta: float = 5.0,
                         beta_schedule: str = "auto", beta_min: float = 0.1, gamma: float = 2.0,
                         damping: float | None = None, init_velocity: str = "hsm", v0_var: float = 1.0,
                         t_eps: float = 1e-3) -> ForwardProcess:
    """Build a forward process by name: vp, vsdm (overdamped); cld, uld, vscld, vsuld (momentum).
    (``vsmd.diffusion.registry.make_process`` builds every family's process by name.)

    ``beta_schedule="auto"`` is linear (beta_min -> beta) for ``vp`` and constant otherwise.
    ``cld``/``vscld`` need R = 1 and ``uld``/``vsuld`` R < 1 (``damping``; None gives 1, resp. the paper's 0.7);
    ``vp``/``cld``/``uld`` keep A = 0.
    """
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES + BRIDGES)}")
    if beta_schedule == "auto":
        beta_schedule = "linear" if name == "vp" else "constant"
    schedule = BetaSchedule(float(beta), beta_schedule, float(beta_min))
    adaptive = name in ADAPTIVE
    if name not in MOMENTUM:
        return OverdampedProcess(name, tuple(data_shape), schedule, adaptive, t_eps)
    if damping is None:
        damping = 0.7 if name in ("uld", "vsuld") else 1.0
    if not 0 < damping <= 1:
        raise ValueError(f"damping ratio R must be in (0, 1] (R = 1 critical, R < 1 under-damped), got {damping}")
    if name in ("uld", "vsuld") and damping == 1:
        raise ValueError(f"process {name!r} is under-damped and needs damping ratio R < 1, got {damping}; "
                         "use cld/vscld for R = 1")
    if name in ("cld", "vscld") and damping != 1:
        raise ValueError(f"process {name!r} is critically damped (R = 1), got damping={damping}; "
                         "use uld/vsuld for R < 1")
    return MomentumProcess(name, tuple(data_shape), schedule, adaptive, gamma, damping, init_velocity, v0_var, t_eps)
