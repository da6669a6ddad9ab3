"""
The light MAE-style pixel decoder that ReconPruner's training reconstructs images with.

FastDriveVLA uses six Qwen2.5-VL decoder layers and a feed-forward head; ours is the MAE decoder
recipe at a small width: tokens ``[B, N, D]`` (dropped ones are zero vectors) -> a linear
embedding -> plus fixed 2-D sin-cos position embeddings of the patch grid -> ``layers``
bidirectional pre-norm transformer layers -> a linear head to each token's ``p x p x 3`` pixels
-> the ``(grid p) x (grid p)`` image. A dropped token thus reaches the decoder as its position
alone, the MAE mask token.

One addition of ours: a learned part embedding (foreground or background), added at every
position, tells the one shared decoder which of the two images it rebuilds. Without it a decoder
that only sees which tokens are present has a stable bad optimum: with every token in V_fore it
learns to segment (a background token rebuilds as zero), and then moving a background token to
V_back no longer pays, so the scorer stays at "everything positive" even with the background
loss on.

No normalisation touches a token before the mask is applied: a scale-invariant norm would erase
the straight-through gradient ``d loss / d M``. Tokens are divided by one fixed scalar
(``token_scale``, the RMS of the training tokens) instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn, Tensor


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of the reconstruction decoder."""

    hidden_size: int  # D of the visual tokens (the LLM width)
    grid: int  # tokens per side of a view's square patch grid
    patch_pixels: int = 8  # reconstructed pixels per token side (image = grid * patch_pixels)
    width: int = 128
    layers: int = 2
    heads: int = 4

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_pixels

    def as_dict(self) -> dict:
        return asdict(self)


def sincos_2d(grid: int, width: int) -> Tensor:
    """Return MAE's fixed 2-D sin-cos position embedding, ``[grid * grid, width]``."""
    if width % 4:
        raise ValueError(f'decoder width {width} must be a multiple of 4 for 2-D sin-cos')
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing='ij')
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


class ReconDecoder(nn.Module):
    """``[B, N, D]`` (masked) tokens -> ``[B, 3, S, S]`` images, S = grid * patch_pixels."""

    def __init__(self, config: DecoderConfig, token_scale: float = 1.0) -> None:
        super().__init__()
        self.config = config
        c = config
        self.register_buffer('token_scale', torch.tensor(float(token_scale)))
        self.register_buffer('pos', sincos_2d(c.grid, c.width)[None], persistent=False)
        self.embed = nn.Linear(c.hidden_size, c.width)
        self.part = nn.Parameter(torch.zeros(2, c.width))  # 0: rebuild foreground, 1: background
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0,
                                       activation='gelu', batch_first=True, norm_first=True)
            for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, 3 * c.patch_pixels**2)

    def forward(self, tokens: Tensor, part: Tensor) -> Tensor:
        """``part`` ``[B]`` long: 0 where the row rebuilds the foreground, 1 the background."""
        c = self.config
        b, n, _ = tokens.shape
        if n != c.grid * c.grid:
            raise ValueError(f'decoder built for {c.grid} x {c.grid} tokens, got {n}')
        x = self.embed(tokens / self.token_scale) + self.pos + self.part[part][:, None]
        for block in self.blocks:
            x = block(x)
        patches = self.head(self.norm(x))  # [B, N, p * p * 3]
        p = c.patch_pixels
        img = patches.view(b, c.grid, c.grid, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return img.reshape(b, 3, c.grid * p, c.grid * p)
