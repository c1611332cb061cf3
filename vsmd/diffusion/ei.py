"""Exponential integrator (EI) for the probability-flow ODE of every process, in the data-prediction form.

Derivation (momentum processes; the overdamped case is the same with scalars). The forward process is linear,
da = F(t) a dt + G(t) dW, and its kernel is Gaussian: a_t | x0 ~ N(M_t x0, Sigma_t), with M_t the first column of
the transition and Sigma_t = L_t L_t^T (the initial velocity's variance included, i.e. the v0-marginal kernel).
For a linear Gaussian kernel, Tweedie's formula gives the score as an affine function of the data estimate
x0_hat(a, t) = E[x0 | a_t = a]:

    grad log p_t(a) = -P_t (a - M_t x0_hat),    P_t = Sigma_t^{-1}.

Put into the probability-flow ODE da/dt = F a - 1/2 G G^T grad log p_t(a):

    da/dt = (F + 1/2 G G^T P_t) a + c_t x0_hat,    c_t = -1/2 G G^T P_t M_t.

The linear part is solved exactly. For a single data point the deviation a - M_t x0 follows gDDIM's R_t
(dR/dt = F R + 1/2 G G^T R^{-T}, R R^T = Sigma), so its transition is Psi(t, s) = R_t R_s^{-1}. Writing
R = L Q with the Cholesky factor L and a rotation Q(theta) makes it explicit: Q^T dQ/dt is skew and its entry
follows from the upper-right entry of L^{-1}(F L + 1/2 G G^T L^{-T}) - L^{-1} dL/dt, which gives

    Psi(t, s) = L_t Rot(theta_t - theta_s) L_s^{-1},    d theta/dt = -F_xv L_vv / L_xx   (F_xv = beta / 2),

a scalar quadrature (no eigen-decomposition, no matrix exponential; R = 1 is no special case). Overdamped:
Psi(t, s) = std_t / std_s and c_t = -1/2 beta m_t / std_t^2.

The step from s to t < s is then

    a_t = Psi(t, s) a_s + int_s^t Psi(t, tau) c_tau x0_hat(tau) dtau,

where x0_hat(tau) is the Lagrange polynomial through the last k network estimates (order k = 1, 2, 3). The
weights int Psi c l_j are computed once per grid in float64 by Gauss-Legendre quadrature in log-time and
cached until A changes. With a single data point x0_hat is constant (= x0), the polynomial is exact, and so is
the step: sum_j w_j = M_t - Psi(t, s) M_s, so that a_t - M_t x0 = Psi(t, s)(a_s - M_s x0) to round-off.

Which x0_hat: G G^T acts on v alone, so the ODE needs only the v row of the Tweedie relation. For momentum
processes the model passes ``MomentumProcess.flow_estimate`` (vsmd.diffusion.forward; from eps_v alone, exact for a
single point and the same flow as the score the other samplers use). The full E[x0 | a] from (eps_x, eps_v)
(``data_estimate``) is also exact for a point, but drives v with a gain of order 1/t^2 near t_eps through the
network's eps_x error, which made multistep EI diverge on trained toys (benchmarks/results/toy_ei.md history in
docs/samplers.md).
The v-row estimate is x0_hat = y / kap with y = (L^{-1} a)_v - eps_v and kap = (L^{-1} M)_v. For under-damped
processes with a fast A, kap crosses zero at some t (near T for the toys' stretched axes): a node there
multiplies the network's error in y by 1 / kap, which made ei blow up on checkerboard-6X at 20 NFE. Guard
(``max_gain``, default 100): in a step whose window (the step, its nodes and the grid time before them) straddles
a zero of kap, a dimension uses only the leading nodes whose |kap| is at least 1/max_gain of the largest |kap|
over the step (a lower order, still exact for a point), and holds y constant over the step if even the current
node fails (bounded, but not exact for a point). Steps without a zero are untouched.
``denoise_last`` returns the estimate at the last grid time instead of the state's x (AGM's "sampling-hop"
when the grid stops early at t_stop).
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vsmd.diffusion.grids import EI_GRIDS, ei_grid
from vsmd.diffusion.process import ForwardProcess, pad_like
from vsmd.diffusion.quadrature import gauss_legendre, lagrange_basis, on_interval
from vsmd.diffusion.types import DenoiseFn, SampleResult

__all__ = ["EI_GRIDS", "EICoefficients", "ei_coefficients", "ei_grid", "exponential_integrator"]
F64 = torch.float64


class _Kernel:
    """The float64 pieces of one process at arbitrary times: L (or std), M (or m), c, and theta's rate."""

    def __init__(self, process: ForwardProcess) -> None:
        self.p = process

    def at(self, tau: Tensor) -> dict[str, Tensor]:
        p = self.p
        k = p.coefficients(tau, dtype=F64, prior=True)
        beta = pad_like(p.beta(tau.to(F64)), next(iter(k.values())))
        if not p.momentum:
            m, std = k["m"], k["std"]
            return {"m": m, "std": std, "c": -0.5 * beta * m / std**2}
        lxx, lvx, lvv, mx, mv = k["lxx"], k["lvx"], k["lvv"], k["p11"], k["p21"]
        # P = Sigma^{-1} = L^{-T} L^{-1}; only its v-row enters c = (0, -1/2 g^2 (P M)_v) = (L^{-1} M)_v / L_vv.
        kap = p.whiten_v(k, mx, mv)  # (L^{-1} M)_v: how much of x0 the whitened v holds
        g2 = beta * p.gamma
        return {"lxx": lxx, "lvx": lvx, "lvv": lvv, "mx": mx, "mv": mv, "kap": kap, "gv": -0.5 * g2 / lvv,
                "cv": -0.5 * g2 * kap / lvv, "rate": 0.5 * beta * lvv / lxx}


