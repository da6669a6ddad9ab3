"""
Real-size model shapes the benchmarks build (configs only: no torch, cheap to import).

The CLI lists these names in its --preset / --encoders choices, so they live apart from the
code that instantiates them (bench/prefill.py, bench/vision.py).
"""

from __future__ import annotations

from dataclasses import dataclass

KEEP_RATIOS = (1.0, 0.5, 0.25, 0.125, 0.1, 0.05)
SIGLIP_SO400M = {'model_type': 'siglip_vision_model', 'hidden_size': 1152,
                 'intermediate_size': 4304, 'num_hidden_layers': 26, 'num_attention_heads': 16,
                 'image_size': 384, 'patch_size': 14}
QWEN25_VL_VIT = {'depth': 32, 'hidden_size': 1280, 'num_heads': 16, 'intermediate_size': 3420,
                 'out_hidden_size': 2048, 'patch_size': 14, 'spatial_merge_size': 2,
                 'temporal_patch_size': 2, 'window_size': 112,
                 'fullatt_block_indexes': [7, 15, 23, 31]}


def _qwen2(hidden, layers, heads, kv, inter, **extra) -> dict:
    return {'model_type': 'qwen2', 'hidden_size': hidden, 'num_hidden_layers': layers,
            'num_attention_heads': heads, 'num_key_value_heads': kv, 'intermediate_size': inter,
            'max_position_embeddings': 32768, **extra}


@dataclass(frozen=True)
class Preset:
    """A model shape to benchmark: family, vision and text configs, camera image size."""

    name: str
    family: str
    description: str
    vision: dict
    text: dict
    image_hw: tuple[int, int] = (900, 1600)
    qwen_pixels: tuple[int, int] | None = None  # (min, max) pixels for Qwen2.5-VL's processor


PRESETS = {p.name: p for p in (
    Preset('tiny', 'llava-onevision', 'test-size LLaVA-OneVision (6 x 729 tokens, 4 x 64 LLM)',
           {**SIGLIP_SO400M, 'hidden_size': 32, 'intermediate_size': 64,
            'num_hidden_layers': 1, 'num_attention_heads': 2},
           _qwen2(64, 4, 4, 2, 128)),
    Preset('cpu-small', 'llava-onevision',
           'CPU preset: 6 x 729 tokens, 2-layer 256-wide SigLIP stand-in, Qwen2 LLM 512 x 4',
           {**SIGLIP_SO400M, 'hidden_size': 256, 'intermediate_size': 1024,
            'num_hidden_layers': 2, 'num_attention_heads': 4},
           _qwen2(512, 4, 8, 2, 1408)),
    Preset('llava-ov-0.5b', 'llava-onevision', 'llava-onevision-qwen2-0.5b-ov: SigLIP-so400m + '
           'Qwen2-0.5B, six 384 px views', SIGLIP_SO400M, _qwen2(896, 24, 14, 2, 4864)),
    Preset('llava-ov-7b', 'llava-onevision', 'llava-onevision-qwen2-7b-ov: SigLIP-so400m + '
           'Qwen2-7B, six 384 px views', SIGLIP_SO400M, _qwen2(3584, 28, 28, 4, 18944)),
    Preset('drivemm-8b', 'llava-onevision', 'DriveMM shape: SigLIP-so400m + Llama-3.1-8B',
           SIGLIP_SO400M,
           {'model_type': 'llama', 'hidden_size': 4096, 'num_hidden_layers': 32,
            'num_attention_heads': 32, 'num_key_value_heads': 8, 'intermediate_size': 14336,
            'max_position_embeddings': 32768, 'rope_theta': 500000.0}),
    Preset('qwen2.5-vl-3b-1596', 'qwen2.5-vl', 'Qwen2.5-VL-3B at Impromptu 1596 px: 3249 '
           'tokens per view', QWEN25_VL_VIT,
           _qwen2(2048, 36, 16, 2, 11008, rope_scaling={'type': 'mrope',
                                                        'mrope_section': [16, 24, 24]}),
           image_hw=(1596, 1596), qwen_pixels=(1596 * 1596, 1596 * 1596)),
    Preset('qwen2.5-vl-3b-262k', 'qwen2.5-vl', 'Qwen2.5-VL-3B at 262144 px: 1600 x 900 -> 312 '
           'tokens per view', QWEN25_VL_VIT,
           _qwen2(2048, 36, 16, 2, 11008, rope_scaling={'type': 'mrope',
                                                        'mrope_section': [16, 24, 24]}),
           qwen_pixels=(56 * 56, 262144)),
)}

# bench vision: encoder name -> the preset whose vision tower it times
ENCODERS = {'siglip-so400m': 'llava-ov-7b', 'qwen2.5-vl-vit-1596': 'qwen2.5-vl-3b-1596',
            'qwen2.5-vl-vit-262k': 'qwen2.5-vl-3b-262k'}
