"""
drive-vlm convert drivemm on tiny checkpoints in DriveMM's LLaVA-NeXT layout.

The source checkpoints carry the real key names, nesting and config fields of DriveMM
(``LlavaLlamaForCausalLM``: ``model.vision_tower.vision_tower.vision_model.*`` with the last SigLIP
layer already dropped, ``model.mm_projector.0/2``, ``model.image_newline``, a Llama-3 tokenizer
with its chat template), written as several safetensors shards. The reference forward below is
written from those source tensors alone, the way LLaVA-NeXT runs them; the converted checkpoint,
loaded by ``load_adapter`` and by plain transformers, must give the same logits.
"""

import json
import math
from pathlib import Path
import pickle
import re
import subprocess
import sys

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.convert.runner import convert_checkpoint, ConvertOptions
from drive_vlm_pruned.convert.safetensors_stream import ConversionError
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.generate import prefill
from drive_vlm_pruned.pruning import keep_all
import numpy as np
import pytest
from safetensors.torch import save_file
import torch
import torch.nn.functional as F

VT = 'model.vision_tower.vision_tower.vision_model.'
SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>',
            '<|eot_id|>']
# Meta-Llama-3-8B-Instruct's chat template (the template DriveMM's tokenizer renders).
LLAMA3_TEMPLATE = (
    '{% set loop_messages = messages %}{% for message in loop_messages %}'
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    '{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}'
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    '{% endif %}'
)
ROPE = {'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
        'original_max_position_embeddings': 64, 'rope_type': 'llama3'}
SMALL = {'vision': (32, 64, 2, 2, 56), 'text': (64, 128, 2, 4, 2)}
LARGE = {'vision': (64, 128, 2, 2, 56), 'text': (256, 1024, 4, 4, 2)}
QUESTION = 'What are the important objects in the current scene?'


