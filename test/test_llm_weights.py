"""
llm_weights int8 / int4 (models/llm_weights.py) on tiny real checkpoints of every family.

int8 runs here (torchao's Int8Tensor has a CPU path), and so does int4 (torchao's CPU layout,
Int4OpaqueTensor, on aten's _weight_int4pack_mm_for_cpu). int4 on a device without a kernel (CUDA
where torch sees none) must fail at start with a message that names the setting, the device and
the alternatives. Compiling uses dynamo's 'eager' backend (real graph capture, eager kernels), as
in test_decode_backends.py.
"""

from dataclasses import replace
import logging
import os
from pathlib import Path
import subprocess
import sys

from conftest import FAMILIES, random_frame
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.llm_weights import (
    check_llm_weights,
    llm_weights_note,
    tensor_bytes,
    weight_bytes,
)
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.decoding import CompileOptions
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 24
FRAMES = [random_frame(i) for i in range(6)]
# Random tiny weights give nearly flat logits, so an int8 rounding can flip one early argmax
# and the rest of that answer with it. Measured (2.13 CPU, 6 frames x 24 tokens): LLaVA 5/6
# answers identical (one flipped at its first token), InternVL and Qwen2.5-VL 6/6.
MIN_PREFIX_AGREEMENT = 0.6  # share of the native tokens int8 reproduces before a first change
MIN_KEPT_OVERLAP = 0.97  # share of the native kept tokens that int8 keeps at layer K
# int4 rounds 16x coarser than int8. Measured on the CPU layout (2.13 CPU, the same frames):
# prefix agreement LLaVA 0.52, InternVL 1.00, Qwen2.5-VL 0.59 (the trained embedded model 0.78);
# fastv layer-2 kept overlap 0.87-0.97 (embedded model 0.96-0.99). A broken packing agrees ~0.
MIN_INT4_PREFIX_AGREEMENT = 0.4
MIN_INT4_KEPT_OVERLAP = 0.85
logging.getLogger('torch.__trace').setLevel(logging.INFO)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module', params=FAMILIES)
def loaded(request, tiny_checkpoints):
    """Load one family's tiny checkpoint native, int8 and int4: {setting: pipeline}."""
    path = str(tiny_checkpoints(request.param))
    return {w: Pipeline(load_adapter(LoadSpec(path, llm_weights=w), log=lambda _m: None))
            for w in ('native', 'int8', 'int4')}


@pytest.fixture
def both(loaded):
    """(native, int8) pipelines of one family's tiny checkpoint."""
    return loaded['native'], loaded['int8']


def decoder_linears(adapter) -> list[nn.Linear]:
    return [m for layer in adapter.decoder_layers for m in layer.modules()
            if isinstance(m, nn.Linear)]


def kept_overlap(native: list[list[int]], other: list[list[int]]) -> float:
    a = {(v, i) for v, rows in enumerate(native) for i in rows}
    b = {(v, i) for v, rows in enumerate(other) for i in rows}
    return len(a & b) / len(a)


def prefix_agreement(native: str, other: str, tokenizer) -> tuple[int, int]:
    a = tokenizer.encode(native, add_special_tokens=False)
    b = tokenizer.encode(other, add_special_tokens=False)
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same, max(len(a), len(b))


def greedy_agreement(native: Pipeline, other: Pipeline) -> tuple[int, int]:
    """Sum :func:`prefix_agreement` over FRAMES at keep 1.0, greedy, NEW_TOKENS each."""
    settings = RuntimeSettings(keep_ratio=1.0, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    same = total = 0
    for frame in FRAMES:
        s, t = prefix_agreement(native.run(frame, settings).answer,
                                other.run(frame, settings).answer, native.adapter.tokenizer)
        same, total = same + s, total + t
    return same, total


def test_int8_shrinks_only_the_llm_linears_and_keeps_the_greedy_tokens(both):
    native, int8 = both
    before = sum(tensor_bytes(m.weight) for m in decoder_linears(native.adapter))
    after = sum(tensor_bytes(m.weight) for m in decoder_linears(int8.adapter))
    params = sum(m.weight.numel() for m in decoder_linears(int8.adapter))
    # fp32 -> one int8 per weight, plus one fp32 scale and one int8 zero point per output row
    rows = sum(m.out_features for m in decoder_linears(native.adapter))
    assert before == 4 * params
    assert after == params + 5 * rows
    assert 0.25 < after / before < 0.28
    for m in decoder_linears(int8.adapter):
        assert type(m.weight).__name__ == 'Int8Tensor'
    # embeddings, LM head, projector and vision tower keep plain float weights
    plain = {id(m.weight) for m in decoder_linears(int8.adapter)}
    others = [p for p in int8.adapter.model.parameters() if id(p) not in plain]
    assert others and all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in others)
    assert int8.adapter.llm_weights == 'int8'
    same, total = greedy_agreement(native, int8)
    assert same / total >= MIN_PREFIX_AGREEMENT, (same, total)


