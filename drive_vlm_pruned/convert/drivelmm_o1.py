"""
DriveLMM-o1 (InternVL2.5-8B remote-code layout) -> ``InternVLForConditionalGeneration``.

The source layout, from OpenGVLab/InternVL internvl_chat/internvl/model (modeling_internvl_chat.py,
modeling_intern_vit.py) and InternLM2's modeling_internlm2.py, which DriveLMM-o1 ships as remote
code (``trust_remote_code=True`` in mbzuai-oryx/DriveLMM-o1 evaluation/inference.py):

- ``vision_model.*``: InternViT-300M (``embeddings.class_embedding``, ``patch_embedding``,
  ``position_embedding``; per layer ``attn.qkv`` packed [3D, D], ``attn.proj``, ``ls1``/``ls2``
  layer scales, ``norm1``/``norm2``, ``mlp.fc1``/``fc2``);
- ``mlp1.0`` (LayerNorm), ``mlp1.1``, ``mlp1.3`` (Linear, GELU, Linear): the projector after the
  0.5 pixel shuffle ('v2');
- ``language_model.model.*`` / ``language_model.output``: InternLM2.5-7B (``tok_embeddings``,
  ``attention.wqkv`` packed per key/value head as [q x groups, k, v], ``attention.wo``,
  ``feed_forward.w1``/``w3``/``w2`` = gate/up/down, ``attention_norm``, ``ffn_norm``);
- with ``use_llm_lora`` / ``use_backbone_lora`` r > 0, PEFT wraps those modules
  (``language_model.base_model.model.*``, ``<m>.base_layer.weight``, ``<m>.lora_A/B.default``)
  with lora_alpha = 2r; the LoRA is merged here (W + 2 * B @ A).

transformers has no InternLM2 class; its convert_internvl_weights_to_hf.py maps InternVL2.5-8B's
LLM onto ``LlamaForCausalLM`` (same RMSNorm, rotary and SwiGLU; the wqkv rows regrouped into
q/k/v), the vision keys onto ``InternVLVisionModel`` and the image token to ``<IMG_CONTEXT>``
(92546 in InternLM2's tokenizer). This module does the same, streaming, for the 5.x key names.
"""

from __future__ import annotations

import json
from pathlib import Path
import tempfile

import torch

from .drivemm import Prepared
from .mapping import lora_merged, match, rename, Rule, split_rows
from .safetensors_stream import ConversionError, SafetensorsSource

ARCHITECTURE = 'InternVLChatModel'
LLM_ARCHITECTURE = 'InternLM2ForCausalLM'
TEMPLATE = 'internvl2_5'
IMAGE_TOKEN = '<IMG_CONTEXT>'
IM_END = '<|im_end|>'
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LLM = 'model.language_model.'
VIS = 'model.vision_tower.'
# The chat template for plain transformers users: InternVL2.5's prompt, its default system
# message when none is given, <image> placeholders as transformers' InternVL processor expects.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + SYSTEM + "
    "'<|im_end|>\\n' }}{%- endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<image>\\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VISION_LAYER_MAP = {
    'attn.proj': 'attention.projection_layer', 'attn.q_norm': 'attention.q_norm',
    'attn.k_norm': 'attention.k_norm', 'norm1': 'layernorm_before', 'norm2': 'layernorm_after',
    'mlp.fc1': 'mlp.fc1', 'mlp.fc2': 'mlp.fc2',
}
LLM_LAYER_MAP = {
    'attention.wo': 'self_attn.o_proj', 'feed_forward.w1': 'mlp.gate_proj',
    'feed_forward.w3': 'mlp.up_proj', 'feed_forward.w2': 'mlp.down_proj',
    'attention_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm',
}


