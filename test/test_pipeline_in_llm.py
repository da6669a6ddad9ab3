"""Pruning inside the LLM (prune_layer K >= 1) on each tiny VLM family."""

from conftest import random_frame
from drive_vlm_pruned.pipeline.flops import prefill_flops
from drive_vlm_pruned.pipeline.generate import prefill
from drive_vlm_pruned.pipeline.pipeline import PrunePlan, RuntimeSettings
from drive_vlm_pruned.pruning import ViewTokens
import pytest
import torch


def pipeline_prefill(pipeline, frame, settings):
    """Run the pipeline's own steps up to prefill, exposing the hooks' kept tokens."""
    adapter = pipeline.adapter
    plan = PrunePlan(settings, [settings.keep_ratio])
    feats = adapter.encode(adapter.preprocess(frame.images), 1)
    tokens = ViewTokens(feats.tokens.features, frame.names)
    inputs = adapter.build_inputs(feats, plan.before_llm(tokens),
                                  [adapter.prompt(settings.question, frame.names)])
    hooks = plan.in_llm_hooks(adapter, inputs, frame.names)
    return inputs, hooks, prefill(adapter.model, inputs, hooks)


def reference_drop_at_layer(adapter, inputs, keep_rows, k):
    """Run the decoder layers by hand on the full sequence, dropping rows before layer k."""
    lm = adapter.model.get_decoder()
    hidden, pos = inputs.inputs_embeds, inputs.position_ids
    cos, sin = lm.rotary_emb(hidden, pos)

    def causal(n):
        return torch.ones(n, n, dtype=torch.bool).tril()[None, None]

    mask = causal(hidden.shape[1])
    for i, layer in enumerate(lm.layers):
        if i == k:
            hidden, pos = hidden[:, keep_rows], pos[..., keep_rows]
            cos, sin, mask = cos[:, keep_rows], sin[:, keep_rows], causal(len(keep_rows))
        text_pos = pos if pos.dim() == 2 else None  # Qwen2.5-VL layers get no 3-D ids
        hidden = layer(hidden, attention_mask=mask, position_ids=text_pos,
                       position_embeddings=(cos, sin))
    return adapter.model.lm_head(lm.norm(hidden)[:, -1]).float()


@torch.inference_mode()
@pytest.mark.parametrize('pruner', ['fastv', 'dart', 'tfps'])
def test_prune_layer_k_equals_a_reference_that_drops_the_same_tokens(pipeline, pruner):
    frame = random_frame(11)
    settings = RuntimeSettings(keep_ratio=0.2, pruner=pruner, prune_layer=2)
    inputs, hooks, start = pipeline_prefill(pipeline, frame, settings)
    keep_rows = hooks.rows[0].tolist()
    dropped = set(range(inputs.inputs_embeds.shape[1])) - set(keep_rows)
    visual = {int(r) for rows in inputs.visual_rows for r in rows[0]}
    assert dropped <= visual  # only visual tokens are ever dropped
    n = inputs.visual_rows[0].shape[1]
    assert len(dropped) == 6 * n - round(0.2 * 6 * n)
    ref = reference_drop_at_layer(pipeline.adapter, inputs, keep_rows, 2)
    torch.testing.assert_close(start.logits, ref, rtol=1e-4, atol=1e-4)
    assert start.cache.layers[0].keys.shape[2] == len(keep_rows)  # cache follows the kept rows
    assert start.cache.layers[3].keys.shape[2] == len(keep_rows)


def test_keep_ratio_one_at_layer_k_equals_no_pruning(pipeline):
    frame = random_frame(12)
    full = pipeline.run(frame, RuntimeSettings(keep_ratio=1.0, max_new_tokens=6))
    at_k = pipeline.run(frame, RuntimeSettings(keep_ratio=1.0, pruner='fastv', prune_layer=2,
                                               max_new_tokens=6))
    assert at_k.answer == full.answer
    assert at_k.prefill_flops == full.prefill_flops_unpruned


def test_in_llm_batch_with_different_keep_ratios_equals_single_runs(pipeline):
    frames = [random_frame(13), random_frame(14)]
    settings = [RuntimeSettings(keep_ratio=r, pruner='fastv', prune_layer=2, max_new_tokens=6)
                for r in (0.1, 0.4)]
    batch = pipeline.run_batch(frames, settings)
    for frame, s, got in zip(frames, settings, batch):
        alone = pipeline.run(frame, s)
        assert got.kept_indices == alone.kept_indices
        assert got.answer == alone.answer
        assert got.prompt_tokens_kept == alone.prompt_tokens_kept


def test_mvpruner_runs_both_stages_and_keeps_the_overall_ratio(pipeline):
    result = pipeline.run(random_frame(15), RuntimeSettings(keep_ratio=0.1, pruner='mvpruner',
                                                            prune_layer=2, max_new_tokens=3))
    assert abs(sum(result.tokens_after) - 0.1 * 6 * result.tokens_before[0]) <= 6
    # Layers 0-1 ran on the stage-1 survivors (sqrt(0.1) of the visual tokens), not on all.
    only_at_k = prefill_flops(pipeline.shape, result.prompt_tokens, result.prompt_tokens_kept, 2)
    assert result.prefill_flops < only_at_k
    again = pipeline.run(random_frame(15), RuntimeSettings(keep_ratio=0.1, pruner='mvpruner',
                                                           prune_layer=2, max_new_tokens=3))
    assert again.answer == result.answer and again.kept_indices == result.kept_indices
