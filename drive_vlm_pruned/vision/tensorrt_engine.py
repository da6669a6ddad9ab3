"""
TensorRT engines for the vision encoder: build once, cache under a key, run on torch tensors.

An engine is only valid for the TensorRT version, GPU compute capability, precision and input
shape it was built for, so every engine file has a JSON sidecar with that key; a matching engine
is reused, anything else is rebuilt (or rebuilt anyway with ``force``).

Versions: JetPack 6 ships TensorRT 10.x, where FP16 is the builder flag ``BuilderFlag.FP16``.
TensorRT 11 (PyPI) dropped weakly typed networks: networks are strongly typed and FP16 means an
FP16 ONNX graph (``drive-vlm export-vision --fp16``).

NOT verified on our machines: TensorRT cannot be installed there. The key logic and the
fallback when TensorRT is missing are tested; building and running need a GPU with TensorRT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path

import torch

from .errors import BackendUnavailable


@dataclass(frozen=True)
class EngineKey:
    """What an engine is only valid for."""

    tensorrt: str
    compute_capability: str
    precision: str  # 'fp32' or 'fp16'
    input_shape: tuple[int, ...]  # (max views, 3, H, W)


def sidecar(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + '.json')


def write_key(engine_path: str | Path, key: EngineKey,
              metadata: dict[str, str] | None = None) -> None:
    """Write the key, and the ONNX graph's metadata (camera size; see onnx_export) beside it."""
    sidecar(engine_path).write_text(json.dumps({**asdict(key), 'metadata': metadata or {}}) + '\n')


def read_metadata(engine_path: str | Path) -> dict[str, str]:
    """Return the ONNX metadata recorded when the engine was built ({} if none)."""
    try:
        metadata = json.loads(sidecar(engine_path).read_text()).get('metadata', {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def onnx_metadata(onnx_path: str | Path) -> dict[str, str]:
    """Read a graph's metadata without its weights; {} where the onnx package is missing."""
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_key(engine_path: str | Path) -> EngineKey | None:
    """Return the key an engine was built with, or None if it has no readable sidecar."""
    try:
        data = json.loads(sidecar(engine_path).read_text())
        return EngineKey(data['tensorrt'], data['compute_capability'], data['precision'],
                         tuple(data['input_shape']))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rebuild_reason(engine_path: str | Path, key: EngineKey, force: bool = False) -> str | None:
    """Return why the engine must be (re)built, or None when the cached one can be reused."""
    if force:
        return 'rebuild forced'
    if not Path(engine_path).is_file():
        return f'no engine at {engine_path}'
    built = read_key(engine_path)
    if built is None:
        return f'{sidecar(engine_path)} is missing or unreadable'
    if built != key:
        diff = [f'{k}: {getattr(built, k)} -> {getattr(key, k)}'
                for k in asdict(key) if getattr(built, k) != getattr(key, k)]
        return 'engine was built for another setup (' + '; '.join(diff) + ')'
    return None


def current_key(trt_version: str, device: torch.device, fp16: bool,
                input_shape: tuple[int, ...]) -> EngineKey:
    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(trt_version, f'{major}.{minor}', 'fp16' if fp16 else 'fp32',
                     tuple(input_shape))


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable('tensorrt is not installed (on Jetson it comes with JetPack; on '
                                 'x86 pip install tensorrt)') from None
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool = False,
                 max_views: int = 6, force: bool = False) -> tuple[Path, str]:
    """Build (or reuse) an engine for an ONNX vision graph; return (path, what happened)."""
    trt = _tensorrt()
    if not torch.cuda.is_available():
        raise BackendUnavailable('TensorRT needs a CUDA GPU')
    major = int(trt.__version__.split('.')[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f'TensorRT could not parse {onnx_path}: {errors}')
    tensor = network.get_input(0)
    image = tuple(tensor.shape[1:])
    key = current_key(trt.__version__, torch.device('cuda'), fp16, (max_views, *image))
    reason = rebuild_reason(engine_path, key, force)
    if reason is None:
        return Path(engine_path), 'reused the cached engine (key matches)'
    config = builder.create_builder_config()
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if fp16 and strongly_typed and tensor.dtype != trt.DataType.HALF:
        raise ValueError(f'TensorRT {trt.__version__} builds strongly typed networks: FP16 needs '
                         'an FP16 ONNX graph (drive-vlm export-vision --fp16)')
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (1, *image), (max_views, *image), (max_views, *image))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path}')
    Path(engine_path).parent.mkdir(parents=True, exist_ok=True)
    Path(engine_path).write_bytes(bytes(serialized))
    write_key(engine_path, key, onnx_metadata(onnx_path))
    return Path(engine_path), f'built ({reason})'


def load_engine_runner(engine_path: str, device: torch.device, out_dtype: torch.dtype):
    """Deserialize an engine; return ``(run(pixel_values) -> features, metadata)`` on CUDA."""
    trt = _tensorrt()
    if device.type != 'cuda':
        raise BackendUnavailable('TensorRT runs on CUDA devices only')
    if not engine_path or not Path(engine_path).is_file():
        raise BackendUnavailable(f'engine {engine_path!r} not found: build it with drive-vlm '
                                 'build-engine --onnx OUT.onnx --engine OUT.plan')
    built = read_key(engine_path)
    if built is None or built.tensorrt != trt.__version__:
        raise BackendUnavailable(f'engine {engine_path} was not built by TensorRT '
                                 f'{trt.__version__} here: rebuild it with drive-vlm build-engine')
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise BackendUnavailable(f'engine {engine_path} is corrupt: rebuild it')
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def torch_dtype(name):
        half = engine.get_tensor_dtype(name) == trt.DataType.HALF
        return torch.float16 if half else torch.float32

    in_dtype, res_dtype = torch_dtype(inp), torch_dtype(out)

    def run(pixel_values):
        x = pixel_values.to(device=device, dtype=in_dtype).contiguous()
        context.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(out)), dtype=res_dtype, device=device)
        # Bind torch's CUDA memory directly: no host copies.
        context.set_tensor_address(inp, x.data_ptr())
        context.set_tensor_address(out, y.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
            raise RuntimeError('TensorRT execution failed')
        return y.to(out_dtype)

    return run, read_metadata(engine_path)
