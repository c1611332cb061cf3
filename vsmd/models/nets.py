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

    def __init__(self, data_dim: int, n_state: int, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 out_state: int = 1) -> None:
        super().__init__()
        self.embed = FourierTimeEmbedding(time_dim)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(n_state * data_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_state * data_dim))  # eps_v, or (eps_x, eps_v)
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, a: Tensor, c_noise: Tensor) -> Tensor:
        temb = self.time(self.embed(c_noise))
        h = self.inp(a)
        for block, proj in zip(self.blocks, self.time_proj):
            h = h + block(h + proj(temb))
        return self.out(h)


class _GatedConvBlock(nn.Module):
    """Residual block over the series axis: dilated circular conv + time + condition, tanh-sigmoid gate."""

    def __init__(self, channels: int, dilation: int, emb_dim: int) -> None:
        super().__init__()
        self.time = nn.Linear(emb_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation,
                                 padding_mode="circular")
        self.cond = nn.Conv1d(1, 2 * channels, 1)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h: Tensor, temb: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        y = self.dilated(h + self.time(temb)[..., None]) + self.cond(cond)
        gate, filt = y.chunk(2, dim=1)
        res, skip = nn.functional.leaky_relu(self.out(torch.sigmoid(gate) * torch.tanh(filt)), 0.4).chunk(2, dim=1)
        return (h + res) / math.sqrt(2.0), skip


class ConditionalConvScoreNet(nn.Module):
    """TimeGrad-style denoiser over a vector of D series, conditioned on a context vector.

    The D series are the length axis of a Conv1d signal with n_state input channels (x and v); the
    condition is mapped to one channel of length D; output eps (B, D). The last layer starts at zero.
    """

    def __init__(self, target_dim: int, n_state: int, cond_dim: int, channels: int = 8, layers: int = 8,
                 time_dim: int = 32, emb_dim: int = 64, out_state: int = 1) -> None:
        super().__init__()
        self.target_dim, self.n_state = target_dim, n_state
        self.embed = FourierTimeEmbedding(time_dim)
        self.time = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        width = max(target_dim // 2, 16)
        self.cond = nn.Sequential(nn.Linear(cond_dim, width), nn.LeakyReLU(0.4), nn.Linear(width, target_dim),
                                  nn.LeakyReLU(0.4))
        self.inp = nn.Conv1d(n_state, channels, 1)
        cycle = 2 if target_dim > 2 else 1  # circular padding must not exceed the length
        self.blocks = nn.ModuleList(_GatedConvBlock(channels, 2 ** (i % cycle), emb_dim) for i in range(layers))
        self.out_state = out_state
        self.head = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.LeakyReLU(0.4),
                                  nn.Conv1d(channels, out_state, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def forward(self, a: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        n = a.shape[0]
        h = nn.functional.leaky_relu(self.inp(a.reshape(n, self.n_state, self.target_dim)), 0.4)
        temb = self.time(self.embed(c_noise.expand(n) if c_noise.numel() == 1 else c_noise))
        c = self.cond(cond)[:, None]
        skips = 0
        for block in self.blocks:
            h, skip = block(h, temb, c)
            skips = skips + skip
        out = self.head(skips / math.sqrt(len(self.blocks)))  # (B, out_state, D)
        return out.squeeze(1) if self.out_state == 1 else out.reshape(n, -1)


class TimeGradNet(nn.Module):
    """RNN encoder of the scaled history plus the conditional score network (one module, so EMA covers both).

    RNN input per time step: the lagged scaled values (D x n_lags), a learned value per series (D) and the time
    features; its output goes through a linear layer to the condition of x at that step.
    """

    def __init__(self, target_dim: int, n_state: int, lags: list[int], n_time_features: int, rnn: str = "gru",
                 hidden: int = 40, layers: int = 2, dropout: float = 0.1, cond_dim: int = 100,
                 channels: int = 8, residual_layers: int = 8, out_state: int = 1) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        self.register_buffer("lags", torch.tensor(lags, dtype=torch.long), persistent=False)
        self.series_embed = nn.Embedding(target_dim, 1)
        cell = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cell(target_dim * len(lags) + target_dim + n_time_features, hidden, layers, batch_first=True,
                        dropout=dropout if layers > 1 else 0.0)
        self.to_cond = nn.Linear(hidden, cond_dim)
        self.score = ConditionalConvScoreNet(target_dim, n_state, cond_dim, channels, residual_layers,
                                             out_state=out_state)

    def encode(self, values: Tensor, time_feat: Tensor, positions: Tensor, state=None):
        """Conditions for x at ``positions`` (T,) of ``values`` (B, L, D) scaled, ``time_feat`` (B, L', F).

        Returns (cond (B, T, cond_dim), RNN state after the last position).
        """
        b, _, d = values.shape
        lagged = values[:, positions[:, None] - self.lags[None]]          # (B, T, n_lags, D)
        emb = self.series_embed.weight.view(1, 1, d).expand(b, len(positions), d)
        inputs = torch.cat([lagged.flatten(2), emb, time_feat[:, positions]], dim=2)
        out, state = self.rnn(inputs, state)
        return self.to_cond(out), state

    def forward(self, a: Tensor, c_noise: Tensor, cond: Tensor) -> Tensor:
        return self.score(a, c_noise, cond)
