"""
Vision backends behind one call: ``features = backend(pixel_values)``.

``torch`` runs the module eagerly, ``compile`` through ``torch.compile``, ``onnxruntime`` an
exported ONNX graph, ``tensorrt`` a serialized engine. A backend that cannot run here (a package
missing, a file missing or corrupt, the model not exportable) falls back to the next in
``FALLBACK``, and the reason is logged once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn, Tensor

# BackendUnavailable lives in errors.py so tensorrt_engine.py can raise it without importing
# this module back; it is re-exported here, where callers have always imported it.
from .errors import BackendUnavailable
from .onnx_export import onnx_input_dtype

BACKENDS = ('tensorrt', 'onnxruntime', 'compile', 'torch')
FALLBACK = {'tensorrt': 'onnxruntime', 'onnxruntime': 'compile', 'compile': 'torch'}


@dataclass
class VisionBackend:
    """A callable vision encoder, how it was chosen, and its graph's metadata (onnx_export)."""

    name: str
    run: Callable[[Tensor], Tensor]
    requested: str = 'torch'
    reasons: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __call__(self, pixel_values: Tensor) -> Tensor:
        return self.run(pixel_values)


@dataclass(frozen=True)
class BackendRequest:
    """The node's / CLI's start-time choice: which backend and its files."""

    name: str = 'torch'
    onnx_path: str = ''
    engine_path: str = ''
    fp16: bool = False


def choose_backend(request: BackendRequest, module: nn.Module, device: torch.device,
                   out_dtype: torch.dtype, log: Callable[[str], None] = print) -> VisionBackend:
    """Build the requested backend, falling back along ``FALLBACK`` with one log line per step."""
    if request.name not in BACKENDS:
        raise ValueError(f'vision backend {request.name!r} is not one of {", ".join(BACKENDS)}')
    name, reasons = request.name, []
    while True:
        try:
            run, metadata = _build(name, request, module, device, out_dtype)
            return VisionBackend(name, run, request.name, reasons, metadata)
        except BackendUnavailable as err:
            if name == 'torch':
                raise
            reason = f'vision backend {name!r} unavailable: {err}; using {FALLBACK[name]!r}'
            log(reason)
            reasons.append(reason)
            name = FALLBACK[name]


Runner = tuple[Callable[[Tensor], Tensor], dict[str, str]]


def _build(name, request, module, device, out_dtype) -> Runner:
    """Return ``(run, graph metadata)`` for backend ``name``, or raise BackendUnavailable."""
    if name == 'torch':
        return module, {}
    if name == 'compile':
        if device.type != 'cuda':
            raise BackendUnavailable('torch.compile is used on CUDA only (on CPU compiling '
                                     'costs more than it saves for a node that starts once)')
        return torch.compile(module, dynamic=False), {}
    if name == 'onnxruntime':
        return _onnxruntime(request.onnx_path, device, out_dtype)
    from .tensorrt_engine import load_engine_runner

    return load_engine_runner(request.engine_path, device, out_dtype)


def _onnxruntime(path: str, device: torch.device, out_dtype: torch.dtype) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable('onnxruntime is not installed (pip install ".[onnx]")') from None
    if not path or not Path(path).is_file():
        raise BackendUnavailable(
            f'ONNX file {path!r} not found: export it with drive-vlm export-vision --model DIR '
            '--onnx OUT.onnx'
        )
    providers = ['CPUExecutionProvider']
    if device.type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
    try:
        session = ort.InferenceSession(path, providers=providers)
    except Exception as err:  # noqa: BLE001 - ORT raises its own error types for bad graphs
        raise BackendUnavailable(f'ONNX file {path} could not be loaded ({err})') from None
    graph_input = session.get_inputs()[0]
    name, fixed = graph_input.name, graph_input.shape[1:]
    try:
        in_dtype = onnx_input_dtype(graph_input.type)
    except ValueError as err:
        raise BackendUnavailable(f'{path}: {err}') from None

    def run(pixel_values: Tensor) -> Tensor:
        if list(pixel_values.shape[1:]) != list(fixed):
            raise ValueError(f'pixel values {tuple(pixel_values.shape[1:])} do not match the '
                             f'ONNX graph input {tuple(fixed)}: re-export for this model')
        feed = pixel_values.to(device='cpu', dtype=in_dtype).numpy()  # one cast, no copy if same
        out = session.run(None, {name: feed})[0]
        return torch.from_numpy(out).to(device=device, dtype=out_dtype)

    return run, dict(session.get_modelmeta().custom_metadata_map)
