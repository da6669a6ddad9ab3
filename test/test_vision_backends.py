"""Vision backends: ONNX export and parity, the onnxruntime pipeline, fallbacks, engine keys."""

from pathlib import Path
from types import SimpleNamespace

from conftest import random_frame
from drive_vlm_pruned.bench.vision import _eager_attention_note, bench_vision
from drive_vlm_pruned.cli.main import main as cli_main
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.models.qwen2_5_vl import Qwen25VLAdapter
from drive_vlm_pruned.models.qwen_vision import QwenVisionEncoder
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
from drive_vlm_pruned.vision.backends import BackendRequest, choose_backend
from drive_vlm_pruned.vision.onnx_export import check_parity, export_onnx, max_abs_error
from drive_vlm_pruned.vision.tensorrt_engine import (
    EngineKey,
    onnx_metadata,
    read_key,
    read_metadata,
    rebuild_reason,
    write_key,
)
import numpy as np
import pytest
import torch

EXPORTABLE = ['llava-onevision', 'internvl', 'qwen2.5-vl']
# Qwen2.5-VL's graph is fixed to the patch grid of camera_hw frames; the others resize any frame.
FRAME_HW = {'qwen2.5-vl': Qwen25VLAdapter.camera_hw}


@pytest.fixture(scope='module')
def exported(tiny_checkpoints, tmp_path_factory):
    """Export each exportable tiny family once: {family: (checkpoint, onnx path)}."""
    out = {}
    for family in EXPORTABLE:
        ckpt = tiny_checkpoints(family)
        adapter = load_adapter(LoadSpec(str(ckpt)))
        path = tmp_path_factory.mktemp('onnx') / f'{family}.onnx'
        export_onnx(adapter.vision_module(), adapter.image_shape, path)
        out[family] = (ckpt, path, adapter)
    return out


@pytest.mark.parametrize('family', EXPORTABLE)
def test_onnx_runtime_matches_pytorch(exported, family):
    _, path, adapter = exported[family]
    # 5 views: a batch size the export never saw, so the views axis is really dynamic.
    pixels = torch.randn(5, *adapter.image_shape)
    # fp32 on both sides; only kernel summation order differs (observed ~6e-8 for SigLIP and
    # InternViT, ~1e-7 for Qwen, whose graph runs eager attention against torch's SDPA). Such
    # reassociation in attention sums and GELU gives ~1e-6..1e-5 after a few real-width layers;
    # 1e-4 leaves room for real-size encoders (27-32 layers of 1152- or 1280-wide sums).
    assert max_abs_error(path, adapter.vision_module(), pixels) < 1e-4


@pytest.mark.parametrize('family', EXPORTABLE)
def test_fp16_graph_runs_in_the_onnx_backend_close_to_fp32(exported, family, tmp_path):
    _, _, adapter = exported[family]
    module = adapter.vision_module()
    path = export_onnx(module, adapter.image_shape, tmp_path / 'fp16.onnx', fp16=True)
    assert next(module.parameters()).dtype == torch.float32  # the export left the model alone
    pixels = torch.randn(3, *adapter.image_shape)
    parity = check_parity(path, module, pixels)
    # FP16 rounds each op to 11 significant bits (unit roundoff 4.9e-4); a few layers of sums
    # stay near 1e-3 of the output scale (5e-4 observed). A wrong graph is off by ~100%.
    assert parity.graph_dtype == 'float16'
    assert 0 < parity.max_abs_error < 1e-2 * parity.max_abs_feature
    backend = choose_backend(BackendRequest('onnxruntime', onnx_path=str(path)), module,
                             torch.device('cpu'), torch.float32)
    got = backend(pixels)
    assert backend.name == 'onnxruntime' and got.dtype == torch.float32
    with torch.no_grad():
        want = module(pixels)
    assert (got - want).abs().max().item() < 1e-2 * parity.max_abs_feature


@pytest.mark.parametrize('family', EXPORTABLE)
def test_pipeline_with_onnxruntime_gives_the_same_greedy_answer(exported, family):
    ckpt, path, _ = exported[family]
    logs = []
    spec = LoadSpec(str(ckpt), vision_backend='onnxruntime', vision_onnx=str(path))
    ort_pipe = Pipeline(load_adapter(spec, log=logs.append))
    assert ort_pipe.adapter.vision_backend == 'onnxruntime' and not logs
    torch_pipe = Pipeline(load_adapter(LoadSpec(str(ckpt))))
    settings = RuntimeSettings(keep_ratio=0.25, max_new_tokens=8)
    frame = random_frame(31, size=FRAME_HW.get(family, (90, 160)))
    a, b = ort_pipe.run(frame, settings), torch_pipe.run(frame, settings)
    assert a.answer == b.answer and a.kept_indices == b.kept_indices