def check_architecture(config: dict, src: Path) -> None:
    where = src / 'config.json'
    archs = config.get('architectures') or [config.get('model_type', '?')]
    if ARCHITECTURE not in archs:
        raise ConversionError(
            f'{where} names architecture {", ".join(map(str, archs))}, not {ARCHITECTURE}: '
            'drive-vlm convert drivelmm-o1 reads InternVL remote-code checkpoints '
            '(ayeshaishaq/DriveLMMo1, InternVL2.5-8B)'
        )
    llm = (config.get('llm_config') or {}).get('architectures') or ['?']
    if LLM_ARCHITECTURE not in llm:
        raise ConversionError(f'{where}: llm_config architecture {", ".join(map(str, llm))} is '
                              f'not {LLM_ARCHITECTURE} (InternVL2.5-8B); this converter maps '
                              'only InternLM2 onto Llama')
    if config.get('ps_version', 'v2') != 'v2':
        raise ConversionError(f"{where}: ps_version {config.get('ps_version')!r}; transformers' "
                              "InternVL implements the 'v2' pixel shuffle only")
    template = config.get('template', TEMPLATE)
    if template != TEMPLATE:
        raise ConversionError(f'{where}: chat template {template!r}; the drivelmm-o1 prompt '
                              f'format is InternVL {TEMPLATE!r}')


def normalise(infos: dict) -> tuple[dict[str, str], dict[str, tuple[str, str]], list[str]]:
    """
    Undo PEFT's wrapping in the key names.

    Returns (plain name -> source name, source base weight -> (lora_A, lora_B) source names,
    LoRA tensors with no base weight).
    """
    plain: dict[str, str] = {}
    halves: dict[str, dict[str, str]] = {}
    for name in infos:
        key = name.replace('language_model.base_model.model.', 'language_model.', 1)
        key = key.replace('vision_model.base_model.model.', 'vision_model.', 1)
        if m := match(r'(.+)\.lora_([AB])\.[^.]+\.weight', key):
            halves.setdefault(m.group(1), {})[m.group(2)] = name
            continue
        plain[key.replace('.base_layer.', '.')] = name
    lora, orphans = {}, []
    for module, pair in halves.items():
        base = plain.get(module + '.weight')
        if base is None or set(pair) != {'A', 'B'}:
            orphans += sorted(pair.values())
        else:
            lora[base] = (pair['A'], pair['B'])
    return plain, lora, orphans


