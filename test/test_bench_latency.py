"""
``bench latency``, ``bench soak`` and the device floors: figures come out, verdicts are right.

The benchmarks' speed goals are printed, never asserted; these tests check what the figures are
made of (parameter counts against the real classes, the floor arithmetic, every frame counted)
and that the commands run end to end on the tiny model, the node part over real DDS.
"""

import json

from drive_vlm_pruned.bench.device_specs import (
    decode_floor,
    DEVICE_SPECS,
    model_bytes_of,
    preset_bytes,
    visual_tokens_per_view,
)
from drive_vlm_pruned.bench.latency import kv_bytes_per_position, weight_bytes_per_step
from drive_vlm_pruned.bench.shapes import PRESETS
from drive_vlm_pruned.bench.soak import SoakReport, SoakSample
from drive_vlm_pruned.cli.main import main
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run the timed commands on one thread (the CI machine is small and shared); restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_parameter_counts_by_role_add_up_to_the_real_model(pipeline):
    model = pipeline.adapter.model
    counted = model_bytes_of(model, 'tiny', 100)
    total = sum(p.numel() for p in model.parameters())
    assert counted.llm_params + counted.vision_params == total
    assert counted.decoder_linear_params > counted.decoder_other_params > 0
    element = next(model.parameters()).element_size()
    # What one decode step reads: every LLM weight but the embedding table, plus the LM head.
    head = 0 if counted.tied else counted.lm_head_params
    assert weight_bytes_per_step(model) == element * (
        counted.llm_params - counted.embed_params - head + counted.lm_head_params)
    assert kv_bytes_per_position(model) * 2 == counted.kv_bytes_per_token * element


def test_presets_count_like_their_published_models():
    drivemm = preset_bytes('drivemm-8b')  # Llama-3.1-8B: 8.03 B parameters, 128256 vocabulary
    assert abs(drivemm.llm_params / 1e9 - 8.03) < 0.01
    assert drivemm.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert visual_tokens_per_view(PRESETS['qwen2.5-vl-3b-262k']) == 312  # 1600 x 900 at 262k px
    assert visual_tokens_per_view(PRESETS['qwen2.5-vl-3b-1596']) == 3249
    assert visual_tokens_per_view(PRESETS['drivemm-8b']) == 729


def test_decode_floor_scales_with_bandwidth_bytes_and_context():
    model = preset_bytes('drivemm-8b')
    agx = decode_floor(model, DEVICE_SPECS['orin-agx'], 'bf16', 0.1)
    nx = decode_floor(model, DEVICE_SPECS['orin-nx'], 'bf16', 0.1)
    assert nx.ms_per_token == pytest.approx(2 * agx.ms_per_token)  # 102.4 vs 204.8 GB/s
    expected = (agx.weight_gb_per_token + agx.kv_gb_per_token) / 204.8 * 1e3
    assert agx.ms_per_token == pytest.approx(expected)
    assert decode_floor(model, DEVICE_SPECS['orin-agx'], 'int4', 0.1).ms_per_token < (
        agx.ms_per_token / 3)
    assert decode_floor(model, DEVICE_SPECS['orin-agx'], 'bf16', 1.0).kv_gb_per_token > (
        5 * agx.kv_gb_per_token)
    h100 = decode_floor(model, DEVICE_SPECS['h100'], 'bf16', 0.1)
    assert 4.0 < h100.ms_per_token < 5.0  # the "at least 4.8 ms" counts all 16 GB
    assert not decode_floor(model, DEVICE_SPECS['orin-nx'], 'bf16', 1.0).fits  # 17 GB > 16 GB
    with pytest.raises(ValueError, match='bf16, int8, int4'):
        decode_floor(model, DEVICE_SPECS['h100'], 'int3', 0.1)


def test_device_spec_prints_the_floor_without_building_a_model(capsys, tmp_path):
    assert main(['bench', 'latency', '--device-spec', 'orin-nx', '--preset', 'drivemm-8b',
                 '--keep-ratios', '0.1', '--out-dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '102.4 GB/s' in out and '| drivemm-8b | int4 | 0.1 |' in out
    floors = json.loads((tmp_path / 'floor-orin-nx.json').read_text())
    assert {f['weights'] for f in floors} == {'bf16', 'int8', 'int4'}


def test_bench_latency_reports_stages_roofline_and_the_node_under_load(tiny_llava, tmp_path,
                                                                       capsys):
    code = main(['bench', 'latency', '--model', str(tiny_llava), '--device', 'cpu',
                 '--keep-ratios', '1.0', '0.1', '--decode-backends', 'eager', '--new-tokens',
                 '4', '--warmup', '1', '--repeats', '2', '--node-frames', '6',
                 '--image-size', '160x90', '--out-dir', str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / 'latency.json').read_text())
    assert (tmp_path / 'latency.png').stat().st_size > 0
    assert 'roofline ratio' in (tmp_path / 'latency.md').read_text()
    full, pruned = report['cells']
    for cell in (full, pruned):
        assert cell['decode_backend_used'] == 'eager'
        assert cell['ttft_ms'] == pytest.approx(sum(cell[f'{s}_ms'] for s in (
            'preprocess', 'vision', 'prune', 'prefill')), rel=0.2)
        assert cell['roofline_ratio'] > 0 and cell['tokens_generated'] == 4
    assert pruned['kv_cache_bytes'] < full['kv_cache_bytes']
    assert pruned['prompt_tokens_kept'] < full['prompt_tokens_kept']
    assert report['bandwidth']['gb_s'] > 0
    node = report['node']
    assert node['sets_sent'] == 6 and node['unaccounted'] == 0
    assert node['answered'] >= 1 and len(node['latencies']) == node['answered']
    assert node['answered'] + sum(node['dropped'].values()) + node['sets_lost'] + sum(
        node['skipped'].values()) == 6
    assert set(node['percentiles_ms']) == {'p50', 'p90', 'p99', 'max'}
    assert 'Node under load' in capsys.readouterr().out


def test_bench_soak_runs_the_pipeline_and_passes_when_memory_is_flat(tiny_llava, tmp_path):
    out = tmp_path / 'soak.json'
    code = main(['bench', 'soak', '--model', str(tiny_llava), '--frames', '24',
                 '--report-every', '8', '--max-new-tokens', '4', '--json-out', str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report['problems']
    assert [s['frame'] for s in report['samples']] == [8, 16, 24]
    assert report['answered'] == 24 and report['unaccounted'] == 0
    assert report['rss_growth'] is not None and report['latency_drift'] is not None


def _sample(frame: int, rss: float) -> SoakSample:
    return SoakSample(frame, rss, None, None, 10.0, 12.0, frame, 1.0)


def test_soak_fails_loudly_on_memory_growth_and_on_unaccounted_frames():
    growing = SoakReport('pipeline', 30, 10, 10, 0.05, answered=30,
                         samples=[_sample(10, 1000), _sample(20, 1030), _sample(30, 1080)])
    growing.judge()
    assert not growing.ok and 'process RSS grew 8.0%' in growing.verdict()
    flat = SoakReport('pipeline', 30, 10, 10, 0.05, answered=28, failed={'ValueError': 1},
                      samples=[_sample(10, 1000), _sample(20, 1030), _sample(30, 1040)])
    flat.judge()
    assert flat.rss_growth == pytest.approx(0.04)
    assert flat.problems == ['1 frame(s) neither answered nor counted']
    short = SoakReport('pipeline', 10, 10, 10, 0.05, answered=10, samples=[_sample(10, 1000)])
    short.judge()
    assert 'lower --report-every' in short.verdict()
