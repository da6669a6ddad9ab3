"""`drive-vlm bench accuracy`: a pruner x keep-ratio sweep through the eval loop, resumable."""

import json
from pathlib import Path

from drive_vlm_pruned.bench.accuracy_report import Stat
import pytest


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Four rendered test scenes of one key frame each (DriveLM format, with GT and masks)."""
    from drive_vlm_pruned.data.synth import DataOptions, write_dataset

    out = tmp_path_factory.mktemp('data')
    write_dataset(out, DataOptions(scenes=4, frames_per_scene=1, split='test'))
    return out


def sweep_args(model, data, out):
    return ['bench', 'accuracy', '--model', str(model), '--data', str(data), '--pruners', 'tfps',
            'random', '--keep-ratios', '1.0', '0.5', '0.25', '--prune-layers', '0',
            '--seeds', '2', '--qa-per-cell', '5', '--max-new-tokens', '3', '--tokenizer',
            'simple', '--no-diversity', '--no-progress', '--out', str(out)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_tiny_sweep_writes_every_output_and_resumes_without_recomputing(
        small_model, data, tmp_path, capsys):
    from drive_vlm_pruned.cli.main import main

    out = tmp_path / 'acc'
    assert main(sweep_args(small_model, data, out)) == 0
    log = out / 'cells.jsonl'
    first = lines(log)
    # header + (unpruned, blind, 2 pruners x 2 ratios) x 2 seeds + majority x 2 seeds
    assert len(first) == 1 + 6 * 2 + 2
    result = json.loads((out / 'accuracy.json').read_text())
    rows = {(r['cell']['pruner'], r['cell']['keep_ratio']): r for r in result['rows']}
    assert set(rows) == {('none', 1.0), ('blind', 1.0), ('majority', 1.0), ('tfps', 0.5),
                         ('tfps', 0.25), ('random', 0.5), ('random', 0.25)}
    cell = rows[('tfps', 0.25)]
    assert cell['seeds'] == 2 and cell['qa'] == 5
    assert cell['tokens_kept']['mean'] == 24 and cell['tokens_total']['mean'] == 96
    assert 0 < cell['flops_share']['mean'] < rows[('tfps', 0.5)]['flops_share']['mean'] < 1
    assert cell['speedup']['mean'] > 0 and cell['speedup']['n'] == 2
    assert 0 <= cell['foreground_recall']['mean'] <= 1
    assert rows[('none', 1.0)]['foreground_recall']['mean'] == 1.0
    assert set(cell['families']) and cell['accuracy']['n'] == 2
    assert 'disjoint subsets' in result['seeds']
    # paired over both seeds, on the same items as the unpruned reference and as random
    closed = rows[('none', 1.0)]['n_closed']
    assert closed > 0 and all(r['n_closed'] == closed for r in rows.values())
    if rows[('none', 1.0)]['accuracy']['mean'] == 0:  # 3 tokens of a tiny model: no retention
        assert cell['retention'] is None and cell['retention_ci'] is None
    else:
        low, high = cell['retention_ci']
        assert low <= cell['retention'] <= high
    assert cell['vs_random']['items'] == closed and isinstance(cell['vs_random']['stable'], bool)
    assert rows[('random', 0.25)]['vs_random'] is None
    assert result['detectable_difference'] is not None
    assert result['processes'] == 1 and 0 < result['wall_s'] and result['cell_seconds'] > 0
    tfps_random = [p for p in result['pairs'] if p['keep_ratio'] == 0.25]
    assert len(tfps_random) == 1 and tfps_random[0]['items'] == closed
    low, high = tfps_random[0]['ci']
    assert tfps_random[0]['stable'] == (low > 0 or high < 0)
    md = (out / 'accuracy.md').read_text()
    assert '| K | pruner | keep |' in md and 'vision encoder NOT included' in md
    assert '### Verdict' in md and '### Per family' in md
    assert '### Paired, all seeds together' in md and 'could detect' in md
    assert '### Where pruning should hurt' in md and '### Pairs of pruners' in md
    assert 'Wall time of this run' in md
    assert {'exists', 'count'} <= set(cell['by_group'])
    assert cell['trajectories'] is None  # 5 QA a cell: perception only, no trajectory asked
    for png in ('accuracy_vs_keep.png', 'accuracy_vs_speedup.png'):
        assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        assert (out / png).stat().st_size > 10_000
    assert 'min wall' in capsys.readouterr().out

    # interrupted: the last two cells never finished (one torn mid-line)
    log.write_text('\n'.join(first[:-2]) + '\n' + first[-2][:40])
    assert main(sweep_args(small_model, data, out)) == 0
    second = lines(log)
    assert second[:-2] == first[:-2]  # finished cells kept byte for byte, not recomputed
    assert len(second) == len(first)
    assert {json.loads(x)['cell']['key'] for x in second[-2:]} == \
        {json.loads(x)['cell']['key'] for x in first[-2:]}

    assert main(sweep_args(small_model, data, out)) == 0  # all done: nothing runs again
    assert lines(log) == second

    (out / 'accuracy.md').unlink()
    assert main(sweep_args(small_model, data, out) + ['--report-only']) == 0
    assert 'rebuilt with --report-only' in (out / 'accuracy.md').read_text()
    assert lines(log) == second


def test_a_log_of_other_settings_is_refused(small_model, data, tmp_path, capsys):
    from drive_vlm_pruned.bench.accuracy_sweep import cell_log

    cell_log(tmp_path / 'cells.jsonl', {'qa_per_cell': 5}, overwrite=False)
    with pytest.raises(ValueError, match='qa_per_cell=5, this run has qa_per_cell=6'):
        cell_log(tmp_path / 'cells.jsonl', {'qa_per_cell': 6}, overwrite=False)


def test_seeds_are_disjoint_scene_subsets_of_whole_frames(data):
    from drive_vlm_pruned.bench.accuracy_sweep import seed_sets

    seeds, how = seed_sets([str(data)], 'test', None, 2, 15)
    assert len(seeds) == 2 and 'disjoint' in how
    scenes = [{f.scene for f in s} for s in seeds]
    assert not scenes[0] & scenes[1]
    for s in seeds:
        assert sum(len(f.qa) for f in s) == 15
        assert all(f.qa[0].family == 'important_objects' for f in s)  # gating's first QA kept
    with pytest.raises(ValueError, match='fewer than --seeds 9'):
        seed_sets([str(data)], 'test', None, 9, 15)


def test_batch_order_groups_families_and_keeps_file_order_within():
    from drive_vlm_pruned.data.drivelm import KeyFrame, QA
    from drive_vlm_pruned.search.qa_sets import batch_order

    fams = ['important_objects', 'exists', 'behavior', 'exists', 'important_objects']
    frame = KeyFrame('s', 'f', {}, {}, tuple(QA(f'q{i}', '', '', 'perception', (0,), fam)
                                             for i, fam in enumerate(fams)))
    order = [qa.id for _, qa in batch_order([(frame, qa) for qa in frame.qa])]
    assert order == ['q0', 'q4', 'q1', 'q3', 'q2']


def row(pruner, keep, retention):
    return {'cell': {'pruner': pruner, 'allocation': 'uniform', 'keep_ratio': keep,
                     'prune_layer': 0}, 'accuracy_retention': retention}


def test_a_ranking_is_stable_only_when_the_top_two_intervals_are_apart():
    from drive_vlm_pruned.bench.accuracy_report import breaking_points, rankings

    apart = rankings([row('tfps', 0.1, Stat(0.96, 0.01, 3)),
                      row('random', 0.1, Stat(0.80, 0.05, 3))])
    assert apart[0]['stable'] is True and apart[0]['ranked'][0]['cell']['pruner'] == 'tfps'
    close = rankings([row('tfps', 0.1, Stat(0.90, 0.04, 3)),
                      row('random', 0.1, Stat(0.88, 0.03, 3))])
    assert close[0]['stable'] is False
    one = rankings([row('tfps', 0.1, Stat(0.9, 0.0, 1)), row('random', 0.1, Stat(0.8, 0.0, 1))])
    assert one[0]['stable'] is None
    broke = breaking_points([row('tfps', 0.5, Stat(0.99, 0.0, 1)),
                             row('tfps', 0.25, Stat(0.93, 0.0, 1)),
                             row('tfps', 0.1, Stat(0.5, 0.0, 1))])
    assert broke == ['K=0 tfps: breaks at keep 0.25 (accuracy retention 93.0%)']


def test_pareto_front_keeps_the_cells_nothing_beats_on_both_axes():
    from drive_vlm_pruned.bench.accuracy_plots import pareto_front

    pts = [(1.0, 0.9), (2.0, 0.85), (2.0, 0.80), (4.0, 0.6), (3.0, 0.5)]
    assert pareto_front(pts) == [0, 1, 3]


def test_plan_has_the_variants_and_the_searched_budget_beside_uniform():
    from drive_vlm_pruned.bench.accuracy_cells import plan_cells

    cells, notes = plan_cells(['tfps', 'dart', 'fastv'], [1.0, 0.5, 0.1], [0, 2], 4,
                              searched=True, diversity=True, search_keep=0.4)
    keys = {c.key for c in cells}
    assert len(cells) == len(keys) == 20
    assert {'tfps/uniform/0.4/K0', 'tfps/searched/0.4/K0', 'tfps/diversity/0.1/K0',
            'tfps/diversity/0.1/K2', 'fastv/uniform/0.1/K2', 'dart/uniform/0.5/K2'} <= keys
    assert not any(k.startswith(('fastv', 'dart')) and k.endswith('K0') for k in keys)
    assert any('fastv skipped at prune layer 0' in n for n in notes)
    only_k0, _ = plan_cells(['tfps'], [0.5], [0, 2], 4, True, False, None, variant_layers=[0])
    assert {c.key for c in only_k0} == {'tfps/uniform/0.5/K0', 'tfps/searched/0.5/K0',
                                        'tfps/uniform/0.5/K2'}


def test_paired_rows_pair_items_by_id_and_resample_frames():
    from drive_vlm_pruned.bench.accuracy_paired import detectable_difference, paired_rows

    def record(pruner, keep, hits, seed=0, l2=None):
        cell = {'key': f'{pruner}-{keep}', 'pruner': pruner, 'keep_ratio': keep,
                'prune_layer': 0, 'allocation': 'uniform'}
        # each frame: an exists (small objects), two counts and a behavior question
        families = ('exists', 'count', 'count', 'behavior_mc')
        closed = [[f'q{i}', f'f{i // 4}', h, families[i % 4], int(i % 4 == 0)]
                  for i, h in enumerate(hits)]
        trajectories = [[f't{j}', f'f{j}', v] for j, v in enumerate(l2 or [])]
        return {'cell': cell, 'seed': seed, 'closed': closed, 'l2_3s': trajectories}

    n = 80
    ref = record('none', 1.0, [1] * n, l2=[1.0] * 20)
    good = record('tfps', 0.1, [1] * n, l2=[1.0] * 10 + [None] * 10)
    # loses the small-object exists question of every frame, and doubles the L2
    bad = record('random', 0.1, [1 if i % 4 else 0 for i in range(n)], l2=[2.0] * 20)
    paired = paired_rows([ref, good, bad], 'none-1.0')
    groups = paired['random-0.1']['by_group']
    assert groups['small objects'] == {'n': 20, 'retention': 0.0, 'ci': (0.0, 0.0)}
    assert groups['count']['retention'] == 1.0 and groups['count']['n'] == 40
    assert paired['random-0.1']['trajectories']['l2_ratio'] == pytest.approx(2.0)
    t = paired['tfps-0.1']['trajectories']
    assert (t['items'], t['parsed_reference'], t['parsed']) == (20, 20, 10)
    assert t['l2_ratio'] == pytest.approx(1.0)
    assert paired['random-0.1']['retention'] == pytest.approx(0.75)
    low, high = paired['random-0.1']['retention_ci']
    assert low == high == pytest.approx(0.75)  # every frame loses exactly one of four
    vs = paired['tfps-0.1']['vs_random']
    assert vs['difference'] == pytest.approx(0.25) and vs['stable'] and vs['frames'] == n // 4
    assert paired['none-1.0']['retention'] is None and paired['tfps-0.1']['n_closed'] == n
    assert detectable_difference(paired) == pytest.approx(0.0)


def test_default_plan_runs_each_method_at_its_published_layer_and_random_at_each():
    from drive_vlm_pruned.bench.accuracy_cells import plan_cells
    from drive_vlm_pruned.bench.accuracy_defaults import DEFAULT_KEEP_RATIOS, DEFAULT_PRUNERS

    cells, notes = plan_cells(DEFAULT_PRUNERS, DEFAULT_KEEP_RATIOS, (), 4, searched=False,
                              diversity=True)
    at = {}
    for c in cells:
        at.setdefault((c.pruner, c.allocation), set()).add(c.prune_layer)
    assert at == {('tfps', 'uniform'): {0}, ('divprune', 'uniform'): {0},
                  ('reconpruner', 'uniform'): {0}, ('fastv', 'uniform'): {2},
                  ('dart', 'uniform'): {2}, ('mvpruner', 'uniform'): {2},
                  ('random', 'uniform'): {0, 2}, ('tfps', 'diversity'): {0}}
    assert {c.keep_ratio for c in cells} == {0.5, 0.25, 0.1, 0.05}
    assert len(cells) == 9 * 4 and not notes


def test_pairwise_differences_are_paired_and_stable_only_when_the_interval_excludes_zero():
    from drive_vlm_pruned.bench.accuracy_paired import pairwise, pairwise_lines

    def record(pruner, layer, hits):
        cell = {'key': f'{pruner}/uniform/0.1/K{layer}', 'pruner': pruner, 'keep_ratio': 0.1,
                'prune_layer': layer, 'allocation': 'uniform'}
        return {'cell': cell, 'seed': 0,
                'closed': [[f'q{i}', f'f{i // 2}', h] for i, h in enumerate(hits)]}

    n = 60
    ref = {'cell': {'key': 'ref', 'allocation': 'none'}, 'seed': 0, 'closed': []}
    records = [ref, record('tfps', 0, [1] * n), record('fastv', 2, [1, 0] * (n // 2)),
               record('random', 0, [1] * (n - 1) + [0])]
    pairs = {(p['first'], p['second']): p for p in pairwise(records, 'ref')}
    assert len(pairs) == 3  # every pair at keep 0.1, across prune layers too
    tf = pairs[('fastv/uniform/0.1/K2', 'tfps/uniform/0.1/K0')]
    assert tf['difference'] == pytest.approx(-0.5) and tf['stable'] and tf['frames'] == n // 2
    near = pairs[('random/uniform/0.1/K0', 'tfps/uniform/0.1/K0')]
    assert near['difference'] == pytest.approx(-1 / n) and not near['stable']
    text = pairwise_lines(list(pairs.values()), {})[0]
    assert text.startswith('- keep 0.1: 2 of 3 pairs stable')
    assert 'tfps/uniform/0.1/K0 > fastv/uniform/0.1/K2 by 50.0' in text


def test_torchrun_two_processes_give_the_single_process_sweep(small_model, data, tmp_path):
    import os
    import subprocess
    import sys

    from drive_vlm_pruned.cli.main import main

    single, sharded = tmp_path / 'single', tmp_path / 'sharded'
    args = sweep_args(small_model, data, single)
    args[args.index('--seeds') + 1] = '1'
    args[args.index('--qa-per-cell') + 1] = '15'  # 2 key frames: one for each process
    assert main(args) == 0
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key, None)
    args[args.index('--out') + 1] = str(sharded)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node', '2', '-m', 'drive_vlm_pruned.cli.main', *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def records(out):
        return {(r['cell']['key'], r['seed']): r
                for r in map(json.loads, lines(out / 'cells.jsonl')[1:])}

    want, got = records(single), records(sharded)
    assert set(got) == set(want) and len(want) == 6 + 1
    for key, r in want.items():  # the same answers item for item, so the same scores
        assert got[key].get('closed') == r.get('closed'), key
        assert got[key]['accuracy'] == r['accuracy'], key
    result = json.loads((sharded / 'accuracy.json').read_text())
    assert result['processes'] == 2 and result['paired_frames'] == 2


def test_the_log_records_the_waypoint_grammar_and_a_free_run_does_not_resume_it(
        small_model, data, tmp_path, capsys):
    """Cells decoded under the grammar and freely are never mixed in one log."""
    from drive_vlm_pruned.cli.main import main

    out = tmp_path / 'acc'
    args = ['bench', 'accuracy', '--model', str(small_model), '--data', str(data), '--pruners',
            'random', '--keep-ratios', '0.5', '--prune-layers', '0', '--seeds', '1',
            '--qa-per-cell', '2', '--max-new-tokens', '3', '--tokenizer', 'simple',
            '--no-diversity', '--no-blind', '--no-progress', '--out', str(out)]
    assert main(args) == 0
    assert json.loads(lines(out / 'cells.jsonl')[0])['header']['waypoint_grammar'] is True
    capsys.readouterr()
    assert main(args + ['--no-waypoint-grammar']) != 0
    assert 'waypoint_grammar' in capsys.readouterr().err
