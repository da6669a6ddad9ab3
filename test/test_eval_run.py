"""`drive-vlm eval` and evaluate() on a tiny random model: outputs, blind baseline, resume."""

import contextlib
from dataclasses import replace
import io
import json
from pathlib import Path
import shutil
import subprocess
import sys

from drive_vlm_pruned.cli.main import main
from drive_vlm_pruned.data.drivelm import load_camera_set, load_drivelm, QA
from drive_vlm_pruned.eval.report import load_compare_column, table
from drive_vlm_pruned.eval.runner import evaluate, predict, PredictOptions
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / 'fixtures' / 'drivelm'
SAMPLE = FIXTURE / 'drivelm' / 'v1_1_val_nus_sample.json'
Q_ONLY = FIXTURE / 'drivelm' / 'v1_1_val_nus_q_only.json'
FAST = ['--max-new-tokens', '3', '--keep-ratio', '0.1', '--tokenizer', 'simple', '--no-progress']
SETTINGS = RuntimeSettings(keep_ratio=0.1, max_new_tokens=3)


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(['eval', *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def full_run(tiny_llava, tmp_path_factory):
    """One complete CLI eval of the fixture (21 QA), shared by the tests that read its files."""
    out = tmp_path_factory.mktemp('eval') / 'preds.json'
    code, stdout, stderr = run_cli('--model', tiny_llava, '--data', SAMPLE, '--out', out,
                                   '--batch-size', 8, *FAST)
    assert code == 0, stderr
    return out, stdout


def test_eval_writes_complete_drivelm_predictions_and_metrics(full_run):
    out, stdout = full_run
    ids = [qa.id for f in load_drivelm(SAMPLE) for qa in f.qa]
    preds = json.loads(out.read_text())
    assert [p['id'] for p in preds] == ids and len(ids) == 21
    assert all(set(p) == {'id', 'question', 'answer'} and isinstance(p['answer'], str)
               for p in preds)
    metrics = json.loads(out.with_suffix('.metrics.json').read_text())
    assert metrics['run']['passes']['model']['qa'] == 21
    assert metrics['run']['passes']['model']['new_qa'] == 21
    assert metrics['run']['settings']['keep_ratio'] == 0.1
    model = metrics['columns']['model']['drivelm']
    assert model['gpt_score'] is None and 'never computed' in model['gpt_note']
    assert model['final_score_label'] == 'final score, GPT term absent, weights renormalised'
    for key in ('accuracy', 'language', 'language_score', 'match_f1', 'final_score_no_gpt'):
        assert model[key] is not None, key
    assert set(model['language']) == {'Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L',
                                      'CIDEr'}
    assert model['counts']['qa'] == 21
    assert metrics['columns']['majority']['answered'] == 21
    assert 'the evaluated file itself' in ' '.join(metrics['notes'])
    assert '| metric' in stdout and 'majority' in stdout and 'QA/s' in stdout
    assert 'final score, GPT term absent, weights renormalised' in stdout


def test_another_runs_metrics_file_becomes_a_table_column(full_run, tmp_path):
    out, _ = full_run
    label, column = load_compare_column(out.with_suffix('.metrics.json'))
    assert label == 'model' and column['answered'] == 21
    text = table({'model': column, 'blind': column})
    assert [c.strip() for c in text.splitlines()[0].split('|')[1:-1]] == ['metric', 'model',
                                                                          'blind']
    bad = tmp_path / 'x.json'
    bad.write_text('{}')
    with pytest.raises(ValueError, match='not a metrics file of drive-vlm eval'):
        load_compare_column(bad)


def test_resume_continues_a_partial_run_and_keeps_its_answers(full_run, tiny_llava, tmp_path):
    out, _ = full_run
    items = out.with_suffix('.items.jsonl').read_text().splitlines()
    assert len(items) == 1 + 21 and 'header' in json.loads(items[0])
    kept = [json.loads(line) for line in items[1:20]]
    kept[0]['answer'] = 'KEPT FROM THE FIRST RUN'
    partial = tmp_path / 'preds.json'
    torn = '{"id": "half a line'  # the process died mid-write
    partial.with_suffix('.items.jsonl').write_text(
        '\n'.join([items[0], *map(json.dumps, kept), torn]))
    code, _, stderr = run_cli('--model', tiny_llava, '--data', SAMPLE, '--out', partial,
                              '--batch-size', 8, '--resume', *FAST)
    assert code == 0, stderr
    preds = json.loads(partial.read_text())
    assert [p['id'] for p in preds] == [p['id'] for p in json.loads(out.read_text())]
    assert preds[0]['answer'] == 'KEPT FROM THE FIRST RUN'
    metrics = json.loads(partial.with_suffix('.metrics.json').read_text())
    assert metrics['run']['passes']['model']['new_qa'] == 2
    lines = partial.with_suffix('.items.jsonl').read_text().splitlines()
    assert len(lines) == 22 and all(json.loads(line) for line in lines)


def test_existing_run_needs_resume_and_the_same_settings(full_run, tiny_llava):
    out, _ = full_run
    code, _, stderr = run_cli('--model', tiny_llava, '--data', SAMPLE, '--out', out, *FAST)
    assert code == 2 and '--resume' in stderr and 'items.jsonl' in stderr
    code, _, stderr = run_cli('--model', tiny_llava, '--data', SAMPLE, '--out', out, '--resume',
                              *FAST, '--keep-ratio', '0.5')
    assert code == 2 and 'settings=' in stderr and "'keep_ratio': 0.5" in stderr


def test_q_only_file_with_image_root_writes_predictions_and_scores_nothing(tiny_llava,
                                                                           tmp_path):
    out = tmp_path / 'q.json'
    code, stdout, stderr = run_cli('--model', tiny_llava, '--data', Q_ONLY, '--image-root',
                                   FIXTURE / 'nuscenes', '--out', out, '--limit', 3, *FAST)
    assert code == 0, stderr
    preds = json.loads(out.read_text())
    assert [p['id'] for p in preds] == [qa.id for qa in load_drivelm(Q_ONLY, FIXTURE / 'nuscenes')
                                        [0].qa[:3]]
    metrics = json.loads(out.with_suffix('.metrics.json').read_text())
    assert metrics['columns'] == {} and 'q-only' in ' '.join(metrics['notes'])


def test_missing_image_fails_before_loading_the_model(tmp_path):
    root = tmp_path / 'fx'
    shutil.copytree(FIXTURE, root)
    image = load_drivelm(root / 'drivelm' / SAMPLE.name)[1].image_paths['CAM_FRONT_RIGHT']
    image.unlink()
    code, _, stderr = run_cli('--model', tmp_path / 'no-model', '--data',
                              root / 'drivelm' / SAMPLE.name, '--out', tmp_path / 'p.json')
    assert code == 2 and str(image) in stderr and 'CAM_FRONT_RIGHT' in stderr


@pytest.fixture(scope='module')
def pipeline(tiny_llava):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    return Pipeline(load_adapter(LoadSpec(str(tiny_llava)), log=lambda _: None))


def test_blind_baseline_blanks_every_image_and_sees_nothing_of_them(pipeline):
    frames = load_drivelm(SAMPLE)
    a = frames[0]
    # the same QA on the pictures of another frame
    b = replace(a, frame='other', image_paths=frames[1].image_paths,
                qa=tuple(replace(q, id=q.id.replace(a.frame, 'other')) for q in a.qa))
    sets = {k: load_camera_set(f, blank) for k, f, blank in
            [('a', a, False), ('b', b, False), ('a0', a, True), ('b0', b, True)]}
    assert all(not img.any() for k in ('a0', 'b0') for img in sets[k].images)
    adapter = pipeline.adapter

    def tokens(key):
        with torch.inference_mode():
            views = adapter.encode(adapter.preprocess(list(sets[key].images)), 1).tokens.features
        return torch.cat([v.flatten() for v in views])

    real_a, real_b, blind_a, blind_b = (tokens(k) for k in ('a', 'b', 'a0', 'b0'))
    assert not torch.allclose(real_a, blind_a)  # blanking changes the visual tokens
    assert not torch.allclose(real_a, real_b)  # the two pictures differ ...
    assert torch.equal(blind_a, blind_b)  # ... and nothing of them survives blanking
    pairs = [(f, qa) for f in (a, b) for qa in f.qa[:2]]
    options = PredictOptions(batch_size=4, blank=True, progress=False)
    blind = predict(pipeline, pairs, SETTINGS, options)
    answers = [i.answer for i in blind.items]
    assert answers[:2] == answers[2:]


def test_a_failing_qa_is_logged_and_the_rest_still_answered(pipeline, tmp_path):
    frame = load_drivelm(SAMPLE)[0]
    long = replace(frame.qa[1], question='word ' * 9000)  # past the tiny model's 8192 context
    pairs = [(frame, frame.qa[0]), (frame, long)]
    items = tmp_path / 'items.jsonl'
    run = predict(pipeline, pairs, SETTINGS, PredictOptions(batch_size=2, progress=False,
                                                            items_path=items))
    ok, failed = run.items
    assert not ok.error and ok.tokens_kept > 0  # it went through the pipeline
    assert failed.answer == '' and 'context' in failed.error
    assert run.summary()['errors'] == 1
    logged = [json.loads(line) for line in items.read_text().splitlines()[1:]]
    assert [i['error'] != '' for i in logged] == [False, True]


def test_evaluate_api_scores_model_blind_and_majority_columns(pipeline):
    frames = load_drivelm(SAMPLE)
    report = evaluate(pipeline, frames, SETTINGS, batch_size=2, limit=2, with_blind=True,
                      majority=None, tokenizer='simple', progress=False)
    assert [p.id for p in report.predictions] == [qa.id for qa in frames[0].qa[:2]]
    assert [p.id for p in report.blind_predictions] == [p.id for p in report.predictions]
    assert set(report.columns) == {'model', 'blind'}
    assert report.columns['blind'].answered == 2
    assert set(report.run['passes']) == {'model', 'blind'}
    text = table(report.as_json()['columns'])
    assert [c.strip() for c in text.splitlines()[0].split('|')[1:-1]] == ['metric', 'model',
                                                                          'blind']
    assert 'absent' in text


def test_eval_modules_load_no_ros():
    code = ('import sys, drive_vlm_pruned.eval.runner, drive_vlm_pruned.cli.eval; '
            'print(sorted({m.split(".")[0] for m in sys.modules}))')
    loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True).stdout
    for forbidden in ('rclpy', 'rosbags', 'sensor_msgs'):
        assert f"'{forbidden}'" not in loaded


def test_trajectory_answers_of_a_family_are_scored_by_l2():
    # a synthetic-format frame (with gt) answered with the constant-velocity trajectory text
    from drive_vlm_pruned.data.drivelm import FrameGT, KeyFrame
    from drive_vlm_pruned.eval.baselines import constant_velocity_answer
    from drive_vlm_pruned.eval.scoring import score_column

    gt = FrameGT(0, ((-3.0, 0.0), (-2.0, 0.0), (-1.0, 0.0), (0.0, 0.0)),
                 tuple((1.0 * (k + 1), 0.0) for k in range(6)), tuple(() for _ in range(6)),
                 {}, None)
    qa = QA('s_f_0', 'Plan.', 'x', 'planning', (2,), 'planning_trajectory')
    frame = KeyFrame('s', 'f', {}, {}, (qa,), gt, None)
    column = score_column('cv', [(frame, qa)], {qa.id: constant_velocity_answer(frame)},
                          'simple', drivelm=False)
    assert column.planning.l2['avg'] == pytest.approx(0.0)
    assert np.isclose(column.families['planning_trajectory'].value, 0.0)


def test_family_filter_keeps_that_familys_qa_and_names_the_families_when_unknown():
    from drive_vlm_pruned.data.drivelm import KeyFrame
    from drive_vlm_pruned.eval.runner import only_families

    plan = QA('s_f_0', 'Plan.', 'x', 'planning', (2,), 'planning_trajectory')
    seen = QA('s_f_1', 'Is there a car?', 'Yes.', 'perception', (0,), 'exists')
    frame = KeyFrame('s', 'f', {}, {}, (plan, seen), None, None)
    pairs = [(frame, plan), (frame, seen)]
    assert only_families(pairs, ()) == pairs
    assert only_families(pairs, ['planning_trajectory']) == [(frame, plan)]
    assert only_families(pairs, ['exists', 'planning_trajectory']) == pairs
    with pytest.raises(ValueError, match='--family count: .* it has exists, planning_trajectory'):
        only_families(pairs, ['count'])
