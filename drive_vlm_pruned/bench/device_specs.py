"""
Memory bandwidth of target devices, and the decode floor it sets for each model preset.

Decoding one token reads every LLM weight once (plus the KV cache so far), so a device's memory
bandwidth bounds it from below: ``floor = (weight bytes + KV bytes read) / bandwidth``. The
bytes come from the presets' real transformers classes built on the meta device (exact parameter
counts, no memory), with the embedding and LM head resized to the real checkpoint's vocabulary
(the presets carry the tiny test tokenizer). ``drive-vlm bench latency --device-spec NAME``
prints the floors; docs/orin.md is generated from them.

Weight formats, the ``llm_weights`` settings on a GPU (models/llm_weights.py): ``bf16``
(native) stores every parameter in 2 bytes. ``int8`` and ``int4`` store the decoder layers'
linear weights in torchao's layouts and keep norms, biases, the embedding, the LM head and the
vision tower in bf16, as llm_weights does. Their bytes are not assumed: ``int8`` is measured
from torchao's Int8Tensor built on the meta device for each linear's shape (int8 weights plus a
bf16 scale and an int8 zero point per row); ``int4`` is computed from the shapes of torchao's
tinygemm layout (``tile_packed_to_4d``: two weights a byte, plus a bf16 scale and zero per group
of 128), which torchao builds only on a CUDA device. The KV cache stays bf16 in all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
import json
import math
from pathlib import Path

from .shapes import Preset, PRESETS
from ..models.llm_weights import INT4_GROUPS

BF16 = 2.0
TEXT_TOKENS = 200  # system + six-view preamble + planning question, about, in real tokenizers
WEIGHT_FORMATS = ('bf16', 'int8', 'int4')
GPU_PRESETS = ('llava-ov-0.5b', 'llava-ov-7b', 'drivemm-8b', 'qwen2.5-vl-3b-262k',
               'qwen2.5-vl-3b-1596')  # what bench latency --device-spec prints without --preset


@dataclass(frozen=True)
class DeviceSpec:
    """A device's published memory bandwidth and capacity, with where the figures come from."""

    name: str
    description: str
    bandwidth_gb_s: float
    memory_gb: float
    source: str


DEVICE_SPECS = {d.name: d for d in (
    DeviceSpec('orin-agx', 'Jetson AGX Orin 64GB (256-bit LPDDR5, shared by CPU and GPU)',
               204.8, 64.0, 'NVIDIA Jetson AGX Orin Series data sheet: 204.8 GB/s '
               '(256 bit x 6400 MT/s); the 32GB module has the same bandwidth'),
    DeviceSpec('orin-nx', 'Jetson Orin NX 16GB (128-bit LPDDR5, shared by CPU and GPU)',
               102.4, 16.0, 'NVIDIA Jetson Orin NX Series data sheet: 102.4 GB/s '
               '(128 bit x 6400 MT/s); the 8GB module has the same bandwidth'),
    DeviceSpec('h100', 'H100 SXM5 80GB (HBM3)', 3350.0, 80.0,
               'NVIDIA H100 Tensor Core GPU data sheet: 3.35 TB/s for SXM5 (2.0 TB/s for PCIe)'),
    DeviceSpec('h200', 'H200 SXM 141GB (HBM3e)', 4800.0, 141.0,
               'NVIDIA H200 Tensor Core GPU data sheet: 4.8 TB/s, 141 GB HBM3e'),
)}


@dataclass(frozen=True)
class Vocabulary:
    """The real checkpoint's vocabulary, and whether its LM head shares the embedding."""

    size: int
    tied: bool
    source: str


# From each checkpoint's config.json (vocab_size, tie_word_embeddings).
REAL_VOCABULARY = {
    'llava-ov-0.5b': Vocabulary(151936, True, 'Qwen2-0.5B (llava-onevision-qwen2-0.5b-ov)'),
    'llava-ov-7b': Vocabulary(152064, False, 'Qwen2-7B (llava-onevision-qwen2-7b-ov)'),
    'drivemm-8b': Vocabulary(128256, False, 'Llama-3.1-8B (DriveMM)'),
    'qwen2.5-vl-3b-1596': Vocabulary(151936, True, 'Qwen2.5-VL-3B-Instruct'),
    'qwen2.5-vl-3b-262k': Vocabulary(151936, True, 'Qwen2.5-VL-3B-Instruct'),
}


