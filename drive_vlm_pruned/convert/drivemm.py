"""
DriveMM (LLaVA-NeXT ``LlavaLlamaForCausalLM``) -> ``LlavaOnevisionForConditionalGeneration``.

The source layout, from zhijian11/DriveMM (a LLaVA-NeXT fork; llava/model/llava_arch.py,
language_model/llava_llama.py, multimodal_encoder/siglip_encoder.py, multimodal_projector):

- ``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``: a plain Llama-3.1 LLM
  whose hyper-parameters sit flat in config.json (a ``LlamaConfig`` with ``model_type``
  'llava_llama');
- ``model.vision_tower.vision_tower.vision_model.*``: SigLIP-so400m with its LAST encoder layer
  deleted and no pooling head (``SigLipVisionTower.load_model``); the features are the output of
  the remaining last layer, before ``post_layernorm`` (``hidden_states[-1]``), whatever
  ``mm_vision_select_layer`` says;
- ``model.mm_projector.0`` / ``.2``: the 'mlp2x_gelu' projector (Linear, GELU, Linear);
- ``model.image_newline``: appended after each image's 729 tokens ('spatial_unpad' merge).

transformers' own convert_llava_onevision_weights_to_hf.py maps the same modules (26-layer SigLIP
without head, ``vision_feature_layer`` -1, 'full' feature selection, ``<image>``/``<video>`` added
to the tokenizer and the embeddings padded to a multiple of 64); this module writes the 5.x key
names (``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import re

from .mapping import match, pad_rows, rename, Rule
from .safetensors_stream import ConversionError, SafetensorsSource

ARCHITECTURE = 'LlavaLlamaForCausalLM'
VT = 'model.vision_tower.vision_tower.vision_model.'
# google/siglip-so400m-patch14-384 config.json (vision_config); LLaVA loads the tower from it.
VISION_TOWERS = {
    'siglip-so400m-patch14-384': {'hidden_size': 1152, 'intermediate_size': 4304,
                                  'num_attention_heads': 16, 'image_size': 384, 'patch_size': 14,
                                  'layer_norm_eps': 1e-6, 'hidden_act': 'gelu_pytorch_tanh'},
}
LLAMA_KEYS = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
              'num_key_value_heads', 'head_dim', 'hidden_act', 'max_position_embeddings',
              'rms_norm_eps', 'rope_theta', 'rope_scaling', 'attention_bias', 'attention_dropout',
              'mlp_bias', 'bos_token_id', 'eos_token_id', 'pad_token_id', 'tie_word_embeddings',
              'initializer_range')
IMAGE_TOKEN, VIDEO_TOKEN = '<image>', '<video>'
VOCAB_MULTIPLE = 64
SIGLIP_MEAN = [0.5, 0.5, 0.5]  # DriveMM siglip_encoder.py SigLipImageProcessor


@dataclass
class Prepared:
    """Everything a conversion writes besides the weights, and the weight plan."""

    config: object  # the target PretrainedConfig
    model_class: type
    rules: list[Rule]
    ignored: list[str]
    tokenizer: object
    image_processor: object
    generation_config: object
    notes: list[str] = field(default_factory=list)


def check_architecture(config: dict, src: Path) -> None:
    archs = config.get('architectures') or [config.get('model_type', '?')]
    if ARCHITECTURE not in archs:
        raise ConversionError(
            f'{src / "config.json"} names architecture {", ".join(map(str, archs))}, not '
            f'{ARCHITECTURE}: drive-vlm convert drivemm reads LLaVA-NeXT Llama checkpoints '
            '(DriveMM/DriveMM). Convert other layouts with their own converter'
        )
    problems = []
    if config.get('mm_projector_type') != 'mlp2x_gelu':
        problems.append(f"mm_projector_type {config.get('mm_projector_type')!r} (need "
                        "'mlp2x_gelu', the two-layer GELU MLP)")
    if 'unpad' not in str(config.get('mm_patch_merge_type', '')):
        problems.append(f"mm_patch_merge_type {config.get('mm_patch_merge_type')!r} (need a "
                        "'spatial_unpad' type: the per-view image_newline token)")
    if 'siglip' not in str(config.get('mm_vision_tower', '')).lower():
        problems.append(f"mm_vision_tower {config.get('mm_vision_tower')!r} (need a SigLIP "
                        'tower)')
    if problems:
        raise ConversionError(f'{src / "config.json"}: unsupported LLaVA settings: '
                              + '; '.join(problems))


def vision_config(config: dict, infos: dict, override: Path | None):
    """Return the SiglipVisionConfig of the tower, its sizes checked against the weights."""
    from transformers import SiglipVisionConfig

    patch = infos.get(VT + 'embeddings.patch_embedding.weight')
    if patch is None:
        raise ConversionError(
            f'the source has no SigLIP weights under {VT}: this converter needs the vision '
            'tower inside the checkpoint (DriveMM saves it; a LLaVA checkpoint that froze the '
            'tower loads it from the hub instead, which drive-vlm never does)'
        )
    layers = {int(m.group(1)) for name in infos
              if (m := re.match(re.escape(VT) + r'encoder\.layers\.(\d+)\.', name))}
    positions = infos[VT + 'embeddings.position_embedding.weight'].shape[0]
    side = math.isqrt(positions)
    found = {'hidden_size': patch.shape[0], 'patch_size': patch.shape[2],
             'image_size': side * patch.shape[2],
             'intermediate_size': infos[VT + 'encoder.layers.0.mlp.fc1.weight'].shape[0]}
    tower = str(config.get('mm_vision_tower', ''))
    if override is not None:
        base = json.loads(Path(override).read_text())
        base = base.get('vision_config', base)
        where = str(override)
    else:
        known = [k for k in VISION_TOWERS if k in tower]
        if not known:
            raise ConversionError(f'vision tower {tower!r} is not one this converter knows '
                                  f'({", ".join(VISION_TOWERS)}); pass --vision-config with the '
                                  "tower's config.json")
        base, where = VISION_TOWERS[known[0]], f'google/{known[0]}'
    wrong = {k: (base.get(k), v) for k, v in found.items() if k in base and base[k] != v}
    if wrong:
        detail = ', '.join(f'{k} {a} vs {b} in the weights' for k, (a, b) in wrong.items())
        raise ConversionError(f'the vision tower weights do not match {where} ({detail}); pass '
                              "--vision-config with the tower's own config.json")
    if 'num_attention_heads' not in base:
        raise ConversionError(f'{where} has no num_attention_heads for the vision tower')
    return SiglipVisionConfig(
        hidden_size=found['hidden_size'], intermediate_size=found['intermediate_size'],
        num_hidden_layers=max(layers) + 1,  # LLaVA deleted the last layer; these remain
        num_attention_heads=base['num_attention_heads'], image_size=found['image_size'],
        patch_size=found['patch_size'], layer_norm_eps=base.get('layer_norm_eps', 1e-6),
        hidden_act=base.get('hidden_act', 'gelu_pytorch_tanh'), vision_use_head=False,
    )


def load_tokenizer(src: Path):
    """Return DriveMM's fast tokenizer with ``<image>`` and ``<video>`` added as special tokens."""
    from transformers import AddedToken, PreTrainedTokenizerFast

    if not (src / 'tokenizer.json').is_file():
        raise ConversionError(f'{src} has no tokenizer.json (the Llama-3 fast tokenizer); copy '
                              "the checkpoint's tokenizer files next to its config.json")
    try:
        # Llama-3's tokenizer is a plain fast tokenizer; AutoTokenizer would also read the
        # 'llava_llama' config.json, a model type transformers does not know.
        tok = PreTrainedTokenizerFast.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConversionError(f'cannot load the tokenizer in {src}: {err}') from None
    if not tok.chat_template:
        raise ConversionError(f'the tokenizer in {src} has no chat template: DriveMM builds its '
                              'prompt with it (llava_llama_3 / preprocess_llama3)')
    new = [AddedToken(t, special=True, normalized=False) for t in (IMAGE_TOKEN, VIDEO_TOKEN)
           if t not in tok.get_vocab()]
    if new:
        tok.add_tokens(new, special_tokens=True)
    return tok


