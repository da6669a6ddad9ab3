"""The family adapters, and loading a checkpoint into the one of its family (load_adapter)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from .base import VLMAdapter
from .internvl import InternVLAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .llm_weights import check_llm_weights, llm_weights_note, quantize_llm
from .loading import check_checkpoint, check_family, LoadSpec, resolve_checkpoint
from .qwen2_5_vl import Qwen25VLAdapter
from ..vision.backends import BackendRequest, choose_backend

ADAPTERS: dict[str, type[VLMAdapter]] = {
    LlavaOnevisionAdapter.family: LlavaOnevisionAdapter,
    InternVLAdapter.family: InternVLAdapter,
    Qwen25VLAdapter.family: Qwen25VLAdapter,
}


def load_adapter(spec: LoadSpec, log: Callable[[str], None] = print) -> VLMAdapter:
    """
    Resolve, check and load ``spec.model``; ValueError names whatever is missing or wrong.

    The vision backend is chosen here; an unavailable one falls back (``log`` gets the reason).
    ``spec.llm_weights`` quantizes the LLM's linear layers; a setting without a kernel on the
    device raises before any weight is read.
    """
    directory = resolve_checkpoint(spec.model)
    family = check_family(spec.family, check_checkpoint(directory), directory)
    if family not in ADAPTERS:
        raise ValueError(f'family {family!r} has no adapter yet; available: {sorted(ADAPTERS)}')
    device = torch.device(spec.device)
    dtype = spec.torch_dtype()
    check_llm_weights(spec.llm_weights, spec.device, dtype)
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
    adapter = ADAPTERS[family](model, tokenizer, processor, device, dtype)
    quantized = quantize_llm(adapter.decoder_layers, spec.llm_weights)
    adapter.llm_weights = spec.llm_weights
    note = llm_weights_note(spec.llm_weights, spec.device, dtype)
    if note:
        log(note)
    if quantized.skipped:
        log(f'llm_weights {spec.llm_weights}: {len(quantized.skipped)} linear layers kept '
            f'native (their shape does not fit the layout): {", ".join(quantized.skipped)}')
    if spec.vision_backend == 'torch':
        return adapter
    if adapter.vision is None:
        log(f'vision backend {spec.vision_backend!r} unavailable: {family} has no exportable '
            "vision module yet; using 'torch'")
        return adapter
    request = BackendRequest(spec.vision_backend, spec.vision_onnx, spec.vision_engine)
    backend = choose_backend(request, adapter.vision, device, dtype, log)
    adapter.use_vision_backend(backend)
    return adapter
