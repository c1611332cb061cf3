"""Monte Carlo check of the closed-form kernel (spec section 7, invariant 7).

The forward SDE of spec 1.1, written here from the spec and not taken from the package,

    dx = 1/2 beta v dt,   dv = -1/2 beta (omega x + c v) dt + sqrt(beta gamma) dW,

is simulated with Euler-Maruyama from a fixed x0 and v0 ~ N(0, s^2) (the hsm marginal, Sigma_0 = diag(0, s^2))
at A != 0 and R = 0.7, and its mean and covariance at t = 0.1, 0.5 and 1 are compared with the closed form of
``process.coefficients``. Tolerance: 3 standard errors of the Gaussian moment estimators plus the O(h) bias of
EM, which for a linear SDE is known exactly from the EM moment recursion
m_{k+1} = (I + hF) m_k, S_{k+1} = (I + hF) S_k (I + hF)^T + h Q.
"""

from __future__ import annotations

import math

import torch

from vsmd.diffusion import make_process

F64 = torch.float64


def em_moment_recursion(omega, c, beta, gamma, h, n_steps, x0, s2, save):
    """Exact mean/covariance of the EM chain (float64), per dimension; returns {step: (mean (d,2), cov (d,2,2))}."""
    d = omega.numel()
    f = torch.zeros(d, 2, 2, dtype=F64)
    f[:, 0, 1] = 0.5 * beta
    f[:, 1, 0] = -0.5 * beta * omega
    f[:, 1, 1] = -0.5 * beta * c
    step = torch.eye(2, dtype=F64) + h * f
    q = torch.zeros(2, 2, dtype=F64)
    q[1, 1] = beta * gamma * h
    m = torch.stack([x0, torch.zeros_like(x0)], -1).unsqueeze(-1)
    s = torch.zeros(d, 2, 2, dtype=F64)
    s[:, 1, 1] = s2
    out = {}
    for k in range(1, n_steps + 1):
        m = step @ m
        s = step @ s @ step.transpose(-1, -2) + q
        if k in save:
            out[k] = (m.squeeze(-1).clone(), s.clone())
    return out


def test_forward_em_matches_closed_form():
    beta, gamma, damping, s2 = 5.0, 2.0, 0.7, 0.5
    n_paths, h = 100_000, 2.5e-4
    n_steps = round(1.0 / h)
    save = {round(0.1 / h): 0.1, round(0.5 / h): 0.5, n_steps: 1.0}
    p = make_process("vsuld", (2,), beta=beta, gamma=gamma, damping=damping, init_velocity="hsm", v0_var=s2)
    p.rho.data = torch.tensor([0.6, -0.8])                  # A != 0 in both dimensions, of both signs
    omega, c, _ = p.drift_params()
    alpha, nu = p.variational_scores()
    assert (alpha.abs() > 0.1).all() and (nu.abs() > 0.05).all()
    x0 = torch.tensor([1.0, -2.0], dtype=F64)

    # Euler-Maruyama in float32 (the cost is the Gaussian draws), in place.
    g = torch.Generator().manual_seed(2024)
    om32, c32 = omega.float(), c.float()
    x = x0.float().expand(n_paths, 2).clone()
    v = math.sqrt(s2) * torch.randn(n_paths, 2, generator=g)
    noise = torch.empty(n_paths, 2)
    tmp = torch.empty(n_paths, 2)
    # v <- v - 1/2 beta h (omega x + c v) + sqrt(beta gamma h) xi
    damp = 1 - 0.5 * beta * h * c32
    kick = 0.5 * beta * h * om32
    sd = math.sqrt(beta * gamma * h)
    snaps = {}
    for k in range(1, n_steps + 1):
        noise.normal_(generator=g)
        torch.mul(x, kick, out=tmp)
        x.add_(v, alpha=0.5 * beta * h)
        v.mul_(damp).sub_(tmp).add_(noise, alpha=sd)
        if k in save:
            snaps[k] = torch.stack([x, v], -1).to(F64)       # (n, d, 2)

    em = em_moment_recursion(omega, c, beta, gamma, h, n_steps, x0, s2, save)
    for k, t in save.items():
        kc = p.coefficients(torch.tensor([t], dtype=F64), dtype=F64)
        mu = torch.stack([kc["p11"][0] * x0, kc["p21"][0] * x0], -1)   # Phi (x0, 0)
        lxx, lvx, lvv = kc["lxx"][0], kc["lvx"][0], kc["lvv"][0]
        sxx, sxv, svv = lxx**2, lxx * lvx, lvx**2 + lvv**2
        sigma = torch.stack([torch.stack([sxx, sxv], -1), torch.stack([sxv, svv], -1)], -2)

        # The EM chain itself converges to the closed form at O(h): its exact bias is small but not zero.
        m_em, s_em = em[k]
        diag = torch.diagonal(sigma, dim1=-2, dim2=-1)
        scale = (diag.unsqueeze(-1) * diag.unsqueeze(-2)).sqrt()
        bias_m, bias_s = (m_em - mu).abs(), (s_em - sigma).abs()
        assert (bias_s / scale).max() < 20 * h * beta         # ~0.25%: O(h), as the spec's "1% at h = 1e-3"
        assert (bias_m / diag.sqrt()).max() < 20 * h * beta

        a = snaps[k]
        n = a.shape[0]
        mean = a.mean(0)
        cen = a - mean
        cov = torch.einsum("ndi,ndj->dij", cen, cen) / (n - 1)
        se_m = (diag / n).sqrt()
        se_s = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + sigma**2) / n).sqrt()
        slack = 1e-4 * scale                                  # float32 accumulation over 4000 steps
        assert ((mean - mu).abs() <= 3 * se_m + bias_m + 1e-4 * diag.sqrt()).all(), (t, mean, mu)
        assert ((cov - sigma).abs() <= 3 * se_s + bias_s + slack).all(), (t, cov, sigma)
        # The dimensions are independent: the cross-dimension covariance vanishes.
        cross = (cen[:, 0, :].T @ cen[:, 1, :]) / (n - 1)
        se_cross = (diag[0].unsqueeze(-1) * diag[1].unsqueeze(0) / n).sqrt()
        assert (cross.abs() <= 4 * se_cross).all()
