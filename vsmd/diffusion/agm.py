"""AGM, the Acceleration Generative Model (Chen et al., "Generative Modeling with Phase Stochastic Bridges",
ICLR 2024): a phase-space stochastic bridge from a Gaussian start to the data (issue 13).

Time runs from the noise end t = 0 to the data end t = 1; h = 1 - t. Given a data point x1, the controlled
dynamics are Newtonian, dx = v dt, dv = a* dt + g dW, with g(t) = p h and the optimal-control acceleration

    a*(x, v, t) = 4 (x1 - x - h v) / h^2,

so that (x, v) is a linear SDE with the drift matrix F(t) = [[0, 1], [-4/h^2, -4/h]] plus (0, 4 x1 / h^2). The
start is (x0, v0) ~ N(0, Sigma0), unit variances and correlation -k. Everything below is derived here (and
checked in tests/test_agm.py against a numerically solved Lyapunov ODE and Monte Carlo of the SDE):

* Homogeneous solutions. x'' = -4 x / h^2 - 4 x' / h is, in h, the Euler equation h^2 x_hh - 4 h x_h + 4 x = 0,
  with x = h and x = h^4. The fundamental matrix is Y(t) = [[h, h^4], [-1, -4 h^3]] (v = dx/dt = -dx/dh), and the
  transition is Phi(t, s) = Y(t) Y(s)^{-1}, det Y(s) = -3 u^4 with u = 1 - s.
* Mean. x = x1 is a particular solution, so mu(t) = (x1, 0) + Phi(t, 0) (mu0 - (x1, 0)) with mu0 = 0:
  mu_x = (1 - Phi11(t, 0)) x1 = (1 - (4h - h^4)/3) x1 and mu_v = -Phi21(t, 0) x1 = 4 (1 - h^3)/3 x1; mu_x(1) = x1.
* Covariance. Sigma(t) = Phi(t,0) Sigma0 Phi(t,0)^T + N(t), with the noise part N = int_0^t Phi(t,s) e_v e_v^T
  Phi(t,s)^T g(s)^2 ds. Phi(t,s) e_v = (h - h^4/u^3, -1 + 4 h^3/u^3) / 3, and with g^2 = p^2 u^2 the integrals
  over u in [h, 1] are elementary (the 1/u terms give the log h terms):
      N_xx = p^2/9 [h^2 (1 - h^3)/3 + 2 h^5 log h + (h^5 - h^8)/3]
      N_xv = p^2/9 [-h (1 - h^3)/3 - 5 h^4 log h - 4 (h^4 - h^7)/3]
      N_vv = p^2/9 [(1 - h^3)/3 + 8 h^3 log h + 16 (h^3 - h^6)/3]
* Determinant (for the Cholesky factor: sxx svv - sxv^2 cancels catastrophically near t = 1, and a fixed jitter
  on the diagonal made L_vv 18 times too large at t = 0.999). With A = Phi Sigma0 Phi^T (det Phi(t, 0) = h^4),
  det(A + N) = det A + tr(adj(A) N) + det N, each term an integral of a square:
      det A = h^8 (1 - k^2)
      tr(adj(A) N) = p^2 h^8/9 [(2 - 2k)(1 - h^3)/3 + (10 - 10k) log h + (17 - 8k)(h^-3 - 1)/3]
      det N = p^4 h^5/81 [(1 - h^3)^2 - 9 h^3 log^2 h]
  (adj(A) = adj(Phi)^T adj(Sigma0) adj(Phi) with adj(Phi(t, 0)) Phi(t, s) e_v = h^4 ((1 - u^-3), (4 u^-3 - 1))/3,
  and det N = 1/2 int int g^2 g'^2 (b x b')^2 with b(s) x b(s') = h^4 (u'^-3 - u^-3)/3). L = [[sqrt(sxx), 0],
  [sxv / L_xx, sqrt(det / sxx)]], no jitter.
* Training target: the conditional probability-flow force F = a* - 1/2 g^2 grad_v log p_t(x, v | x1)
  = a* + 1/2 g^2 eps_v / L_vv (L the Cholesky factor of Sigma, a = mu + L eps). Its regression onto (x, v)
  is the force of the marginal probability-flow ODE dx = v dt, dv = F(x, v, t) dt. With a = mu + L eps,
  F = 4 h^2 x1 - 4 (L_xx + h L_vx)/h^2 eps_x + (g^2/(2 L_vv) - 4 L_vv/h) eps_v (because Phi11 + h Phi21 = h^4 at
  s = 0); the network predicts F / s(t), s(t)^2 = 16 h^4 + (4 (L_xx + h L_vx)/h^2)^2 + (g^2/(2 L_vv) - 4 L_vv/h)^2,
  unit variance for data of unit variance. The loss is weighted by 1/(1 - t), t ~ U(1e-5, 0.999).
* Sampling-hop: F is affine in x1, F = F(x, v; x1 = 0) + c(t) x1, so the network's force gives the estimate
  x1_hat = (F_theta - F(x, v; 0)) / c(t) in closed form; it is exact for a single data point at every t.
* Sampler: dx = v dt, dv = F dt with the free-particle transition [[1, dt], [0, 1]] exact, and F extrapolated by
  the Lagrange polynomial through the last ``order`` network outputs, its integrals (for v) and moments
  int (t_next - tau) (for x) computed once per grid in float64 (Gauss-Legendre, exact for these polynomials).
  The grid is quadratic, dense at the noise end; the sampler ends with the hop at its last time (t_stop).

All coefficients are computed in float64.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vsmd.diffusion.grids import AGM_T_MAX, AGM_T_MIN, agm_grid
from vsmd.diffusion.quadrature import multistep_weights
from vsmd.diffusion.types import SampleResult

__all__ = ["AGM_T_MAX", "AGM_T_MIN", "AGMProcess", "agm_grid", "agm_sample", "multistep_weights", "transition"]


def transition(t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Phi(t, s) = Y(t) Y(s)^{-1} of the bridge's homogeneous drift, entries (11, 12, 21, 22), float64."""
    h, u = 1 - t.to(torch.float64), 1 - s.to(torch.float64)
    u4 = 3 * u**4
    return ((4 * h * u**3 - h**4) / u4, (h * u**4 - h**4 * u) / u4,
            (4 * h**3 - 4 * u**3) / u4, (4 * h**3 * u - u**4) / u4)


