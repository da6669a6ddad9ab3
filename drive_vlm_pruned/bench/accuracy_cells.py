"""
The cells of ``drive-vlm bench accuracy``: what one sweep point is, and which points a sweep runs.

A cell is (pruner, allocation, keep ratio, prune layer); the reference cells are the unpruned
model (``BASE_CELL``), the blind model (``BLIND_CELL``) and the majority answer
(``MAJORITY_CELL``). See bench/accuracy.py for the sweep as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .accuracy_defaults import published_layers
from ..pipeline.pipeline import RuntimeSettings

VARIANT_PRUNER = 'tfps'  # the searched and diversity allocations run with T-FPS (Prune2Drive)
DIVERSITY_PRUNER = 'mvpruner-s1'  # T-FPS with MVPruner stage 1's diversity budgets
UNIFORM, SEARCHED, DIVERSITY = 'uniform', 'searched', 'diversity'
NONE, BLIND, MAJORITY = 'none', 'blind', 'majority'


@dataclass(frozen=True)
class Cell:
    """One sweep point; ``pruner`` 'none' with keep 1.0 is the unpruned model."""

    pruner: str
    allocation: str
    keep_ratio: float
    prune_layer: int

    @property
    def key(self) -> str:
        return f'{self.pruner}/{self.allocation}/{self.keep_ratio:g}/K{self.prune_layer}'

    @property
    def label(self) -> str:
        if self.allocation in (UNIFORM, NONE, BLIND, MAJORITY):
            return self.pruner
        return f'{self.pruner}+{self.allocation}'

    def settings(self, base: RuntimeSettings, view_weights: Mapping[str, float] | None
                 ) -> RuntimeSettings:
        if self.pruner in (NONE, BLIND, MAJORITY):
            return replace(base, keep_ratio=1.0, pruner=VARIANT_PRUNER, prune_layer=0)
        pruner = DIVERSITY_PRUNER if self.allocation == DIVERSITY else self.pruner
        weights = dict(view_weights) if self.allocation == SEARCHED else None
        return replace(base, keep_ratio=self.keep_ratio, pruner=pruner,
                       prune_layer=self.prune_layer, view_weights=weights)


BASE_CELL = Cell(NONE, NONE, 1.0, 0)
BLIND_CELL = Cell(BLIND, BLIND, 1.0, 0)
MAJORITY_CELL = Cell(MAJORITY, MAJORITY, 1.0, 0)


def valid_at(pruner: str, layer: int, llm_layers: int) -> str:
    """'' when ``pruner`` can run at ``layer``, else why not."""
    try:
        RuntimeSettings(keep_ratio=0.5, pruner=pruner, prune_layer=layer).validate(llm_layers)
    except ValueError as err:
        return str(err)
    return ''


def plan_cells(pruners: Sequence[str], keep_ratios: Sequence[float], layers: Sequence[int],
               llm_layers: int, searched: bool, diversity: bool,
               search_keep: float | None = None, variant_layers: Sequence[int] | None = None
               ) -> tuple[list[Cell], list[str]]:
    """
    Return every valid cell in sweep order, and a note per skipped (pruner, layer).

    ``layers`` empty: each pruner at its published layers (bench/accuracy_defaults.py), the
    variants at prune layer 0. The allocation variants run at ``variant_layers`` (None: every
    layer of ``layers``).
    """
    cells, notes = [], []
    keeps = sorted({k for k in keep_ratios if k < 1.0}, reverse=True)
    at = {name: tuple(layers) or published_layers(name) for name in pruners}
    if not layers and variant_layers is None:
        variant_layers = (0,)
    for layer in sorted({k for ks in at.values() for k in ks}):
        names = [name for name in pruners if layer in at[name]]
        on_here = variant_layers is None or layer in variant_layers
        variants = [(VARIANT_PRUNER, a) for a, on in ((SEARCHED, searched),
                                                      (DIVERSITY, diversity)) if on and on_here]
        for name in names:
            why = valid_at(name, layer, llm_layers)
            if why:
                notes.append(f'{name} skipped at prune layer {layer}: {why}')
                continue
            cells += [Cell(name, UNIFORM, k, layer) for k in keeps]
        for name, allocation in variants:
            mv_here = 'mvpruner' in names and not valid_at('mvpruner', layer, llm_layers)
            if allocation == DIVERSITY and layer == 0 and mv_here:
                notes.append('tfps+diversity at prune layer 0 is what mvpruner runs there '
                             '(stage 1 only): reported once, as mvpruner')
                continue
            if not valid_at(name, layer, llm_layers):
                cells += [Cell(name, allocation, k, layer) for k in keeps]
        tfps_ok = not valid_at(VARIANT_PRUNER, layer, llm_layers)
        if search_keep is not None and searched and tfps_ok and on_here:
            # the searched absolute rates, next to uniform rates at the same total budget
            cells += [Cell(VARIANT_PRUNER, a, search_keep, layer) for a in (UNIFORM, SEARCHED)
                      if Cell(VARIANT_PRUNER, a, search_keep, layer) not in cells]
    return cells, notes
