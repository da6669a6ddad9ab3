"""The drive-vlm front door: help texts, the pruner demo, and the pruner benchmark."""

import importlib.util
import json
import re
import subprocess
import sys
import types

from drive_vlm_pruned.bench.pruners import PrunerCell, single_stage_pruners
import pytest

CLI = [sys.executable, '-m', 'drive_vlm_pruned.cli.main']


def drive_vlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args', [[], ['demo'], ['demo-pruners'], ['bench'], ['bench', 'pruners'],
                                  ['make-tiny-model'], ['export-vision'], ['build-engine'],
                                  ['bench', 'prefill']])
def test_every_subcommand_explains_itself(args):
    out = drive_vlm(*args, '--help')
    assert out.returncode == 0, out.stderr
    assert 'usage: drive-vlm' in out.stdout
    assert len(out.stdout.splitlines()) > 5


def test_demo_shows_every_pruner_and_the_front_camera_map():
    out = drive_vlm('demo-pruners', '--view-weights', 'config/view_weights.yaml')
    assert out.returncode == 0, out.stderr
    for name in ('tfps', 'divprune', 'mvpruner-s1', 'fastv', 'dart', 'mvpruner-s2', 'stride',
                 'random'):
        assert f'\n{name} ' in out.stdout
    assert 'CAM_FRONT, kept tokens' in out.stdout
    assert 'front views keep more' in out.stdout


def test_bench_pruners_writes_one_complete_record_per_cell(tmp_path):
    path = tmp_path / 'bench.json'
    out = drive_vlm('bench', 'pruners', '--dims', '32', '--tokens', '49', '--keep-ratios', '0.5',
                    '0.25', '--repeats', '2', '--warmup', '0', '--device', 'cpu',
                    '--json-out', str(path))
    assert out.returncode == 0, out.stderr
    records = json.loads(path.read_text())
    assert len(records) == len(single_stage_pruners()) * 2
    fields = set(PrunerCell.__dataclass_fields__)
    for rec in records:
        assert set(rec) == fields
        assert rec['views'] == 6 and rec['tokens'] == 49 and rec['dim'] == 32
        assert rec['median_ms'] > 0 and rec['spread_ms'] >= 0
        assert rec['kept'] == round(rec['keep_ratio'] * 6 * 49)
    assert '| pruner | stage | device |' in out.stdout


def test_bad_arguments_get_an_error_that_names_the_fix():
    out = drive_vlm('bench', 'pruners', '--pruners', 'fastest')
    assert out.returncode == 2
    assert 'known pruners' in out.stderr and 'tfps' in out.stderr
    out = drive_vlm('demo-pruners', '--keep-ratio', '1.5')
    assert out.returncode == 2
    assert 'keep_ratio' in out.stderr


def test_main_demo_answers_with_the_embedded_model_and_checks_every_answer():
    out = subprocess.run([*CLI, 'demo', '--frames', '8'], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert '(the embedded trained model)' in out.stdout
    answered = len(re.findall(r'kept FRONT \d+ .*\(of 196 each\)', out.stdout))
    assert answered >= 1 and out.stdout.count('  answer: ') >= answered
    # every answer to one of the demo's questions is checked against the bag's own scene
    assert out.stdout.count('  ground truth: ') >= answered
    assert 'keep_ratio 1.0 -> accepted' in out.stdout
    table = [line for line in out.stdout.splitlines() if line.startswith('| 0.1 |')
             or line.startswith('| 1.0 |')]
    assert len(table) == 2, out.stdout[-3000:]
    assert 'Traceback' not in out.stderr and 'Warning' not in out.stderr


def test_export_vision_prints_the_parity_error(tiny_llava, tmp_path):
    onnx = tmp_path / 'v.onnx'
    out = drive_vlm('export-vision', '--model', str(tiny_llava), '--onnx', str(onnx))
    assert out.returncode == 0, out.stderr
    error = float(out.stdout.split('max abs error ')[1].split()[0])
    assert onnx.is_file() and error < 1e-4


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None,
                    reason='tensorrt is installed: the missing-TensorRT message cannot show')
