"""
The node's parameters: one table of names, defaults, descriptors, and whether they are live.

Live parameters apply from the next frame, with no model reload; the rest are read-only (fixed
at start). ROS types are strict: write ``keep_ratio:=1.0``, not ``1``, and float arrays with
decimal points (``[1.0, 0.6, ...]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)

from ..cameras import camera_topics, NUSCENES_CAMERAS
from ..frames.approximate_sync import DEFAULT_SLOP_S
from ..models.prompts import PLANNING, QUESTION_PRESETS, resolve_question
from ..pipeline.pipeline import RuntimeSettings
from ..pruning import check_pruner_name, pruner_names
from ..pruning.reconpruner import load_scorer, resolve_weights
from ..pruning.view_weights import check_view_weights, load_view_weights


@dataclass(frozen=True)
class Spec:
    """One parameter: default, description, and its range or read-only flag."""

    default: Any
    description: str
    live: bool = True
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None

    def descriptor(self, name: str) -> ParameterDescriptor:
        d = ParameterDescriptor(name=name, description=self.description,
                                read_only=not self.live)
        if self.float_range:
            d.floating_point_range = [FloatingPointRange(
                from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)]
        if self.int_range:
            d.integer_range = [IntegerRange(
                from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        if isinstance(self.default, list) and not self.default:
            d.type = ParameterType.PARAMETER_STRING_ARRAY
        return d


PARAMETERS: dict[str, Spec] = {
    # live
    'keep_ratio': Spec(0.25, 'fraction of visual tokens KEPT per frame, 0.01-1.0 (1.0: no '
                             'pruning); a double, so write 1.0 not 1', float_range=(0.01, 1.0)),
    'pruner': Spec('tfps', f'token pruner, one of: {", ".join(pruner_names())}'),
    'view_keep_weights': Spec([1.0] * len(NUSCENES_CAMERAS),
                              'relative keep rate per camera in camera order (Prune2Drive '
                              'view-adaptive budgets); all equal: uniform budgets'),
    'view_keep_weights_file': Spec('', 'YAML file of per-camera keep weights '
                                       '(config/view_weights.yaml); overrides view_keep_weights'),
    'reconpruner_weights': Spec('', 'ReconPruner weights (safetensors, from drive-vlm train '
                                    "reconpruner) for pruner reconpruner; '' = the model's own "
                                    'MODEL_DIR/reconpruner.safetensors (the shipped model has '
                                    'one)'),
    'prune_layer': Spec(0, '0: prune after the projector; K >= 1: before LLM layer K (FastV and '
                           'DART need K >= 1)', int_range=(0, 256)),
    'question': Spec(PLANNING, 'question asked on every frame (the ~/question topic sets it '
                               'too), or a preset name: ' + ', '.join(QUESTION_PRESETS)),
    'max_new_tokens': Spec(96, 'tokens generated per answer (a planning answer is at most 95 '
                               'characters, then the end token)', int_range=(1, 4096)),
    'decode_backend': Spec('auto', 'auto (compiled on CUDA, eager on CPU) | eager | compiled '
                                   '(static KV cache + torch.compile, CUDA graphs on GPU; the '
                                   'first frame compiles; an unavailable compiler falls back to '
                                   'eager and logs why)'),
    'waypoint_grammar': Spec(True, 'decode answers to the PLANNING prompt under its waypoint '
                                   'grammar (six [x,y] pairs, one decimal), so every trajectory '
                                   'parses; false: decode freely'),
    'min_views': Spec(6, 'cameras a set needs; below 6, silent cameras are left out and the '
                         'result is marked degraded', int_range=(1, 6)),
    'view_timeout': Spec(1.0, 'seconds without a message before a camera counts as silent',
                         float_range=(0.05, 60.0)),
    'record_path': Spec('', "FILE.mcap to record the node's inputs and outputs to (bag/"
                            'recording.py; the layout config/foxglove_layout.json); setting a new '
                            "path closes the current file and starts the new one; '' stops"),
    'record_views': Spec(['CAM_FRONT'], 'cameras whose plan overlay (kept tokens, planned and '
                                        'true path) the recording draws'),
    # fixed at start
    'model': Spec('', "checkpoint directory or cached model id; '' = the embedded trained "
                  'model shipped in the package', live=False),
    'family': Spec('auto', 'llava-onevision | internvl | qwen2.5-vl | auto (from config.json)',
                   live=False),
    'device': Spec('auto', "'auto' (cuda when available), 'cpu' or 'cuda[:N]'", live=False),
    'dtype': Spec('auto', 'auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | '
                          'float16', live=False),
    'attn_implementation': Spec('auto', 'auto | sdpa | eager | flash_attention_2', live=False),
    'vision_backend': Spec('torch', 'torch | compile | onnxruntime | tensorrt; an unavailable '
                                    'one falls back to the next and logs why', live=False),
    'vision_onnx': Spec('', 'ONNX file of the vision encoder (drive-vlm export-vision; a '
                            'Qwen2.5-VL graph is fixed to the camera size it was exported for)',
                        live=False),
    'vision_engine': Spec('', 'TensorRT engine file (drive-vlm build-engine)', live=False),
    'llm_weights': Spec('native', "the LLM's linear weights: native | int8 (CUDA and CPU) | "
                                  'int4 (CUDA compute capability 8.0+ in bfloat16, or the CPU); '
                                  'one without a kernel on the device fails at start',
                        live=False),
    'camera_topics': Spec(list(camera_topics()), 'the six camera topics in nuScenes order '
                                                 f'({", ".join(NUSCENES_CAMERAS)})', live=False),
    'camera_namespace': Spec('', "prefix for every camera topic, e.g. '/vehicle1' gives "
                                 '/vehicle1/cam_front/image_raw', live=False),
    'use_compressed': Spec(False, 'subscribe sensor_msgs/CompressedImage (JPEG/PNG) instead of '
                                  'Image; topics get /compressed appended', live=False),
    'slop': Spec(DEFAULT_SLOP_S, 'approximate-time synchronizer slop in seconds (nuScenes '
                                 'exposures span ~50 ms; keep below half the frame period)',
                 live=False, float_range=(0.001, 1.0)),
    'frame_id': Spec('base_link', 'frame of the ~/trajectory Path (the ego frame)', live=False),
    'diagnostics_period': Spec(1.0, 'seconds between /diagnostics messages', live=False,
                               float_range=(0.1, 60.0)),
    'calibration_file': Spec('', "the rig's calibration.json (bag synth / bag from-nuscenes "
                                 "write one beside each bag) for the plan overlays; '' = none: "
                                 'overlays show the kept tokens only', live=False),
}


def check_record_views(views) -> list[str]:
    """Return ``views`` if every one is a camera name; else ValueError naming the six."""
    bad = [v for v in views if v not in NUSCENES_CAMERAS]
    if bad:
        raise ValueError(f'record_views has {", ".join(bad)}: use camera names '
                         f'({", ".join(NUSCENES_CAMERAS)})')
    return list(views)


def view_weights_from(values: Mapping[str, Any]) -> dict[str, float] | None:
    """Return the per-camera weights the parameters ask for, or None for uniform budgets."""
    if values['view_keep_weights_file']:
        weights = load_view_weights(values['view_keep_weights_file'])
        missing = [c for c in NUSCENES_CAMERAS if c not in weights]
        if missing:
            raise ValueError(f'{values["view_keep_weights_file"]} has no weight for '
                             f'{", ".join(missing)}: give all six cameras '
                             f'({", ".join(NUSCENES_CAMERAS)})')
        return weights
    weights = list(values['view_keep_weights'])
    if len(weights) != len(NUSCENES_CAMERAS):
        raise ValueError(f'view_keep_weights has {len(weights)} entries; give '
                         f'{len(NUSCENES_CAMERAS)}, one per camera in order '
                         f'{", ".join(NUSCENES_CAMERAS)}')
    if len(set(weights)) == 1 and weights[0] > 0:
        return None
    return check_view_weights(dict(zip(NUSCENES_CAMERAS, weights)), 'view_keep_weights')


def llm_hidden_size(directory: str | Path) -> int | None:
    """Return the LLM width from a checkpoint's config.json (None if it does not say)."""
    try:
        config = json.loads((Path(directory) / 'config.json').read_text())
    except (OSError, ValueError):
        return None
    text = config.get('text_config') or config.get('llm_config') or config
    size = text.get('hidden_size')
    return size if isinstance(size, int) else None


