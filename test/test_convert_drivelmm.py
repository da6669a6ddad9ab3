"""
drive-vlm convert drivelmm-o1 on tiny checkpoints in InternVL2.5's remote-code layout.

The source carries InternVL's real key names and config fields (``InternVLChatModel`` with
``vision_config`` / ``llm_config``; InternViT ``vision_model.*`` with packed ``attn.qkv`` and
``ls1``/``ls2``; the ``mlp1`` projector; an InternLM2 LLM with packed ``attention.wqkv`` wrapped by
PEFT LoRA as InternVL's ``wrap_llm_lora`` leaves it, ``language_model.base_model.model.*``), an
InternLM2-style tokenizer, sharded. The reference forward runs those tensors as InternVL and
InternLM2's remote code do (LoRA applied as PEFT applies it, unmerged); the converted checkpoint
must match it through the pipeline and through plain transformers.
"""

import json
import math
from pathlib import Path

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.convert.runner import convert_checkpoint, ConvertOptions
from drive_vlm_pruned.convert.safetensors_stream import ConversionError
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.models.prompts import DRIVELMM_O1_PREAMBLE, INTERNVL2_5_SYSTEM
from drive_vlm_pruned.pruning import keep_all
import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch
import torch.nn.functional as F

LLM = 'language_model.base_model.model.'
CHAT = ['<|im_start|>', '<|im_end|>']
IMAGE = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>',
         '</box>']
RANK = 4
SIDE, PATCH = 112, 14
QUESTION = 'Describe the 3 most important objects in the current scene.'