def test_build_engine_without_tensorrt_says_how_to_install_it(tmp_path):
    onnx, engine = tmp_path / 'v.onnx', tmp_path / 'v.plan'
    onnx.write_bytes(b'never read: TensorRT is looked for first')
    out = drive_vlm('build-engine', '--onnx', str(onnx), '--engine', str(engine))
    assert out.returncode == 2 and out.stdout == ''
    assert out.stderr == ('drive-vlm build-engine: tensorrt is not installed (on Jetson it '
                          'comes with JetPack; on x86 pip install tensorrt)\n')
    assert not engine.exists()


def test_build_engine_with_tensorrt_but_no_gpu_says_it_needs_one(monkeypatch, tmp_path, capsys):
    """With TensorRT but no CUDA: a stand-in module, as TensorRT installs beside GPUs only."""
    from drive_vlm_pruned.cli.main import main as cli_main
    import torch

    monkeypatch.setitem(sys.modules, 'tensorrt', types.ModuleType('tensorrt'))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    engine = tmp_path / 'v.plan'
    assert cli_main(['build-engine', '--onnx', str(tmp_path / 'v.onnx'),
                     '--engine', str(engine)]) == 2
    out = capsys.readouterr()
    assert out.out == '' and out.err == 'drive-vlm build-engine: TensorRT needs a CUDA GPU\n'
    assert not engine.exists()


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is None,
                    reason='needs TensorRT, which installs only beside a CUDA GPU (JetPack, '
                           'pip install tensorrt)')
def test_build_engine_builds_once_then_reuses_the_engine(tiny_llava, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip('tensorrt is installed but there is no CUDA GPU to build on')
    onnx, engine = tmp_path / 'v.onnx', tmp_path / 'v.plan'
    assert drive_vlm('export-vision', '--model', str(tiny_llava),
                     '--onnx', str(onnx)).returncode == 0
    args = ('build-engine', '--onnx', str(onnx), '--engine', str(engine))
    first, again = drive_vlm(*args), drive_vlm(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f'{engine}: built (no engine at {engine})\n'
    assert engine.stat().st_size > 0 and engine.with_name('v.plan.json').is_file()
    assert again.stdout == f'{engine}: reused the cached engine (key matches)\n'


def test_bench_vision_times_torch_and_onnxruntime(tmp_path):
    path = tmp_path / 'v.json'
    out = drive_vlm('bench', 'vision', '--device', 'cpu', '--views', '1', '--layers', '1',
                    '--repeats', '1', '--warmup', '0', '--json-out', str(path))
    assert out.returncode == 0, out.stderr
    records = json.loads(path.read_text())
    assert [r['backend'] for r in records] == ['torch', 'onnxruntime']
    assert all(r['median_ms'] > 0 and r['vision_layers'] == 1 for r in records)


def _leaf_commands(parser, path=(), run=None):
    """Yield (command words, the function set_defaults(run=...) gives it) for every leaf."""
    import argparse

    run = parser.get_default('run') or run
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, run
    for group in groups:
        for name, child in group.choices.items():
            yield from _leaf_commands(child, (*path, name), run)


def test_every_command_names_the_function_that_runs_it():
    """main() only parses and calls args.run, so every command sets one (issue 24)."""
    from drive_vlm_pruned.cli.main import build_parser

    leaves = dict(_leaf_commands(build_parser()))
    assert ('bench', 'latency') in leaves and ('bag', 'synth') in leaves and ('run',) in leaves
    missing = [' '.join(path) for path, run in leaves.items() if not callable(run)]
    assert not missing, f'no set_defaults(run=...): {missing}'
    assert all(run.__module__.startswith('drive_vlm_pruned.cli.') for run in leaves.values())


def test_a_benchmark_runs_from_its_options_without_argparse(capsys):
    """The benchmarks take frozen options, not a Namespace: what the CLI builds from the flags."""
    from drive_vlm_pruned.bench.pruners import PrunersBenchOptions, run_pruners_bench

    options = PrunersBenchOptions(pruners=('tfps', 'random'), dims=(32,), keep_ratios=(0.5,),
                                  tokens=49, device='cpu', warmup=0, repeats=1)
    assert run_pruners_bench(options) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ')]
    assert [line.split('|')[1].strip() for line in table] == ['pruner', 'tfps', 'random']