def test_missing_or_corrupt_onnx_falls_back_with_one_logged_reason(tiny_llava, tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'not an onnx graph')
    settings, frame = RuntimeSettings(max_new_tokens=2), random_frame(32)
    want = Pipeline(load_adapter(LoadSpec(str(tiny_llava)))).run(frame, settings)
    for path, says in [(tmp_path / 'nope.onnx', 'not found'), (corrupt, 'could not be loaded')]:
        logs = []
        spec = LoadSpec(str(tiny_llava), vision_backend='onnxruntime', vision_onnx=str(path))
        pipe = Pipeline(load_adapter(spec, log=logs.append))
        assert pipe.adapter.vision_backend == 'torch'
        assert says in logs[0] and 'onnxruntime' in logs[0]
        assert any('compile' in line for line in logs)  # CPU: compile is skipped, then torch
        # The fallback is the plain torch encoder: the same answer, token for token.
        got = pipe.run(frame, settings)
        assert got.answer == want.answer and got.kept_indices == want.kept_indices
        assert got.generated_tokens == want.generated_tokens


def test_tensorrt_without_tensorrt_falls_back_to_onnxruntime(exported):
    ckpt, path, adapter = exported['llava-onevision']
    logs = []
    backend = choose_backend(BackendRequest('tensorrt', onnx_path=str(path)),
                             adapter.vision_module(), torch.device('cpu'), torch.float32,
                             logs.append)
    assert backend.name == 'onnxruntime' and backend.requested == 'tensorrt'
    assert 'tensorrt' in logs[0]


def test_onnx_backend_rejects_a_wrong_image_size_with_the_fix(exported):
    _, path, adapter = exported['llava-onevision']
    backend = choose_backend(BackendRequest('onnxruntime', onnx_path=str(path)),
                             adapter.vision_module(), torch.device('cpu'), torch.float32)
    with pytest.raises(ValueError, match='re-export'):
        backend(torch.randn(1, 3, 224, 224))


def test_backend_unavailable_is_one_class_and_tensorrt_engine_does_not_import_backends():
    """tensorrt_engine.py and backends.py both raise it; errors.py breaks their import circle."""
    import ast

    import drive_vlm_pruned.vision.backends as backends
    import drive_vlm_pruned.vision.errors as errors
    import drive_vlm_pruned.vision.tensorrt_engine as tensorrt_engine

    assert backends.BackendUnavailable is errors.BackendUnavailable
    assert tensorrt_engine.BackendUnavailable is errors.BackendUnavailable
    tree = ast.parse(Path(tensorrt_engine.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert 'backends' not in imported and 'vision.backends' not in imported


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match='tensorrt, onnxruntime, compile, torch'):
        choose_backend(BackendRequest('openvino'), torch.nn.Identity(), torch.device('cpu'),
                       torch.float32)


def test_qwen_encoder_equals_the_models_own_visual_forward(exported):
    adapter = exported['qwen2.5-vl'][2]
    visual = adapter.model.model.visual
    # The camera grid (16 x 30 patches: 8 windows of up to 8 x 8, edge ones cut) and a grid whose
    # windows are cut on both axes.
    for frame_hw in [adapter.camera_hw, (333, 777)]:
        rng = np.random.default_rng(5)
        images = [rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8) for _ in range(3)]
        pixels = adapter.preprocess(images)
        grid = tuple(pixels.grid_thw[0, 1:].tolist())
        with torch.no_grad():
            want = visual(pixels.values, grid_thw=pixels.grid_thw).pooler_output
            for attention in ('sdpa', 'eager'):  # eager torch, and what the export traces
                encoder = QwenVisionEncoder(visual, grid, attention)
                got = encoder(pixels.values.reshape(3, *encoder.input_shape))
                # Same fp32 ops; only the attention sums run over padded windows (~3e-8 seen).
                torch.testing.assert_close(got.reshape(want.shape), want, rtol=0, atol=1e-5)


def test_qwen_onnx_backend_rejects_frames_of_another_grid_with_the_fix(exported):
    ckpt, path, _ = exported['qwen2.5-vl']
    spec = LoadSpec(str(ckpt), vision_backend='onnxruntime', vision_onnx=str(path))
    pipe = Pipeline(load_adapter(spec))
    with pytest.raises(ValueError, match='fixed to a 16 x 30 patch grid.*1600 x 900 frames'):
        pipe.run(random_frame(33), RuntimeSettings(max_new_tokens=2))  # 160 x 90: 6 x 12