def _psi(k: _Kernel, t: Tensor, tau: Tensor, theta: Tensor | None) -> tuple[Tensor, ...]:
    """Psi(t, tau) for scalar t and times tau (n,): momentum (p11, p12, p21, p22), overdamped (ratio,)."""
    a, b = k.at(t.reshape(1)), k.at(tau)
    if not k.p.momentum:
        return (a["std"] / b["std"],)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # L_t Rot L_tau^{-1}, with L^{-1} = [[1/lxx, 0], [-lvx/(lxx lvv), 1/lvv]].
    r11, r12, r21, r22 = cos, -sin, sin, cos
    q11 = r11 / b["lxx"] - r12 * b["lvx"] / (b["lxx"] * b["lvv"])
    q12 = r12 / b["lvv"]
    q21 = r21 / b["lxx"] - r22 * b["lvx"] / (b["lxx"] * b["lvv"])
    q22 = r22 / b["lvv"]
    return (a["lxx"] * q11, a["lxx"] * q12, a["lvx"] * q11 + a["lvv"] * q21, a["lvx"] * q12 + a["lvv"] * q22)


class EICoefficients:
    """Psi and the multistep weights of every step of one grid (float64), for one value of A."""

    def __init__(self, process: ForwardProcess, times: Tensor, order: int, nodes: int = 24, pieces: int = 4,
                 interp: str = "log", max_gain: float = 100.0) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"the EI order must be 1, 2 or 3, got {order}")
        self.order, self.max_gain = order, max_gain
        self.rho = process.rho.detach().to("cpu").clone()  # the A the coefficients are for
        self.reduced: list[int] = []  # per step: how many dimensions used fewer nodes (momentum, see max_gain)
        self.times = times.detach().to("cpu", F64)
        kern = _Kernel(process)
        rule = gauss_legendre(nodes)
        self.psi: list[tuple[Tensor, ...]] = []
        self.weights: list[list[tuple[Tensor, ...]]] = []
        for i in range(len(self.times) - 1):
            s, t = self.times[i], self.times[i + 1]
            # Composite Gauss-Legendre in u = log tau on [log t, log s].
            edges = torch.linspace(math.log(t), math.log(s), pieces + 1, dtype=F64)
            u, wq = (z.reshape(-1) for z in on_interval(rule, edges[:-1, None], edges[1:, None]))
            tau = u.exp()
            jac = wq * tau  # d tau = tau du
            theta = self._theta(kern, t, tau) if process.momentum else None
            psi_nodes = _psi(kern, t, tau, theta)
            cn = kern.at(tau)
            prev = [self.times[i - j] for j in range(min(order, i + 1))]  # x0_hat nodes: t_i, t_{i-1}, ...
            theta_s = self._theta(kern, t, s.reshape(1), m=nodes) if process.momentum else None
            psi = tuple(z[0] for z in _psi(kern, t, s.reshape(1), theta_s))
            # The Lagrange basis sums to 1, so the weights sum to int Psi c = M_t - Psi(t, s) M_s in closed form.
            # Taking w_0 from that identity makes a constant data estimate exact to round-off (not to quadrature).
            ks, kt = kern.at(s.reshape(1)), kern.at(t.reshape(1))
            if process.momentum:
                total = (kt["mx"][0] - psi[0] * ks["mx"][0] - psi[1] * ks["mv"][0],
                         kt["mv"][0] - psi[2] * ks["mx"][0] - psi[3] * ks["mv"][0])
            else:
                total = (kt["m"][0] - psi[0] * ks["m"][0],)
            c_tau = cn["cv"] if process.momentum else cn["c"]
            z = tau.log() if interp == "log" else tau  # the variable x0_hat is a polynomial in
            zp = [float(math.log(q)) if interp == "log" else float(q) for q in prev]
            psi_x = (psi_nodes[1], psi_nodes[3]) if process.momentum else (psi_nodes[0],)

            def lagrange(k: int) -> list[tuple[Tensor, ...]]:
                """Weights of x0_hat at the first k nodes (zero for the others)."""
                out = []
                for j in range(k):
                    lag = lagrange_basis(z, zp[:k], j)
                    f = pad_like(-jac * lag, psi_nodes[0])  # int_s^t = -int_t^s
                    out.append(tuple((f * px * c_tau).sum(0) for px in psi_x))
                rest = [sum(w[c] for w in out[1:]) for c in range(len(total))] if k > 1 else None
                out[0] = tuple(tot - (rest[c] if rest else 0) for c, tot in enumerate(total))
                zero = tuple(torch.zeros_like(w) for w in out[0])
                return out + [zero] * (len(prev) - k)

            step_w = lagrange(len(prev))
            if process.momentum and self.max_gain:
                # x0_hat = y / kap with y = (L^{-1} a)_v - eps_v and kap = (L^{-1} M)_v, which crosses zero for
                # under-damped processes at large rho. A node whose kap is small against the kap over the step
                # would multiply the network's error in y by that ratio. Per dimension, only the leading nodes
                # below the gain max_gain are used (a lower order: still exact for a point); if the current
                # node itself is below it, y is held constant over the step instead (bounded, but exact for a
                # point only where kap is constant).
                kap_nodes = kern.at(torch.stack(prev))["kap"]
                # The sign test also sees the grid time before the oldest node, so that a node right at the zero
                # counts as a crossing.
                back = kern.at(self.times[i - len(prev)].reshape(1))["kap"] if i >= len(prev) else kap_nodes[:0]
                kap_all = torch.cat([cn["kap"], kt["kap"], kap_nodes, back])
                crossing = (kap_all.amax(0) > 0) & (kap_all.amin(0) < 0)
                kap_max = kap_all[: len(tau) + 1].abs().amax(0)
                ok = (kap_nodes.abs() * self.max_gain >= kap_max) | ~crossing
                good = ok.long().cumprod(0).sum(0)  # leading good nodes
                self.reduced.append(int((good < len(prev)).sum()))
                if bool((good < len(prev)).any()):
                    f = pad_like(-jac, psi_nodes[0])
                    hold = [tuple((f * px * cn["gv"] * kap_nodes[0]).sum(0) for px in psi_x)]
                    hold += [tuple(torch.zeros_like(w) for w in hold[0])] * (len(prev) - 1)
                    sets = [hold] + [lagrange(k) for k in range(1, len(prev))] + [step_w]  # by leading good nodes
                    pick = good.unsqueeze(0)
                    step_w = [tuple(torch.stack([w[j][c] for w in sets]).gather(0, pick)[0] for c in range(2))
                              for j in range(len(prev))]
            else:
                self.reduced.append(0)
            self.psi.append(psi)
            self.weights.append(step_w)

    @staticmethod
    def _theta(kern: _Kernel, t: Tensor, tau: Tensor, m: int = 6) -> Tensor:
        """theta_t - theta_tau = int_t^tau (beta/2) L_vv / L_xx du for nodes tau (n,) >= t, shape (n, *data): an
        m-point Gauss-Legendre rule in log-time on each gap between consecutive (sorted) nodes, summed cumulatively
        (n m rate evaluations; the kernels dominate the weights' cost for images' 3072 dimensions)."""
        order = torch.argsort(tau)
        ts = tau[order]
        lo = torch.log(torch.cat([t.reshape(1).to(ts), ts[:-1]]))
        hi = torch.log(ts)
        u, w = on_interval(gauss_legendre(m), lo[:, None], hi[:, None])  # (n, m)
        w = w * u.exp()
        rate = kern.at(u.exp().reshape(-1))["rate"]
        rate = rate.reshape(*u.shape, *rate.shape[1:])                     # (n, m, *data)
        gaps = (w.reshape(*w.shape, *([1] * (rate.dim() - 2))) * rate).sum(1)
        out = torch.empty_like(gaps)
        out[order] = gaps.cumsum(0)
        return out

    def matches(self, times: Tensor, order: int, rho: Tensor, max_gain: float) -> bool:
        t = times.detach().to("cpu", F64)
        return (order == self.order and t.shape == self.times.shape and torch.equal(t, self.times)
                and torch.equal(rho, self.rho) and max_gain == self.max_gain)


