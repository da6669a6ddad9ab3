"""
Impromptu-VLA end to end: its processor settings and resolution, prompt, pipeline, node, bench.

Impromptu-VLA is a Qwen2.5-VL fine-tune saved by LLaMA-Factory, so its preprocessor_config.json
is Qwen2.5-VL-Instruct's (min_pixels 3136, max_pixels 12845056, patch 14, merge 2, temporal 2,
CLIP mean/std) while training shrank every image to 262144 pixels first (image_max_pixels). The
tiny checkpoint below has exactly those processor settings; ``drive-vlm convert impromptu-vla``
records the prompt format, and the tests run it through the pipeline, the ROS node over DDS and
``drive-vlm bench prefill``.
"""

import json
from pathlib import Path
import subprocess
import sys

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.convert.runner import convert_checkpoint, ConvertOptions
from drive_vlm_pruned.convert.safetensors_stream import ConversionError
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.models.prompts import (
    IMPROMPTU_PLANNING,
    impromptu_planning_question,
    QUESTION_PRESETS,
    resolve_question,
)
from drive_vlm_pruned.pipeline.camera_set import CameraSet
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
from drive_vlm_pruned.pipeline.trajectory import parse_trajectory
from drive_vlm_pruned.pruning import keep_all
import numpy as np
import pytest
import torch

# Qwen/Qwen2.5-VL-3B-Instruct preprocessor_config.json (LLaMA-Factory saves it unchanged).
PUBLISHED = {'min_pixels': 3136, 'max_pixels': 12845056, 'patch_size': 14,
             'temporal_patch_size': 2, 'merge_size': 2,
             'image_mean': [0.48145466, 0.4578275, 0.40821073],
             'image_std': [0.26862954, 0.26130258, 0.27577711]}
# An answer exactly as Impromptu-VLA's nuScenes pipeline writes its targets ('x-y' mode).
ANSWER = ('<PLANNING>Predicted future movement details for the next 3 seconds (sampled at '
          '0.5-second intervals), including BEV location in x and y directions (in meters). '
          'Positive x means forward direction while positive y means leftwards. The output is '
          'formatted as [x, y]: [2.41, 0.0], [4.83, -0.02], [7.26, -0.07], [9.7, -0.15], '
          '[12.15, -0.26], [14.61, -0.4]</PLANNING>')


def make_impromptu_source(out: Path) -> Path:
    """Save a tiny Qwen2.5-VL checkpoint as LLaMA-Factory saved Impromptu-VLA's."""
    from drive_vlm_pruned.models.tiny import build_qwen2_5_vl, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    pixels = (PUBLISHED['min_pixels'], PUBLISHED['max_pixels'])
    model, processor = build_qwen2_5_vl(tokenizer, pixels=pixels)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True, max_shard_size='100KB')
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    # The published file verbatim (transformers 4.x field names, which 5.x still reads).
    published = {**PUBLISHED, 'image_processor_type': 'Qwen2VLImageProcessor',
                 'processor_class': 'Qwen2_5_VLProcessor'}
    (out / 'preprocessor_config.json').write_text(json.dumps(published, indent=2))
    return out


@pytest.fixture(scope='module')
def impromptu(tmp_path_factory):
    root = tmp_path_factory.mktemp('impromptu')
    src = make_impromptu_source(root / 'src')
    convert_checkpoint('impromptu-vla', src, root / 'out', ConvertOptions(progress=False))
    return src, root / 'out'


@pytest.fixture(scope='module')
def adapter(impromptu):
    return load_adapter(LoadSpec(str(impromptu[1])))


