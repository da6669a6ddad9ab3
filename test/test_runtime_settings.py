"""RuntimeSettings.validate: which pruner may run at which layer, with a named reason."""

from conftest import random_frame
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.pipeline import Pipeline, PrunePlan, RuntimeSettings
from drive_vlm_pruned.pruning import make_pruner, MVPruner, PRUNERS, Stage
from drive_vlm_pruned.pruning.mvpruner import MVPrunerStage1, MVPrunerStage2
from drive_vlm_pruned.pruning.synthetic import synthetic_views
import pytest

VIEWS, PER_VIEW = 6, 64  # 384 tokens: keep 0.25 is 16 a view, keep 0.5 is 32


def _tokens():
    return synthetic_views(views=VIEWS, tokens_per_view=PER_VIEW, dim=32, seed=1).tokens


@pytest.mark.parametrize('pruner', ['tfps', 'divprune', 'mvpruner', 'random', 'stride'])
def test_pre_llm_pruners_and_mvpruner_run_at_layer_zero(pruner):
    tokens = _tokens()
    at_zero = RuntimeSettings(pruner=pruner, prune_layer=0, keep_ratio=0.25)
    at_zero.validate(4)
    plan = PrunePlan(at_zero, [0.25])
    # At layer 0 the whole cut happens on the projector output and nothing is left for the LLM.
    assert plan.before_llm(tokens).total() == VIEWS * PER_VIEW // 4
    assert plan.in_llm_hooks(None, None, tokens.names) is None

    at_two = RuntimeSettings(pruner=pruner, prune_layer=2, keep_ratio=0.25)
    at_two.validate(4)
    # At layer 2 a pre-LLM pruner hands every token to the LLM; MVPruner's stage 1 keeps r1.
    r1 = MVPruner().ratios(0.25)[0] if pruner == 'mvpruner' else 1.0
    assert PrunePlan(at_two, [0.25]).before_llm(tokens).total() == VIEWS * PER_VIEW * r1


@pytest.mark.parametrize('pruner', ['fastv', 'dart'])
def test_in_llm_pruners_at_layer_zero_name_the_fix(pruner):
    with pytest.raises(ValueError, match='prune_layer >= 1'):
        RuntimeSettings(pruner=pruner, prune_layer=0).validate(4)
    at_two = RuntimeSettings(pruner=pruner, prune_layer=2)
    at_two.validate(4)
    # They cut inside the LLM only: its input keeps every token.
    assert PrunePlan(at_two, [0.25]).before_llm(_tokens()).total() == VIEWS * PER_VIEW


def test_prune_layer_beyond_the_llm_names_the_range():
    with pytest.raises(ValueError, match=r'\[0, 3\]'):
        RuntimeSettings(prune_layer=4).validate(4)


@pytest.mark.parametrize('name', sorted(PRUNERS))
def test_every_registered_pruner_validates_where_its_stage_can_run(name):
    """Layer 2 takes every pruner; layer 0 refuses exactly those that act inside the LLM."""
    RuntimeSettings(pruner=name, prune_layer=2).validate(4)
    in_llm = make_pruner(name).stage is Stage.IN_LLM
    if in_llm:
        with pytest.raises(ValueError, match=f'pruner {name!r} acts inside the LLM'):
            RuntimeSettings(pruner=name, prune_layer=0).validate(4)
    else:
        RuntimeSettings(pruner=name, prune_layer=0).validate(4)
    assert in_llm == (name in {'fastv', 'dart', 'mvpruner-s2'})


def test_mvpruner_at_layer_zero_runs_only_stage_1_at_the_full_ratio(monkeypatch):
    """The silent downgrade of docs/pruning.md: no stage 2, and stage 1 takes all of r."""
    ran = []

    def spy(cls):
        select = cls.select

        def recorded(self, tokens, budgets, layer, generator):
            ran.append((cls.name, int(budgets.sum())))
            return select(self, tokens, budgets, layer, generator)

        monkeypatch.setattr(cls, 'select', recorded)

    spy(MVPrunerStage1)
    spy(MVPrunerStage2)
    tokens = _tokens()
    plan = PrunePlan(RuntimeSettings(pruner='mvpruner', prune_layer=0, keep_ratio=0.25), [0.25])
    kept = plan.before_llm(tokens)
    assert plan.in_llm_hooks(None, None, tokens.names) is None  # stage 2 gets no hook
    # Stage 1 alone, at r = 0.25 (96 tokens), not at its two-stage share r1 = 0.5 (192).
    assert ran == [('mvpruner-s1', VIEWS * PER_VIEW // 4)]
    assert kept.total() == VIEWS * PER_VIEW // 4
    alone = PrunePlan(RuntimeSettings(pruner='mvpruner-s1', prune_layer=0, keep_ratio=0.25),
                      [0.25]).before_llm(tokens)
    assert [[ix.tolist() for ix in s] for s in kept.indices] == [
        [ix.tolist() for ix in s] for s in alone.indices]


def test_the_result_of_a_layer_zero_mvpruner_reports_mvpruner_with_stage_1_counts(tiny_llava):
    """Nothing logs the downgrade: the result names 'mvpruner' and carries stage 1's cut."""
    pipe = Pipeline(load_adapter(LoadSpec(str(tiny_llava))))
    frame = random_frame(7)
    result = pipe.run(frame, RuntimeSettings(pruner='mvpruner', keep_ratio=0.25,
                                             max_new_tokens=1))
    alone = pipe.run(frame, RuntimeSettings(pruner='mvpruner-s1', keep_ratio=0.25,
                                            max_new_tokens=1))
    assert (result.pruner, result.prune_layer) == ('mvpruner', 0)
    assert result.kept_indices == alone.kept_indices
    assert sum(result.tokens_after) == round(0.25 * sum(result.tokens_before))
