"""
Linear probes: is a quantity linearly readable from a representation? (Alain & Bengio, 2016).

A softmax regression on standardised features, fit on one set and scored on a held-out one. A
probe that beats the majority answer shows the information is there; one that does not shows
that a linear read-out cannot find it (not that it is absent).
"""

from __future__ import annotations

import torch
from torch import nn, Tensor
import torch.nn.functional as F


def linear_probe_accuracy(x: Tensor, y: Tensor, x_eval: Tensor, y_eval: Tensor,
                          steps: int = 300, weight_decay: float = 1e-3) -> float:
    """Fit ``x -> y`` (long class ids) by full-batch Adam; return accuracy on ``x_eval``."""
    return linear_probe_correct(x, y, x_eval, y_eval, steps, weight_decay).float().mean().item()


def linear_probe_correct(x: Tensor, y: Tensor, x_eval: Tensor, y_eval: Tensor,
                         steps: int = 300, weight_decay: float = 1e-3) -> Tensor:
    """Fit as ``linear_probe_accuracy`` does; return bool per ``x_eval`` item, for pairing."""
    x, x_eval = x.float(), x_eval.float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_eval = (x - mean) / std, (x_eval - mean) / std
    classes = int(max(y.max(), y_eval.max())) + 1
    generator = torch.Generator().manual_seed(0)  # the same probe for the same features
    probe = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(probe(x), y).backward()
            opt.step()
    with torch.no_grad():
        return probe(x_eval).argmax(-1) == y_eval