def test_processor_settings_are_the_published_ones(impromptu):
    src, out = impromptu
    proc = json.loads((out / 'preprocessor_config.json').read_text())
    for key, value in PUBLISHED.items():
        assert proc[key] == pytest.approx(value), key
    loaded = load_adapter(LoadSpec(str(out))).image_processor
    assert (loaded.size['shortest_edge'], loaded.size['longest_edge']) == (3136, 12845056)
    assert list(loaded.image_mean) == pytest.approx(PUBLISHED['image_mean'])
    config = json.loads((out / 'config.json').read_text())
    assert config['drive_vlm_prompt_format'] == 'impromptu-vla'
    assert config['drive_vlm_source']['converter'] == 'impromptu-vla'
    weights = sorted(p.name for p in src.glob('*.safetensors'))
    assert len(weights) >= 2 and weights == sorted(p.name for p in out.glob('*.safetensors'))
    for name in weights:  # linked or copied, byte for byte
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_1600x900_views_get_impromptus_training_resolution(adapter):
    # LLaMA-Factory: 1600 x 900 -> 682 x 384 (262144-pixel budget, sides truncated), then the
    # processor's smart resize to multiples of 28: 672 x 392 = 48 x 28 patches, 336 tokens.
    assert adapter.camera_hw == (900, 1600)
    assert adapter.vision_grid == (28, 48)
    pixels = adapter.preprocess([np.zeros((900, 1600, 3), np.uint8)])
    assert pixels.grid_thw.tolist() == [[1, 28, 48]]
    small = adapter.preprocess([np.zeros((180, 320, 3), np.uint8)])  # under budget: as is
    assert small.grid_thw.tolist() == [[1, 12, 22]]  # 168 x 308


def test_prompt_is_impromptus_six_view_template_in_its_camera_order(adapter):
    prompt = adapter.prompt(IMPROMPTU_PLANNING, NUSCENES_CAMERAS)
    order = [NUSCENES_CAMERAS[v] for v in prompt.slot_views()]
    assert order == ['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK',
                     'CAM_BACK_LEFT', 'CAM_BACK_RIGHT']
    text = adapter.tokenizer.decode([t for piece in prompt.pieces for t in piece])
    assert text == (
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
        'You are an autonomous driving agent. You have access to multi-view camera images of a '
        'vehicle: (1) front view (which you should focus on with the most attention) '
        '<|vision_start|><|vision_end|>, (2) front right view <|vision_start|><|vision_end|>, '
        '(3) front left view <|vision_start|><|vision_end|>, (4) back view '
        '<|vision_start|><|vision_end|>, (5) back left view <|vision_start|><|vision_end|>, and '
        '(6) back right view <|vision_start|><|vision_end|>. Your task is to do your best to '
        "predict future waypoints for the vehicle over the next 3 timesteps, given the vehicle's "
        'intent inferred from the images.<|im_end|>\n<|im_start|>assistant\n'
    )


def test_reordered_views_match_the_models_own_forward(adapter):
    rng = np.random.default_rng(3)
    sizes = [(180, 320), (150, 300), (180, 320), (120, 240), (180, 320), (150, 300)]
    images = tuple(rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in sizes)
    pixels = adapter.preprocess(images)
    feats = adapter.encode(pixels, 1)
    prompt = adapter.prompt(IMPROMPTU_PLANNING, NUSCENES_CAMERAS)
    inputs = adapter.build_inputs(feats, keep_all(feats.tokens.valid_counts(), adapter.device),
                                  [prompt])
    # in the sequence, the front-right view (frame index 2) comes before the front-left (1)
    assert inputs.visual_rows[2].max() < inputs.visual_rows[1].min()
    order = list(prompt.slot_views())
    ids = torch.tensor([adapter.full_sequence_ids(prompt, feats.tokens.view_sizes())])
    grids = pixels.grid_thw.tolist()
    chunks = pixels.values.split([t * h * w for t, h, w in grids])
    with torch.no_grad():
        ours = adapter.model(inputs_embeds=inputs.inputs_embeds,
                             attention_mask=inputs.attention_mask,
                             position_ids=inputs.position_ids).logits[0, -1]
        native = adapter.model(
            input_ids=ids, pixel_values=torch.cat([chunks[v] for v in order]),
            image_grid_thw=pixels.grid_thw[order],
            mm_token_type_ids=(ids == adapter.image_token_id).int()).logits[0, -1]
    assert (ours - native).abs().max().item() < 1e-4 * max(1.0, native.abs().max().item())


def test_pipeline_runs_at_full_resolution_and_parses_the_answer_format(adapter):
    pipe = Pipeline(adapter)
    rng = np.random.default_rng(0)
    frame = CameraSet(1, tuple(rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8)
                               for _ in NUSCENES_CAMERAS), NUSCENES_CAMERAS,
                      resolve_question('impromptu-planning'))
    result = pipe.run(frame, RuntimeSettings(keep_ratio=0.25, pruner='tfps', max_new_tokens=4,
                                             question=frame.question))
    assert result.tokens_before == [336] * 6
    assert result.tokens_after == [84] * 6
    parsed = parse_trajectory(ANSWER)
    assert parsed.ok, parsed.reason
    assert parsed.points == ((2.41, 0.0), (4.83, -0.02), (7.26, -0.07), (9.7, -0.15),
                             (12.15, -0.26), (14.61, -0.4))


