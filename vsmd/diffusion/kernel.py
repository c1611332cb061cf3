"""Closed-form 2x2 kernels of the linear (momentum) forward process, per dimension.

Every dimension i of VSMD with diagonal variational scores is an independent 2-D linear SDE

    d(x, v) = -1/2 beta(t) D (x, v) dt + sqrt(beta(t) gamma) (0, dW),   D = [[0, -1], [omega, c]]

(spec section 1). The helpers here return the entries of the 2x2 matrices as separate tensors that
broadcast against each other, so one call serves any data shape. Callers pass float64 tensors:
small-t covariances cancel catastrophically in float32 (spec section 1.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

# |q| below this uses the Taylor series of C and S (R = 1 gives q == 0 exactly).
_Q_SMALL = 1e-4


def cosh_sinhc(q: Tensor) -> tuple[Tensor, Tensor]:
    """C(q) = cosh(sqrt q) and S(q) = sinh(sqrt q) / sqrt q, continued analytically to q <= 0."""
    small = q.abs() < _Q_SMALL
    qs = torch.where(small, torch.ones_like(q), q)  # keeps the unused branches finite
    r = qs.abs().sqrt()
    c_big = torch.where(qs > 0, torch.cosh(r), torch.cos(r))
    s_big = torch.where(qs > 0, torch.sinh(r), torch.sin(r)) / r
    c_small = 1 + q / 2 + q**2 / 24 + q**3 / 720
    s_small = 1 + q / 6 + q**2 / 120 + q**3 / 5040
    return torch.where(small, c_small, c_big), torch.where(small, s_small, s_big)


def expm2x2(m11: Tensor, m12: Tensor, m21: Tensor, m22: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """exp(M) of a 2x2 matrix given entry-wise, without dividing by an eigen-gap.

    exp(M) = e^tau [C(q) I + S(q) (M - tau I)] with tau = tr(M)/2 and q = tau^2 - det(M);
    exact for Jordan blocks (q = 0), which an eigendecomposition is not.
    """
    tau = (m11 + m22) / 2
    q = tau**2 - (m11 * m22 - m12 * m21)
    c, s = cosh_sinhc(q)
    e = torch.exp(tau)
    return e * (c + s * (m11 - tau)), e * s * m12, e * s * m21, e * (c + s * (m22 - tau))


def transition(big_b: Tensor, omega: Tensor, c: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Phi = exp(-B/2 D) for D = [[0, -1], [omega, c]] (or D~ = [[0, 1], [-omega, c]] if reverse).

    ``big_b`` is the integrated rate B = int beta dt over the step. D~ is the linear part of the reverse-time
    splitting sampler (spec section 4.2); it has the trace and determinant of D.
    """
    sign = -1.0 if reverse else 1.0
    return expm2x2(torch.zeros_like(big_b * omega), sign * big_b / 2, -sign * big_b * omega / 2, -big_b * c / 2)


def stationary(omega: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """Lemma 1: the invariant law is N(0, diag(1/(omega kappa), 1/kappa)); returns (Sxx, Svv)."""
    return 1 / (omega * kappa), 1 / kappa


def covariance(phi: tuple[Tensor, Tensor, Tensor, Tensor], omega: Tensor, kappa: Tensor,
               var0v: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Sigma_t = Sigma_inf + Phi (Sigma_0 - Sigma_inf) Phi^T with Sigma_0 = diag(0, var0v); returns (xx, xv, vv)."""
    p11, p12, p21, p22 = phi
    sxx, svv = stationary(omega, kappa)
    d = var0v - svv  # (Sigma_0 - Sigma_inf)_vv; the xx entry is -sxx
    return (sxx - p11 * p11 * sxx + p12 * p12 * d,
            -p11 * p21 * sxx + p12 * p22 * d,
            svv - p21 * p21 * sxx + p22 * p22 * d)


def cholesky2x2(sxx: Tensor, sxv: Tensor, svv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lower Cholesky factor [[Lxx, 0], [Lvx, Lvv]] of [[sxx, sxv], [sxv, svv]], without jitter (float64 callers).

    A fixed diagonal jitter is wrong where Sigma is small: 1e-12 moved Lvv by 7e-5 at t = 1e-3 and by 7% at
    t = 1e-4 (dsm, beta 5), and by 98% on a reverse step of B = 5e-5. Where sxx is not positive (t = 0, a zero
    step) the factor is [[0, 0], [0, sqrt(svv)]].
    """
    pos = sxx > 0
    root = torch.where(pos, sxx, torch.ones_like(sxx)).sqrt()
    lxx = torch.where(pos, root, torch.zeros_like(root))
    lvx = torch.where(pos, sxv / root, torch.zeros_like(root))
    lvv = (svv - lvx * lvx).clamp_min(0.0).sqrt()
    return lxx, lvx, lvv
