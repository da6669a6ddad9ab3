"""Defaults of ``drive-vlm bench accuracy``, importable without torch or transformers (CLI)."""

DEFAULT_PRUNERS = ('tfps', 'divprune', 'fastv', 'dart', 'mvpruner', 'random', 'reconpruner')
DEFAULT_KEEP_RATIOS = (1.0, 0.5, 0.25, 0.1, 0.05)
DEFAULT_PRUNE_LAYERS = (0, 2)
DEFAULT_SEEDS = 3
# QA per cell and data seed: the embedded model answered 1.42 s/QA on the shared 2-core machine
# (docs/accuracy.md); the default sweep is at most ~60 cells + 2 references x 3 seeds = 186 runs,
# so 12 QA (one key frame) per run is 186 x 12 x 1.42 s = 53 min, inside the 60-minute goal.
DEFAULT_QA_PER_CELL = 12