def test_int8_batches_compiles_and_prunes_in_the_llm_like_eager(both):
    native, int8 = both
    compiled = Pipeline(int8.adapter, compile_options=CompileOptions(backend='eager'))
    for layer, pruner in ((0, 'tfps'), (2, 'fastv')):
        settings = [RuntimeSettings(keep_ratio=k, pruner=pruner, prune_layer=layer,
                                    max_new_tokens=8, question=q, decode_backend=b)
                    for q, k, b in (('Where?', 0.1, 'eager'),
                                    ('What is ahead now?', 0.3, 'eager'))]
        eager = int8.run_batch(FRAMES[:2], settings)
        fast = compiled.run_batch(FRAMES[:2], [replace(s, decode_backend='compiled')
                                               for s in settings])
        assert [r.decode_backend for r in fast] == ['compiled', 'compiled']
        assert [r.answer for r in fast] == [r.answer for r in eager]
        if layer:
            # Layer-K pruning ranks tokens by the attention of layer K-1 (a hook reads it).
            # int8 weights move those scores a little, so tokens at the selection boundary can
            # swap: the kept sets are not identical. Measured (fastv at layer 2, 4 frames,
            # keep 0.1 and 0.3): 98.3-100% of the native kept tokens stay kept in every family,
            # the embedded model included.
            reference = native.run_batch(FRAMES[:2], settings)
            for r, q in zip(reference, eager):
                assert sum(map(len, q.kept_indices)) == sum(map(len, r.kept_indices))
                assert kept_overlap(r.kept_indices, q.kept_indices) >= MIN_KEPT_OVERLAP


