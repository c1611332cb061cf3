"""Multi-marginal bridges for trajectory inference (Lightning-free): couplings of snapshots, the conditional paths
through coupled points and their drift targets. Sampling the learned dynamics is in trajectory_sampling, DMSB's
stages in trajectory_stages.

Snapshots x^(0), ..., x^(K) of a population are observed at times t_0 < ... < t_K, unpaired. A minibatch draws
B points per snapshot and chains them by exact optimal transport between consecutive snapshots (squared Euclidean
cost; for equal batch sizes the plan is a permutation), which gives B chains (x_0, ..., x_K), one point per
snapshot. Given a chain, a reference process pinned at the chain's points has a Gaussian law in closed form; the
network regresses the drift of that pinned process at states drawn from it (bridge matching). The Markovian
projection of the mixture over chains then has the snapshots as its marginals. Two reference processes:

- ``first_order``: dx = u dt + sigma dW. Pinned at the chain, it is a Brownian bridge per segment:
  x_t = (1 - s) x_k + s x_{k+1} + sigma sqrt(s (1 - s) dt_k) eps with s = (t - t_k) / dt_k, and its drift is
  u* = (x_{k+1} - x_t) / (t_{k+1} - t). sigma = 0 is multi-marginal OT flow matching (piecewise-linear paths, the
  OT-CFM of Tong et al.); sigma > 0 is an overdamped multi-marginal Schrodinger-bridge matching.
- ``momentum``: dx = v dt, dv = a dt + sigma dW (Newtonian; the least-action prior of DMSB), with the state at t_0
  diffuse (velocity unobserved). Pinned at the chain's positions, its mean path is the natural cubic spline through
  them, and (x_t, v_t) has a 2 x 2 covariance sigma^2 S(t) per dimension that depends on the times only; both
  follow from kriging the integrated Wiener process with an unknown linear trend (the diffuse start) against the
  pins. Its drift at a state (x, v) at time t is a* = sigma^2 grad_v log p(future pins | x, v) = d^T K0^{-1} r:
  K0 the integrated-Wiener covariance of the future pins seen from t (unit sigma), d_j = t_j - t, and
  r_j = x_j - x - d_j v. It does not depend on sigma, and on the spline (sigma = 0) it is the spline's
  acceleration: sigma = 0 is flow matching on phase-space splines through the coupled points.

The velocity at t_0 is never observed: a second network regresses E[v_t | x_t] on the same bridge samples, and the
simulation starts from v_0 = v_hat(x_0) plus the bridge's conditional spread of v given x at t_0; optionally refined
by Langevin dynamics in v (``trajectory_sampling.langevin_velocity``) with a velocity score learned by denoising on
the same samples.

Stages (DMSB's alternation of forward and backward policies, ``trajectory_stages``): a policy simulated from the data at
its starting end gives chains through every pin; ``ot_project`` puts each simulated snapshot onto the data (the
IPF projection onto that marginal, in sample form), and the other direction's policy is fitted by bridge matching
on the new chains. The backward policy is the same construction on the mirrored clock (``MultiMarginalBridge.
reversed``).

All coefficients are computed in float64 from the pin times (they are the same for every chain and dimension).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

DYNAMICS = ("first_order", "momentum")


def check_reference(dynamics: str, sigma: float, sigma_min: float = 0.0) -> None:
    """The reference process of a trajectory model: its dynamics, noise, and (first order only) blur."""
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {DYNAMICS}, got {dynamics!r}")
    if not sigma >= 0 or not sigma_min >= 0:
        raise ValueError(f"sigma and sigma_min must be >= 0, got {sigma} and {sigma_min}")
    if sigma_min > 0 and dynamics == "momentum":
        raise ValueError("sigma_min is the first-order (OT-CFM) blur; the momentum bridge's noise is sigma")


# ------------------------------------------------------------------------------------------------------------
# Couplings.
def ot_permutation(a: Tensor, b: Tensor) -> Tensor:
    """The exact optimal-transport matching (squared Euclidean cost, uniform weights) of two equal-size point sets:
    index j with a[i] -> b[j[i]]. Solved by POT's network simplex (an assignment for equal sizes)."""
    import ot

    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"ot_permutation needs two (n, d) sets of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    n = len(a)
    cost = torch.cdist(a.double(), b.double()).pow(2).cpu().numpy()
    w = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    plan = torch.from_numpy(ot.emd(w, w, cost))
    return plan.argmax(1).to(a.device)  # a permutation (the LP optimum of an assignment is a vertex)