def test_qwen_graph_for_another_camera_size_records_it_and_serves_those_frames(
        tiny_checkpoints, tmp_path, capsys):
    ckpt = tiny_checkpoints('qwen2.5-vl')
    path = tmp_path / 'qwen_320x180.onnx'
    assert cli_main(['export-vision', '--model', str(ckpt), '--onnx', str(path),
                     '--camera-size', '320x180']) == 0
    out = capsys.readouterr().out
    assert 'fixed to 320x180 camera frames' in out and 'max abs error' in out
    metadata = onnx_metadata(path)
    assert metadata['drive_vlm.camera_hw'] == '180,320'
    grid = tuple(int(v) for v in metadata['drive_vlm.grid_hw'].split(','))
    assert grid != load_adapter(LoadSpec(str(ckpt))).vision_grid  # not the 1600 x 900 grid

    spec = LoadSpec(str(ckpt), vision_backend='onnxruntime', vision_onnx=str(path))
    ort_pipe = Pipeline(load_adapter(spec))
    assert ort_pipe.adapter.vision_backend == 'onnxruntime'
    assert ort_pipe.adapter.camera_hw == (180, 320) and ort_pipe.adapter.vision_grid == grid
    settings = RuntimeSettings(keep_ratio=0.5, max_new_tokens=6)
    frame = random_frame(34, size=(180, 320))
    torch_result = Pipeline(load_adapter(LoadSpec(str(ckpt)))).run(frame, settings)
    result = ort_pipe.run(frame, settings)
    assert result.answer == torch_result.answer
    assert result.kept_indices == torch_result.kept_indices
    with pytest.raises(ValueError, match='320 x 180 frames.*--camera-size WxH'):
        ort_pipe.run(random_frame(35, size=(900, 1600)), settings)


def test_camera_size_is_refused_where_the_encoder_resizes_every_frame(
        tiny_llava, tmp_path, capsys):
    args = ['export-vision', '--model', str(tiny_llava), '--onnx', str(tmp_path / 'v.onnx')]
    assert cli_main([*args, '--camera-size', '320x180']) == 2
    assert 'leave the option out' in capsys.readouterr().err
    assert not (tmp_path / 'v.onnx').exists()
    with pytest.raises(SystemExit):
        cli_main([*args, '--camera-size', '320'])
    assert 'give WxH in pixels, e.g. 1600x900' in capsys.readouterr().err


def test_bench_vision_times_the_qwen_vit_with_torch_and_onnxruntime(tmp_path):
    # Real widths at Impromptu's 262144-pixel budget (26 x 48 patches), 1 layer and 1 view: ~6 s.
    cells = bench_vision('qwen2.5-vl-vit-262k', ['torch', 'onnxruntime'], torch.device('cpu'),
                         views=1, layers=1, warmup=0, repeats=1, workdir=tmp_path)
    assert [(c.backend, c.note) for c in cells] == [('torch', ''), ('onnxruntime', '')]
    assert all(c.median_ms > 0 for c in cells)


def test_bench_vision_skips_an_onnx_graph_whose_eager_attention_cannot_fit():
    # 1596 px frames: 114 x 114 patches; the graph's full-attention scores alone are 65 GB.
    attn = SimpleNamespace(num_heads=16)
    module = SimpleNamespace(patches=114 * 114, blocks=[SimpleNamespace(attn=attn)])
    assert 'GiB' in _eager_attention_note(module, views=6)
    assert _eager_attention_note(module, views=0) == ''


def test_family_without_an_exportable_encoder_logs_and_uses_torch(monkeypatch,
                                                                  tiny_checkpoints):
    # Every family exports now; load_adapter's guard still covers a future one that does not.
    monkeypatch.setattr(Qwen25VLAdapter, 'vision_module', lambda self, grid_hw=None: None)
    logs = []
    spec = LoadSpec(str(tiny_checkpoints('qwen2.5-vl')), vision_backend='onnxruntime')
    adapter = load_adapter(spec, log=logs.append)
    assert adapter.vision_backend == 'torch' and 'no exportable vision module' in logs[0]


def test_engine_cache_key_decides_reuse_and_rebuild(tmp_path):
    key = EngineKey('10.3.0', '8.7', 'fp16', (6, 3, 384, 384))
    engine = tmp_path / 'vision.plan'
    assert 'no engine' in rebuild_reason(engine, key)
    engine.write_bytes(b'serialized engine')
    assert 'missing or unreadable' in rebuild_reason(engine, key)
    write_key(engine, key, {'drive_vlm.camera_hw': '180,320'})
    assert rebuild_reason(engine, key) is None and read_key(engine) == key
    assert read_metadata(engine) == {'drive_vlm.camera_hw': '180,320'}  # for the adapter
    assert rebuild_reason(engine, key, force=True) == 'rebuild forced'
    other = EngineKey('11.0.0', '9.0', 'fp16', (6, 3, 384, 384))
    reason = rebuild_reason(engine, other)
    assert 'tensorrt: 10.3.0 -> 11.0.0' in reason and 'compute_capability: 8.7 -> 9.0' in reason
    assert 'precision' not in reason