def test_question_presets_and_impromptus_ego_history_text():
    assert QUESTION_PRESETS['impromptu-planning'] == IMPROMPTU_PLANNING
    assert resolve_question('impromptu-planning') == IMPROMPTU_PLANNING
    assert resolve_question('Is the light red?') == 'Is the light red?'
    history = ((-7.5, 0.12), (-6.25, 0.1), (-5.0, 0.0), (-3.75, -0.0), (-2.5, 0.0),
               (-1.25, 0.004), (0.0, 0.0))
    assert impromptu_planning_question(history) == (
        IMPROMPTU_PLANNING + 'Provided are the previous ego vehicle status recorded over the '
        'last 3.0 seconds (at 0.5-second intervals). This includes the x and y coordinates of the '
        'ego vehicle. Positive x means forward direction while positive y means leftwards. The '
        'data is presented in the format [x, y]:(t-3.0s) [-7.5, 0.12], (t-2.5s) [-6.25, 0.1], '
        '(t-2.0s) [-5.0, 0.0], (t-1.5s) [-3.75, 0.0], (t-1.0s) [-2.5, 0.0], (t-0.5s) '
        '[-1.25, 0.0], (t-0.0s) [0.0, 0.0]\n')
    # the history's own [x, y] pairs are not mistaken for an answer's waypoints in the reply
    assert parse_trajectory(ANSWER.replace('[x, y]: ', '[x, y]: ')).ok


def test_bench_prefill_runs_the_checkpoint_at_its_resolution(impromptu, tmp_path):
    out = subprocess.run(
        [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'bench', 'prefill', '--model',
         str(impromptu[1]), '--device', 'cpu', '--repeats', '1', '--warmup', '0',
         '--new-tokens', '2', '--keep-ratios', '1.0', '0.25', '--pruners', 'tfps',
         '--prune-layers', '0', '--json-out', str(tmp_path / 'b.json')],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    records = json.loads((tmp_path / 'b.json').read_text())
    assert {r['keep_ratio'] for r in records} == {1.0, 0.25}
    for rec in records:
        assert rec['visual_tokens'] == 6 * 336  # 1600 x 900 views at 262144 pixels
        assert rec['prefill_ms'] > 0


def test_a_non_qwen_source_is_refused(tmp_path):
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'config.json').write_text(json.dumps(
        {'architectures': ['LlavaLlamaForCausalLM']}))
    with pytest.raises(ConversionError, match='not Qwen2_5_VLForConditionalGeneration'):
        convert_checkpoint('impromptu-vla', tmp_path / 'src', tmp_path / 'out')


def test_node_serves_impromptu_over_dds(impromptu):
    pytest.importorskip('rclpy')
    import rclpy
    from ros_harness import NodeUnderTest, Probe, ros_context, wait_for

    context = ros_context()
    node = NodeUnderTest(context, model=str(impromptu[1]), max_new_tokens=4,
                         question=IMPROMPTU_PLANNING, keep_ratio=0.5)
    probe = Probe(context)
    try:
        probe.wait_connected()
        stamp = probe.publish_set(0)
        wait_for(lambda: any(r['stamp_ns'] == stamp for r in probe.results), 60.0,
                 'a result from the Impromptu-VLA checkpoint')
        with probe.lock:
            result = next(r for r in probe.results if r['stamp_ns'] == stamp)
        assert set(result['tokens_kept_per_view']) == set(NUSCENES_CAMERAS)
        assert node.node.health.model_state == 'ready'
    finally:
        probe.close()
        node.close()
        rclpy.shutdown(context=context)


def test_a_question_preset_name_is_resolved_by_the_node_parameter():
    from drive_vlm_pruned.node.parameters import PARAMETERS, settings_from

    values = {name: spec.default for name, spec in PARAMETERS.items()}
    values['question'] = 'impromptu-planning'
    assert settings_from(values, llm_layers=4).question == IMPROMPTU_PLANNING
    values['question'] = 'Is the road clear?'  # not a preset: asked as written
    assert settings_from(values, llm_layers=4).question == 'Is the road clear?'
