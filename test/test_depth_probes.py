"""Linear probes at each depth of a VLM (eval/depth_probes.py, issue 28)."""

from dataclasses import replace

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data.drivelm import load_camera_set, load_drivelm, QA
from drive_vlm_pruned.data.synth import DataOptions, write_dataset
from drive_vlm_pruned.eval.depth_probes import (
    camera_question,
    CameraQuestion,
    collect_features,
    pooled,
    probe_table,
)
from drive_vlm_pruned.eval.linear_probe import linear_probe_accuracy, linear_probe_correct
import numpy as np
import pytest
import torch


def _qa(question: str, answer: str, family: str | None) -> QA:
    return QA('id', question, answer, 'perception', (0,), family)


def test_camera_questions_are_read_and_other_questions_are_not():
    got = camera_question(_qa('Is there a pedestrian in the back left view?', 'Yes', 'exists'))
    assert got == CameraQuestion('exists', 'pedestrian', 'CAM_BACK_LEFT', 'yes')
    got = camera_question(_qa('How many vehicles are in the front view?', '3', 'count'))
    assert got == CameraQuestion('count', 'vehicle', 'CAM_FRONT', '3')
    assert camera_question(_qa('How many vehicles are in the front view?', '3', None)) is None
    other = _qa('Predict the behavior of the ego vehicle.', 'x', 'behavior')
    assert camera_question(other) is None


def test_a_probe_reads_a_linearly_coded_answer_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    coded = torch.randn(400, 16, generator=gen) + 3.0 * y[:, None].float()
    noise = torch.randn(400, 16, generator=gen)
    assert linear_probe_accuracy(coded[:300], y[:300], coded[300:], y[300:]) > 0.95
    assert linear_probe_accuracy(noise[:300], y[:300], noise[300:], y[300:]) < 0.7
    # per item, for pairing two representations on the same items: the same probe's answers
    right = linear_probe_correct(coded[:300], y[:300], coded[300:], y[300:])
    assert right.shape == (100,) and right.dtype == torch.bool
    assert right.float().mean().item() == linear_probe_accuracy(coded[:300], y[:300],
                                                                coded[300:], y[300:])


def test_the_table_ranks_the_depth_that_holds_the_answer_above_the_prior():
    gen = torch.Generator().manual_seed(1)
    cameras = ('CAM_FRONT', 'CAM_BACK')
    items = [CameraQuestion('exists', 'sign', cameras[i % 2], 'yes' if i % 3 else 'no')
             for i in range(600)]
    y = torch.tensor([q.answer == 'yes' for q in items]).float()
    feats = {'tower': torch.randn(600, 8, generator=gen) + 3 * y[:, None],
             'llm.1': torch.randn(600, 8, generator=gen)}
    fit = (items[:400], {k: v[:400] for k, v in feats.items()})
    held = (items[400:], {k: v[400:] for k, v in feats.items()})
    rows = {r.depth: r for r in probe_table(fit, held)}
    assert rows['tower'].accuracy > rows['tower'].prior + 0.2
    assert rows['llm.1'].accuracy < rows['llm.1'].prior + 0.1
    assert rows['tower'].eval_items == 200 and rows['tower'].fit_items == 400


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp('drive')
    write_dataset(out, DataOptions(scenes=1, frames_per_scene=2, split='val', width=128,
                                   height=72))
    return load_drivelm(out, split='val')


