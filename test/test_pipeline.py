"""The frame pipeline on each tiny VLM family, against the unmodified Hugging Face model."""

from conftest import random_frame
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.camera_set import CameraSet
from drive_vlm_pruned.pipeline.generate import prefill
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
from drive_vlm_pruned.pipeline.trajectory import parse_trajectory
from drive_vlm_pruned.pruning import keep_all, make_pruner, prune
import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

QUESTION = 'What are the important objects in the current scene?'


def reference_sequence(adapter, frame, kept_counts, n_view, suffix=1):
    """Input ids with k_v + suffix image tokens per view, and ORIGINAL positions, by hand."""
    pieces = adapter.prompt(QUESTION, frame.names).pieces
    ids, positions, cursor = [], [], 0
    for v, piece in enumerate(pieces):
        ids += piece
        positions += list(range(cursor, cursor + len(piece)))
        cursor += len(piece)
        if v < len(pieces) - 1:
            ids += [adapter.image_token_id] * (len(kept_counts[v]) + suffix)
            positions += [cursor + i for i in kept_counts[v]]
            positions += list(range(cursor + n_view, cursor + n_view + suffix))
            cursor += n_view + suffix
    return torch.tensor([ids]), torch.tensor([positions])


def ours(adapter, frame, kept):
    feats = adapter.encode(adapter.preprocess(frame.images), 1)
    inputs = adapter.build_inputs(feats, kept, [adapter.prompt(QUESTION, frame.names)])
    return prefill(adapter.model, inputs).logits[0], feats


def hf_image_inputs(adapter, pixels, ids):
    """Return the image arguments each family's own forward takes."""
    views = pixels.values.shape[0] if pixels.grid_thw is None else pixels.grid_thw.shape[0]
    if adapter.family == 'llava-onevision':
        return {'pixel_values': pixels.values, 'image_sizes': torch.tensor([[384, 384]] * views),
                'batch_num_images': torch.tensor([views])}
    if adapter.family == 'qwen2.5-vl':
        return {'pixel_values': pixels.values, 'image_grid_thw': pixels.grid_thw,
                'mm_token_type_ids': (ids == adapter.image_token_id).int()}
    return {'pixel_values': pixels.values}


def original_positions(adapter, frame, feats, positions):
    """Map indices into the unpruned sequence to the positions the model uses there."""
    if adapter.family != 'qwen2.5-vl':
        return positions
    prompt = adapter.prompt(QUESTION, frame.names)
    full = adapter.full_rope_index(prompt, feats.tokens.view_sizes(), feats.grid_thw)
    return full[:, positions[0]][:, None]  # [3, 1, L]


@torch.inference_mode()
def test_keep_ratio_one_matches_the_unpruned_hugging_face_model(pipeline):
    adapter, frame = pipeline.adapter, random_frame(1)
    pixels = adapter.preprocess(frame.images)
    feats = adapter.encode(pixels, 1)
    n, suffix = feats.tokens.view_sizes()[0], feats.suffix[0].shape[1]
    logits, _ = ours(adapter, frame, keep_all(feats.tokens.valid_counts(), adapter.device))
    ids, _ = reference_sequence(adapter, frame, [list(range(n))] * 6, n, suffix)
    model_inputs = {'input_ids': ids, **hf_image_inputs(adapter, pixels, ids)}
    ref = adapter.model(**model_inputs).logits[0, -1]
    torch.testing.assert_close(logits, ref.float(), rtol=1e-4, atol=1e-4)

    generated = adapter.model.generate(**model_inputs, max_new_tokens=8, do_sample=False)
    ref_text = adapter.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    result = pipeline.run(CameraSet(frame.stamp_ns, frame.images, frame.names, QUESTION),
                          RuntimeSettings(keep_ratio=1.0, max_new_tokens=8))
    assert result.answer == ref_text
    assert result.tokens_after == [n] * 6


@torch.inference_mode()
def test_layer0_pruning_equals_hf_fed_only_kept_features_at_original_positions(pipeline):
    adapter, frame = pipeline.adapter, random_frame(2)
    feats = adapter.encode(adapter.preprocess(frame.images), 1)
    n, suffix = feats.tokens.view_sizes()[0], feats.suffix[0].shape[1]
    kept = prune(make_pruner('tfps'), feats.tokens, 0.2)
    logits, _ = ours(adapter, frame, kept)
    kept_rows = [ix.tolist() for ix in kept.indices[0]]
    ids, positions = reference_sequence(adapter, frame, kept_rows, n, suffix)
    positions = original_positions(adapter, frame, feats, positions)
    features = [torch.cat([feats.tokens.features[v][0, kept.indices[0][v]], feats.suffix[v][0]])
                for v in range(6)]
    if adapter.family == 'llava-onevision':
        image = {'mm_encoder_outputs': {'image': BaseModelOutputWithPooling(
            pooler_output=features)}}
    else:  # no precomputed-feature entry point: scatter the features as the model would
        embeds = adapter.embed(ids)
        mask = (ids == adapter.image_token_id)[..., None].expand_as(embeds)
        image = {'inputs_embeds': embeds.masked_scatter(mask, torch.cat(features))}
        ids = None
    ref = adapter.model(input_ids=ids, position_ids=positions, **image).logits[0, -1]
    torch.testing.assert_close(logits, ref.float(), rtol=1e-4, atol=1e-4)
    assert sum(len(r) for r in kept_rows) == round(0.2 * 6 * n)


