"""The training objectives of the Gaussian-path families: small callables ``(path, output, target, t) -> loss``.

The module draws the times, the path draws ``(a_t, target)`` (``path.perturb``) and the network gives ``output``
at ``a_t``; the objective turns the two into the scalar loss.
"""

from __future__ import annotations

from torch import Tensor

from vsmd.diffusion.types import GaussianPath


def eps_matching(path: GaussianPath, output: Tensor, target: Tensor, t: Tensor) -> Tensor:
    """VSMD and its relatives: ||eps_hat - eps||^2 summed over dimensions, averaged over the batch (spec section 2:
    the denoising score-matching loss with the Cholesky factor's weighting)."""
    return (output - target).pow(2).flatten(1).sum(1).mean()


def force_matching(path: GaussianPath, output: Tensor, target: Tensor, t: Tensor) -> Tensor:
    """The AGM bridge: the squared error of the normalised force, summed over dimensions, each sample weighted by
    the path's ``loss_weight(t)`` (1 / (1 - t)), averaged over the batch."""
    return ((output - target).pow(2).flatten(1).sum(1) * path.loss_weight(t)).mean()