def test_int4_on_the_cpu_packs_two_weights_a_byte_and_keeps_the_greedy_tokens(loaded):
    native, int4 = loaded['native'], loaded['int4']
    linears = decoder_linears(int4.adapter)
    assert linears and all(type(m.weight).__name__ == 'Int4OpaqueTensor' for m in linears)
    before = sum(tensor_bytes(m.weight) for m in decoder_linears(native.adapter))
    after = sum(tensor_bytes(m.weight) for m in linears)
    # half a byte per weight, plus an fp32 scale and an fp32 zero point per group of each row
    expected = sum(m.out_features * m.in_features // 2
                   + m.out_features * (m.in_features // m.weight.block_size[1]) * 2 * 4
                   for m in linears)
    assert after == expected
    assert after / before < 0.32 / 2  # issue 26's goal is against bf16 weights; these are fp32
    same, total = greedy_agreement(native, int4)
    assert same / total >= MIN_INT4_PREFIX_AGREEMENT, (same, total)


def test_int4_on_the_cpu_batches_compiles_and_prunes_in_the_llm(loaded):
    native, int4 = loaded['native'], loaded['int4']
    compiled = Pipeline(int4.adapter, compile_options=CompileOptions(backend='eager'))
    settings = [RuntimeSettings(keep_ratio=k, pruner='fastv', prune_layer=2, max_new_tokens=8,
                                question=q) for q, k in (('Where?', 0.1),
                                                         ('What is ahead now?', 0.3))]
    eager = int4.run_batch(FRAMES[:2], settings)
    fast = compiled.run_batch(FRAMES[:2], [replace(s, decode_backend='compiled')
                                           for s in settings])
    assert [r.decode_backend for r in fast] == ['compiled', 'compiled']
    assert [r.answer for r in fast] == [r.answer for r in eager]
    for r, q in zip(native.run_batch(FRAMES[:2], settings), eager):
        assert sum(map(len, q.kept_indices)) == sum(map(len, r.kept_indices))
        assert kept_overlap(r.kept_indices, q.kept_indices) >= MIN_INT4_KEPT_OVERLAP


def test_int4_without_a_kernel_fails_at_start_naming_setting_device_and_alternatives():
    with pytest.raises(ValueError) as err:
        check_llm_weights('int4', 'mps', torch.float32)
    text = str(err.value)
    assert "llm_weights int4 has no kernel on device 'mps'" in text
    assert 'compute capability 8.0' in text and 'int8' in text and 'native' in text
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r'int4 needs CUDA, and torch sees no CUDA device'):
            check_llm_weights('int4', 'cuda', torch.bfloat16)
    with pytest.raises(ValueError, match='use one of native, int8, int4'):
        check_llm_weights('int3', 'cpu', torch.float32)
    with pytest.raises(ValueError, match='int4 on the CPU runs in float32, bfloat16 or float16'):
        check_llm_weights('int4', 'cpu', torch.float64)
    check_llm_weights('int8', 'cpu', torch.float32)  # CPU kernels: no error
    check_llm_weights('int4', 'cpu', torch.float32)
    check_llm_weights('int4', 'cpu', torch.bfloat16)
    # float32 int4 runs on torch's slow CPU path: it is said at load, not refused
    assert 'pass dtype bfloat16' in llm_weights_note('int4', 'cpu', torch.float32)
    assert llm_weights_note('int4', 'cpu', torch.bfloat16) is None
    assert llm_weights_note('int8', 'cpu', torch.float32) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason='int4 on cuda has a kernel on this machine')
def test_the_cli_refuses_int4_without_cuda_before_loading(tiny_llava, tmp_path):
    data = tmp_path / 'data'
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    synth = [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'data', 'synth', str(data),
             '--split', 'test', '--scenes', '1', '--frames-per-scene', '1']
    subprocess.run(synth, check=True, capture_output=True, timeout=120, env=env)
    cmd = [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'eval', '--model', str(tiny_llava),
           '--data', str(data), '--out', str(tmp_path / 'preds.json'), '--device', 'cuda',
           '--llm-weights', 'int4', '--no-progress']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "llm_weights int4 needs CUDA, and torch sees no CUDA device ('cuda')" in out.stderr
    assert 'Traceback' not in out.stderr
    assert not (tmp_path / 'preds.json').exists()


def test_weight_bytes_reads_the_inner_tensors_of_a_quantized_weight():
    from drive_vlm_pruned.models.llm_weights import quantize_llm

    layer = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32))
    native = weight_bytes([layer])
    assert native == 4 * (64 * 32 + 32 + 32 + 32)
    done = quantize_llm([layer], 'int8')
    assert done.quantized == 1 and done.skipped == ()
    w = layer[0].weight
    assert tensor_bytes(w) == w.qdata.numel() + 4 * w.scale.numel() + w.zero_point.numel()
    assert w.qdata.dtype == torch.int8 and w.qdata.shape == (32, 64)
    assert weight_bytes([layer]) == native - 4 * 64 * 32 + tensor_bytes(w)


def test_loading_a_model_with_torchao_installed_prints_no_expected_library_warnings(tiny_llava):
    # transformers imports torchao when it is installed; torchao logs its CUDA-only libraries
    # that cannot load on a CPU torch (drive_vlm_pruned/library_logs.py drops those lines).
    code = ('from drive_vlm_pruned.models.adapters import load_adapter; '
            'from drive_vlm_pruned.models.loading import LoadSpec; '
            f'load_adapter(LoadSpec({str(tiny_llava)!r}, llm_weights="int8"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'Failed to load' not in out.stderr and 'register_constant' not in out.stderr
    import torchao  # the filters drop only the expected lines: the logger itself still works

    assert not logging.getLogger('torchao').disabled and torchao.__version__
