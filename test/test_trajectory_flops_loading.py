"""Trajectory parsing, the analytic FLOPs formula, and checkpoint loading errors."""

import json

from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.flops import layer_flops, LLMShape, prefill_flops
from drive_vlm_pruned.pipeline.trajectory import format_trajectory, parse_trajectory
import pytest

SIX = '[1.00, 0.00], [2.10, 0.05], [3.20, 0.10], [4.30, 0.20], [5.40, 0.30], [6.50, 0.45]'


def test_planning_answer_parses_to_six_waypoints():
    parsed = parse_trajectory(f'<PLANNING>Predicted: {SIX}</PLANNING>')
    assert parsed.ok
    assert parsed.points[0] == (1.0, 0.0) and parsed.points[5] == (6.5, 0.45)
    compact = '[1.0,0.0],[2.1,0.1],[3.2,0.1],[4.3,0.2],[5.4,0.3],[6.5,0.5]'
    assert format_trajectory(parsed.points) == compact


def test_formatted_trajectory_is_compact_and_parses_back():
    points = ((1.04, -0.04), (2.0, 0.0), (3.0, 0.1), (4.0, 0.2), (5.0, 0.3), (6.0, 0.4))
    text = format_trajectory(points)
    assert text.startswith('[1.0,0.0],[2.0,0.0]') and ' ' not in text and '-0.0' not in text
    assert parse_trajectory(text).points[5] == (6.0, 0.4)


def test_plain_text_with_extra_pairs_takes_the_first_six():
    parsed = parse_trajectory(f'Sure. {SIX}, [7.0, 1.0]')
    assert parsed.ok and len(parsed.points) == 6


@pytest.mark.parametrize('text, reason', [
    ('The road is clear.', 'no [x, y]'),
    ('[1.0, 2.0], [2.0, 3.0]', 'only 2 of 6'),
    ('[1.0, two], [x, y]', 'no [x, y]'),
    ('', 'no [x, y]'),
])
def test_malformed_text_gives_no_trajectory_and_says_why(text, reason):
    parsed = parse_trajectory(text)
    assert parsed.points is None
    assert reason in parsed.reason


def test_flops_formula_equals_a_hand_count_for_a_two_layer_gqa_swiglu_model():
    shape = LLMShape(layers=2, hidden=8, heads=4, kv_heads=2, head_dim=2, intermediate=16)
    n = 10
    # By hand, multiply-add = 2 FLOPs:
    q = 2 * n * 8 * 8  # d -> H*hd = 8
    o = 2 * n * 8 * 8
    k = 2 * n * 8 * 4  # d -> H_kv*hd = 4
    v = 2 * n * 8 * 4
    scores = 2 * n * n * 8  # QK^T over all heads
    weighted = 2 * n * n * 8  # A V
    mlp = 3 * 2 * n * 8 * 16  # gate, up, down
    per_layer = q + o + k + v + scores + weighted + mlp
    assert layer_flops(shape, n) == per_layer == 14720
    assert prefill_flops(shape, n) == 2 * per_layer
    assert prefill_flops(shape, n, 4, prune_layer=1) == per_layer + layer_flops(shape, 4)
    assert prefill_flops(shape, n, 4, prune_layer=0) == 2 * layer_flops(shape, 4)


def copy_checkpoint(src, dst, skip):
    dst.mkdir()
    for f in src.iterdir():
        if f.name != skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize('missing', ['config.json', 'model.safetensors', 'tokenizer.json',
                                     'preprocessor_config.json'])
def test_a_checkpoint_missing_a_file_gets_an_error_naming_it(tiny_llava, tmp_path, missing):
    broken = copy_checkpoint(tiny_llava, tmp_path / 'broken', missing)
    if missing == 'tokenizer.json':
        (broken / 'tokenizer_config.json').unlink()
    with pytest.raises(ValueError, match=missing.replace('model.', '')):
        load_adapter(LoadSpec(str(broken)))


def test_pickle_weights_are_refused_with_a_hint(tiny_llava, tmp_path):
    broken = copy_checkpoint(tiny_llava, tmp_path / 'bin', 'model.safetensors')
    (broken / 'pytorch_model.bin').write_bytes(b'not loaded')
    with pytest.raises(ValueError, match='convert them to safetensors'):
        load_adapter(LoadSpec(str(broken)))


def test_unknown_family_and_uncached_ids_are_explained(tiny_llava, tmp_path):
    other = copy_checkpoint(tiny_llava, tmp_path / 'other', 'config.json')
    (other / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(ValueError, match='not a supported family'):
        load_adapter(LoadSpec(str(other)))
    with pytest.raises(ValueError, match='nothing is downloaded'):
        load_adapter(LoadSpec('nobody/not-a-cached-model'))
    with pytest.raises(ValueError, match='family'):
        load_adapter(LoadSpec(str(tiny_llava), family='qwen2.5-vl'))