def ot_project(points: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The data point each of ``points`` (n, d) is sent to by an exact OT plan (squared Euclidean cost, uniform
    weights) onto ``target`` (m, d): for n == m a permutation, so the result is ``target`` reordered and has exactly
    its empirical law; otherwise each point's partner is drawn from its row of the plan (the result's law is then
    ``target``'s up to that draw). This is the sample form of the IPF (Bregman) projection onto a marginal: every
    chain keeps its other points and takes, at this time, the data point its simulated position is coupled to."""
    import ot

    if points.dim() != 2 or target.dim() != 2 or points.shape[1] != target.shape[1]:
        raise ValueError(f"ot_project needs (n, d) and (m, d) sets, got {tuple(points.shape)} and "
                         f"{tuple(target.shape)}")
    if points.shape == target.shape:
        return target[ot_permutation(points, target)]
    cost = torch.cdist(points.double(), target.double()).pow(2).cpu().numpy()
    a = torch.full((len(points),), 1.0 / len(points), dtype=torch.float64).numpy()
    b = torch.full((len(target),), 1.0 / len(target), dtype=torch.float64).numpy()
    plan = torch.from_numpy(ot.emd(a, b, cost)).clamp_min(0)
    j = torch.multinomial(plan, 1, generator=generator)[:, 0]
    return target[j.to(target.device)]


def ot_chain(batches: Sequence[Tensor]) -> Tensor:
    """Chains (B, K + 1, d) through K + 1 equal-size batches, coupled by exact OT between consecutive ones."""
    if len(batches) < 2:
        raise ValueError("a chain needs at least 2 snapshots")
    out = [batches[0]]
    for nxt in batches[1:]:
        out.append(nxt[ot_permutation(out[-1], nxt)])
    return torch.stack(out, dim=1)


# ------------------------------------------------------------------------------------------------------------
# The integrated Wiener process (unit sigma) started at 0 with zero state, at times a, b >= 0.
def _iwp_xx(a: Tensor, b: Tensor) -> Tensor:
    m, big = torch.minimum(a, b), torch.maximum(a, b)
    return m.pow(3) / 3 + (big - m) * m.pow(2) / 2


def _iwp_vx(a: Tensor, b: Tensor) -> Tensor:
    """Cov(v(a), x(b))."""
    m = torch.minimum(a, b)
    return b * m - m.pow(2) / 2


def _iwp_vv(a: Tensor, b: Tensor) -> Tensor:
    return torch.minimum(a, b)


def spline_kriging(pins: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The momentum bridge's Gaussian law at times ``t`` (B,) given positions at the pin times ``pins`` (n,).

    Returns (W, S): the mean (x_t, v_t) is W[b] @ y for the pinned positions y (n, ...), W (B, 2, n); S (B, 2, 2) is
    the covariance of (x_t, v_t) per dimension for unit sigma. Universal kriging of the integrated Wiener process
    from t_0 with an unknown linear trend (x_0 and v_0 diffuse): the bordered system [[K, H], [H^T, 0]].
    """
    pins, t = pins.double(), t.double().to(pins.device)
    tau, tt = pins - pins[0], t - pins[0]
    n = len(pins)
    K = _iwp_xx(tau[:, None], tau[None, :])
    H = torch.stack([torch.ones_like(tau), tau], dim=1)  # the trend basis (1, tau) of x
    top = torch.cat([K, H], dim=1)
    border = torch.cat([top, torch.cat([H.T, torch.zeros(2, 2, dtype=K.dtype, device=K.device)], dim=1)], dim=0)
    # right-hand sides for x_t and v_t: the covariances with the pins, and the trend's value (1, tau) / slope (0, 1)
    kx = _iwp_xx(tt[:, None], tau[None, :])  # (B, n)
    kv = _iwp_vx(tt[:, None], tau[None, :])
    ones, zeros = torch.ones_like(tt), torch.zeros_like(tt)
    hx, hv = torch.stack([ones, tt], dim=1), torch.stack([zeros, ones], dim=1)  # (B, 2)
    rhs = torch.stack([torch.cat([kx, hx], 1), torch.cat([kv, hv], 1)], dim=2)  # (B, n + 2, 2)
    sol = torch.linalg.solve(border.expand(len(t), -1, -1), rhs)
    W, lam = sol[:, :n], sol[:, n:]  # (B, n, 2), (B, 2, 2)
    prior = torch.stack([torch.stack([_iwp_xx(tt, tt), _iwp_vx(tt, tt)], 1),
                         torch.stack([_iwp_vx(tt, tt), _iwp_vv(tt, tt)], 1)], dim=1)  # (B, 2, 2)
    kf = torch.stack([kx, kv], dim=1)  # (B, 2, n)
    hf = torch.stack([hx, hv], dim=1)  # (B, 2, 2)
    S = prior - kf @ W - hf @ lam
    S = (S + S.transpose(1, 2)) / 2
    return W.transpose(1, 2), S


def momentum_drift_weights(pins: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a*(x, v, t) = G[b] @ y - cx[b] x - cv[b] v for the pinned positions y (n, ...): the drift of the momentum
    bridge toward the pins after t (zero after the last pin). Returns G (B, n), cx (B,), cv (B,), float64."""
    pins, t = pins.double(), t.double().to(pins.device)
    d = pins[None, :] - t[:, None]  # (B, n)
    future = d > 1e-9 * max(float(pins[-1] - pins[0]), 1.0)
    dp = torch.where(future, d, torch.zeros_like(d))
    K0 = _iwp_xx(dp[:, :, None], dp[:, None, :])
    eye = torch.eye(len(pins), dtype=K0.dtype, device=K0.device)
    mask = future[:, :, None] & future[:, None, :]
    K0 = torch.where(mask, K0, eye.expand_as(K0))  # past pins: identity rows, zero weight below
    g = torch.linalg.solve(K0, dp[..., None])[..., 0] * future  # K0^{-1} d on the future pins
    return g, g.sum(1), (g * dp).sum(1)


# ------------------------------------------------------------------------------------------------------------
class MultiMarginalBridge:
    """Conditional paths through chains pinned at ``times`` (n,) and their drift targets.

    Args:
        times: the pin times t_0 < ... < t_K (training snapshots; held-out ones are not pins).
        dynamics: "first_order" or "momentum" (see the module docstring).
        sigma: the reference process's noise (0: deterministic paths, flow matching).
    """

    def __init__(self, times: Sequence[float] | Tensor, dynamics: str = "momentum", sigma: float = 0.5) -> None:
        if dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}, got {dynamics!r}")
        times = torch.as_tensor(times, dtype=torch.float64).flatten()
        if len(times) < 2 or not bool((times[1:] > times[:-1]).all()):
            raise ValueError(f"the pin times must be at least 2 and strictly increasing, got {times.tolist()}")
        if not sigma >= 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.times, self.dynamics, self.sigma = times, dynamics, float(sigma)

    @property
    def momentum(self) -> bool:
        return self.dynamics == "momentum"

    def sample_times(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform times in (t_0, t_K), float64."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t0, t1 = float(self.times[0]), float(self.times[-1])
        return t0 + (t1 - t0) * u.clamp(1e-6, 1 - 1e-6)

    def loss_weight(self, t: Tensor) -> Tensor:
        """lambda(t) = h / (h + 0.02 dt_k), h the time to the next pin: a weight of t alone, so it leaves the
        regression's minimiser E[drift | state, t] unchanged, but it tames the targets' heavy tail just before a
        pin (with sigma > 0 the drift's spread grows like sigma / sqrt(h) there)."""
        times = self.times.to(t.device)
        k = (torch.searchsorted(times, t.double(), right=True) - 1).clamp(0, len(times) - 2)
        h = times[k + 1] - t.double()
        return (h / (h + 0.02 * (times[k + 1] - times[k]))).to(t.dtype)

    def reversed(self) -> "MultiMarginalBridge":
        """The same bridge on the mirrored clock s = t_0 + t_K - t (pins t_0 + t_K - t_k, increasing): the backward
        policy's bridge. Both reference processes are reversible under t -> s with the velocity negated (the
        integrated Wiener process with a diffuse linear trend has the stationary generalised covariance
        |t - t'|^3 / 12), so the reversed bridge pinned at the reversed chain is the same law seen backwards (tested
        against spline_kriging)."""
        return MultiMarginalBridge(self.mirror(self.times).flip(0), self.dynamics, self.sigma)

    def mirror(self, t: Tensor | float) -> Tensor | float:
        """t_0 + t_K - t: forward time <-> the backward policy's clock (an involution)."""
        return float(self.times[0]) + float(self.times[-1]) - t

    def sample(self, chain: Tensor, t: Tensor, generator: torch.Generator | None = None, velocity_noise: bool = False
               ) -> tuple[Tensor, ...]:
        """States of the pinned process at times t (B,) for chains (B, n, d), and the regression targets.

        Returns (x, v, drift, v_target): first order: (x_t, None, u*, None); momentum: (x_t, v_t, a*, v_t).
        ``velocity_noise`` (momentum only) appends (eps, scale): v_t = m_{v|x} + scale eps given x_t and the chain,
        eps standard normal (B, d) and scale (B,) the conditional sd, so grad_v log p(v_t | x_t, chain) =
        -eps / scale, the denoising target of the velocity score.
        """
        if velocity_noise and not self.momentum:
            raise ValueError("velocity_noise is for the momentum bridge (the first-order one has no velocity)")
        dtype, dev = chain.dtype, chain.device
        y = chain.double()
        t = t.double().to(dev).contiguous()
        times = self.times.to(dev)
        noise = torch.randn(y.shape[0], 2, y.shape[2], generator=generator, dtype=torch.float64).to(dev)
        if not self.momentum:
            k = (torch.searchsorted(times, t, right=True) - 1).clamp(0, len(times) - 2)
            ta, tb = times[k], times[k + 1]
            s = ((t - ta) / (tb - ta))[:, None]
            rows = torch.arange(len(y), device=dev)
            xa, xb = y[rows, k], y[rows, k + 1]
            x = (1 - s) * xa + s * xb + self.sigma * (s * (1 - s) * (tb - ta)[:, None]).sqrt() * noise[:, 0]
            u = (xb - x) / (tb - t)[:, None]
            return x.to(dtype), None, u.to(dtype), None
        W, S = spline_kriging(times, t)
        mean = torch.einsum("bsn,bnd->bsd", W, y)  # (B, 2, d)
        L = torch.linalg.cholesky(S + 1e-12 * torch.eye(2, dtype=S.dtype, device=dev))
        state = mean + self.sigma * torch.einsum("bij,bjd->bid", L, noise)
        x, v = state[:, 0], state[:, 1]
        G, cx, cv = momentum_drift_weights(times, t)
        a = torch.einsum("bn,bnd->bd", G, y) - cx[:, None] * x - cv[:, None] * v
        out = (x.to(dtype), v.to(dtype), a.to(dtype), v.to(dtype))
        if velocity_noise:  # x = m_x + sigma L00 z0, v = m_v + sigma (L10 z0 + L11 z1): given x, v's noise is z1
            out += (noise[:, 1].to(dtype), (self.sigma * L[:, 1, 1]).to(dtype))
        return out

    def velocity_spread(self, t: float) -> float:
        """The bridge's standard deviation of v given x at time t, for unit data (sigma times sqrt(S_vv|x))."""
        _, S = spline_kriging(self.times, torch.tensor([float(t)], dtype=torch.float64))
        S = S[0]
        cond = S[1, 1] - (S[0, 1] ** 2 / S[0, 0] if S[0, 0] > 1e-12 else 0.0)
        return self.sigma * float(cond.clamp_min(0).sqrt())
