"""
The LR schedule, the update and the batch order that both trainers (vlm.py, reconpruner.py) share.

- ``warmup_cosine``: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (linear
  warm-up from 0 over ``warmup`` steps, then a half cosine to ``min_ratio`` at ``steps``), as a
  factor of the step, so a trainer can gate it per parameter group or offset it on resume.
- ``optimizer_step``: backward through accelerate, gradient clip, optimizer and schedule step.
- ``step_rows``: the rows of one global step, from a seeded permutation per epoch, so a run
  resumed at step s draws the same rows as one that never stopped; each process takes its
  slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def warmup_cosine(steps: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """Return transformers' cosine-with-warm-up factor of the step (module doc)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        probe, num_warmup_steps=warmup, num_training_steps=steps, min_lr_rate=min_ratio)
    return schedule.lr_lambdas[0]


def optimizer_step(accelerator, loss: torch.Tensor, module: torch.nn.Module, optimizer,
                   scheduler, grad_clip: float) -> None:
    """Backpropagate ``loss`` through accelerate, clip to ``grad_clip`` (0: off), then step."""
    accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def step_rows(step: int, rows: int, per_step: int, seed: int, rank: int = 0,
              world: int = 1) -> np.ndarray:
    """Return process ``rank``'s rows of global step ``step``: epoch permutations, no repeats."""
    per_epoch = max(1, rows // per_step)
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(rows)
    return perm[offset * per_step:(offset + 1) * per_step][rank::world]