def build_tokenizer(out: Path):
    """Build a small byte-level BPE with Llama-3's special tokens and chat template."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ['1: 2: 3: 4: 5: 6: These six images are the front view, front left view, front '
              'right view, back view, back left view and back right view of the ego vehicle.',
              'You are a helpful language and vision assistant. user assistant system',
              QUESTION, 'a car ahead, a truck behind. [1.25, -0.30]'] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|begin_of_text|>',
                                   eos_token='<|eot_id|>')
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(out)
    return fast


def make_source(root: Path, dims=SMALL, shards: int = 3, seed: int = 0,
                dtype=torch.float32) -> Path:
    """Write a DriveMM-layout checkpoint (config, tokenizer, sharded weights) into ``root``."""
    root.mkdir(parents=True)
    tok = build_tokenizer(root)
    vh, vi, vl, vheads, side = dims['vision']
    th, ti, tl, heads, kv = dims['text']
    head_dim = th // heads
    vocab = len(tok)
    config = {
        'architectures': ['LlavaLlamaForCausalLM'], 'model_type': 'llava_llama',
        'hidden_size': th, 'intermediate_size': ti, 'num_hidden_layers': tl,
        'num_attention_heads': heads, 'num_key_value_heads': kv, 'hidden_act': 'silu',
        'max_position_embeddings': 4096, 'rms_norm_eps': 1e-5, 'rope_theta': 500000.0,
        'rope_scaling': ROPE, 'vocab_size': vocab, 'tie_word_embeddings': False,
        'bos_token_id': tok.bos_token_id, 'eos_token_id': tok.convert_tokens_to_ids(
            '<|end_of_text|>'), 'attention_bias': False, 'mlp_bias': False,
        'torch_dtype': 'float32', 'use_cache': True,
        'mm_vision_tower': 'google/siglip-so400m-patch14-384', 'mm_projector_type': 'mlp2x_gelu',
        'mm_hidden_size': vh, 'mm_vision_select_layer': -2, 'mm_vision_select_feature': 'patch',
        'mm_patch_merge_type': 'spatial_unpad', 'image_aspect_ratio': 'anyres_max_9',
        'image_grid_pinpoints': [[side, side], [side, 2 * side], [2 * side, side]],
        'mm_newline_position': 'one_token', 'mm_spatial_pool_mode': 'bilinear',
        'use_mm_proj': True, 'tokenizer_padding_side': 'right', 'mm_use_im_start_end': False,
    }
    (root / 'config.json').write_text(json.dumps(config, indent=2))
    (root / 'siglip_config.json').write_text(json.dumps({'vision_config': {
        'hidden_size': vh, 'intermediate_size': vi, 'num_attention_heads': vheads,
        'image_size': side, 'patch_size': 14, 'layer_norm_eps': 1e-6,
        'hidden_act': 'gelu_pytorch_tanh'}}))
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def norm(n):
        return (1 + torch.randn(n, generator=gen) * 0.1).to(dtype)

    sd = {'model.embed_tokens.weight': rnd(vocab, th, scale=0.5), 'lm_head.weight': rnd(vocab, th),
          'model.norm.weight': norm(th), 'model.image_newline': rnd(th, scale=0.5)}
    for i in range(tl):
        p = f'model.layers.{i}.'
        sd |= {p + 'self_attn.q_proj.weight': rnd(heads * head_dim, th),
               p + 'self_attn.k_proj.weight': rnd(kv * head_dim, th),
               p + 'self_attn.v_proj.weight': rnd(kv * head_dim, th),
               p + 'self_attn.o_proj.weight': rnd(th, heads * head_dim),
               p + 'mlp.gate_proj.weight': rnd(ti, th), p + 'mlp.up_proj.weight': rnd(ti, th),
               p + 'mlp.down_proj.weight': rnd(th, ti), p + 'input_layernorm.weight': norm(th),
               p + 'post_attention_layernorm.weight': norm(th)}
    sd |= {'model.mm_projector.0.weight': rnd(th, vh), 'model.mm_projector.0.bias': rnd(th),
           'model.mm_projector.2.weight': rnd(th, th), 'model.mm_projector.2.bias': rnd(th)}
    sd |= {VT + 'embeddings.patch_embedding.weight': rnd(vh, 3, 14, 14),
           VT + 'embeddings.patch_embedding.bias': rnd(vh),
           VT + 'embeddings.position_embedding.weight': rnd((side // 14) ** 2, vh, scale=0.3),
           VT + 'post_layernorm.weight': norm(vh), VT + 'post_layernorm.bias': rnd(vh)}
    for i in range(vl):
        p = f'{VT}encoder.layers.{i}.'
        for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
            sd |= {p + f'self_attn.{proj}.weight': rnd(vh, vh), p + f'self_attn.{proj}.bias':
                   rnd(vh)}
        sd |= {p + 'layer_norm1.weight': norm(vh), p + 'layer_norm1.bias': rnd(vh),
               p + 'layer_norm2.weight': norm(vh), p + 'layer_norm2.bias': rnd(vh),
               p + 'mlp.fc1.weight': rnd(vi, vh), p + 'mlp.fc1.bias': rnd(vi),
               p + 'mlp.fc2.weight': rnd(vh, vi), p + 'mlp.fc2.bias': rnd(vh)}
    write_shards(root, sd, shards)
    return root


def write_shards(root: Path, sd: dict, shards: int) -> None:
    """Split ``sd`` into ``shards`` files of similar size, with the HF index json."""
    names = list(sd)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    groups, used = [[]], 0
    for name in names:
        if groups[-1] and used >= total / shards * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        used += sd[name].numel() * sd[name].element_size()
    weight_map = {}
    for i, group in enumerate(groups):
        file = f'model-{i + 1:05d}-of-{len(groups):05d}.safetensors'
        save_file({n: sd[n].contiguous() for n in group}, str(root / file),
                  metadata={'format': 'pt'})
        weight_map |= dict.fromkeys(group, file)
    (root / 'model.safetensors.index.json').write_text(json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}))


def load_source(root: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for file in sorted(root.glob('*.safetensors')):
        sd |= load_file(file)
    return sd


# --- reference forward, straight from the source tensors (LLaVA-NeXT's computation) -------------

def siglip_tower(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """SigLipVisionTower: hidden_states[-1] of the (already shortened) tower, no post-norm."""
    w = sd[VT + 'embeddings.patch_embedding.weight']
    x = F.conv2d(pixels, w, sd[VT + 'embeddings.patch_embedding.bias'], stride=w.shape[-1])
    x = x.flatten(2).transpose(1, 2) + sd[VT + 'embeddings.position_embedding.weight']
    layers = 1 + max(int(k.split('.')[6]) for k in sd if k.startswith(VT + 'encoder.layers.'))
    for i in range(layers):
        p = f'{VT}encoder.layers.{i}.'

        def lin(name, t, p=p):
            return F.linear(t, sd[p + name + '.weight'], sd[p + name + '.bias'])

        h = F.layer_norm(x, x.shape[-1:], sd[p + 'layer_norm1.weight'],
                         sd[p + 'layer_norm1.bias'], 1e-6)
        n, s, d = h.shape
        q, k, v = (lin(f'self_attn.{m}_proj', h).view(n, s, heads, -1).transpose(1, 2)
                   for m in 'qkv')
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        x = x + lin('self_attn.out_proj', att.transpose(1, 2).reshape(n, s, d))
        h = F.layer_norm(x, x.shape[-1:], sd[p + 'layer_norm2.weight'],
                         sd[p + 'layer_norm2.bias'], 1e-6)
        x = x + lin('mlp.fc2', F.gelu(lin('mlp.fc1', h), approximate='tanh'))
    return x


def mm_projector(sd: dict, feats: torch.Tensor) -> torch.Tensor:
    """'mlp2x_gelu': Linear, nn.GELU (exact), Linear."""
    h = F.linear(feats, sd['model.mm_projector.0.weight'], sd['model.mm_projector.0.bias'])
    return F.linear(F.gelu(h), sd['model.mm_projector.2.weight'], sd['model.mm_projector.2.bias'])


def llama3_inv_freq(head_dim: int, theta: float, rope: dict) -> torch.Tensor:
    """Llama 3.1's scaled rotary frequencies (its rope_scaling 'llama3' rule)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    old = rope['original_max_position_embeddings']
    low_wavelen, high_wavelen = old / rope['low_freq_factor'], old / rope['high_freq_factor']
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rope['factor'], inv)
    smooth = (old / wavelen - rope['low_freq_factor']) / (rope['high_freq_factor']
                                                          - rope['low_freq_factor'])
    mid = (1 - smooth) * scaled / rope['factor'] + smooth * scaled
    between = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(between, mid, scaled).float()


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def llama_logits(sd: dict, embeds: torch.Tensor, heads: int, kv: int) -> torch.Tensor:
    """Causal Llama over ``embeds`` [S, D] at positions 0..S-1; returns logits [S, vocab]."""
    s, d = embeds.shape
    head_dim = d // heads
    freqs = torch.outer(torch.arange(s).float(), llama3_inv_freq(head_dim, 500000.0, ROPE))
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    mask = torch.full((s, s), float('-inf')).triu(1)
    x = embeds
    layers = 1 + max(int(k.split('.')[2]) for k in sd if k.startswith('model.layers.'))
    for i in range(layers):
        p = f'model.layers.{i}.'
        h = rms(x, sd[p + 'input_layernorm.weight'])
        q = (h @ sd[p + 'self_attn.q_proj.weight'].T).view(s, heads, head_dim).transpose(0, 1)
        k = (h @ sd[p + 'self_attn.k_proj.weight'].T).view(s, kv, head_dim).transpose(0, 1)
        v = (h @ sd[p + 'self_attn.v_proj.weight'].T).view(s, kv, head_dim).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(s, d) @ sd[p + 'self_attn.o_proj.weight'].T
        h = rms(x, sd[p + 'post_attention_layernorm.weight'])
        gate = F.silu(h @ sd[p + 'mlp.gate_proj.weight'].T)
        x = x + (gate * (h @ sd[p + 'mlp.up_proj.weight'].T)) @ sd[p + 'mlp.down_proj.weight'].T
    return rms(x, sd['model.norm.weight']) @ sd['lm_head.weight'].T


