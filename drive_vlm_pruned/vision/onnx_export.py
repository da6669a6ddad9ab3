"""
Export a vision encoder (vision tower + projector) to ONNX and check it with ONNX Runtime.

The image size is fixed per model; only the batch (the camera views) is dynamic, so one graph
serves any number of views and changing the keep ratio never touches it (the pruner and the LLM
stay outside). One view's input is an image ``(3, H, W)`` for SigLIP and InternViT, and the
processor's patches ``(grid_h * grid_w, patch_dim)`` of one fixed grid for Qwen2.5-VL's ViT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_onnx(module: nn.Module, image_shape: tuple[int, int, int], path: str | Path,
                max_views: int = 64) -> Path:
    """Export ``module`` (``[n, *image_shape] -> [n, N, D]``) with a dynamic first dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *image_shape)
    views = torch.export.Dim('views', min=1, max=max_views)
    with torch.no_grad():
        torch.onnx.export(module.eval().float(), (example,), str(path), dynamo=True,
                          input_names=['pixel_values'], output_names=['features'],
                          dynamic_shapes=({0: views},), verbose=False)
    return path


def max_abs_error(path: str | Path, module: nn.Module, pixels: torch.Tensor) -> float:
    """Run the ONNX graph in ONNX Runtime (CPU) and PyTorch on the same input; max |diff|."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: pixels.float().cpu().numpy()})[0]
    with torch.no_grad():
        want = module.float()(pixels.float()).cpu().numpy()
    return float(np.abs(got - want).max())