def prepare(src: Path, config: dict, source: SafetensorsSource,
            vision_override: Path | None) -> Prepared:
    """Plan a DriveMM conversion: target config, tokenizer, processor and the weight rules."""
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
    )
    from transformers.models.llava_onevision import image_processing_pil_llava_onevision as ip

    check_architecture(config, src)
    infos = source.infos
    vision = vision_config(config, infos, vision_override)
    tok = load_tokenizer(src)
    vocab = int(config.get('vocab_size', 0))
    rows = vocab if len(tok) <= vocab else -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text = LlamaConfig(**{k: config[k] for k in LLAMA_KEYS if k in config}, vocab_size=rows)
    pinpoints = config.get('image_grid_pinpoints')
    target = LlavaOnevisionConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_select_strategy='full', vision_feature_layer=-1,
        vision_aspect_ratio=config.get('image_aspect_ratio', 'anyres_max_9'),
        **({'image_grid_pinpoints': pinpoints} if pinpoints else {}),
    )
    target.tie_word_embeddings = bool(config.get('tie_word_embeddings', False))
    rules, ignored = weight_rules(infos, rows)
    side = vision.image_size
    processor = ip.LlavaOnevisionImageProcessorPil(
        image_mean=SIGLIP_MEAN, image_std=SIGLIP_MEAN, size={'height': side, 'width': side},
        **({'image_grid_pinpoints': pinpoints} if pinpoints else {}),
    )
    eos = config.get('eos_token_id')
    eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    eot = tok.convert_tokens_to_ids('<|eot_id|>')  # conv_llava_llama_3 stop_token_ids
    if isinstance(eot, int) and eot != tok.unk_token_id and eot not in eos:
        eos.append(eot)
    generation = GenerationConfig(bos_token_id=config.get('bos_token_id'), eos_token_id=eos,
                                  do_sample=False)
    notes = [
        f'vision tower: {vision.num_hidden_layers} SigLIP layers (LLaVA dropped the last), no '
        'head; features are the last remaining layer before post_layernorm '
        '(vision_feature_layer -1, strategy full)',
        f'tokenizer: {IMAGE_TOKEN} = {target.image_token_index}, {VIDEO_TOKEN} = '
        f'{target.video_token_index}; embeddings {vocab} -> {rows} rows (new rows = row mean)',
        f"source mm_vision_select_layer {config.get('mm_vision_select_layer')!r} is ignored by "
        "LLaVA's SigLipVisionTower, as here",
    ]
    return Prepared(target, LlavaOnevisionForConditionalGeneration, rules, ignored, tok,
                    processor, generation, notes)


