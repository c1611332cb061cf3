"""Score backbones. They know nothing of SDEs: (state, c_noise[, cond]) -> eps_v of the data's shape."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierTimeEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise = 999 t (the DDPM / VSMD-code convention)."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPScoreNet(nn.Module):
    """Residual MLP for low-dimensional data: input the state (B, n_state*d), output eps (B, d).

    Each block is x + Linear(SiLU(Linear(SiLU(x + time projection)))); the last layer starts at zero so
    the initial score is 0 (a stable start for every process).
    """

    def __init__(self, data_dim: int, n_state: int, hidden: int = 256, depth: int = 3, time_dim: int = 64) -> None:
        super().__init__()
        self.embed = FourierTimeEmbedding(time_dim)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(n_state * data_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, a: Tensor, c_noise: Tensor) -> Tensor:
        temb = self.time(self.embed(c_noise))
        h = self.inp(a)
        for block, proj in zip(self.blocks, self.time_proj):
            h = h + block(h + proj(temb))
        return self.out(h)
