"""A learned orthogonal frame Q for a full variational score A = Q diag(alpha) Q^T (issue 12).

In the frame's coordinates (x_f = Q^T x, v_f = Q^T v) the process with A_x = Q diag(alpha) Q^T and
A_v = Q diag(nu) Q^T is the diagonal one, per dimension the same exact 2x2 kernel, because the noise
sqrt(beta gamma) dW is rotation-invariant. Training stays simulation-free and exact; only the data are turned.

Parametrisation: Q = Q0 exp(K(theta)), K the skew-symmetric matrix with the d(d - 1)/2 entries theta above
the diagonal, and Q0 a fixed start (the data's principal axes). Why the exponential map:

* Q is orthogonal for every theta (exp of a skew matrix), so no re-orthogonalisation, and Q0 is theta = 0
  exactly, which makes "Q = I reproduces the diagonal process" hold bit for bit;
* theta is an ordinary Euclidean parameter, so Adam's moments and the step-size schedule mean the same over the
  whole fit and survive a resume (a retraction around the current Q would change the coordinates every step);
* the gradient is cheap and exact: dL/dQ in closed form from the SA moments, then through exp by the adjoint of
  its Frechet derivative, one matrix_exp of a 2d x 2d block matrix (Higham 2008, section 10.6).

Householder products cost the same but need d reflections to reach every rotation, and their parameters are not
unique; Cayley maps cannot represent rotations by pi. For d in the hundreds, one exp of 2d x 2d per A-step is
nothing next to the backward simulation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def n_angles(d: int) -> int:
    return d * (d - 1) // 2


def skew(theta: Tensor, d: int) -> Tensor:
    """K with K[i, j] = theta_(ij) = -K[j, i] for i < j (row-major order of the upper triangle)."""
    rows, cols = torch.triu_indices(d, d, offset=1, device=theta.device)
    k = theta.new_zeros(d, d)
    k = k.index_put((rows, cols), theta)
    return k - k.T


def skew_grad(g_k: Tensor) -> Tensor:
    """dL/dtheta from dL/dK for K = skew(theta): G[i, j] - G[j, i] over the upper triangle."""
    d = g_k.shape[0]
    rows, cols = torch.triu_indices(d, d, offset=1, device=g_k.device)
    return g_k[rows, cols] - g_k[cols, rows]


def expm_grad(k: Tensor, g_e: Tensor) -> Tensor:
    """dL/dK for E = exp(K) given dL/dE: the adjoint of the Frechet derivative of exp at K, which is the
    Frechet derivative at K^T in the direction dL/dE, i.e. the upper-right block of exp([[K^T, G], [0, K^T]])."""
    d = k.shape[0]
    block = k.new_zeros(2 * d, 2 * d)
    block[:d, :d] = k.T
    block[d:, d:] = k.T
    block[:d, d:] = g_e
    return torch.linalg.matrix_exp(block)[:d, d:]


class Rotation(nn.Module):
    """Q = base exp(K(angles)): ``base`` a fixed orthogonal start (buffer), ``angles`` the learned parameter.

    The SA stage sets ``angles.grad`` by hand (``grad``), like rho's; the score network's optimiser never sees it.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        if d < 2:
            raise ValueError(f"a learned rotation needs at least 2 dimensions, got {d}")
        self.d = int(d)
        self.register_buffer("base", torch.eye(d, dtype=torch.float64))
        self.angles = nn.Parameter(torch.zeros(n_angles(d), dtype=torch.float64), requires_grad=False)

    def reset(self, base: Tensor) -> None:
        """Start at ``base`` (orthogonal), angles 0."""
        eye = torch.eye(self.d, dtype=torch.float64, device=base.device)
        base = base.to(torch.float64)
        if base.shape != (self.d, self.d) or not torch.allclose(base.T @ base, eye, atol=1e-6):
            raise ValueError(f"the start of the rotation must be an orthogonal {self.d} x {self.d} matrix")
        self.base.copy_(base)
        self.angles.data.zero_()

    def matrix(self, angles: Tensor | None = None) -> Tensor:
        """Q in float64 (for ``angles``, default the current ones)."""
        theta = self.angles.detach() if angles is None else angles
        return self.base @ torch.linalg.matrix_exp(skew(theta.to(torch.float64), self.d))

    def grad(self, g_q: Tensor) -> Tensor:
        """dL/dangles from dL/dQ (float64), exact through the exponential map."""
        k = skew(self.angles.detach(), self.d)
        return skew_grad(expm_grad(k, self.base.T @ g_q.to(torch.float64)))