def build_tokenizer(out: Path) -> dict:
    """Build an InternLM2-like fast tokenizer: <unk> <s> </s> first, InternVL's tokens last."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [DRIVELMM_O1_PREAMBLE, INTERNVL2_5_SYSTEM, QUESTION, 'Image-1: Image-2: system user '
              'assistant a car ahead, a truck behind.'] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=['<unk>', '<s>', '</s>', *CHAT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
                                   unk_token='<unk>', pad_token='</s>')
    fast.add_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE],
                    special_tokens=True)
    fast.save_pretrained(out)
    cfg = json.loads((out / 'tokenizer_config.json').read_text())
    specials = ['<unk>', '<s>', '</s>', *CHAT, *IMAGE]
    cfg['added_tokens_decoder'] = {  # as InternLM2's tokenizer_config.json lists them
        str(fast.convert_tokens_to_ids(t)): {'content': t, 'lstrip': False, 'normalized': False,
                                             'rstrip': False, 'single_word': False,
                                             'special': True} for t in specials}
    cfg |= {'tokenizer_class': 'InternLM2Tokenizer', 'add_bos_token': True,
            'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer', None]}}
    (out / 'tokenizer_config.json').write_text(json.dumps(cfg))
    return {t: fast.convert_tokens_to_ids(t) for t in ['<s>', *CHAT, *IMAGE]} | {
        'vocab': len(fast)}


def make_source(root: Path, seed: int = 0, lora: int = RANK) -> Path:
    root.mkdir(parents=True)
    ids = build_tokenizer(root)
    vh, vi, vl, vheads = 32, 64, 2, 2
    th, ti, tl, heads, kv = 64, 128, 2, 4, 2
    hd = th // heads
    config = {
        'architectures': ['InternVLChatModel'], 'model_type': 'internvl_chat',
        'auto_map': {'AutoModel': 'modeling_internvl_chat.InternVLChatModel'},
        'template': 'internvl2_5', 'select_layer': -1, 'downsample_ratio': 0.5,
        'ps_version': 'v2', 'force_image_size': SIDE, 'dynamic_image_size': True,
        'use_thumbnail': True, 'max_dynamic_patch': 12, 'min_dynamic_patch': 1,
        'use_backbone_lora': 0, 'use_llm_lora': lora, 'torch_dtype': 'float32',
        'vision_config': {
            'architectures': ['InternVisionModel'], 'model_type': 'intern_vit_6b',
            'hidden_size': vh, 'intermediate_size': vi, 'num_hidden_layers': vl,
            'num_attention_heads': vheads, 'image_size': SIDE, 'patch_size': PATCH,
            'qkv_bias': True, 'qk_normalization': False, 'norm_type': 'layer_norm',
            'layer_norm_eps': 1e-6, 'hidden_act': 'gelu', 'use_flash_attn': False,
            'drop_path_rate': 0.0, 'initializer_factor': 1.0},
        'llm_config': {
            'architectures': ['InternLM2ForCausalLM'], 'model_type': 'internlm2',
            'hidden_size': th, 'intermediate_size': ti, 'num_hidden_layers': tl,
            'num_attention_heads': heads, 'num_key_value_heads': kv, 'rms_norm_eps': 1e-5,
            'rope_theta': 1000000, 'rope_scaling': {'type': 'dynamic', 'factor': 2.0},
            'max_position_embeddings': 32768, 'vocab_size': ids['vocab'], 'bias': False,
            'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 2,
            'tie_word_embeddings': False, 'hidden_act': 'silu', 'attn_implementation': 'eager'},
    }
    (root / 'config.json').write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=gen) * scale

    def norm(n):
        return 1 + torch.randn(n, generator=gen) * 0.1

    grid = SIDE // PATCH
    sd = {'vision_model.embeddings.class_embedding': rnd(1, 1, vh, scale=0.3),
          'vision_model.embeddings.patch_embedding.weight': rnd(vh, 3, PATCH, PATCH),
          'vision_model.embeddings.patch_embedding.bias': rnd(vh),
          'vision_model.embeddings.position_embedding': rnd(1, grid * grid + 1, vh, scale=0.3)}
    for i in range(vl):
        p = f'vision_model.encoder.layers.{i}.'
        sd |= {p + 'attn.qkv.weight': rnd(3 * vh, vh), p + 'attn.qkv.bias': rnd(3 * vh),
               p + 'attn.proj.weight': rnd(vh, vh), p + 'attn.proj.bias': rnd(vh),
               p + 'ls1': norm(vh), p + 'ls2': norm(vh), p + 'norm1.weight': norm(vh),
               p + 'norm1.bias': rnd(vh), p + 'norm2.weight': norm(vh), p + 'norm2.bias': rnd(vh),
               p + 'mlp.fc1.weight': rnd(vi, vh), p + 'mlp.fc1.bias': rnd(vi),
               p + 'mlp.fc2.weight': rnd(vh, vi), p + 'mlp.fc2.bias': rnd(vh)}
    sd |= {'mlp1.0.weight': norm(4 * vh), 'mlp1.0.bias': rnd(4 * vh),
           'mlp1.1.weight': rnd(th, 4 * vh), 'mlp1.1.bias': rnd(th),
           'mlp1.3.weight': rnd(th, th), 'mlp1.3.bias': rnd(th)}
    sd |= {LLM + 'model.tok_embeddings.weight': rnd(ids['vocab'], th, scale=0.5),
           LLM + 'model.norm.weight': norm(th), LLM + 'output.weight': rnd(ids['vocab'], th)}
    shapes = {'attention.wqkv': ((heads + 2 * kv) * hd, th), 'attention.wo': (th, th),
              'feed_forward.w1': (ti, th), 'feed_forward.w3': (ti, th),
              'feed_forward.w2': (th, ti)}
    for i in range(tl):
        p = f'{LLM}model.layers.{i}.'
        sd |= {p + 'attention_norm.weight': norm(th), p + 'ffn_norm.weight': norm(th)}
        for module, (rows, cols) in shapes.items():
            if lora:
                sd |= {p + f'{module}.base_layer.weight': rnd(rows, cols),
                       p + f'{module}.lora_A.default.weight': rnd(lora, cols, scale=0.3),
                       p + f'{module}.lora_B.default.weight': rnd(rows, lora, scale=0.3)}
            else:
                sd[p + f'{module}.weight'] = rnd(rows, cols)
    write_shards(root, sd, 3)
    return root


def write_shards(root: Path, sd: dict, shards: int) -> None:
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        group = names[i * per:(i + 1) * per]
        file = f'model-{i + 1:05d}-of-{shards:05d}.safetensors'
        save_file({n: sd[n].contiguous() for n in group}, str(root / file),
                  metadata={'format': 'pt'})
        weight_map |= dict.fromkeys(group, file)
    (root / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))


def load_source(root: Path) -> dict:
    sd = {}
    for file in sorted(root.glob('*.safetensors')):
        sd |= load_file(file)
    return sd


# --- reference: InternVL's extract_feature and InternLM2 with PEFT LoRA, from source tensors ----

def intern_vit(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    e = 'vision_model.embeddings.'
    x = F.conv2d(pixels, sd[e + 'patch_embedding.weight'], sd[e + 'patch_embedding.bias'],
                 stride=PATCH).flatten(2).transpose(1, 2)
    n, _, d = x.shape
    x = torch.cat([sd[e + 'class_embedding'].expand(n, 1, d), x], 1) + sd[e + 'position_embedding']
    layers = 1 + max(int(k.split('.')[3]) for k in sd if k.startswith('vision_model.encoder.'))
    for i in range(layers):
        p = f'vision_model.encoder.layers.{i}.'
        h = F.layer_norm(x, (d,), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], 1e-6)
        s = h.shape[1]
        qkv = F.linear(h, sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias'])
        q, k, v = qkv.reshape(n, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax(q * (d // heads) ** -0.5 @ k.transpose(-2, -1), -1) @ v
        att = F.linear(att.transpose(1, 2).reshape(n, s, d), sd[p + 'attn.proj.weight'],
                       sd[p + 'attn.proj.bias'])
        x = x + att * sd[p + 'ls1']
        h = F.layer_norm(x, (d,), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'])),
                     sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        x = x + h * sd[p + 'ls2']
    return x


def extract_feature(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """InternVLChatModel.extract_feature: drop CLS, pixel shuffle 0.5 ('v2'), mlp1."""
    x = intern_vit(sd, pixels, heads)[:, 1:]
    n, tokens, c = x.shape
    w = h = int(tokens ** 0.5)
    x = x.reshape(n, h, w, c)
    x = x.view(n, w, h // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // 2, w // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, -1, c * 4)
    x = F.layer_norm(x, (c * 4,), sd['mlp1.0.weight'], sd['mlp1.0.bias'], 1e-5)
    x = F.gelu(F.linear(x, sd['mlp1.1.weight'], sd['mlp1.1.bias']))
    return F.linear(x, sd['mlp1.3.weight'], sd['mlp1.3.bias'])


def lora_linear(sd: dict, module: str, x: torch.Tensor, rank: int) -> torch.Tensor:
    """Apply a PEFT-wrapped linear in eval mode: base(x) + (alpha / r) B(A(x)), alpha = 2 r."""
    if module + '.weight' in sd:
        return x @ sd[module + '.weight'].T
    base = x @ sd[module + '.base_layer.weight'].T
    lora = (x @ sd[module + '.lora_A.default.weight'].T) @ sd[module + '.lora_B.default.weight'].T
    return base + (2 * rank / rank) * lora


def internlm2_logits(sd: dict, embeds: torch.Tensor, config: dict) -> torch.Tensor:
    llm = config['llm_config']
    heads, kv, d = llm['num_attention_heads'], llm['num_key_value_heads'], llm['hidden_size']
    hd, groups, rank = d // heads, heads // kv, config['use_llm_lora']
    s = embeds.shape[0]
    inv = 1.0 / llm['rope_theta'] ** (torch.arange(0, hd, 2).float() / hd)
    freqs = torch.outer(torch.arange(s).float(), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rope(t):
        half = t.shape[-1] // 2
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + llm['rms_norm_eps']) * w

    mask = torch.full((s, s), float('-inf')).triu(1)
    x = embeds
    for i in range(llm['num_hidden_layers']):
        p = f'{LLM}model.layers.{i}.'
        h = rms(x, sd[p + 'attention_norm.weight'])
        # InternLM2Attention: rearrange 'b q (h gs d) -> b q h gs d', gs = 2 + groups
        qkv = lora_linear(sd, p + 'attention.wqkv', h, rank).view(s, kv, groups + 2, hd)
        q = qkv[:, :, :groups].reshape(s, heads, hd).transpose(0, 1)
        k = qkv[:, :, -2].transpose(0, 1).repeat_interleave(groups, 0)
        v = qkv[:, :, -1].transpose(0, 1).repeat_interleave(groups, 0)
        q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + lora_linear(sd, p + 'attention.wo', att.transpose(0, 1).reshape(s, d), rank)
        h = rms(x, sd[p + 'ffn_norm.weight'])
        gate = F.silu(lora_linear(sd, p + 'feed_forward.w1', h, rank))
        up = lora_linear(sd, p + 'feed_forward.w3', h, rank)
        x = x + lora_linear(sd, p + 'feed_forward.w2', gate * up, rank)
    return rms(x, sd[LLM + 'model.norm.weight']) @ sd[LLM + 'output.weight'].T


def internvl_query_ids(src: Path, tokens_per_image: int, question: str) -> list[int]:
    """InternVLChatModel.chat's query for six tiles, tokenized with the source tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(src / 'tokenizer.json'))
    images = ''.join(f'Image-{i + 1}: <image>\n' for i in range(len(NUSCENES_CAMERAS)))
    content = DRIVELMM_O1_PREAMBLE + '\n' + images + question
    query = (f'<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n<|im_start|>user\n{content}'
             '<|im_end|>\n<|im_start|>assistant\n')
    query = query.replace('<image>', '<img>' + '<IMG_CONTEXT>' * tokens_per_image + '</img>')
    return [tok.convert_tokens_to_ids('<s>')] + tok(query, add_special_tokens=False).input_ids


