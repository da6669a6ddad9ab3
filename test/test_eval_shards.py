"""Data-parallel eval (eval/shards.py): whole key frames per process, merged back in order."""

import contextlib
import io
import json
import os
from pathlib import Path
import subprocess
import sys

from drive_vlm_pruned.cli.main import main
from drive_vlm_pruned.data.drivelm import all_qa, load_drivelm
from drive_vlm_pruned.eval.shards import Shard
import pytest

SAMPLE = Path(__file__).parent / 'fixtures' / 'drivelm' / 'drivelm' / 'v1_1_val_nus_sample.json'
ARGS = ['--max-new-tokens', '4', '--keep-ratio', '0.25', '--tokenizer', 'simple',
        '--no-progress', '--batch-size', '4']


def test_shards_split_whole_key_frames_and_cover_every_qa_once():
    pairs = all_qa(load_drivelm(SAMPLE))
    parts = [Shard(r, 2).take(pairs) for r in range(2)]
    ids = [[qa.id for _, qa in p] for p in parts]
    assert sorted(ids[0] + ids[1]) == sorted(qa.id for _, qa in pairs)
    assert not set(ids[0]) & set(ids[1])
    frames = [{(f.scene, f.frame) for f, _ in p} for p in parts]
    assert frames[0] and frames[1] and not frames[0] & frames[1]  # frames are never split


def test_shard_reads_the_launcher_environment_and_rejects_a_bad_one():
    assert Shard.from_env({}) == Shard(0, 1, 0)
    assert Shard.from_env({'RANK': '3', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1'}) == Shard(3, 8, 1)
    with pytest.raises(ValueError, match='outside WORLD_SIZE'):
        Shard.from_env({'RANK': '2', 'WORLD_SIZE': '2'})
    with pytest.raises(ValueError, match='must be integers'):
        Shard.from_env({'RANK': 'x'})


def test_torchrun_two_processes_write_the_single_process_predictions(tiny_llava, tmp_path):
    single = tmp_path / 'single.json'
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(['eval', '--model', str(tiny_llava), '--data', str(SAMPLE),
                     '--out', str(single), *ARGS]) == 0
    sharded = tmp_path / 'sharded.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         '-m', 'drive_vlm_pruned.cli.main', 'eval', '--model', str(tiny_llava),
         '--data', str(SAMPLE), '--out', str(sharded), *ARGS],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert len(want) == 21 and got == want  # item for item, in the file's order
    logs = sorted(p.name for p in tmp_path.glob('sharded.items.rank*.jsonl'))
    assert logs == ['sharded.items.rank0of2.jsonl', 'sharded.items.rank1of2.jsonl']
    metrics = json.loads(sharded.with_suffix('.metrics.json').read_text())
    assert metrics['run']['passes']['model']['qa'] == 21
    assert proc.stdout.count('predictions:') == 1  # one process reports
