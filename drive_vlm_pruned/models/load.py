"""Load a checkpoint into the adapter of its family."""

from __future__ import annotations

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from .base import VLMAdapter
from .internvl import InternVLAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .loading import check_checkpoint, check_family, LoadSpec, resolve_checkpoint
from .qwen2_5_vl import Qwen25VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    LlavaOnevisionAdapter.family: LlavaOnevisionAdapter,
    InternVLAdapter.family: InternVLAdapter,
    Qwen25VLAdapter.family: Qwen25VLAdapter,
}


def load_adapter(spec: LoadSpec) -> VLMAdapter:
    """Resolve, check and load ``spec.model``; ValueError names whatever is missing or wrong."""
    directory = resolve_checkpoint(spec.model)
    family = check_family(spec.family, check_checkpoint(directory), directory)
    if family not in ADAPTERS:
        raise ValueError(f'family {family!r} has no adapter yet; available: {sorted(ADAPTERS)}')
    device = torch.device(spec.device)
    dtype = spec.torch_dtype()
    model = AutoModelForImageTextToText.from_pretrained(
        directory,
        dtype=dtype,
        attn_implementation=spec.attention(),
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    ).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True,
                                              trust_remote_code=False)
    processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True,
                                                   trust_remote_code=False)
    return ADAPTERS[family](model, tokenizer, processor, device, dtype)