def drivemm_prompt_ids(src: Path, question: str) -> tuple[list[int], int]:
    """Return DriveMM's demo prompt ids (preprocess_llama3) and the <image> id."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(src)
    tok.add_tokens(['<image>'], special_tokens=True)
    text = ('1: <image> 2: <image> 3: <image> 4: <image> 5: <image> 6: <image>. These six images '
            'are the front view, front left view, front right view, back view, back left view '
            'and back right view of the ego vehicle. ' + question)
    system = ('You are a helpful language and vision assistant. You are able to understand the '
              'visual content that the user provides, and assist the user with a variety of '
              'tasks using natural language.')

    def encode(role, content):
        return tok(tok.apply_chat_template([{'role': role, 'content': content}], tokenize=False),
                   add_special_tokens=False).input_ids

    ids = encode('system', system) + encode('user', text)[1:] + encode('assistant', '')[1:]
    return ids[:-1], tok.convert_tokens_to_ids('<image>')


def reference_logits(src: Path, pixels: torch.Tensor, question: str) -> torch.Tensor:
    sd = load_source(src)
    vheads = json.loads((src / 'siglip_config.json').read_text())['vision_config'][
        'num_attention_heads']
    config = json.loads((src / 'config.json').read_text())
    feats = mm_projector(sd, siglip_tower(sd, pixels, vheads))  # [6, N, D]
    ids, image_id = drivemm_prompt_ids(src, question)
    assert ids.count(image_id) == len(NUSCENES_CAMERAS)
    rows, view = [], 0
    for token in ids:
        if token == image_id:  # the 'spatial_unpad' single-image path: features, then newline
            rows += [feats[view], sd['model.image_newline'][None]]
            view += 1
        else:
            rows.append(sd['model.embed_tokens.weight'][token][None])
    return llama_logits(sd, torch.cat(rows), config['num_attention_heads'],
                        config['num_key_value_heads'])


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp('drivemm')
    src = make_source(root / 'src')
    report = convert_checkpoint('drivemm', src, root / 'out', ConvertOptions(
        vision_config=src / 'siglip_config.json', max_shard_bytes=200_000, progress=False))
    return src, root / 'out', report


def test_converted_logits_equal_the_source_forward_through_the_pipeline(converted):
    src, out, report = converted
    assert report.shards >= 2 and len(list(src.glob('*.safetensors'))) == 3
    adapter = load_adapter(LoadSpec(str(out)))
    assert adapter.family == 'llava-onevision' and adapter.prompt_format.name == 'drivemm'
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS]
    pixels = adapter.preprocess(images)
    feats = adapter.encode(pixels, 1)
    prompt = adapter.prompt(QUESTION, NUSCENES_CAMERAS)
    kept = keep_all(feats.tokens.valid_counts(), adapter.device)
    inputs = adapter.build_inputs(feats, kept, [prompt])
    with torch.no_grad():
        ours = adapter.model(inputs_embeds=inputs.inputs_embeds,
                             attention_mask=inputs.attention_mask,
                             position_ids=inputs.position_ids).logits[0]
        last = prefill(adapter.model, inputs).logits[0]  # the pipeline's own prefill step
        want = reference_logits(src, pixels.values.float(), QUESTION)
    vocab = want.shape[-1]
    assert ours.shape[0] == want.shape[0]
    assert ours.shape[-1] >= vocab + 2  # <image>, <video> rows added (padded to 64)
    err = (ours[:, :vocab] - want).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item()), err
    assert (last[:vocab] - want[-1]).abs().max().item() < 1e-4 * max(1.0, want.abs().max())
    # the prompt tokens themselves are DriveMM's
    ids, image_id = drivemm_prompt_ids(src, QUESTION)
    pieces = [list(p) for p in prompt.pieces]
    flat = pieces[0]
    for piece in pieces[1:]:
        flat += [image_id] + piece
    assert flat == ids


def test_views_are_padded_to_squares_in_the_image_mean_colour(converted):
    _, out, _ = converted
    adapter = load_adapter(LoadSpec(str(out)))
    white = np.full((90, 160, 3), 255, np.uint8)
    px = adapter.preprocess([white]).values[0]  # normalised with mean = std = 0.5
    side = px.shape[-1]
    assert torch.allclose(px[:, side // 2], torch.ones_like(px[:, side // 2]), atol=1e-3)
    grey = (127 / 255 - 0.5) / 0.5  # int(0.5 * 255) = 127: expand2square's background
    assert torch.allclose(px[:, 1], torch.full_like(px[:, 1], grey), atol=1e-3)
    assert torch.allclose(px[:, -2], torch.full_like(px[:, -2], grey), atol=1e-3)


def test_plain_transformers_loads_it_with_nothing_missing(converted):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    src, out, _ = converted
    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == 'LlavaOnevisionForConditionalGeneration'
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok('a car ahead, a truck behind.', add_special_tokens=False).input_ids
    sd = load_source(src)
    config = json.loads((src / 'config.json').read_text())
    want = llama_logits(sd, sd['model.embed_tokens.weight'][ids], config['num_attention_heads'],
                        config['num_key_value_heads'])
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids])).logits[0, :, :want.shape[-1]]
    assert (got - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
    assert tok.convert_tokens_to_ids('<image>') == model.config.image_token_index


def test_card_and_config_record_the_source_and_its_config_hash(converted):
    import hashlib

    src, out, _ = converted
    digest = hashlib.sha256((src / 'config.json').read_bytes()).hexdigest()
    card = (out / 'README.md').read_text()
    assert str(src.resolve()) in card and digest in card
    config = json.loads((out / 'config.json').read_text())
    assert config['drive_vlm_source'] == {'converter': 'drivemm', 'path': str(src.resolve()),
                                          'config_sha256': digest}
    assert config['drive_vlm_prompt_format'] == 'drivemm'
    index = json.loads((out / 'model.safetensors.index.json').read_text())
    assert set(index['weight_map'].values()) == {p.name for p in out.glob('*.safetensors')}


def test_peak_memory_stays_below_two_source_shards(tmp_path):
    src = make_source(tmp_path / 'src', LARGE, shards=4)
    shard_bytes = [p.stat().st_size for p in src.glob('*.safetensors')]
    report = convert_checkpoint('drivemm', src, tmp_path / 'out', ConvertOptions(
        vision_config=src / 'siglip_config.json', max_shard_bytes=max(shard_bytes),
        progress=False))
    assert min(shard_bytes) > 2e6  # a few MB each: far above allocator noise
    assert report.largest_source_shard_bytes >= 0.9 * max(shard_bytes)
    assert report.peak_live_bytes < 2 * report.largest_source_shard_bytes, report
    assert report.peak_live_bytes < 0.6 * sum(shard_bytes)  # never the whole model
    assert report.shards >= 3


def test_an_interrupted_conversion_resumes_and_keeps_the_finished_shards(tmp_path, converted):
    src, first, report = converted
    out = tmp_path / 'out'
    options = ConvertOptions(vision_config=src / 'siglip_config.json', max_shard_bytes=200_000,
                             progress=False)
    done = convert_checkpoint('drivemm', src, out, options)
    shards = sorted(out.glob('model-*.safetensors'))
    # As if the run had stopped after the first shard: the rest is gone, the progress file stays.
    kept = shards[0].stat().st_mtime_ns
    for extra in shards[1:]:
        extra.unlink()
    (out / 'model.safetensors.index.json').unlink()
    (out / '.drive-vlm-convert.json').write_text(json.dumps(
        {'plan': done.plan_id, 'done': [shards[0].name]}))
    again = convert_checkpoint('drivemm', src, out, options)
    assert 0 < again.tensors_written_now < again.tensors
    assert shards[0].stat().st_mtime_ns == kept  # not rewritten
    assert not (out / '.drive-vlm-convert.json').exists()
    for name in (p.name for p in first.glob('*.safetensors')):
        assert (out / name).read_bytes() == (first / name).read_bytes()


# --- errors: each names the problem, and nothing is written -------------------------------------

def _convert(src, out):
    return convert_checkpoint('drivemm', src, out, ConvertOptions(
        vision_config=src / 'siglip_config.json', progress=False))


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    marker = tmp_path / 'UNPICKLED'
    (src / 'pytorch_model.bin').write_bytes(pickle.dumps(_Trap(marker)))
    (src / 'config.json').write_text(json.dumps({'architectures': ['LlavaLlamaForCausalLM']}))
    with pytest.raises(ConversionError, match='never unpickles') as err:
        _convert(src, tmp_path / 'out')
    assert 'weights_only=True' in str(err.value) and 'pytorch_model.bin' in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()


def test_unknown_architecture_is_named(tmp_path):
    src = make_source(tmp_path / 'src')
    config = json.loads((src / 'config.json').read_text())
    config['architectures'] = ['LlavaQwenForCausalLM']
    (src / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ConversionError, match='LlavaQwenForCausalLM, not LlavaLlamaForCausalLM'):
        _convert(src, tmp_path / 'out')


def _edit_weights(src: Path, edit) -> None:
    sd = load_source(src)
    edit(sd)
    for p in src.glob('*.safetensors'):
        p.unlink()
    write_shards(src, sd, 3)


def test_unmapped_source_tensors_are_listed(tmp_path):
    src = make_source(tmp_path / 'src')
    _edit_weights(src, lambda sd: sd.update({'model.vision_resampler.pos_embed': torch.zeros(3)}))
    with pytest.raises(ConversionError, match='1 source tensors have no mapping') as err:
        _convert(src, tmp_path / 'out')
    assert 'model.vision_resampler.pos_embed' in str(err.value)
    assert not (tmp_path / 'out').exists()


def test_missing_parameters_are_listed(tmp_path):
    src = make_source(tmp_path / 'src')
    _edit_weights(src, lambda sd: sd.pop('model.layers.1.mlp.down_proj.weight'))
    with pytest.raises(ConversionError, match='would stay unfilled') as err:
        _convert(src, tmp_path / 'out')
    assert 'model.language_model.layers.1.mlp.down_proj.weight' in str(err.value)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    src = make_source(tmp_path / 'src')
    config = json.loads((src / 'config.json').read_text())
    config['num_key_value_heads'] = 4  # the weights have 2 key/value heads of 16
    (src / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ConversionError, match='shape mismatch at') as err:
        _convert(src, tmp_path / 'out')
    text = str(err.value)
    assert re.search(r'model\.language_model\.layers\.\d\.self_attn\.[kv]_proj\.weight', text)
    assert '[32, 64]' in text and '[64, 64]' in text


def test_wrong_vision_tower_sizes_ask_for_its_config(tmp_path):
    src = make_source(tmp_path / 'src')
    with pytest.raises(ConversionError, match='--vision-config'):
        convert_checkpoint('drivemm', src, tmp_path / 'out', ConvertOptions(progress=False))


def test_cli_converts_and_reports(tmp_path, converted):
    src, _, _ = converted
    cli = [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'convert', 'drivemm']
    ok = subprocess.run([*cli, str(src), str(tmp_path / 'out'), '--vision-config',
                         str(src / 'siglip_config.json'), '--dtype', 'bf16', '--no-progress'],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert 'wrote' in ok.stdout and 'peak tensor memory' in ok.stdout
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['dtype'] == 'bfloat16'
    bad = subprocess.run([*cli, str(src), str(tmp_path / 'out')], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and 'is not empty' in bad.stderr