def reference_logits(src: Path, pixels: torch.Tensor, question: str) -> torch.Tensor:
    sd, config = load_source(src), json.loads((src / 'config.json').read_text())
    feats = extract_feature(sd, pixels, config['vision_config']['num_attention_heads'])
    ids = internvl_query_ids(src, feats.shape[1], question)
    embeds = sd[LLM + 'model.tok_embeddings.weight'][ids].clone()
    context = torch.tensor(ids) == build_ids(src)['<IMG_CONTEXT>']
    embeds[context] = feats.reshape(-1, feats.shape[-1])
    return internlm2_logits(sd, embeds, config)


def build_ids(src: Path) -> dict:
    cfg = json.loads((src / 'tokenizer_config.json').read_text())
    return {v['content']: int(k) for k, v in cfg['added_tokens_decoder'].items()}


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp('drivelmm')
    src = make_source(root / 'src')
    report = convert_checkpoint('drivelmm-o1', src, root / 'out',
                                ConvertOptions(max_shard_bytes=150_000, progress=False))
    return src, root / 'out', report


def test_converted_logits_equal_internvl_with_peft_lora(converted):
    src, out, report = converted
    assert report.shards >= 2
    adapter = load_adapter(LoadSpec(str(out)))
    assert adapter.family == 'internvl' and adapter.prompt_format.name == 'drivelmm-o1'
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS]
    pixels = adapter.preprocess(images)
    feats = adapter.encode(pixels, 1)
    prompt = adapter.prompt(QUESTION, NUSCENES_CAMERAS)
    inputs = adapter.build_inputs(feats, keep_all(feats.tokens.valid_counts(), adapter.device),
                                  [prompt])
    with torch.no_grad():
        ours = adapter.model(inputs_embeds=inputs.inputs_embeds,
                             attention_mask=inputs.attention_mask,
                             position_ids=inputs.position_ids).logits[0]
        want = reference_logits(src, pixels.values.float(), QUESTION)
    assert ours.shape == want.shape
    err = (ours - want).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item()), err
    # token level: the prompt is InternVL's query (BOS, <img> ... </img> around each view)
    ids = internvl_query_ids(src, feats.tokens.features[0].shape[1], QUESTION)
    flat = list(prompt.pieces[0])
    for piece in prompt.pieces[1:]:
        flat += [adapter.image_token_id] * feats.tokens.features[0].shape[1] + list(piece)
    assert flat == ids


