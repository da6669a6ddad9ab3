"""drive-vlm bench prefill runs end to end on the tiny preset and writes complete records."""

from dataclasses import fields
import json
import subprocess
import sys

from drive_vlm_pruned.bench.prefill import build_preset, PrefillCell, PRESETS
from drive_vlm_pruned.pipeline.flops import LLMShape
import numpy as np
import pytest
import torch

CLI = [sys.executable, '-m', 'drive_vlm_pruned.cli.main']


def test_bench_prefill_tiny_preset_writes_json_markdown_and_plot(tmp_path):
    out = subprocess.run(
        [*CLI, 'bench', 'prefill', '--preset', 'tiny', '--device', 'cpu', '--repeats', '2',
         '--warmup', '0', '--new-tokens', '2', '--keep-ratios', '1.0', '0.25',
         '--pruners', 'tfps', 'fastv', '--prune-layers', '0', '2',
         '--json-out', str(tmp_path / 'b.json'), '--markdown-out', str(tmp_path / 'b.md'),
         '--plot', str(tmp_path / 'b.png')],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    records = json.loads((tmp_path / 'b.json').read_text())
    names = {f.name for f in fields(PrefillCell)}
    for rec in records:
        assert set(rec) == names
    cells = {(r['prune_layer'], r['pruner'], r['keep_ratio']) for r in records}
    # keep 1.0 baselines at both layers; tfps at both; fastv only inside the LLM.
    assert cells == {(0, 'none', 1.0), (0, 'tfps', 0.25), (2, 'none', 1.0), (2, 'tfps', 0.25),
                     (2, 'fastv', 0.25)}
    for rec in records:
        assert rec['prefill_ms'] > 0 and rec['ttft_ms'] >= rec['prefill_ms']
        assert rec['decode_ms_per_token'] > 0
        assert abs(rec['efficiency'] - rec['measured_speedup'] / rec['ideal_speedup']) < 1e-9
        if rec['pruner'] == 'none':
            assert rec['ideal_speedup'] == 1.0
        else:
            assert rec['visual_tokens_kept'] == round(0.25 * rec['visual_tokens'])
            assert rec['prefill_flops'] < rec['prefill_flops_unpruned']
    assert (tmp_path / 'b.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| K | pruner | keep |' in (tmp_path / 'b.md').read_text()


@pytest.mark.parametrize('name, family, shape, tokens_per_view', [
    ('llava-ov-7b', 'llava-onevision', (28, 3584, 28, 4, 128, 18944), 729),
    ('drivemm-8b', 'llava-onevision', (32, 4096, 32, 8, 128, 14336), 729),
    ('qwen2.5-vl-3b-1596', 'qwen2.5-vl', (36, 2048, 16, 2, 128, 11008), 3249),
])
def test_gpu_presets_have_the_published_shapes(name, family, shape, tokens_per_view):
    preset = PRESETS[name]
    adapter = build_preset(preset, 'meta', torch.bfloat16, None)  # meta: no memory is used
    llm = LLMShape.from_config(adapter.text_config)
    assert adapter.family == family
    assert (llm.layers, llm.hidden, llm.heads, llm.kv_heads, llm.head_dim,
            llm.intermediate) == shape
    if family == 'qwen2.5-vl':
        image = np.zeros((*preset.image_hw, 3), np.uint8)
        grid = adapter.image_processor(images=[image], return_tensors='pt')['image_grid_thw']
        assert int(grid.prod()) // 4 == tokens_per_view  # 2 x 2 merge
    else:
        side = adapter.model.config.vision_config.image_size
        assert (side // adapter.model.config.vision_config.patch_size) ** 2 == tokens_per_view