def unpack_wqkv(source: str, prefix: str, suffix: str, heads: int, kv_heads: int, head_dim: int,
                infos: dict) -> Rule:
    """Regroup InternLM2's packed rows [kv_heads x (groups q, k, v) x head_dim] into q, k, v."""
    groups = heads // kv_heads
    shape = infos[source].shape
    rows = kv_heads * (groups + 2) * head_dim
    if shape[0] != rows:
        raise ConversionError(
            f'shape mismatch at {source}: {shape[0]} rows, but llm_config ({heads} heads, '
            f'{kv_heads} key/value heads, head dim {head_dim}) packs {rows}'
        )
    rest = tuple(shape[1:])
    outputs = ((f'{prefix}q_proj.{suffix}', (heads * head_dim, *rest)),
               (f'{prefix}k_proj.{suffix}', (kv_heads * head_dim, *rest)),
               (f'{prefix}v_proj.{suffix}', (kv_heads * head_dim, *rest)))

    def build(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        packed = ts[0].reshape(kv_heads, groups + 2, head_dim, *rest)
        return [packed[:, :groups].reshape(-1, *rest).clone(),
                packed[:, -2].reshape(-1, *rest).clone(),
                packed[:, -1].reshape(-1, *rest).clone()]

    return Rule((source,), outputs, build, infos[source].dtype)


def weight_rules(infos: dict, config: dict) -> tuple[list[Rule], list[str]]:
    plain, lora, orphans = normalise(infos)
    if orphans:
        raise ConversionError(f'LoRA tensors without their base weight: {orphans[:5]}')
    llm, vision = config['llm_config'], config['vision_config']
    heads = llm['num_attention_heads']
    kv_heads = llm.get('num_key_value_heads', heads)
    head_dim = llm.get('head_dim') or llm['hidden_size'] // heads
    dim = vision['hidden_size']
    scales = {'language_model.': _lora_scale(config, 'use_llm_lora', lora, infos, 'language'),
              'vision_model.': _lora_scale(config, 'use_backbone_lora', lora, infos, 'vision')}
    rules, ignored = [], []
    for key, name in plain.items():
        rule = _rule(key, name, infos, dim, heads, kv_heads, head_dim)
        if rule is None:
            if key.endswith('rotary_emb.inv_freq'):
                ignored.append(name)
            continue
        if name in lora:
            scale = scales['language_model.' if key.startswith('language_model.')
                           else 'vision_model.']
            rule = lora_merged(rule, lora, scale, infos)
        rules.append(rule)
    return rules, ignored


def _lora_scale(config: dict, key: str, lora: dict, infos: dict, part: str) -> float:
    """PEFT scale lora_alpha / r for one part; InternVL wraps with lora_alpha = 2 r."""
    rank = int(config.get(key) or 0)
    pairs = [(a, b) for base, (a, b) in lora.items()
             if base.startswith('language_model.' if part == 'language' else 'vision_model.')]
    if pairs and rank <= 0:
        raise ConversionError(f'the source has {part} LoRA weights but config.json {key} is '
                              f'{config.get(key)!r}; set it to the LoRA rank')
    for a, _ in pairs:
        if infos[a].shape[0] != rank:
            raise ConversionError(f'shape mismatch at {a}: LoRA rank {infos[a].shape[0]}, '
                                  f'config.json {key} says {rank}')
    return 2.0  # (2 r) / r


def _rule(key: str, name: str, infos: dict, dim: int, heads: int, kv_heads: int,
          head_dim: int) -> Rule | None:
    if key == 'vision_model.embeddings.class_embedding':
        return rename(name, VIS + 'embeddings.cls_token', infos)
    if m := match(r'vision_model\.embeddings\.patch_embedding\.(weight|bias)', key):
        return rename(name, VIS + 'embeddings.patch_embeddings.projection.' + m.group(1), infos)
    if key == 'vision_model.embeddings.position_embedding':
        return rename(name, VIS + 'embeddings.position_embeddings', infos)
    if m := match(r'vision_model\.encoder\.layers\.(\d+)\.(.+)', key):
        layer, rest = VIS + f'encoder.layer.{m.group(1)}.', m.group(2)
        if q := match(r'attn\.qkv\.(weight|bias)', rest):
            suffix = q.group(1)
            return split_rows(name, [(f'{layer}attention.{p}_proj.{suffix}', i * dim,
                                      (i + 1) * dim) for i, p in enumerate('qkv')], infos)
        if rest in ('ls1', 'ls2'):
            return rename(name, layer + ('lambda_1' if rest == 'ls1' else 'lambda_2'), infos)
        module, _, param = rest.rpartition('.')
        if module in VISION_LAYER_MAP:
            return rename(name, f'{layer}{VISION_LAYER_MAP[module]}.{param}', infos)
        return None
    if m := match(r'mlp1\.([013])\.(weight|bias)', key):
        part = {'0': 'layer_norm', '1': 'linear_1', '3': 'linear_2'}[m.group(1)]
        return rename(name, f'model.multi_modal_projector.{part}.{m.group(2)}', infos)
    if key == 'language_model.model.tok_embeddings.weight':
        return rename(name, LLM + 'embed_tokens.weight', infos)
    if key == 'language_model.model.norm.weight':
        return rename(name, LLM + 'norm.weight', infos)
    if key == 'language_model.output.weight':
        return rename(name, 'lm_head.weight', infos)
    if m := match(r'language_model\.model\.layers\.(\d+)\.(.+)\.(weight|bias)', key):
        layer, module, param = LLM + f'layers.{m.group(1)}.', m.group(2), m.group(3)
        if module == 'attention.wqkv':
            return unpack_wqkv(name, layer + 'self_attn.', param, heads, kv_heads, head_dim,
                               infos)
        if module in LLM_LAYER_MAP:
            return rename(name, f'{layer}{LLM_LAYER_MAP[module]}.{param}', infos)
    return None


def load_tokenizer(src: Path):
    """
    Return InternLM2's tokenizer as a fast tokenizer with the source's special-token ids.

    The source ships InternLM2Tokenizer as remote code (never run here). A ``tokenizer.json``
    beside it is used as is; otherwise ``tokenizer.model`` (SentencePiece BPE) is converted with
    transformers' Llama converter and no dummy-prefix space (transformers'
    convert_internvl_weights_to_hf.py: ``prepend_scheme = "never"``), and the encoding is checked
    against SentencePiece itself on a probe text.
    """
    from transformers import AddedToken, PreTrainedTokenizerFast

    cfg_path = src / 'tokenizer_config.json'
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    specials = {k: _content(cfg.get(k)) for k in ('bos_token', 'eos_token', 'unk_token',
                                                  'pad_token') if cfg.get(k)}
    if (src / 'tokenizer.json').is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(src / 'tokenizer.json'), **specials)
    elif (src / 'tokenizer.model').is_file():
        tok = _from_sentencepiece(src / 'tokenizer.model', specials)
    else:
        raise ConversionError(f'{src} has neither tokenizer.json nor tokenizer.model')
    added = sorted(((int(i), t) for i, t in (cfg.get('added_tokens_decoder') or {}).items()),
                   key=lambda item: item[0])
    for token_id, spec in added:
        content = spec['content']
        special = bool(spec.get('special'))
        if content not in tok.get_vocab() or special:
            tok.add_tokens([AddedToken(content, special=special, normalized=False)],
                           special_tokens=special)
        got = tok.convert_tokens_to_ids(content)
        if got != token_id:
            raise ConversionError(f'token {content!r} came out as id {got} but the source '
                                  f'tokenizer_config.json gives {token_id}')
    for needed in (IMAGE_TOKEN, IM_END, '<img>', '</img>'):
        if needed not in tok.get_vocab():
            raise ConversionError(f'the tokenizer in {src} has no {needed!r} token')
    return tok