def test_the_hooks_read_the_named_view_and_the_answer_row_of_every_camera_question(
        small_model, frames):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    pipeline = Pipeline(load_adapter(LoadSpec(str(small_model)), log=lambda s: None))
    items, feats = collect_features(pipeline, frames)
    asked = [q for f in frames for qa in f.qa if (q := camera_question(qa))]
    assert items == asked and len(items) >= 4
    layers = len(pipeline.adapter.decoder_layers)
    assert list(feats) == ['tower', 'projector'] + [f'llm.{k + 1}' for k in range(layers)]
    assert all(len(v) == len(items) for v in feats.values())
    # the projector row is the pooled visual tokens of the camera the question names
    adapter = pipeline.adapter
    first = load_camera_set(frames[0])
    with torch.inference_mode():
        tokens = adapter.encode(adapter.preprocess(list(first.images)), 1).tokens.features
    view = NUSCENES_CAMERAS.index(items[0].camera)
    assert torch.allclose(feats['projector'][0], pooled(tokens[view][0].float()), atol=1e-5)
    # the LLM rows differ from layer to layer: each hook reads its own layer
    assert not torch.allclose(feats['llm.1'], feats[f'llm.{layers}'])


def _frames_of(root, images_per_frame) -> list:
    """Return key frames whose six views are the given RGB arrays (PNG files under ``root``)."""
    from drive_vlm_pruned.data.drivelm import KeyFrame
    from PIL import Image

    frames = []
    for k, images in enumerate(images_per_frame):
        paths = {}
        for camera, image in zip(NUSCENES_CAMERAS, images):
            paths[camera] = root / f'{k}_{camera}.png'
            Image.fromarray(image).save(paths[camera])
        frames.append(KeyFrame('scene', f'frame{k}', paths, {}, ()))
    return frames


def test_the_view_identity_probe_reads_which_view_a_token_comes_from(small_model, tmp_path):
    from drive_vlm_pruned.eval.depth_probes import view_identity_features, view_identity_table
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec

    adapter = load_adapter(LoadSpec(str(small_model)), log=lambda s: None)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    # each view its own colour (plus noise): the tokens themselves say which view they are
    own = [[np.clip(colours[v] + rng.normal(0, 8, (36, 64, 3)), 0, 255).astype(np.uint8)
            for v in range(6)] for _ in range(4)]
    # the same picture in all six views: only the prompt and the positions can tell them apart
    same = [[rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)] * 6 for _ in range(4)]
    for name, frames in (('own', own), ('same', same)):
        (tmp_path / name).mkdir()
        views, feats = view_identity_features(adapter, _frames_of(tmp_path / name, frames))
        layers = len(adapter.decoder_layers)
        assert list(feats) == [f'llm.{k}' for k in range(layers + 1)]
        assert len(views) == len(feats['llm.0']) and set(views.tolist()) == set(range(6))
        half = len(views) // 2  # frames 0-1 fit, 2-3 held out (every view in both)
        fit = (views[:half], {d: f[:half] for d, f in feats.items()})
        held = (views[half:], {d: f[half:] for d, f in feats.items()})
        acc = view_identity_table(fit, held)
        if name == 'own':
            assert acc['llm.0'] > 0.95, acc
        else:
            assert acc['llm.0'] < 0.3, acc  # identical inputs: chance, 1/6


def test_planning_view_attention_is_a_mass_per_layer_and_head(small_model, frames):
    from drive_vlm_pruned.eval.depth_probes import planning_view_attention
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec

    adapter = load_adapter(LoadSpec(str(small_model), attn_implementation='sdpa'),
                           log=lambda s: None)
    attention = planning_view_attention(adapter, frames)
    heads = adapter.model.config.text_config.num_attention_heads
    assert list(attention) == [f'llm.{k}' for k in range(1, len(adapter.decoder_layers) + 1)]
    assert all(len(m) == heads and all(0.0 <= h <= 1.0 + 1e-6 for h in m)
               for m in attention.values())
    # a random model's rows spread over its 96 visual and ~300 text keys: some on each
    assert 0.02 < sum(attention['llm.1']) / heads < 0.98
    assert adapter.model.config._attn_implementation == 'sdpa'  # switched back
    no_planning = [replace(f, qa=tuple(q for q in f.qa if q.family != 'planning_trajectory'))
                   for f in frames]
    assert planning_view_attention(adapter, no_planning) == {}
