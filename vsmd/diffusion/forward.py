"""The overdamped (vp, vsdm) and momentum (cld, uld, vscld, vsuld) forward processes, and their builder.

See ``vsmd.diffusion.process`` for the interface and for how the variational scores are parametrised by ``rho``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vsmd.diffusion import kernel
from vsmd.diffusion.process import (ADAPTIVE, BRIDGES, INIT_VELOCITY, MOMENTUM, PROCESSES, BetaSchedule, ForwardProcess,
                                    check_damping, pad_like, randn_like)


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
        eps = randn_like(x0, generator)
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
        return m * a + std * randn_like(a, generator)

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
        check_damping(damping)
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
            v0 = math.sqrt(self.v0_var) * randn_like(x0, generator)
            mx, mv = mx + k["p12"] * v0, mv + k["p22"] * v0
        ex, ev = randn_like(x0, generator), randn_like(x0, generator)
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
        ex, ev = randn_like(x, generator), randn_like(v, generator)
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
    check_damping(damping, name)
    return MomentumProcess(name, tuple(data_shape), schedule, adaptive, gamma, damping, init_velocity, v0_var, t_eps)