@dataclass(frozen=True)
class ModelBytes:
    """Parameter counts of one model, split by how decode reads them."""

    name: str
    vision_params: int  # vision tower + projector: read once per frame, not per token
    decoder_linear_params: int  # weights of the decoder layers' linear maps (quantizable)
    decoder_other_params: int  # norms, biases, final norm
    embed_params: int  # input embedding table: one row read per token
    lm_head_params: int  # read whole per token (the embedding itself when tied)
    tied: bool
    kv_bytes_per_token: int  # keys + values of one position, all layers, bf16
    visual_tokens: int  # six views, unpruned
    llm_layers: int
    linear_bytes: tuple[tuple[str, float], ...] = ()  # (format, bytes of the decoder linears)

    @property
    def llm_params(self) -> int:
        head = 0 if self.tied else self.lm_head_params
        return self.decoder_linear_params + self.decoder_other_params + self.embed_params + head

    def decoder_linear_bytes(self, fmt: str) -> float:
        if fmt not in WEIGHT_FORMATS:
            raise ValueError(f'weight format {fmt!r} is not one of {", ".join(WEIGHT_FORMATS)}')
        return dict(self.linear_bytes)[fmt]

    def weight_bytes_read_per_token(self, fmt: str) -> float:
        """Return bytes of weights one decode step reads: decoder layers and the LM head."""
        return (self.decoder_linear_bytes(fmt)
                + (self.decoder_other_params + self.lm_head_params) * BF16)

    def resident_weight_bytes(self, fmt: str) -> float:
        """Return bytes of every weight held in memory (vision tower included)."""
        rest = self.vision_params + self.decoder_other_params + self.embed_params
        if not self.tied:
            rest += self.lm_head_params
        return self.decoder_linear_bytes(fmt) + rest * BF16

    def prompt_tokens(self, keep_ratio: float) -> int:
        return math.ceil(self.visual_tokens * keep_ratio) + TEXT_TOKENS