def reconpruner_weights_from(values: Mapping[str, Any], model_dir: str | Path | None,
                             hidden_size: int | None) -> str:
    """
    Return the checked ReconPruner weights file, or '' when pruner and parameter need none.

    With pruner reconpruner (or a weights path set) the file is found (the parameter, else the
    model's default), read and checked against the model's hidden size; the named errors of
    pruning/reconpruner.py say what is wrong.
    """
    weights = str(values.get('reconpruner_weights', '') or '')
    if check_pruner_name(values['pruner']) != 'reconpruner' and not weights:
        return ''
    path = resolve_weights(weights, model_dir)
    load_scorer(path, hidden_size)
    return str(path)


def settings_from(values: Mapping[str, Any], llm_layers: int, model_dir: str | Path | None = None,
                  hidden_size: int | None = None) -> RuntimeSettings:
    """
    Build and validate the pipeline's RuntimeSettings from parameter values.

    ValueError carries the reason the SetParameters service returns to ``ros2 param set``.
    ``model_dir`` and ``hidden_size`` (the model's) find and check ReconPruner weights.
    """
    check_pruner_name(values['pruner'])
    settings = RuntimeSettings(
        keep_ratio=float(values['keep_ratio']),
        pruner=values['pruner'],
        view_weights=view_weights_from(values),
        prune_layer=int(values['prune_layer']),
        question=resolve_question(values['question']),
        max_new_tokens=int(values['max_new_tokens']),
        decode_backend=values['decode_backend'],
        waypoint_grammar=bool(values['waypoint_grammar']),
        reconpruner_weights=reconpruner_weights_from(values, model_dir, hidden_size),
    )
    settings.validate(llm_layers)
    if not settings.question.strip():
        raise ValueError('question is empty: ask something, e.g. the planning prompt')
    return settings