@torch.inference_mode()
def test_qwen_mrope_ids_of_kept_tokens_equal_their_ids_in_the_full_sequence(tiny_checkpoints):
    adapter = load_adapter(LoadSpec(str(tiny_checkpoints('qwen2.5-vl'))))
    frame = random_frame(21, size=(120, 300))
    feats = adapter.encode(adapter.preprocess(frame.images), 1)
    kept = prune(make_pruner('tfps'), feats.tokens, 0.3)
    prompt = adapter.prompt(QUESTION, frame.names)
    inputs = adapter.build_inputs(feats, kept, [prompt])
    ids = torch.tensor(adapter.full_sequence_ids(prompt, feats.tokens.view_sizes()))
    mm = (ids == adapter.image_token_id).int()
    full, _ = adapter.model.model.get_rope_index(ids[None], mm_token_type_ids=mm[None],
                                                 image_grid_thw=feats.grid_thw)
    image_rows = mm.nonzero()[:, 0].split(feats.tokens.view_sizes())
    for v, rows in enumerate(image_rows):
        kept_full = full[:, 0, rows[kept.indices[0][v]]]
        got = inputs.position_ids[:, 0, inputs.visual_rows[v][0]]
        assert torch.equal(got, kept_full)
        assert len(set(kept_full[1].tolist())) > 1  # real 2-D grid ids, not a 1-D fallback
    assert inputs.next_position[0] == full.max() + 1  # the rope-delta correction


def test_result_reports_tokens_stamp_timings_and_flops(pipeline):
    frame = random_frame(3, stamp_ns=1_234_567_890)
    result = pipeline.run(frame, RuntimeSettings(keep_ratio=0.1, max_new_tokens=4))
    assert result.stamp_ns == 1_234_567_890
    n = result.tokens_before[0]
    assert result.tokens_before == [n] * 6
    assert sum(result.tokens_after) == round(0.1 * 6 * n)
    assert result.prompt_tokens - result.prompt_tokens_kept == 6 * n - sum(result.tokens_after)
    assert set(result.timings_ms) == {'preprocess', 'vision', 'prune', 'prefill', 'decode'}
    assert 0 < result.prefill_flops < 0.5 * result.prefill_flops_unpruned
    # Four tokens cannot spell six [x, y] waypoints: no trajectory, and the parse of the
    # answer itself says why (the parser never invents one).
    assert not result.trajectory.ok and result.trajectory.points is None
    assert result.trajectory == parse_trajectory(result.answer)
    assert result.trajectory.reason.endswith('waypoints in the answer')
    assert result.summary()['trajectory'] is None
    assert result.summary()['trajectory_reason'] == result.trajectory.reason
    assert result.summary()['tokens_kept_per_view']['CAM_FRONT'] == result.tokens_after[0]


def test_pruned_greedy_generation_is_deterministic(pipeline):
    frame = random_frame(4)
    settings = RuntimeSettings(keep_ratio=0.25, max_new_tokens=8)
    first, again = pipeline.run(frame, settings), pipeline.run(frame, settings)
    assert first.answer == again.answer
    assert first.kept_indices == again.kept_indices


def test_batch_of_two_with_different_keep_ratios_equals_single_runs(pipeline):
    frames = [random_frame(5), random_frame(6)]
    settings = [RuntimeSettings(keep_ratio=0.1, max_new_tokens=6),
                RuntimeSettings(keep_ratio=0.5, max_new_tokens=6)]
    batch = pipeline.run_batch(frames, settings)
    for frame, s, got in zip(frames, settings, batch):
        alone = pipeline.run(frame, s)
        assert got.kept_indices == alone.kept_indices
        assert got.answer == alone.answer
    assert batch[0].prompt_tokens_kept < batch[1].prompt_tokens_kept


def test_settings_change_between_frames_without_reloading(pipeline):
    model = pipeline.adapter.model
    frame = random_frame(7)
    a = pipeline.run(frame, RuntimeSettings(keep_ratio=0.5, pruner='tfps', max_new_tokens=2))
    b = pipeline.run(frame, RuntimeSettings(keep_ratio=0.1, pruner='divprune', max_new_tokens=3))
    assert pipeline.adapter.model is model
    assert sum(a.tokens_after) > sum(b.tokens_after)
    assert b.pruner == 'divprune'


@pytest.mark.parametrize('frame, message', [
    (CameraSet(0, tuple(np.zeros((8, 8, 3), np.uint8) for _ in range(5))), 'expects 6'),
    (CameraSet(0, (np.zeros((8, 8), np.uint8),) + (np.zeros((8, 8, 3), np.uint8),) * 5),
     'H x W x 3'),
    (CameraSet(0, (np.zeros((0, 8, 3), np.uint8),) + (np.zeros((8, 8, 3), np.uint8),) * 5),
     'empty'),
    (CameraSet(0, (np.zeros((8, 8, 3), np.float32),) + (np.zeros((8, 8, 3), np.uint8),) * 5),
     'uint8'),
])
def test_bad_frames_get_errors_that_name_the_problem(pipeline, frame, message):
    with pytest.raises(ValueError, match=message):
        pipeline.run(frame)


def test_prompt_longer_than_the_context_is_rejected(pipeline):
    frame = random_frame(8, question='car ' * 9000)  # longer than 8192 tokens for any family
    with pytest.raises(ValueError, match='context'):
        pipeline.run(frame, RuntimeSettings(max_new_tokens=4))


def test_in_llm_pruner_at_layer_zero_is_rejected_with_the_alternatives(pipeline):
    with pytest.raises(ValueError, match='inside the LLM'):
        pipeline.run(random_frame(9), RuntimeSettings(pruner='fastv'))