@cache
def linear_layout_bytes(fmt: str, out_features: int, in_features: int) -> float:
    """Return the bytes one ``out x in`` linear weight takes in ``fmt`` (module doc)."""
    if fmt == 'bf16':
        return BF16 * out_features * in_features
    if fmt == 'int4':
        group = next((g for g in INT4_GROUPS if in_features % g == 0), None)
        if group is None or out_features % 8:
            return BF16 * out_features * in_features  # llm_weights keeps such a layer native
        return out_features * in_features / 2 + out_features * (in_features // group) * 2 * BF16
    import torch
    from torch import nn

    from ..models.llm_weights import quantize_llm, tensor_bytes

    linear = nn.Linear(in_features, out_features, bias=False, device='meta',
                       dtype=torch.bfloat16)
    quantize_llm([nn.Sequential(linear)], fmt)
    return float(tensor_bytes(linear.weight))


def visual_tokens_per_view(preset: Preset) -> int:
    """Return the prunable tokens one camera view gives, as the family's processor makes them."""
    if preset.family == 'qwen2.5-vl':
        patch = preset.vision['patch_size'] * preset.vision['spatial_merge_size']
        low, high = preset.qwen_pixels
        h, w = _qwen_resize(*preset.image_hw, patch, low, high)
        return (h // patch) * (w // patch)
    return (preset.vision['image_size'] // preset.vision['patch_size']) ** 2


def _qwen_resize(height: int, width: int, factor: int, low: int, high: int) -> tuple[int, int]:
    """Qwen2.5-VL's smart_resize: multiples of ``factor`` with ``low <= h * w <= high``."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > high:
        beta = math.sqrt(height * width / high)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < low:
        beta = math.sqrt(low / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def model_bytes_of(model, name: str, visual_tokens: int,
                   vocabulary: Vocabulary | None = None) -> ModelBytes:
    """
    Count a transformers VLM's parameters by role.

    ``vocabulary`` resizes the embedding and LM head to the real checkpoint's (meta-built
    presets carry the test tokenizer's few hundred ids).
    """
    from torch import nn

    language = model.model.language_model
    shapes = [m.weight.shape for layer in language.layers for m in layer.modules()
              if isinstance(m, nn.Linear)]
    linear_bytes = tuple((fmt, sum(linear_layout_bytes(fmt, o, i) for o, i in shapes))
                         for fmt in WEIGHT_FORMATS)
    head = model.lm_head.weight
    tied = head is language.embed_tokens.weight
    text = model.config.get_text_config()
    width = head.shape[1]
    total = sum(p.numel() for p in model.parameters())
    llm = sum(p.numel() for p in language.parameters())
    linear = sum(m.weight.numel() for layer in language.layers for m in layer.modules()
                 if isinstance(m, nn.Linear))
    embed = language.embed_tokens.weight.numel()
    lm_head = head.numel()
    vision = total - llm - (0 if tied else lm_head)
    if vocabulary is not None:
        tied = vocabulary.tied
        embed = lm_head = vocabulary.size * width
    heads = text.num_attention_heads
    head_dim = getattr(text, 'head_dim', None) or text.hidden_size // heads
    kv_heads = getattr(text, 'num_key_value_heads', None) or heads
    layers = text.num_hidden_layers
    return ModelBytes(
        name=name, vision_params=vision, decoder_linear_params=linear,
        decoder_other_params=llm - linear - language.embed_tokens.weight.numel(),
        embed_params=embed, lm_head_params=lm_head, tied=tied,
        kv_bytes_per_token=int(2 * layers * kv_heads * head_dim * BF16),
        visual_tokens=visual_tokens, llm_layers=layers, linear_bytes=linear_bytes,
    )


@cache
def preset_bytes(name: str) -> ModelBytes:
    """Build preset ``name`` on the meta device (no memory) and count its parameters."""
    import torch

    from .prefill import build_preset

    preset = PRESETS[name]
    adapter = build_preset(preset, 'meta', torch.bfloat16, None)
    views = 6 * visual_tokens_per_view(preset)
    return model_bytes_of(adapter.model, name, views, REAL_VOCABULARY.get(name))


@dataclass(frozen=True)
class Floor:
    """Predicted decode floor of one preset on one device, one weight format and keep ratio."""

    preset: str
    device: str
    weights: str
    keep_ratio: float
    context_tokens: int
    weight_gb_per_token: float
    kv_gb_per_token: float
    ms_per_token: float
    answer_ms: float  # floor for a whole answer of ``new_tokens`` tokens
    new_tokens: int
    resident_gb: float  # weights + KV cache of this context, held in memory
    fits: bool


def decode_floor(model: ModelBytes, spec: DeviceSpec, fmt: str, keep_ratio: float,
                 new_tokens: int = 64) -> Floor:
    """
    Return the bandwidth floor of one decode step, and of an answer of ``new_tokens``.

    The KV read per step is taken at the answer's mid-point: prompt + new_tokens / 2 positions.
    """
    prompt = model.prompt_tokens(keep_ratio)
    context = prompt + new_tokens // 2
    weights = model.weight_bytes_read_per_token(fmt)
    kv = context * model.kv_bytes_per_token
    ms = (weights + kv) / (spec.bandwidth_gb_s * 1e9) * 1e3
    kv_held = (prompt + new_tokens) * model.kv_bytes_per_token
    resident = model.resident_weight_bytes(fmt) + kv_held
    return Floor(model.name, spec.name, fmt, keep_ratio, context, weights / 1e9, kv / 1e9, ms,
                 ms * new_tokens, new_tokens, resident / 1e9, resident / 1e9 <= spec.memory_gb)


def floor_table(spec: DeviceSpec, presets: list[str], keep_ratios: list[float],
                new_tokens: int) -> list[Floor]:
    return [decode_floor(preset_bytes(p), spec, fmt, keep, new_tokens)
            for p in presets for fmt in WEIGHT_FORMATS for keep in keep_ratios]


def floor_markdown(spec: DeviceSpec, floors: list[Floor]) -> str:
    lines = [f'Predicted decode floor on {spec.description}, {spec.bandwidth_gb_s:g} GB/s '
             f'({spec.source}).',
             '',
             '| preset | weights | keep | context tokens | weights GB/token | KV GB/token | '
             f'floor ms/token | {floors[0].new_tokens if floors else 64}-token answer ms | '
             f'resident GB (of {spec.memory_gb:g}) |',
             '|' + '---|' * 9]
    for f in floors:
        fits = '' if f.fits else ' (does not fit)'
        lines.append(f'| {f.preset} | {f.weights} | {f.keep_ratio:g} | {f.context_tokens} | '
                     f'{f.weight_gb_per_token:.2f} | {f.kv_gb_per_token:.3f} | '
                     f'{f.ms_per_token:.2f} | {f.answer_ms:.0f} | {f.resident_gb:.1f}{fits} |')
    return '\n'.join(lines)


def memory_budget_markdown(presets: list[str], new_tokens: int = 64) -> str:
    """Markdown: resident weights per format and the KV cache, per preset."""
    lines = ['| preset | LLM params | vision params | ' + ' | '.join(
        f'weights {fmt} GB' for fmt in WEIGHT_FORMATS) + f' | KV keep 1.0 + {new_tokens} GB | '
        f'KV keep 0.1 + {new_tokens} GB |', '|' + '---|' * (5 + len(WEIGHT_FORMATS))]
    for name in presets:
        b = preset_bytes(name)
        kv = [(b.prompt_tokens(k) + new_tokens) * b.kv_bytes_per_token / 1e9 for k in (1.0, 0.1)]
        weights = ' | '.join(f'{b.resident_weight_bytes(fmt) / 1e9:.1f}' for fmt in WEIGHT_FORMATS)
        lines.append(f'| {name} | {b.llm_params / 1e9:.2f} B | {b.vision_params / 1e9:.2f} B | '
                     f'{weights} | {kv[0]:.2f} | {kv[1]:.2f} |')
    return '\n'.join(lines)


ORIN_MEMORY_GB = (('Orin NX 16GB', 16.0), ('AGX Orin 32GB', 32.0), ('AGX Orin 64GB', 64.0))
RESERVED_GB = 3.0  # Ubuntu, the CUDA context and the vision/prefill activations share the memory


def fit_markdown(presets: list[str], keep_ratio: float = 0.1, new_tokens: int = 64,
                 answer_tokens: int = 55) -> str:
    """Markdown: per preset and format, memory held and the Orin modules it fits, with floors."""
    agx, nx = DEVICE_SPECS['orin-agx'], DEVICE_SPECS['orin-nx']
    lines = [f'| preset | weights | held GB (keep {keep_ratio:g}) | '
             + ' | '.join(f'fits {name}' for name, _ in ORIN_MEMORY_GB)
             + f' | AGX floor ms/token | NX floor ms/token | {answer_tokens}-token answer on '
             'AGX s |', '|' + '---|' * (6 + len(ORIN_MEMORY_GB))]
    for name in presets:
        model = preset_bytes(name)
        for fmt in WEIGHT_FORMATS:
            a = decode_floor(model, agx, fmt, keep_ratio, new_tokens)
            n = decode_floor(model, nx, fmt, keep_ratio, new_tokens)
            fits = ' | '.join('yes' if a.resident_gb <= gb - RESERVED_GB else 'no'
                              for _, gb in ORIN_MEMORY_GB)
            lines.append(f'| {name} | {fmt} | {a.resident_gb:.1f} | {fits} | '
                         f'{a.ms_per_token:.1f} | {n.ms_per_token:.1f} | '
                         f'{a.ms_per_token * answer_tokens / 1e3:.2f} |')
    return '\n'.join(lines)


def print_device_floors(spec_name: str, preset: str | None, keep_ratios: Sequence[float],
                        new_tokens: int, out_dir: str | None = None) -> int:
    """``bench latency --device-spec``: print the bandwidth floor per preset; build nothing."""
    spec = DEVICE_SPECS[spec_name]
    presets = [preset] if preset else list(GPU_PRESETS)
    floors = floor_table(spec, presets, list(keep_ratios), new_tokens)
    text = floor_markdown(spec, floors)
    budget = memory_budget_markdown(presets, new_tokens)
    print(text)
    print()
    print(f'Memory held (weights + KV cache, batch 1; activations and the CUDA context come on '
          f'top) against {spec.memory_gb:g} GB:')
    print(budget)
    if spec.name.startswith('orin'):
        budget += '\n\n' + fit_markdown(presets, min(keep_ratios), new_tokens)
        print(f'\nWhich Orin module holds each setting ({RESERVED_GB:g} GB kept for Ubuntu, the '
              'CUDA context and activations):')
        print(budget.rsplit('\n\n', 1)[1])
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f'floor-{spec.name}.md').write_text(text + '\n\n' + budget + '\n')
        (out / f'floor-{spec.name}.json').write_text(
            json.dumps([asdict(f) for f in floors], indent=1) + '\n')
        print(f'\nwrote {out / f"floor-{spec.name}.md"}')
    return 0
