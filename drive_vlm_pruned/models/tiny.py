"""
Tiny random-weight checkpoints built with each family's real transformers classes.

``make_tiny_model`` writes a real checkpoint directory (config.json, model.safetensors, a
tokenizer and the image-processor config) that ``load_adapter`` loads exactly like a real one.
The weights are random, so the model answers nonsense; shapes, code paths and timings are real.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>', '<video>', '<img>',
                  '</img>', '<IMG_CONTEXT>', '<|vision_start|>', '<|vision_end|>',
                  '<|image_pad|>']
CORPUS = [
    'The ego vehicle drives forward on a straight road. A car is ahead in the front view.',
    'A pedestrian crosses on the left. The truck behind is slowing down. Traffic light is red.',
    'Predicted future movement: [1.25, 0.00], [2.50, -0.10], [3.75, 0.12], [5.00, 0.30]',
    'What are the important objects in the current scene? front left right back view of',
    'system user assistant helpful driving assistant images six These are the and',
    '0123456789 [ ] , . - + : ; ( ) < > / PLANNING meters seconds intervals',
]
FAMILIES = ('llava-onevision', 'internvl', 'qwen2.5-vl')


def build_tokenizer(vocab_size: int = 512):
    """Train a small byte-level BPE tokenizer with the chat and image special tokens."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>',
                                   pad_token='<|endoftext|>')


def make_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint of ``family`` to ``out_dir`` (created; must not hold files)."""
    if family not in FAMILIES:
        raise ValueError(f'unknown family {family!r}; tiny models exist for {", ".join(FAMILIES)}')
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'{out} is not empty: pick a new directory for the tiny checkpoint')
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    build = {'llava-onevision': build_llava_onevision, 'internvl': build_internvl,
             'qwen2.5-vl': build_qwen2_5_vl}[family]
    model, processor = build(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return out


TINY_TEXT = {'model_type': 'qwen2', 'hidden_size': 64, 'intermediate_size': 128,
             'num_hidden_layers': 4, 'num_attention_heads': 4, 'num_key_value_heads': 2,
             'max_position_embeddings': 8192}


def build_llava_onevision(tokenizer, vision: dict | None = None, text: dict | None = None):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision import image_processing_pil_llava_onevision as ip

    vision = vision or {'model_type': 'siglip_vision_model', 'hidden_size': 32,
                        'intermediate_size': 64, 'num_hidden_layers': 2,
                        'num_attention_heads': 2, 'image_size': 384, 'patch_size': 14}
    text = {**(text or TINY_TEXT), 'vocab_size': len(tokenizer)}
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
        video_token_index=tokenizer.convert_tokens_to_ids('<video>'),
        vision_feature_select_strategy='full',
        vision_feature_layer=-1,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    side = vision['image_size']
    # SigLIP normalisation, as in the real llava-onevision-qwen2-*-ov-hf checkpoints.
    processor = ip.LlavaOnevisionImageProcessorPil(
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={'height': side, 'width': side},
    )
    return model, processor


def build_internvl(tokenizer):
    from transformers import InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as ip

    vision = {'model_type': 'internvl_vision', 'hidden_size': 32, 'intermediate_size': 64,
              'num_hidden_layers': 2, 'num_attention_heads': 2, 'image_size': [448, 448],
              'patch_size': [14, 14]}
    text = {'model_type': 'qwen2', 'vocab_size': len(tokenizer), 'hidden_size': 64,
            'intermediate_size': 128, 'num_hidden_layers': 4, 'num_attention_heads': 4,
            'num_key_value_heads': 2, 'max_position_embeddings': 8192}
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>'),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy='default',
    )
    model = InternVLForConditionalGeneration(config).eval()
    processor = ip.GotOcr2ImageProcessorPil(
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        size={'height': 448, 'width': 448}, crop_to_patches=False,
    )
    return model, processor


def build_qwen2_5_vl(tokenizer, vision: dict | None = None, text: dict | None = None,
                     pixels: tuple[int, int] = (56 * 56, 224 * 448)):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as ip

    vision = vision or {'depth': 2, 'hidden_size': 32, 'num_heads': 2, 'intermediate_size': 64,
                        'out_hidden_size': 64, 'patch_size': 14, 'spatial_merge_size': 2,
                        'temporal_patch_size': 2, 'window_size': 112,
                        'fullatt_block_indexes': [1]}
    # mrope_section sums to head_dim / 2 = 64 / 4 / 2.
    text = text or {'hidden_size': 64, 'intermediate_size': 128, 'num_hidden_layers': 4,
                    'num_attention_heads': 4, 'num_key_value_heads': 2,
                    'max_position_embeddings': 8192,
                    'rope_scaling': {'type': 'mrope', 'mrope_section': [2, 3, 3]}}
    text = {**text, 'vocab_size': len(tokenizer), 'bos_token_id': tokenizer.pad_token_id,
            'eos_token_id': tokenizer.eos_token_id}
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids('<|image_pad|>'),
        video_token_id=tokenizer.convert_tokens_to_ids('<video>'),
        vision_start_token_id=tokenizer.convert_tokens_to_ids('<|vision_start|>'),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Tiny default budget: a 16:9 camera image becomes about 16 x 28 patches, 112 merged tokens.
    processor = ip.Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1])
    return model, processor