# The coefficients of each process's last grid, until the grid, the order, A (rho) or max_gain changes. Weak keys:
# the entry goes with its process.
_MEMO: weakref.WeakKeyDictionary[ForwardProcess, EICoefficients] = weakref.WeakKeyDictionary()


def ei_coefficients(process: ForwardProcess, times: Tensor, order: int, max_gain: float = 100.0) -> EICoefficients:
    """The coefficients of ``times`` and ``order`` for ``process``, computed once until the grid, the order, A or
    ``max_gain`` changes."""
    rho = process.rho.detach().to("cpu")
    cached = _MEMO.get(process)
    if cached is not None and cached.matches(times, order, rho, max_gain):
        return cached
    coeffs = EICoefficients(process, times, order, max_gain=max_gain)
    _MEMO[process] = coeffs
    return coeffs


def exponential_integrator(process: ForwardProcess, denoise_fn: DenoiseFn, a: Tensor, times: Tensor,
                           order: int = 3, denoise_last: bool = True, return_trajectory: bool = False,
                           progress: bool = False, max_gain: float = 100.0):
    """Multistep EI on the probability-flow ODE in the data-prediction form (module docstring).

    ``denoise_fn(a, t)`` returns x0_hat (B, *data_shape). NFE = len(times) - 1, plus one when ``denoise_last``
    returns the data estimate at the last grid time instead of the final state's x. ``max_gain`` bounds how much a
    node's data estimate may amplify the network's error where (L^{-1} M)_v crosses zero (``EICoefficients``;
    0 turns the guard off).
    """
    co = ei_coefficients(process, times, order, max_gain)
    dev, dt = a.device, a.dtype
    traj = [a] if return_trajectory else None
    history: list[Tensor] = []
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist()))
    for i, (t, _) in enumerate(tqdm(pairs, desc="EI sampling", leave=False, disable=not progress)):
        tb = torch.full((a.shape[0],), t, device=dev)
        history.insert(0, denoise_fn(a, tb))
        history = history[:order]
        w = [tuple(z.to(dev, dt) for z in wj) for wj in co.weights[i]]
        psi = tuple(z.to(dev, dt) for z in co.psi[i])
        if process.momentum:
            x, v = process.split(a)
            x_new = psi[0] * x + psi[1] * v
            v_new = psi[2] * x + psi[3] * v
            for (wx, wv), x0 in zip(w, history):
                x_new, v_new = x_new + wx * x0, v_new + wv * x0
            a = process.join(x_new, v_new)
        else:
            a = psi[0] * a + sum(wj[0] * x0 for wj, x0 in zip(w, history))
        if traj is not None:
            traj.append(a)
    nfe = len(times) - 1
    if denoise_last:
        x0 = denoise_fn(a, torch.full((a.shape[0],), float(times[-1]), device=dev))
        nfe += 1
        parts = list(process.split(a))
        parts[0] = x0
        a = process.join(*parts)
    return SampleResult(a, nfe, times, torch.stack(traj) if traj is not None else None)
