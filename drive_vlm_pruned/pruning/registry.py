"""Pruners by name, so the node, the CLI and the benchmarks choose with a string."""

from __future__ import annotations

from collections.abc import Callable

from .attention import DART, FastV
from .base import Pruner
from .baselines import RandomPruner, StridePruner
from .diversity import DivPrune, TFPS
from .mvpruner import MVPruner, MVPrunerStage1, MVPrunerStage2
from .reconpruner import ReconPruner

PRUNERS: dict[str, Callable[..., Pruner | MVPruner]] = {
    'tfps': TFPS,
    'divprune': DivPrune,
    'random': RandomPruner,
    'stride': StridePruner,
    'fastv': FastV,
    'dart': DART,
    'mvpruner': MVPruner,
    'mvpruner-s1': MVPrunerStage1,
    'mvpruner-s2': MVPrunerStage2,
    'reconpruner': ReconPruner,
}


def pruner_names() -> list[str]:
    return sorted(PRUNERS)


def check_pruner_name(name: str) -> str:
    """Return the canonical name (any case, '_' for '-'), or raise ValueError listing all."""
    key = str(name).strip().lower().replace('_', '-')
    if key == 't-fps':
        key = 'tfps'
    if key not in PRUNERS:
        raise ValueError(f'unknown pruner {name!r}; known pruners: {", ".join(pruner_names())}')
    return key


def make_pruner(name: str, **options) -> Pruner | MVPruner:
    """Create a pruner by name, with constructor options (e.g. ``similarity_dtype=None``)."""
    return PRUNERS[check_pruner_name(name)](**options)
