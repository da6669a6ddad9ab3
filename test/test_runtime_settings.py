"""RuntimeSettings.validate: which pruner may run at which layer, with a named reason."""

from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
from drive_vlm_pruned.pruning import PRUNERS
import pytest


@pytest.mark.parametrize('pruner', ['tfps', 'divprune', 'mvpruner', 'random', 'stride'])
def test_pre_llm_pruners_and_mvpruner_run_at_layer_zero(pruner):
    RuntimeSettings(pruner=pruner, prune_layer=0).validate(4)
    RuntimeSettings(pruner=pruner, prune_layer=2).validate(4)


@pytest.mark.parametrize('pruner', ['fastv', 'dart'])
def test_in_llm_pruners_at_layer_zero_name_the_fix(pruner):
    with pytest.raises(ValueError, match='prune_layer >= 1'):
        RuntimeSettings(pruner=pruner, prune_layer=0).validate(4)
    RuntimeSettings(pruner=pruner, prune_layer=2).validate(4)


def test_prune_layer_beyond_the_llm_names_the_range():
    with pytest.raises(ValueError, match=r'\[0, 3\]'):
        RuntimeSettings(prune_layer=4).validate(4)


def test_every_registered_pruner_validates_somewhere():
    for name in PRUNERS:
        RuntimeSettings(pruner=name, prune_layer=2).validate(4)
