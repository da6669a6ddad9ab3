"""
Visual-token pruning for multi-view VLMs: budgets and pruners on plain torch tensors.

No ROS, no transformers: give it per-view token tensors, get back the kept indices::

    from drive_vlm_pruned.pruning import ViewTokens, make_pruner, prune
    tokens = ViewTokens.from_list([torch.randn(729, 1152) for _ in range(6)])
    kept = prune(make_pruner('tfps'), tokens, keep_ratio=0.1)
    kept.indices[0][0]  # sorted kept rows of view 0, sample 0
"""

from .base import keep_all, prune, Pruner, Stage
from .budgets import (
    allocate,
    allocate_total,
    DiversityAllocator,
    total_budget,
    UniformAllocator,
    view_diversity,
    WeightedAllocator,
)
from .mvpruner import MVPruner
from .reconpruner import ReconPruner
from .registry import check_pruner_name, make_pruner, pruner_names, PRUNERS
from .tokens import check_keep_ratio, KeptTokens, LayerState, ViewTokens
from .view_weights import load_view_weights

__all__ = [
    'PRUNERS',
    'DiversityAllocator',
    'KeptTokens',
    'LayerState',
    'MVPruner',
    'Pruner',
    'ReconPruner',
    'Stage',
    'UniformAllocator',
    'ViewTokens',
    'WeightedAllocator',
    'allocate',
    'allocate_total',
    'check_keep_ratio',
    'check_pruner_name',
    'keep_all',
    'load_view_weights',
    'make_pruner',
    'prune',
    'pruner_names',
    'total_budget',
    'view_diversity',
]
