"""Spec 7.9: with Gaussian data the exact marginal score minimises the eps-loss of the module."""

from __future__ import annotations

import pytest
import torch

from vsmd.diffusion import make_process


def exact_eps(process, a: torch.Tensor, t: torch.Tensor, m: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """eps* = -L_vv s*, with s* the v-score of the exact marginal N(Phi (m, 0), Sigma_t|0 + Phi diag(s0^2, 0) Phi^T)."""
    k = process.coefficients(t, dtype=torch.float64)
    sxx = k["lxx"] ** 2 + k["p11"] ** 2 * s0**2
    sxv = k["lxx"] * k["lvx"] + k["p11"] * k["p21"] * s0**2
    svv = k["lvx"] ** 2 + k["lvv"] ** 2 + k["p21"] ** 2 * s0**2
    x, v = (z.double() for z in process.split(a))
    dx, dv = x - k["p11"] * m, v - k["p21"] * m
    score_v = -(-sxv * dx + sxx * dv) / (sxx * svv - sxv**2)
    return (-k["lvv"] * score_v).float()


@pytest.mark.parametrize("name, damping", [("vsuld", 0.7), ("cld", 1.0)])
def test_exact_score_minimises_the_loss(name: str, damping: float) -> None:
    g = torch.Generator().manual_seed(0)
    p = make_process(name, (2,), beta=5.0, damping=damping)
    if p.adaptive:
        p.rho.data = torch.tensor([0.8, -0.5])
    m, s0 = torch.tensor([1.5, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    n = 200_000
    x0 = (m + s0 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()
    t = p.t_eps + (p.t_max - p.t_eps) * torch.rand(n, generator=g)
    a, eps, _ = p.perturb(x0, t, generator=g)
    star = exact_eps(p, a, t, m, s0)

    def loss(pred: torch.Tensor) -> float:
        return float((pred - eps).double().pow(2).sum(1).mean())

    base = loss(star)
    assert base < 2.0  # the eps-loss of a perfect network is below that of predicting 0 (= d = 2)
    direction = torch.randn(n, 2, generator=g)
    for delta in (0.05, 0.2):
        assert loss(star + delta * direction) > base
        assert loss(star * (1 + delta)) > base and loss(star * (1 - delta)) > base
