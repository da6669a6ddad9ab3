"""
Build the from-scratch LLaVA-OneVision of a preset, seat a pretrained tower, write a checkpoint.

The model is the real ``LlavaOnevisionForConditionalGeneration`` (SigLIP vision tower, 2-layer
projector, Qwen2 LM) made from a config, as models/tiny.py builds the random tiny ones: only the
sizes differ, and the weights are then trained. The written directory loads through
``models.adapters.load_adapter`` like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import ModelPreset
from ..models.prompts import PROMPT_FORMAT_KEY
from ..models.tiny import build_llava_onevision


def vision_config(shape: ModelPreset) -> dict:
    """Return the SigLIP tower's config of ``shape`` (the VLM's, and the vision stage's)."""
    return {'model_type': 'siglip_vision_model', 'hidden_size': shape.vision_hidden,
            'intermediate_size': shape.vision_mlp, 'num_hidden_layers': shape.vision_layers,
            'num_attention_heads': shape.vision_heads, 'image_size': shape.image_size,
            'patch_size': shape.patch_size,
            # LLaVA reads a hidden state, never SigLIP's pooling head: leave it out.
            'vision_use_head': False}


def build_vlm(shape: ModelPreset, tokenizer):
    """Return ``(model, image_processor)`` of ``shape`` with fresh (seeded by caller) weights."""
    vision = vision_config(shape)
    text = {'model_type': 'qwen2', 'hidden_size': shape.text_hidden,
            'intermediate_size': shape.text_mlp, 'num_hidden_layers': shape.text_layers,
            'num_attention_heads': shape.text_heads, 'num_key_value_heads': shape.text_kv_heads,
            'max_position_embeddings': shape.max_positions, 'tie_word_embeddings': True}
    model, processor = build_llava_onevision(tokenizer, vision, text)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    if shape.prompt_format != 'default':
        setattr(model.config, PROMPT_FORMAT_KEY, shape.prompt_format)
    return model, processor


def save_checkpoint(model, tokenizer, processor, out: Path,
                    dtype: torch.dtype = torch.float32) -> Path:
    """
    Write config, safetensors (in ``dtype``), tokenizer and processor config to ``out``.

    The caller's model is not changed: a float16 copy is made for half-precision storage.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    to_save = model
    if dtype != torch.float32:
        import copy

        to_save = copy.deepcopy(model).to(dtype)
    to_save.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_vision_tower(model, directory: Path) -> None:
    """Copy a vision-stage tower (SiglipVisionModel directory) into the VLM's tower."""
    from transformers import SiglipVisionModel

    directory = Path(directory)
    if not (directory / 'config.json').is_file():
        raise FileNotFoundError(f'{directory} holds no vision tower: pass OUT/vision_tower of a '
                                'finished `drive-vlm train vision` run')
    tower = SiglipVisionModel.from_pretrained(directory, local_files_only=True)
    target = model.model.vision_tower
    missing, unexpected = target.load_state_dict(tower.state_dict(), strict=False)
    # the VLM's tower has no pooling head (vision_use_head False); anything else must match
    if missing or [k for k in unexpected if '.head.' not in k]:
        raise ValueError(f"{directory} does not fit this preset's tower (missing {missing[:3]}, "
                         f'unexpected {unexpected[:3]}): train vision with the same --preset')