def _content(value) -> str:
    return value['content'] if isinstance(value, dict) else value


def _from_sentencepiece(model: Path, specials: dict):
    try:
        import sentencepiece
        from tokenizers import pre_tokenizers
        from transformers import LlamaTokenizer, PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import import_protobuf
    except ImportError:
        raise ConversionError(
            f'{model} is a SentencePiece model and this source has no tokenizer.json: converting '
            'it needs the sentencepiece package (pip install sentencepiece), or save the '
            'tokenizer as tokenizer.json elsewhere first'
        ) from None
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / 'tokenizer.model').write_bytes(model.read_bytes())
        cfg = {'tokenizer_class': 'LlamaTokenizer', 'legacy': False, 'add_bos_token': True,
               'add_eos_token': False, **specials}
        (Path(tmp) / 'tokenizer_config.json').write_text(json.dumps(cfg))
        tok = LlamaTokenizer.from_pretrained(tmp)
    if not proto.normalizer_spec.add_dummy_prefix:
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement='▁', prepend_scheme='never', split=False)
    # Saved as a plain fast tokenizer: a reloaded LlamaTokenizer would reset the prefix scheme.
    tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, **specials)
    probe = 'The ego vehicle turns left.\n  Two pedestrians, 3 cars; [1.25, -0.5] ü 中'
    want = sentencepiece.SentencePieceProcessor(model_file=str(model)).encode(probe)
    got = tok(probe, add_special_tokens=False).input_ids
    if want != got:
        raise ConversionError(f'the converted tokenizer encodes a probe text differently from '
                              f'SentencePiece ({got[:8]}... vs {want[:8]}...); not converting')
    return tok


