"""vsmd: Variational Schrödinger Momentum Diffusion (Rojas et al., AISTATS 2025) on PyTorch Lightning."""

__version__ = "0.2.0"
