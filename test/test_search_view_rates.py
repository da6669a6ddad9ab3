"""`drive-vlm search view-rates`: Prune2Drive's per-camera keep rates by Optuna TPE."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLANTED_CAMERA = 'CAM_BACK_LEFT'


def cli(*argv) -> list[str]:
    return [sys.executable, '-m', 'drive_vlm_pruned.cli.main', *map(str, argv)]


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
    from drive_vlm_pruned.search.planted import PlantedOptions, write_planted

    out = tmp_path_factory.mktemp('planted')
    write_planted(out, PlantedOptions(PLANTED_CAMERA, scenes=4, frames_per_scene=2,
                                      others='empty'))
    return out


@pytest.fixture(scope='module')
def pipeline(small_model):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    return Pipeline(load_adapter(LoadSpec(str(small_model))))


def test_planted_data_asks_only_about_one_camera_in_the_data_sets_grammar(planted):
    from drive_vlm_pruned.data.drivelm import all_qa, load_drivelm
    from drive_vlm_pruned.data.frame_qa import count_question, exists_question, PLURALS

    frames = load_drivelm(planted, split='val')
    pairs = all_qa(frames)
    grammar = {exists_question(PLANTED_CAMERA, c) for c in PLURALS} | \
        {count_question(PLANTED_CAMERA, c) for c in PLURALS}
    assert len(pairs) >= 12
    assert {qa.question for _, qa in pairs} <= grammar
    answers = {qa.answer for _, qa in pairs}
    assert {'Yes.', 'No.'} <= answers and len(answers) >= 4  # the answers vary
    assert all(qa.tags == (0,) for _, qa in pairs)


def test_empty_others_keep_the_planted_view_and_the_questions_and_clear_the_rest(tmp_path):
    from drive_vlm_pruned.data.drivelm import load_drivelm
    from drive_vlm_pruned.search.planted import PlantedOptions, write_planted
    import numpy as np
    from PIL import Image

    def written(others: str):
        out = tmp_path / others
        write_planted(out, PlantedOptions(PLANTED_CAMERA, scenes=1, others=others))
        frames = load_drivelm(out, split='val')
        images = [{cam: np.asarray(Image.open(out / path), dtype=np.int16)
                   for cam, path in frame.image_paths.items()} for frame in frames]
        return [frame.qa for frame in frames], images

    qa_scene, scene = written('scene')
    qa_empty, empty = written('empty')
    assert qa_empty == qa_scene and qa_scene  # the same questions and answers
    for full, bare in zip(scene, empty):
        assert np.array_equal(full[PLANTED_CAMERA], bare[PLANTED_CAMERA])
        # agents in view make some other camera differ; the empty road shows less detail
        others = [c for c in NUSCENES_CAMERAS if c != PLANTED_CAMERA]
        assert any(np.abs(full[c] - bare[c]).mean() > 1.0 for c in others)
    with pytest.raises(ValueError, match='others'):
        PlantedOptions(others='blank')


def test_rates_reach_the_pipeline_as_absolute_per_view_keep_rates(pipeline, planted):
    from drive_vlm_pruned.data.drivelm import load_camera_set, load_drivelm
    from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
    from drive_vlm_pruned.search.view_rates import rate_settings

    rates = dict(zip(NUSCENES_CAMERAS, (1.0, 0.5, 0.25, 0.75, 0.125, 0.5)))
    frame = load_drivelm(planted, split='val')[0]
    settings = rate_settings(rates, RuntimeSettings(max_new_tokens=1))
    result = pipeline.run(load_camera_set(frame), settings)
    assert result.tokens_before == [16] * 6
    assert result.tokens_after == [round(16 * r) for r in rates.values()]  # r_i * N_i each


def test_objective_splits_closed_form_from_language_answers():
    from drive_vlm_pruned.data.drivelm import KeyFrame, QA
    from drive_vlm_pruned.search.objective import objective, score_answers

    qas = (QA('s_f_0', 'Is there a sign in the back view?', 'Yes.', 'perception', (0,), 'exists'),
           QA('s_f_1', 'How many signs?', '2', 'perception', (0,), 'count'),
           QA('s_f_2', 'Predict the behavior.', 'The ego vehicle is going straight.',
              'behavior', (2,), 'behavior'))
    frame = KeyFrame('s', 'f', {}, {}, qas)
    pairs = [(frame, qa) for qa in qas]
    answers = {'s_f_0': 'yes', 's_f_1': 'three', 's_f_2': 'The ego vehicle is going straight.'}
    score = score_answers(pairs, answers, 'simple')
    assert (score.accuracy, score.accuracy_qa, score.language_qa) == (0.5, 2, 1)
    assert score.language > 0.3
    terms = objective(score, [0.5] * 6, 0.03)
    assert terms.value == pytest.approx(0.5 * score.language + 0.25 - 0.09)
    only_closed = score_answers(pairs[:2], answers, 'simple')
    assert only_closed.language is None and only_closed.quality == 0.5


def test_written_rates_load_unchanged_as_the_nodes_view_weights(tmp_path):
    from drive_vlm_pruned.pruning.view_weights import load_view_weights
    from drive_vlm_pruned.search.view_rates import read_search_keep_ratio, write_rates_yaml

    rates = dict(zip(NUSCENES_CAMERAS, (0.9, 0.3, 0.35, 0.2, 0.15, 0.25)))
    path = write_rates_yaml(tmp_path / 'rates.yaml', rates, {'objective': 0.5},
                            {'low': 0.1, 'high': 1.0, 'penalty': 0.03, 'split': 'val.json'})
    assert load_view_weights(path) == rates
    assert read_search_keep_ratio(path) == pytest.approx(sum(rates.values()) / 6, abs=1e-4)
    try:  # the node's own parameter path, where ROS messages are installed
        from drive_vlm_pruned.node.parameters import view_weights_from
    except ImportError:
        return
    assert view_weights_from({'view_keep_weights_file': str(path),
                              'view_keep_weights': [1.0] * 6}) == rates


def trials_in(db: Path, study: str = 'view-rates'):
    import optuna

    s = optuna.load_study(study_name=study, storage=f'sqlite:///{db}')
    return s.get_trials(deepcopy=False)


def test_two_processes_share_one_sqlite_study_and_lose_no_trial(small_model, planted, tmp_path):
    db = tmp_path / 'study.db'
    common = ['search', 'view-rates', '--model', small_model, '--data', planted, '--trials', 8,
              '--storage', f'sqlite:///{db}', '--qa', 4, '--max-new-tokens', 2,
              '--tokenizer', 'simple', '--threads', 1, '--no-uniform']
    procs = [subprocess.Popen(cli(*common, '--worker', w, '--out', tmp_path / f'w{w}.yaml'),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for w in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from optuna.trial import TrialState

    trials = trials_in(db)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    printed = [{int(line.split(':')[0].split()[1]) for line in out.splitlines()
                if line.startswith('trial ')} for out in outs]
    assert all("study 'view-rates'" in out for out in outs)  # both joined the one study
    assert not printed[0] & printed[1]  # no trial number handed to both processes
    assert {t.number for t in complete} == printed[0] | printed[1]  # and none lost
    assert 8 <= len(complete) <= 9  # --trials counts both; at most one overshoot per extra worker
    # Which process ran a trial is recorded with it. Whether the second process gets
    # one at all depends on start-up order (a trial takes 0.1 s here), so that is
    # not asserted; the attribution is.
    for t in complete:
        assert t.number in printed[t.user_attrs['worker']]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)
    assert {'accuracy', 'rate_sum', 'objective'} <= set(complete[0].user_attrs)
    assert 'parameter importances' in outs[0] + outs[1]


def test_a_killed_search_resumes_counting_its_finished_trials(small_model, planted, tmp_path):
    from optuna.trial import TrialState

    db = tmp_path / 'study.db'
    args = ['search', 'view-rates', '--model', small_model, '--data', planted,
            '--storage', f'sqlite:///{db}', '--qa', 4, '--max-new-tokens', 2,
            '--tokenizer', 'simple', '--threads', 1, '--out', tmp_path / 'rates.yaml']
    proc = subprocess.Popen(cli(*args, '--trials', 500), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    done = 0
    while time.monotonic() < deadline and done < 3:
        time.sleep(1.0)
        if db.exists():
            try:
                done = sum(t.state == TrialState.COMPLETE for t in trials_in(db))
            except Exception:  # the study table may not exist yet
                done = 0
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done >= 3, 'the first search finished no trial in time'
    kept = sum(t.state == TrialState.COMPLETE for t in trials_in(db))
    out = subprocess.run(cli(*args, '--trials', kept + 2), cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'{kept} finished trials already' in out.stdout
    assert sum(line.startswith('trial ') for line in out.stdout.splitlines()) == 2
    assert sum(t.state == TrialState.COMPLETE for t in trials_in(db)) == kept + 2
    from drive_vlm_pruned.pruning.view_weights import load_view_weights

    assert set(load_view_weights(tmp_path / 'rates.yaml')) == set(NUSCENES_CAMERAS)


def test_a_study_refuses_a_process_with_other_settings(tmp_path):
    from drive_vlm_pruned.search.view_rates import open_study, SearchSpec, sqlite_url

    spec = SearchSpec(trials=1, storage=sqlite_url(tmp_path / 'study.db'))
    open_study(spec, {'model': 'm', 'penalty': 0.03})
    open_study(spec, {'model': 'm', 'penalty': 0.03})  # the same settings join
    with pytest.raises(ValueError, match='penalty=0.03, this run has penalty=0.5'):
        open_study(spec, {'model': 'm', 'penalty': 0.5})


def test_the_test_split_is_refused(small_model, tmp_path):
    (tmp_path / 'test.json').write_text(json.dumps({}))
    from drive_vlm_pruned.cli.main import main

    code = main(['search', 'view-rates', '--model', str(small_model), '--data',
                 str(tmp_path / 'test.json'), '--trials', '1'])
    assert code == 2


def test_importances_say_why_when_there_are_too_few_trials():
    from drive_vlm_pruned.search.view_rates import importances
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction='maximize')
    study.optimize(lambda t: t.suggest_float('rate_CAM_FRONT', 0.1, 1.0), n_trials=1)
    found, note = importances(study)
    assert found is None and 'at least 2' in note
    study.optimize(lambda t: t.suggest_float('rate_CAM_FRONT', 0.1, 1.0), n_trials=4)
    found, note = importances(study)
    assert set(found) == {'rate_CAM_FRONT'} and 'rough' in note


def embedded_or_skip() -> Path:
    from drive_vlm_pruned.models.embedded import embedded_model_dir

    try:
        return embedded_model_dir()
    except FileNotFoundError as err:
        pytest.skip(f'needs the embedded trained model (a random model answers nothing about a '
                    f'camera, so no rate could matter): {err}')


def test_search_on_planted_data_keeps_the_deciding_camera_most(planted, tmp_path):
    model = embedded_or_skip()
    out = subprocess.run(
        cli('search', 'view-rates', '--model', model, '--data', planted, '--trials', 16,
            '--startup-trials', 6, '--penalty', 0.1, '--pruner', 'stride', '--max-new-tokens', 4,
            '--tokenizer', 'simple', '--no-uniform', '--storage', f'sqlite:///{tmp_path}/s.db',
            '--out', tmp_path / 'rates.yaml'),
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    from drive_vlm_pruned.pruning.view_weights import load_view_weights

    rates = load_view_weights(tmp_path / 'rates.yaml')
    assert max(rates, key=rates.get) == PLANTED_CAMERA, out.stdout