def weight_rules(infos: dict, rows: int) -> tuple[list[Rule], list[str]]:
    """Map every source tensor name to its target (unknown names stay unmapped)."""
    rules, ignored = [], []
    for name in infos:
        if name.endswith('rotary_emb.inv_freq'):
            ignored.append(name)  # recomputed from the config
        elif name.startswith(VT):
            rules.append(rename(name, 'model.vision_tower.' + name[len(VT):], infos))
        elif m := match(r'model\.mm_projector\.([02])\.(weight|bias)', name):
            layer = {'0': 'linear_1', '2': 'linear_2'}[m.group(1)]
            rules.append(rename(name, f'model.multi_modal_projector.{layer}.{m.group(2)}', infos))
        elif name == 'model.image_newline':
            rules.append(rename(name, 'model.image_newline', infos))
        elif name in ('model.embed_tokens.weight', 'lm_head.weight'):
            target = ('model.language_model.embed_tokens.weight' if name.startswith('model.')
                      else 'lm_head.weight')
            if infos[name].shape[0] == rows:
                rules.append(rename(name, target, infos))
            else:
                rules.append(pad_rows(name, target, rows, infos))
        elif m := match(r'model\.(layers\.\d+\..+|norm\.weight)', name):
            rules.append(rename(name, 'model.language_model.' + m.group(1), infos))
    return rules, ignored
