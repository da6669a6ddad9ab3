"""
Defaults of ``drive-vlm bench accuracy``, importable without torch or transformers (CLI).

The default grid answers the seeds' questions and no others: each method at the layer it was
published at (../shared/docs/methods.md: T-FPS, DivPrune and ReconPruner prune before the LLM;
FastV and DART inside it at K=2; MVPruner's stage 2 is instruction-guided at a deeper layer,
here K=2), the random pruner at each of those layers as the floor, and keep 0.5, 0.25, 0.1 and
0.05 (1.0 is the reference). Every cell answers every QA of the test split: 3 data seeds of 4
scenes each, 60 key frames and 522 closed-form QA in all on the nano data, so each paired
figure has a key-frame interval; the sweep took 38.6 min on the 2 cores (docs/accuracy.md).
"""

PUBLISHED_LAYERS: dict[str, tuple[int, ...]] = {
    'tfps': (0,), 'divprune': (0,), 'reconpruner': (0,), 'stride': (0,), 'mvpruner-s1': (0,),
    'fastv': (2,), 'dart': (2,), 'mvpruner': (2,), 'mvpruner-s2': (2,),
    'random': (0, 2),
}
DEFAULT_PRUNERS = ('tfps', 'divprune', 'reconpruner', 'fastv', 'dart', 'mvpruner', 'random')
DEFAULT_KEEP_RATIOS = (1.0, 0.5, 0.25, 0.1, 0.05)
DEFAULT_PRUNE_LAYERS: tuple[int, ...] = ()  # (): each pruner at its PUBLISHED_LAYERS
DEFAULT_SEEDS = 3
DEFAULT_QA_PER_CELL = 0  # 0: every QA of each seed's key frames


def published_layers(pruner: str) -> tuple[int, ...]:
    """Return the prune layers a pruner runs at in the default grid (before the LLM if unknown)."""
    return PUBLISHED_LAYERS.get(pruner, (0,))
