"""The pruner interface and the one entry point every caller uses, ``prune``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from .budgets import Allocator, UniformAllocator
from .groups import Groups
from .tokens import KeptTokens, LayerState, ViewTokens


class Stage(str, Enum):
    """Where a pruner acts (docs/pruning.md, "Where a pruner acts")."""

    PRE_LLM = 'pre_llm'  # after vision encoder + projector; the LLM sees the shorter sequence
    IN_LLM = 'in_llm'  # before decoder layer K, scored from layer K-1 (needs a LayerState)


@dataclass(frozen=True)
class Selection:
    """One selection call: tokens, their padded groups with budgets, and optional extras."""

    tokens: ViewTokens
    groups: Groups
    layer: LayerState | None = None
    generator: torch.Generator | None = None


class Pruner(ABC):
    """
    Selects which visual tokens to keep, given per-view budgets.

    Subclasses set ``name`` and ``stage``, may set ``allocator`` when the method defines its own
    view budgets (it then overrides the caller's), and implement ``_picks`` on padded groups.
    ``joint = True`` selects over all views of a sample together (only the total budget counts).
    """

    name: ClassVar[str]
    stage: ClassVar[Stage] = Stage.PRE_LLM
    joint: bool = False
    allocator: Allocator | None = None

    def select(
        self,
        tokens: ViewTokens,
        budgets: Tensor,
        layer: LayerState | None = None,
        generator: torch.Generator | None = None,
    ) -> KeptTokens:
        """Kept indices for ``budgets`` ``[B, V]`` (long, CPU)."""
        if self.stage is Stage.IN_LLM and layer is None:
            raise ValueError(
                f'pruner {self.name!r} acts inside the LLM and needs the layer state: run it with '
                'prune_layer >= 1, or pick a pre-LLM pruner (tfps, divprune, random, stride)'
            )
        groups = Groups.of(tokens, budgets, self.joint)
        return groups.kept(self._picks(Selection(tokens, groups, layer, generator)))

    @abstractmethod
    def _picks(self, sel: Selection) -> Tensor:
        """``[G, max k]`` picked rows per group, -1 past each group's budget."""


def prune(
    pruner: Pruner,
    tokens: ViewTokens,
    keep_ratio: float | Sequence[float],
    allocator: Allocator | None = None,
    layer: LayerState | None = None,
    seed: int | None = None,
) -> KeptTokens:
    """
    Validate, allocate per-view budgets, select. ``keep_ratio`` may differ per sample.

    The allocator is the pruner's own when it has one (MVPruner), else ``allocator``, else uniform.
    A keep ratio of 1 keeps every token without running the selection.
    """
    tokens.validate()
    if layer is not None:
        layer.validate()
    alloc = pruner.allocator or allocator or UniformAllocator()
    budgets = alloc(tokens, keep_ratio)
    counts = tokens.valid_counts()
    if torch.equal(budgets, counts):
        return keep_all(counts, tokens.device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=tokens.device).manual_seed(seed)
    return pruner.select(tokens, budgets, layer, generator)


def keep_all(counts: Tensor, device: torch.device) -> KeptTokens:
    """Every real token of every view."""
    return KeptTokens(tuple(
        tuple(torch.arange(int(n), device=device) for n in row) for row in counts.tolist()
    ))
