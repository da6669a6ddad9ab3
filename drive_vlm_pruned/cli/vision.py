"""``drive-vlm export-vision`` and ``build-engine``: the vision encoder as ONNX and TensorRT."""

from __future__ import annotations

import argparse
import sys

from .flags import camera_size_type


def add_export_vision_parser(sub) -> None:
    """Add ``export-vision``."""
    export = sub.add_parser(
        'export-vision', help='export the vision encoder + projector to ONNX and check it',
        description='Export the vision tower and projector of a checkpoint to ONNX (fixed image '
                    'size, dynamic number of views), then run the graph in ONNX Runtime and '
                    'PyTorch on the same random views and print the max abs error.',
    )
    export.add_argument('--model', required=True, help='checkpoint directory or cached model id')
    export.add_argument('--onnx', required=True, metavar='OUT.onnx', help='file to write')
    export.add_argument('--views', type=int, default=6, help='views in the check (default 6)')
    export.add_argument('--camera-size', type=camera_size_type, metavar='WxH',
                        help='camera frame size the graph is fixed for (Qwen2.5-VL, whose ViT '
                             'grid follows the frame; default 1600x900, nuScenes). The other '
                             'families resize every frame to their fixed input')
    export.add_argument('--fp16', action='store_true',
                        help='FP16 graph (FP16 input, weights and output); what build-engine '
                             '--fp16 needs on TensorRT 11, which builds strongly typed networks')
    export.set_defaults(run=run_export_vision)


def add_build_engine_parser(sub) -> None:
    """Add ``build-engine``."""
    engine = sub.add_parser(
        'build-engine', help='build (or reuse) a TensorRT engine from an exported ONNX graph',
        description='Build a TensorRT engine for the vision encoder, cached under a key of '
                    'TensorRT version, GPU compute capability, precision and shape: a matching '
                    'engine is reused, anything else rebuilt. Needs a CUDA GPU with TensorRT.',
    )
    engine.add_argument('--onnx', required=True, help='ONNX graph from export-vision')
    engine.add_argument('--engine', required=True, metavar='OUT.plan', help='engine file')
    engine.add_argument('--fp16', action='store_true', help='FP16 engine')
    engine.add_argument('--views', type=int, default=6, help='largest number of views (6)')
    engine.add_argument('--force', action='store_true', help='rebuild even if the key matches')
    engine.set_defaults(run=run_build_engine)


def run_export_vision(args: argparse.Namespace) -> int:
    """Run ``drive-vlm export-vision``; return the exit status."""
    import torch

    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec
    from ..vision.onnx_export import check_parity, export_onnx

    try:
        adapter = load_adapter(LoadSpec(args.model))
    except ValueError as err:
        print(f'drive-vlm export-vision: {err}', file=sys.stderr)
        return 2
    if args.camera_size:
        if not hasattr(adapter, 'set_camera_hw'):
            print(f'drive-vlm export-vision: --camera-size: {adapter.family} resizes every '
                  f'frame to its fixed {adapter.image_shape[-1]} px input, so its graph fits any '
                  'camera; leave the option out', file=sys.stderr)
            return 2
        adapter.set_camera_hw(args.camera_size)
    module = adapter.vision_module()
    if module is None:
        print(f'drive-vlm export-vision: {adapter.family} has no exportable vision module yet',
              file=sys.stderr)
        return 2
    path = export_onnx(module, adapter.image_shape, args.onnx, fp16=args.fp16,
                       metadata=adapter.vision_metadata())
    pixels = torch.randn(args.views, *adapter.image_shape)
    parity = check_parity(path, module, pixels)
    print(f'wrote {path} ({_onnx_mib(path):.1f} MiB, {parity.graph_dtype}), input [views, '
          f'{", ".join(map(str, adapter.image_shape))}]')
    if hasattr(adapter, 'set_camera_hw'):
        h, w = adapter.camera_hw
        print(f'fixed to {w}x{h} camera frames ({adapter.vision_grid[0]} x '
              f'{adapter.vision_grid[1]} patches); other sizes: --camera-size WxH')
    print(f'ONNX Runtime ({parity.graph_dtype}) vs PyTorch (float32) on {args.views} random '
          f'views: max abs error {parity.max_abs_error:.2e} (max |feature| '
          f'{parity.max_abs_feature:.2e})')
    return 0


def _onnx_mib(path) -> float:
    """Size of a graph with its external-data file ``<name>.data``, where torch put weights."""
    files = [path, path.with_name(path.name + '.data')]
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20


def run_build_engine(args: argparse.Namespace) -> int:
    """Run ``drive-vlm build-engine``; return the exit status."""
    from ..vision.backends import BackendUnavailable
    from ..vision.tensorrt_engine import build_engine

    try:
        path, what = build_engine(args.onnx, args.engine, args.fp16, args.views, args.force)
    except (BackendUnavailable, ValueError) as err:
        print(f'drive-vlm build-engine: {err}', file=sys.stderr)
        return 2
    print(f'{path}: {what}')
    return 0
