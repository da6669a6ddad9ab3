"""
Export a vision encoder (vision tower + projector) to ONNX and check it with ONNX Runtime.

The image size is fixed per model; only the batch (the camera views) is dynamic, so one graph
serves any number of views and changing the keep ratio never touches it (the pruner and the LLM
stay outside). One view's input is an image ``(3, H, W)`` for SigLIP and InternViT, and the
processor's patches ``(grid_h * grid_w, patch_dim)`` of one fixed grid for Qwen2.5-VL's ViT.

A graph built for one camera frame size (Qwen2.5-VL's patch grid) names that size in its ONNX
metadata (``CAMERA_HW_KEY``, ``GRID_HW_KEY``), so whoever loads it knows which frames it takes.

``fp16`` exports an FP16 graph (FP16 input, weights and output). TensorRT 11 builds only
strongly typed networks, so an FP16 engine there needs exactly such a graph; TensorRT 10 and
ONNX Runtime run it too.
"""

from __future__ import annotations

from collections.abc import Mapping
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CAMERA_HW_KEY = 'drive_vlm.camera_hw'  # 'H,W' of the camera frames the graph is fixed for
GRID_HW_KEY = 'drive_vlm.grid_hw'  # 'H,W' of the patch grid those frames give


def format_hw(hw: tuple[int, int]) -> str:
    return f'{hw[0]},{hw[1]}'


def parse_hw(text: str) -> tuple[int, int]:
    """Parse ``'H,W'`` metadata (format_hw) into ``(H, W)``."""
    h, w = (int(v) for v in text.split(','))
    return h, w


def export_onnx(module: nn.Module, image_shape: tuple[int, ...], path: str | Path,
                max_views: int = 64, fp16: bool = False,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``module`` (``[n, *image_shape] -> [n, N, D]``) with a dynamic first dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    # A copy on CPU: the caller's module keeps its device and dtype (it is the parity
    # reference, and on a GPU it goes on serving), and the graph does not depend on the device.
    module = copy.deepcopy(module).eval().to(device='cpu', dtype=dtype)
    example = torch.randn(2, *image_shape, dtype=dtype)
    views = torch.export.Dim('views', min=1, max=max_views)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True,
                                    input_names=['pixel_values'], output_names=['features'],
                                    dynamic_shapes=({0: views},), verbose=False)
    program.model.metadata_props.update(metadata or {})
    program.save(str(path))
    return path


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against fp32 PyTorch on the same views."""

    max_abs_error: float
    max_abs_feature: float  # scale of the output, for reading an FP16 graph's error
    graph_dtype: str  # 'float32' or 'float16'


def check_parity(path: str | Path, module: nn.Module, pixels: torch.Tensor) -> Parity:
    """Run the graph in ONNX Runtime (CPU) and ``module`` in fp32 PyTorch; compare."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    graph_input = session.get_inputs()[0]
    dtype = onnx_input_dtype(graph_input.type)
    got = session.run(None, {graph_input.name: pixels.to(device='cpu', dtype=dtype).numpy()})[0]
    with torch.no_grad():
        want = _fp32_cpu(module)(pixels.float().cpu()).numpy()
    return Parity(float(np.abs(got.astype(np.float32) - want).max()),
                  float(np.abs(want).max()), str(dtype).removeprefix('torch.'))


def _fp32_cpu(module: nn.Module) -> nn.Module:
    """Return ``module`` if it is fp32 on CPU, else an fp32 CPU copy (the caller's is kept)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device.type == 'cpu' and (t.dtype == torch.float32 or not t.is_floating_point())
           for t in tensors):
        return module.eval()
    return copy.deepcopy(module).eval().to(device='cpu', dtype=torch.float32)


def max_abs_error(path: str | Path, module: nn.Module, pixels: torch.Tensor) -> float:
    """Max |ONNX Runtime - fp32 PyTorch| over ``pixels`` (see check_parity)."""
    return check_parity(path, module, pixels).max_abs_error


def onnx_input_dtype(type_name: str) -> torch.dtype:
    """Map ONNX Runtime's ``tensor(float)`` / ``tensor(float16)`` to the dtype to feed."""
    dtypes = {'tensor(float)': torch.float32, 'tensor(float16)': torch.float16}
    if type_name not in dtypes:
        raise ValueError(f'ONNX vision graph input is {type_name}, not float32 or float16: '
                         'export it with drive-vlm export-vision')
    return dtypes[type_name]
