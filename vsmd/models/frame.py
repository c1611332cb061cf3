"""The frame a path runs in: the data divided by a per-dimension scale, then turned by an orthogonal Q.

x_frame = (x / scale) @ Q, and back with x = (x_frame @ Q^T) * scale. VSMD's rotation "pca"/"learned" sets Q (the
principal axes of the data, refined by the SA stages for "learned" through ``frame_rotation``); AGM's agm_scale
"data" sets the scale. The tensors are the module's own (buffers ``frame`` and ``x_scale``, sub-module
``frame_rotation``), so that the checkpoint keeps them under those names and moves them with the module's device; a
frame that is not used is None. :class:`FrameMixin` is the component a generative module mixes in; it knows nothing
of which family uses which part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vsmd.diffusion.rotation import Rotation


def principal_axes(cov: Tensor) -> Tensor:
    """Q whose columns are the eigenvectors of a covariance, by decreasing variance; each column's largest entry is
    made positive (a symmetric matrix, not a drift: eigh is safe here)."""
    evals, vecs = torch.linalg.eigh(cov.to(torch.float64))
    vecs = vecs[:, torch.argsort(evals, descending=True)]
    idx = vecs.abs().argmax(0)
    return vecs * torch.sign(vecs[idx, torch.arange(vecs.shape[1])])


class FrameMixin:
    """to_frame / from_frame for a LightningModule with an optional rotation Q and an optional data scale."""

    frame: Tensor | None
    x_scale: Tensor | None
    frame_rotation: Rotation | None

    def init_frame(self, data_shape: tuple[int, ...], rotation: bool = False, learned: bool = False,
                   scale: bool = False) -> None:
        """Register the frame's tensors: Q = I (``rotation``; ``learned``: refined through a Rotation), the scale 1
        (``scale``). Their values come from the data at the start of a fit, or from a checkpoint."""
        if rotation:
            self.register_buffer("frame", torch.eye(data_shape[0]))  # frame coordinates are x @ Q (= Q^T x)
        else:
            self.frame = None
        self.frame_rotation = Rotation(data_shape[0]) if learned else None
        if scale:
            self.register_buffer("x_scale", torch.ones(data_shape))
        else:
            self.x_scale = None

    def set_frame_axes(self, axes: Tensor) -> None:
        """Q := axes (and the learned rotation's base)."""
        if self.frame_rotation is not None:
            self.frame_rotation.reset(axes)
        self.frame.copy_(axes.to(self.frame.dtype))

    def refresh_frame(self) -> None:
        """Q := the learned rotation's current matrix (after an SA stage turned it)."""
        if self.frame_rotation is not None:
            self.frame.copy_(self.frame_rotation.matrix().to(self.frame.dtype))

    def to_frame(self, x: Tensor) -> Tensor:
        if self.x_scale is not None:
            x = x / self.x_scale.to(x.dtype)
        return x if self.frame is None else x @ self.frame.to(x.dtype)

    def from_frame(self, x: Tensor) -> Tensor:
        x = x if self.frame is None else x @ self.frame.to(x.dtype).T
        return x if self.x_scale is None else x * self.x_scale.to(x.dtype)

    def state_from_frame(self, a: Tensor) -> Tensor:
        """A state (x[, v]) of the process's frame in the data's coordinates (x and v rotate alike)."""
        return self.process.join(*(self.from_frame(z) for z in self.process.split(a)))

    @property
    def has_frame(self) -> bool:
        return self.frame is not None or self.x_scale is not None

    def frame_angle(self) -> float:
        """The angle (degrees) of the frame's first axis in the data's plane (2-D data)."""
        return math.degrees(math.atan2(float(self.frame[1, 0]), float(self.frame[0, 0])))

    principal_axes = staticmethod(principal_axes)