def test_plain_transformers_loads_it_with_nothing_missing(converted):
    from transformers import AutoModelForImageTextToText

    src, out, _ = converted
    model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == 'InternVLForConditionalGeneration'
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    sd, config = load_source(src), json.loads((src / 'config.json').read_text())
    ids = internvl_query_ids(src, 0, 'a car ahead')[:40]
    want = internlm2_logits(sd, sd[LLM + 'model.tok_embeddings.weight'][ids], config)
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids])).logits[0]
    assert (got - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
    generation = json.loads((out / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == [build_ids(src)['<|im_end|>']]
    assert model.config.image_token_id == build_ids(src)['<IMG_CONTEXT>']


def test_a_checkpoint_without_lora_converts_too(tmp_path):
    src = make_source(tmp_path / 'src', lora=0)
    report = convert_checkpoint('drivelmm-o1', src, tmp_path / 'out',
                                ConvertOptions(progress=False))
    assert report.tensors > 0 and (tmp_path / 'out' / 'README.md').is_file()
    assert 'LoRA: none' in (tmp_path / 'out' / 'README.md').read_text()


def test_other_language_models_are_named(tmp_path):
    src = make_source(tmp_path / 'src')
    config = json.loads((src / 'config.json').read_text())
    config['llm_config']['architectures'] = ['Qwen2ForCausalLM']
    (src / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ConversionError, match='Qwen2ForCausalLM is not InternLM2ForCausalLM'):
        convert_checkpoint('drivelmm-o1', src, tmp_path / 'out', ConvertOptions(progress=False))


def test_lora_weights_without_a_rank_in_the_config_are_refused(tmp_path):
    src = make_source(tmp_path / 'src')
    config = json.loads((src / 'config.json').read_text())
    config['use_llm_lora'] = 0
    (src / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ConversionError, match='LoRA weights but config.json use_llm_lora'):
        convert_checkpoint('drivelmm-o1', src, tmp_path / 'out', ConvertOptions(progress=False))
    assert not (tmp_path / 'out').exists()


def test_sentencepiece_tokenizer_model_converts_with_the_same_ids(tmp_path):
    spm = pytest.importorskip('sentencepiece')
    src = make_source(tmp_path / 'src')
    corpus = [DRIVELMM_O1_PREAMBLE, INTERNVL2_5_SYSTEM, QUESTION, 'Image-1: a car\n  ahead.'] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(tmp_path / 'sp'), vocab_size=420,
        model_type='bpe', character_coverage=1.0, byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        split_by_whitespace=False, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, user_defined_symbols=CHAT, minloglevel=2)
    (src / 'tokenizer.json').unlink()
    (src / 'tokenizer.model').write_bytes((tmp_path / 'sp.model').read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(src / 'tokenizer.model'))
    cfg = json.loads((src / 'tokenizer_config.json').read_text())
    added = {str(sp.piece_to_id(t)): {'content': t, 'special': True} for t in
             ['<unk>', '<s>', '</s>', *CHAT]}
    added |= {str(sp.get_piece_size() + i): {'content': t, 'special': True}
              for i, t in enumerate(IMAGE)}
    cfg['added_tokens_decoder'] = added
    (src / 'tokenizer_config.json').write_text(json.dumps(cfg))
    config = json.loads((src / 'config.json').read_text())
    vocab = sp.get_piece_size() + len(IMAGE)
    config['llm_config']['vocab_size'] = vocab
    (src / 'config.json').write_text(json.dumps(config))
    sd = load_source(src)
    for name in (LLM + 'model.tok_embeddings.weight', LLM + 'output.weight'):
        sd[name] = torch.randn(vocab, sd[name].shape[1]) * 0.1
    for p in src.glob('*.safetensors'):
        p.unlink()
    write_shards(src, sd, 2)
    out = tmp_path / 'out'
    convert_checkpoint('drivelmm-o1', src, out, ConvertOptions(progress=False))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    text = 'Image-1: a car\n  ahead. <|im_end|> Describe the 3 objects.'
    want = sp.encode('Image-1: a car\n  ahead. ') + [sp.piece_to_id('<|im_end|>')] + sp.encode(
        ' Describe the 3 objects.')
    assert tok(text, add_special_tokens=False).input_ids == want
    assert tok.convert_tokens_to_ids('<IMG_CONTEXT>') == sp.get_piece_size() + 2
    adapter = load_adapter(LoadSpec(str(out)))
    prompt = adapter.prompt(QUESTION, NUSCENES_CAMERAS)
    assert prompt.pieces[0][0] == sp.bos_id()  # InternVL's tokenizer(query) starts with <s>
