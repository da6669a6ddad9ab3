"""
SSIM (Wang et al., 2004) for image batches in [0, 1], differentiable, in plain torch.

Per channel: local means, variances and covariance under an 11 x 11 Gaussian window (sigma 1.5),
``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 +
C2))`` with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, L = 1, averaged over the valid (unpadded)
window positions, channels and the batch. Images smaller than the window use a window as large
as the image.
"""

from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

WINDOW = 11
SIGMA = 1.5
C1 = 0.01**2
C2 = 0.03**2


def gaussian_kernel(size: int, sigma: float, device, dtype) -> Tensor:
    """1-D normalised Gaussian of ``size`` taps."""
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def ssim(x: Tensor, y: Tensor, window: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """Mean SSIM of two ``[B, C, H, W]`` batches with values in [0, 1] (module doc)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f'ssim needs two [B, C, H, W] tensors of one shape, got '
                         f'{tuple(x.shape)} and {tuple(y.shape)}')
    size = min(window, x.shape[-1], x.shape[-2])
    g = gaussian_kernel(size, sigma, x.device, x.dtype)
    b, c, h, w = x.shape
    rows = g.view(1, 1, size, 1).expand(5 * c, 1, size, 1)
    cols = g.view(1, 1, 1, size).expand(5 * c, 1, 1, size)
    # The five local statistics as channels of one depthwise conv; the 2-D Gaussian is
    # separable, so two 1-D passes (22 taps instead of 121).
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = F.conv2d(F.conv2d(stack, rows, groups=5 * c), cols, groups=5 * c)
    blurred = blurred.view(b, 5, c, h - size + 1, w - size + 1)
    mu_x, mu_y, xx, yy, xy = blurred.unbind(1)
    var_x = xx - mu_x.pow(2)
    var_y = yy - mu_y.pow(2)
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    den = (mu_x.pow(2) + mu_y.pow(2) + C1) * (var_x + var_y + C2)
    return (num / den).mean()