def prepare(src: Path, config: dict, source: SafetensorsSource,
            vision_override: Path | None) -> Prepared:
    """Plan a DriveLMM-o1 conversion: target config, tokenizer, processor and weight rules."""
    from transformers import (
        GenerationConfig,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        LlamaConfig,
    )
    from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as ip

    check_architecture(config, src)
    if vision_override is not None:
        raise ConversionError('--vision-config is for drivemm; DriveLMM-o1 config.json carries '
                              'its vision_config')
    llm, vis = config['llm_config'], config['vision_config']
    tok = load_tokenizer(src)
    side = int(config.get('force_image_size') or vis['image_size'])
    patch = int(vis['patch_size'])
    vision = InternVLVisionConfig(
        hidden_size=vis['hidden_size'], intermediate_size=vis['intermediate_size'],
        num_hidden_layers=vis['num_hidden_layers'],
        num_attention_heads=vis['num_attention_heads'], image_size=[side, side],
        patch_size=[patch, patch], attention_bias=bool(vis.get('qkv_bias', True)),
        use_qk_norm=bool(vis.get('qk_normalization', False)),
        norm_type=vis.get('norm_type', 'layer_norm'),
        layer_norm_eps=vis.get('layer_norm_eps', 1e-6), hidden_act=vis.get('hidden_act', 'gelu'),
        use_absolute_position_embeddings=True,
    )
    text = LlamaConfig(
        vocab_size=llm['vocab_size'], hidden_size=llm['hidden_size'],
        intermediate_size=llm['intermediate_size'], num_hidden_layers=llm['num_hidden_layers'],
        num_attention_heads=llm['num_attention_heads'],
        num_key_value_heads=llm.get('num_key_value_heads', llm['num_attention_heads']),
        hidden_act=llm.get('hidden_act', 'silu'),
        max_position_embeddings=llm.get('max_position_embeddings', 32768),
        rms_norm_eps=llm.get('rms_norm_eps', 1e-5), rope_theta=llm.get('rope_theta', 10000),
        rope_scaling=llm.get('rope_scaling'), attention_bias=bool(llm.get('bias', False)),
        bos_token_id=llm.get('bos_token_id'), eos_token_id=llm.get('eos_token_id'),
        pad_token_id=llm.get('pad_token_id'), tie_word_embeddings=False,
    )
    ratio = float(config.get('downsample_ratio', 0.5))
    tokens = int((side // patch * ratio) ** 2)
    target = InternVLConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=tokens,
        downsample_ratio=ratio, vision_feature_layer=int(config.get('select_layer', -1)),
        vision_feature_select_strategy='default', projector_hidden_act='gelu',
        tie_word_embeddings=False,
    )
    if config.get('system_message'):
        target.drive_vlm_system_message = config['system_message']
    rules, ignored = weight_rules(source.infos, config)
    processor = ip.GotOcr2ImageProcessorPil(
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, size={'height': side, 'width': side},
        crop_to_patches=False,
    )
    tok.chat_template = CHAT_TEMPLATE.replace('SYSTEM', json.dumps(
        config.get('system_message') or _default_system(), ensure_ascii=False))
    generation = GenerationConfig(bos_token_id=llm.get('bos_token_id'),
                                  eos_token_id=[tok.convert_tokens_to_ids(IM_END)],
                                  pad_token_id=llm.get('pad_token_id'), do_sample=False)
    merged = sum(1 for r in rules if len(r.sources) == 3)
    notes = [
        f'LLM: InternLM2 -> Llama ({text.num_hidden_layers} layers, wqkv regrouped into q/k/v '
        f'for {text.num_attention_heads} heads / {text.num_key_value_heads} key-value heads)',
        f'vision: InternViT {vision.num_hidden_layers} layers at {side} px, pixel shuffle '
        f'{ratio} -> {tokens} tokens per tile; {IMAGE_TOKEN} = {target.image_token_id}',
        f'LoRA: {merged} wrapped weights merged (W + 2 B A)' if merged else 'LoRA: none',
    ]
    return Prepared(target, InternVLForConditionalGeneration, rules, ignored, tok, processor,
                    generation, notes)


def _default_system() -> str:
    from ..models.prompts import INTERNVL2_5_SYSTEM

    return INTERNVL2_5_SYSTEM
