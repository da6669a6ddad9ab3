"""
Scoring a predictions file without a model (eval/score_file.py, ``drive-vlm eval --score``).

The hand-made predictions are partly right, and the expected figures follow DriveLM's
``challenge/evaluation.py`` by hand: exact-string accuracy over the tag-0 QA that graph gating
lets through, match F1 x 100 per tag-3 QA (a predicted point within L1 16 px of a GT point is a
true positive), and a frame's first answer deciding which later c-tagged questions count.
"""

import json
from pathlib import Path
import re
import subprocess
import sys

from drive_vlm_pruned.data.drivelm import all_qa, load_drivelm, Prediction
from drive_vlm_pruned.eval.score_file import score_file
import pytest

ROOT = Path(__file__).resolve().parents[1]
CTAG = re.compile(r'<c(\d+),(CAM_[A-Z_]+),(\d+\.\d),(\d+\.\d)>')


def cli(*argv) -> list[str]:
    return [sys.executable, '-m', 'drive_vlm_pruned.cli.main', *map(str, argv)]


def shift(answer: str, keep: set[str], dx: float) -> str:
    """Move every c-tag point of ``answer`` by ``dx`` px, except the tags named in ``keep``."""
    def move(m):
        if m.group(1) in keep:
            return m.group(0)
        return f'<c{m.group(1)},{m.group(2)},{float(m.group(3)) + dx:.1f},{m.group(4)}>'
    return CTAG.sub(move, answer)


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """Three key frames whose moving-direction question names a c-tag, and their predictions."""
    out = tmp_path_factory.mktemp('score')
    subprocess.run(cli('data', 'synth', out, '--split', 'test', '--scenes', '2',
                       '--frames-per-scene', '6'), check=True, capture_output=True, cwd=ROOT)
    data = json.loads((out / 'test.json').read_text())
    chosen, count = {}, 0
    for scene, entry in data.items():
        for token, frame in entry['key_frames'].items():
            moving = [q for q in frame['QA']['prediction'] if q['type'] == 'in_moving_direction']
            first = frame['QA']['perception'][0]['A']
            if moving and len(CTAG.findall(first)) >= 2 and count < 3:
                chosen.setdefault(scene, {'scene_description': entry['scene_description'],
                                          'key_frames': {}})['key_frames'][token] = frame
                count += 1
    gt = out / 'gt.json'
    gt.write_text(json.dumps(chosen))
    frames = load_drivelm(gt)
    assert len(frames) == 3
    answers, wrong, gated = {}, set(), set()
    match = []
    for n, frame in enumerate(frames):
        items = [qa for f, qa in all_qa([frame])]
        first, moving = items[0], next(qa for qa in items if qa.family == 'in_moving_direction')
        tag = CTAG.search(moving.question).group(1)
        tags = CTAG.findall(first.answer)
        if n == 0:    # all points right: the moving question counts, and is answered wrong
            answers[first.id] = first.answer
            match.append(100.0)
            wrong.add(moving.id)
        elif n == 1:  # all points 40 px off: the graph is empty, the moving question gated out
            answers[first.id] = shift(first.answer, set(), 40.0)
            match.append(0.0)
            gated.add(moving.id)
            wrong.add(moving.id)  # wrong, but it must not count
        else:         # only the named object 5 px off (< 16: matched), the rest 40 px off
            others = {t[0] for t in tags if t[0] != tag}
            answers[first.id] = shift(shift(first.answer, {tag}, 40.0), others, 5.0)
            k = len(tags)
            match.append(100 * 2 * (1 / k) * (1 / k) / (2 / k))  # P = R = 1/k
        exists = next(qa for qa in items if qa.family == 'exists')
        if n == 0:
            wrong.add(exists.id)
        for qa in items[1:]:
            if qa.id in wrong:
                answers[qa.id] = 'Yes.' if qa.answer == 'No.' else 'No.'
            else:
                answers[qa.id] = qa.answer
    predictions = [Prediction(qa.id, qa.question, answers[qa.id]) for _, qa in all_qa(frames)]
    path = out / 'preds.json'
    path.write_text(json.dumps([p.as_json() for p in predictions]))
    return frames, predictions, path, gt, wrong, gated, match


def test_scores_follow_drivelms_rules_with_gating(made):
    frames, predictions, path, _, wrong, gated, match = made
    report = score_file(frames, predictions, majority=None, tokenizer='simple', source=path)
    d = report.columns['model'].drivelm
    counted = [qa for _, qa in all_qa(frames) if 0 in qa.tags and qa.id not in gated]
    right = [qa for qa in counted if qa.id not in wrong]
    assert d.accuracy == pytest.approx(len(right) / len(counted))
    assert d.match_f1 == pytest.approx(sum(match) / len(match), rel=1e-6)
    assert d.counts['gated_out'] >= len(gated)
    assert 'const_velocity' in report.columns  # the baseline stands beside it


def test_missing_or_foreign_predictions_are_refused_with_the_fix(made):
    frames, predictions, path, *_ = made
    with pytest.raises(ValueError, match=r'1 of \d+ ground-truth QA have no prediction'):
        score_file(frames, predictions[1:], majority=None, tokenizer='simple', source=path)
    foreign = [*predictions, Prediction('elsewhere_0_0', 'Q', 'A')]
    with pytest.raises(ValueError, match="ids the ground truth does not have.*'elsewhere_0_0'"):
        score_file(frames, foreign, majority=None, tokenizer='simple', source=path)


def test_the_cli_scores_a_file_without_a_model_and_writes_the_metrics(made, tmp_path):
    frames, predictions, path, gt, wrong, gated, match = made
    metrics = tmp_path / 'm.json'
    out = subprocess.run(cli('eval', '--score', path, '--data', gt, '--metrics-out', metrics,
                             '--tokenizer', 'simple', '--model', tmp_path / 'no-model-here'),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'without a model' in out.stdout and 'majority' in out.stdout
    model = json.loads(metrics.read_text())['columns']['model']['drivelm']
    assert model['match_f1'] == pytest.approx(sum(match) / len(match), rel=1e-6)
    counted = [qa for _, qa in all_qa(frames) if 0 in qa.tags and qa.id not in gated]
    assert model['accuracy'] == pytest.approx(
        sum(qa.id not in wrong for qa in counted) / len(counted))
    bad = subprocess.run(cli('eval', '--data', gt), capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert bad.returncode == 2 and 'give --out preds.json' in bad.stderr
