"""
Find and check a checkpoint, then load it with transformers: local only, safetensors only.

A checkpoint is a local directory, or a model id already in the local Hugging Face cache (nothing
is ever downloaded). ``trust_remote_code`` is never set: only transformers' own classes load.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib.util
import json
from pathlib import Path

import torch

from .embedded import embedded_model_dir
from .llm_weights import check_llm_weights

FAMILIES = {
    'llava_onevision': 'llava-onevision',
    'qwen2_5_vl': 'qwen2.5-vl',
    'internvl': 'internvl',
}
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')


@dataclass(frozen=True)
class LoadSpec:
    """What to load and how: the fixed-at-start settings of the node and the CLI."""

    model: str = ''  # '': the embedded trained model (models/embedded.py)
    family: str = 'auto'
    device: str = 'cpu'
    dtype: str = 'auto'  # 'auto': bfloat16 on CUDA, float32 on CPU
    attn_implementation: str = 'auto'  # 'auto': flash_attention_2 if installed on CUDA, else sdpa
    vision_backend: str = 'torch'  # torch | compile | onnxruntime | tensorrt (vision/backends.py)
    vision_onnx: str = ''  # ONNX file for the onnxruntime backend
    vision_engine: str = ''  # TensorRT engine file for the tensorrt backend
    llm_weights: str = 'native'  # native | int8 | int4: the LLM's linear weights (llm_weights.py)

    def torch_dtype(self) -> torch.dtype:
        return model_dtype(self.device, self.dtype)

    def attention(self) -> str:
        if self.attn_implementation != 'auto':
            return self.attn_implementation
        if self.device.startswith('cuda') and importlib.util.find_spec('flash_attn'):
            return 'flash_attention_2'
        return 'sdpa'


def model_dtype(device: str, dtype: str = 'auto') -> torch.dtype:
    """Return the torch dtype for a dtype name; 'auto' is bfloat16 on CUDA, float32 elsewhere."""
    if dtype == 'auto':
        return torch.bfloat16 if device.startswith('cuda') else torch.float32
    try:
        return {'float32': torch.float32, 'bfloat16': torch.bfloat16,
                'float16': torch.float16}[dtype]
    except KeyError:
        raise ValueError(
            f'dtype {dtype!r} is not one of auto, float32, bfloat16, float16'
        ) from None


EMBEDDED = ('', 'embedded')  # model values that mean the shipped, trained checkpoint


def resolve_checkpoint(model: str) -> Path:
    """Return the local directory of ``model``: '' (the embedded model), a directory or an id."""
    if model in EMBEDDED:
        try:
            return embedded_model_dir()
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f'model {model!r} is a file; pass the checkpoint DIRECTORY')
    if '/' in model and not path.is_absolute():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            pass
    raise ValueError(
        f'model {model!r} is neither a directory nor a model id in the local Hugging Face cache '
        f'(HF_HOME / ~/.cache/huggingface); nothing is downloaded at run time: copy the '
        'checkpoint directory to this machine, or build a tiny one with drive-vlm make-tiny-model'
    )


def check_checkpoint(directory: Path) -> str:
    """Check the files a checkpoint needs; return its family. ValueError names a missing file."""
    config_path = directory / 'config.json'
    if not config_path.is_file():
        raise ValueError(f'checkpoint {directory} has no config.json')
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{config_path} is not valid JSON: {err}') from None
    model_type = config.get('model_type', '')
    if model_type not in FAMILIES:
        raise ValueError(
            f'{config_path}: model_type {model_type!r} is not a supported family '
            f'({", ".join(sorted(FAMILIES))})'
        )
    weights = list(directory.glob('*.safetensors'))
    if not weights:
        bins = [p.name for p in directory.glob('*.bin')]
        hint = f' (found {bins}: convert them to safetensors)' if bins else ''
        raise ValueError(f'checkpoint {directory} has no model.safetensors weights{hint}')
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f'checkpoint {directory} has no tokenizer.json / tokenizer_config.json')
    if not (directory / 'preprocessor_config.json').is_file():
        raise ValueError(f'checkpoint {directory} has no preprocessor_config.json')
    return FAMILIES[model_type]


def check_family(requested: str, found: str, directory: Path) -> str:
    if requested not in ('auto', found):
        raise ValueError(
            f'checkpoint {directory} is a {found} model, but family {requested!r} was asked for'
        )
    return found


def check_spec(spec: LoadSpec) -> tuple[Path, str, int]:
    """
    Check a LoadSpec without loading weights: (directory, family, LLM layer count).

    Cheap enough to run before an asynchronous load, so a bad model path fails at once.
    """
    directory = resolve_checkpoint(spec.model)
    family = check_family(spec.family, check_checkpoint(directory), directory)
    check_llm_weights(spec.llm_weights, spec.device, spec.torch_dtype())
    config = json.loads((directory / 'config.json').read_text())
    text = config.get('text_config') or config.get('llm_config') or config
    layers = text.get('num_hidden_layers')
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f'{directory / "config.json"}: no num_hidden_layers in its text config')
    return directory, family, layers