class AGMProcess(nn.Module):
    """The conditional Gaussian path of AGM given the data point, and what training and sampling need of it.

    It offers the interface of a momentum process where the module uses one: ``split``/``join`` of (x, v),
    ``perturb`` (a_t and the normalised force target), ``coefficients``/``table`` (cached per training level),
    ``prior_sample``; it has no variational scores (``adaptive`` False).
    """

    momentum = True
    adaptive = False
    n_state = 2
    # time runs noise (0) -> data (1); its sampler gets the force, not a score (vsmd.models.agm.AGMModule.score)

    def __init__(self, data_shape: tuple[int, ...], p: float = 3.0, k: float = 0.2,
                 t_eps: float = AGM_T_MIN, t_max: float = AGM_T_MAX) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"the AGM noise scale p must be > 0, got {p}")
        if not 0 <= k < 1:
            raise ValueError(f"the AGM start correlation k must be in [0, 1), got {k}")
        if not 0 < t_eps < t_max < 1:
            raise ValueError(f"AGM needs 0 < t_eps < t_max < 1, got {t_eps}, {t_max}")
        self.name = "agm"
        self.data_shape = tuple(int(s) for s in data_shape)
        self.p, self.k = float(p), float(k)
        self.t_eps, self.t_max = float(t_eps), float(t_max)
        self._table: tuple[Tensor, dict[str, Tensor]] | None = None  # (levels, their coefficients), see table()

    def split(self, a: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(a.chunk(2, dim=1))  # type: ignore[return-value]

    def join(self, x: Tensor, v: Tensor) -> Tensor:
        return torch.cat([x, v], dim=1)

    def extra_repr(self) -> str:
        return f"agm, p={self.p}, k={self.k}, data_shape={self.data_shape}"

    # ----------------------------------------------------------------------------------------------
    def diffusion_sq(self, t: Tensor) -> Tensor:
        return (self.p * (1 - t.to(torch.float64))) ** 2

    def covariance(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sigma(t) of (x_t, v_t) given x1 (xx, xv, vv), float64."""
        t = t.to(torch.float64)
        h = 1 - t
        lh = torch.log(h)
        c = self.p**2 / 9
        nxx = c * (h**2 * (1 - h**3) / 3 + 2 * h**5 * lh + (h**5 - h**8) / 3)
        nxv = c * (-h * (1 - h**3) / 3 - 5 * h**4 * lh - 4 * (h**4 - h**7) / 3)
        nvv = c * ((1 - h**3) / 3 + 8 * h**3 * lh + 16 * (h**3 - h**6) / 3)
        p11, p12, p21, p22 = transition(t, torch.zeros_like(t))
        k = -self.k  # Sigma0 = [[1, -k], [-k, 1]]
        sxx = p11 * p11 + 2 * k * p11 * p12 + p12 * p12
        sxv = p11 * p21 + k * (p11 * p22 + p12 * p21) + p12 * p22
        svv = p21 * p21 + 2 * k * p21 * p22 + p22 * p22
        return sxx + nxx, sxv + nxv, svv + nvv

    def determinant(self, t: Tensor) -> Tensor:
        """det Sigma(t) in closed form as a sum of three positive terms (no cancellation near t = 1, where
        sxx svv - sxv^2 loses every digit: det ~ 6 h^5 against sxv^2 ~ 4 h^2), float64."""
        t = t.to(torch.float64)
        h = 1 - t
        lh, h3, k, p2 = torch.log1p(-t), h**3, self.k, self.p**2
        start = h**8 * (1 - k * k)
        cross = p2 * h**5 / 9 * ((2 - 2 * k) * (h3 - h3 * h3) / 3 + (10 - 10 * k) * h3 * lh
                                 + (17 - 8 * k) * (1 - h3) / 3)
        noise = p2 * p2 * h**5 / 81 * ((1 - h3) ** 2 - 9 * h3 * lh * lh)
        return start + cross + noise

    def coefficients(self, t: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Per time: mean coefficients (mx, mv: mu = (mx, mv) x1), Cholesky (lxx, lvx, lvv), g^2, the force
        target's scale s and the hop's coefficient c, shaped (B, 1, ..., 1)."""
        t64 = t.to(torch.float64)
        h = 1 - t64
        p11, _, p21, _ = transition(t64, torch.zeros_like(t64))
        sxx, sxv, _ = self.covariance(t64)
        lxx = sxx.sqrt()
        lvx, lvv = sxv / lxx, (self.determinant(t64) / sxx).sqrt()
        g2 = self.diffusion_sq(t64)
        cx = 4 * (lxx + h * lvx) / h**2
        cv = g2 / (2 * lvv) - 4 * lvv / h
        scale = (16 * h**4 + cx**2 + cv**2).sqrt()
        mx, mv = 1 - p11, -p21
        hop = 4 / h**2 + g2 / (2 * lvv**2) * (lvx * mx / lxx - mv)  # d F / d x1
        out = {"mx": mx, "mv": mv, "lxx": lxx, "lvx": lvx, "lvv": lvv, "g2": g2, "scale": scale, "hop": hop,
               "h": h, "cx": cx, "cv": cv}
        shape = (-1, *([1] * len(self.data_shape)))
        return {key: val.to(dtype).reshape(shape) for key, val in out.items()}

    def table(self, levels: Tensor) -> dict[str, Tensor]:
        """Coefficients on a fixed time grid (the training levels), computed once per grid: they depend on p and k
        only, so every training step reuses them."""
        cached = self._table
        if (cached is None or cached[0].shape != levels.shape or cached[0].device != levels.device
                or not torch.equal(cached[0], levels)):
            self._table = cached = (levels.clone(), self.coefficients(levels))
        return cached[1]

    def noise_scale(self, t: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        """The scale s(t) the network's output is multiplied by to give the force."""
        return (coeffs or self.coefficients(t))["scale"]

    def loss_weight(self, t: Tensor) -> Tensor:
        return 1 / (1 - t)

    # ----------------------------------------------------------------------------------------------
    def force(self, a: Tensor, t: Tensor, x1: Tensor, coeffs: dict[str, Tensor] | None = None) -> Tensor:
        """The conditional probability-flow force F(x, v, t; x1) (exact when the data are the point x1)."""
        k = coeffs if coeffs is not None else self.coefficients(t, a.dtype)
        x, v = self.split(a)
        ex = (x - k["mx"] * x1) / k["lxx"]
        ev = (v - k["mv"] * x1 - k["lvx"] * ex) / k["lvv"]
        h = k["h"]
        return 4 * (x1 - x - h * v) / h**2 + 0.5 * k["g2"] * ev / k["lvv"]

    def perturb(self, x1: Tensor, t: Tensor, coeffs: dict[str, Tensor] | None = None,
                generator: torch.Generator | None = None, full: bool = False):
        """Draw a_t ~ p(a_t | x1): (a_t, the force target F / s(t), s(t)).

        The target comes from the draws, F = 4 h^2 x1 - cx eps_x + cv eps_v: ``force`` recovers eps from a_t, which
        cancels catastrophically near t = 1 in float32 (the target was off by 6 at t = 0.999, 0.1 at 0.995)."""
        k = coeffs if coeffs is not None else self.coefficients(t.to(x1.device))
        ex = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        ev = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x = k["mx"] * x1 + k["lxx"] * ex
        v = k["mv"] * x1 + k["lvx"] * ex + k["lvv"] * ev
        force = 4 * k["h"] ** 2 * x1 - k["cx"] * ex + k["cv"] * ev
        return self.join(x, v), force / k["scale"], k["scale"]

    def hop(self, a: Tensor, t: Tensor, force: Tensor) -> Tensor:
        """The sampling-hop: the estimate of x1 from the force at (a, t) (F is affine in x1)."""
        k = self.coefficients(t[:1], a.dtype)
        return (force - self.force(a, t, torch.zeros_like(force), k)) / k["hop"]

    def velocity_given(self, x: Tensor, t: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw of v ~ p(v_t | x_t; x1): N(mv x1 + lvx eps_x, lvv^2) with eps_x = (x - mx x1) / lxx."""
        k = self.coefficients(t[:1], x.dtype)
        ex = (x - k["mx"] * x1) / k["lxx"]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return k["mv"] * x1 + k["lvx"] * ex + k["lvv"] * noise

    def prior_sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """(x0, v0) ~ N(0, [[1, -k], [-k, 1]]) per dimension."""
        ex = torch.randn((n, *self.data_shape), generator=generator, device=device)
        ev = torch.randn((n, *self.data_shape), generator=generator, device=device)
        return self.join(ex, -self.k * ex + math.sqrt(1 - self.k**2) * ev)


# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _weights(times: tuple[float, ...], order: int) -> tuple[list[list[float]], ...]:
    """``multistep_weights`` as Python floats, computed once per grid and order (they depend on nothing else)."""
    return tuple(z.tolist() for z in multistep_weights(torch.tensor(times, dtype=torch.float64), order))


@torch.no_grad()
def agm_sample(process: AGMProcess, force_fn, a: Tensor, times: Tensor, order: int = 3,
               return_trajectory: bool = False, progress: bool = False, guide: Tensor | None = None,
               guide_fraction: float = 0.25, generator: torch.Generator | None = None):
    """Integrate the probability-flow ODE dx = v dt, dv = F dt on the increasing grid ``times``: the free-particle
    part exactly, F by Lagrange extrapolation over the last ``order`` outputs (``multistep_weights``), then hop to
    the estimate of x1 at the last time. NFE = len(times): one force per step and one for the hop. The result's
    ``times`` are 1 - t (time to the data, decreasing, like the diffusion time of the other samplers).

    Velocity guidance (``guide``, a target point of the data's shape): during the first ``guide_fraction`` of
    the steps the velocity is redrawn from the bridge's p(v | x; x1 = guide) before each step; only v changes,
    the network is untouched."""
    w, u = _weights(tuple(times.tolist()), order)
    x, v = process.split(a)
    forces: list[Tensor] = []
    traj = [a] if return_trajectory else None
    n = len(times) - 1
    for i in tqdm(range(n), desc="AGM sampling", leave=False, disable=not progress):
        t = torch.full((a.shape[0],), float(times[i]), device=a.device)
        if guide is not None and i < guide_fraction * n:
            v = process.velocity_given(x, t, guide.to(x), generator)
        forces.insert(0, force_fn(process.join(x, v), t))
        del forces[order:]
        dt = float(times[i + 1] - times[i])
        x = x + dt * v + sum(u[i][j] * f for j, f in enumerate(forces))
        v = v + sum(w[i][j] * f for j, f in enumerate(forces))
        if traj is not None:
            traj.append(process.join(x, v))
    t = torch.full((a.shape[0],), float(times[-1]), device=a.device)
    state = process.join(x, v)
    state = process.join(process.hop(state, t, force_fn(state, t)), v)
    if traj is not None:
        traj[-1] = state
    return SampleResult(state, n + 1, (1 - times.to(torch.float64)).to(a.device),
                        torch.stack(traj) if traj is not None else None)
