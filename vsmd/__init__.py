"""vsmd: Variational Schrödinger Momentum Diffusion (Rojas et al., AISTATS 2025) on PyTorch Lightning.

The Python API (vsmd.api), the ``vsmd`` command's twin::

    import vsmd
    model = vsmd.load("runs/spiral8y/version_0/checkpoints/last.ckpt")
    x = model.sample(1000, sampler="ei", nfe=20)     # (1000, 2), in the data's coordinates
    metrics = vsmd.evaluate(model)                    # the metrics of vsmd test
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["Model", "evaluate", "fit", "load"]

if TYPE_CHECKING:
    from vsmd.api import Model, evaluate, fit, load


def __getattr__(name: str) -> Any:
    """The API on first use: ``import vsmd.diffusion`` alone does not import Lightning."""
    if name in __all__:
        from vsmd import api

        return getattr(api, name)
    raise AttributeError(f"module 'vsmd' has no attribute {name!r}")
