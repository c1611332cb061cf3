"""U-Net score network for 32x32 images (DDPM / NCSN++ family): residual blocks, self-attention at 16x16,
sinusoidal time embedding, optional class conditioning. Input the phase-space state (B, n_state*C, H, W),
output eps (B, C, H, W); the output layer starts at zero."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vsmd.models.nets import FourierTimeEmbedding


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        return (self.skip(x) + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    def __init__(self, ch: int, heads: int = 1) -> None:
        super().__init__()
        self.norm, self.heads = _norm(ch), heads
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                         v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))) / math.sqrt(2.0)


class UNet(nn.Module):
    """U-Net for square images.

    Args:
        in_channels: channels of the input state (2C for momentum processes, C for overdamped ones).
        out_channels: channels of the output (C).
        image_size: height = width of the input.
        channels: base width.
        channel_mult: width multipliers per resolution (each but the last halves the resolution).
        num_res_blocks: residual blocks per resolution.
        attn_resolutions: resolutions with self-attention after each residual block.
        dropout: dropout inside the residual blocks.
        num_classes: > 0 adds a learned class embedding (class-conditional model).
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 3, image_size: int = 32, channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1, num_classes: int = 0) -> None:
        super().__init__()
        if image_size % (2 ** (len(channel_mult) - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channel_mult) - 1}")
        emb_dim = 4 * channels
        self.embed = FourierTimeEmbedding(channels)
        self.time = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        self.num_classes = num_classes
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(ch))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), AttnBlock(ch),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(ch))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, a: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        c_noise = c_noise.expand(a.shape[0]) if c_noise.numel() == 1 else c_noise
        emb = self.time(self.embed(c_noise))
        if self.label is not None:
            if labels is None:
                raise ValueError("this U-Net is class-conditional: pass labels")
            emb = emb + self.label(labels)
        h = self.inp(a)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.out(h)
