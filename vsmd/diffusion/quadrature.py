"""Gauss-Legendre quadrature and Lagrange multistep weights, shared by the exponential integrator (vsmd.diffusion.ei)
and the AGM sampler (vsmd.diffusion.agm). Everything is float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

F64 = torch.float64


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the n-point Gauss-Legendre rule on [-1, 1] (Golub-Welsch), float64."""
    k = torch.arange(1, n, dtype=F64)
    beta = k / torch.sqrt(4 * k * k - 1)
    jac = torch.diag(beta, 1) + torch.diag(beta, -1)
    nodes, vecs = torch.linalg.eigh(jac)  # a symmetric tridiagonal matrix, not a drift
    return nodes, 2 * vecs[0] ** 2


def on_interval(rule: tuple[Tensor, Tensor], a, b) -> tuple[Tensor, Tensor]:
    """The rule on [-1, 1] moved to [a, b] (a, b broadcast against the nodes: (k, 1) gives k intervals)."""
    x, w = rule
    mid, half = (a + b) / 2, (b - a) / 2
    return mid + half * x, half * w


def lagrange_basis(z: Tensor, nodes: Sequence, j: int) -> Tensor:
    """l_j(z) = prod_{m != j} (z - z_m) / (z_j - z_m), the Lagrange basis polynomial of node j at the points z."""
    lag = torch.ones_like(z)
    for m, zm in enumerate(nodes):
        if m != j:
            lag = lag * (z - zm) / (nodes[j] - zm)
    return lag


def multistep_weights(times: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Per step i and node j (the last ``order`` grid times t_i, t_{i-1}, ...): w[i, j] = int_{t_i}^{t_i+1}
    l_j and u[i, j] = int_{t_i}^{t_i+1} (t_{i+1} - tau) l_j(tau) dtau, l_j the Lagrange basis of those nodes (fewer at
    the start). Float64, Gauss-Legendre with 4 points (exact for degree <= 7)."""
    if order not in (1, 2, 3):
        raise ValueError(f"the multistep order must be 1, 2 or 3, got {order}")
    t = times.to(F64).cpu()
    rule = gauss_legendre(4)
    n = len(t) - 1
    w, u = torch.zeros(n, order, dtype=F64), torch.zeros(n, order, dtype=F64)
    for i in range(n):
        nodes = [t[i - j] for j in range(min(order, i + 1))]
        a, b = t[i], t[i + 1]
        tau, qw = on_interval(rule, a, b)
        for j in range(len(nodes)):
            lj = lagrange_basis(tau, nodes, j)
            w[i, j] = (qw * lj).sum()
            u[i, j] = (qw * (b - tau) * lj).sum()
    return w, u
