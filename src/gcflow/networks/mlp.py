"""The toy network: a residual MLP conditioned on the noise label, for data of shape (B, d)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos features of the noise label c_noise (shape (B,)) -> (B, dim)."""

    def __init__(self, dim: int, max_period: float = 1000.0, scale: float = 100.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale  # c_noise = log(σ)/4 spans only ~[-1.6, 1.1]: spread it over the frequencies

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = (self.scale * c_noise.to(self.freqs.dtype))[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = torch.nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.drop(y))


class ToyMLP(nn.Module):
    """F(x_in (B, d), c_noise (B,), class_labels ignored) -> (B, d).

    Args:
        dim: data dimension d.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: size of the noise embedding.
        dropout: dropout inside each block (shared between teacher and student passes by the trainer).
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, emb_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Sequential(SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([ResidualBlock(width, emb_dim, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        shape = x.shape
        emb = self.embed(c_noise)
        h = self.inp(x.reshape(shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(shape)
