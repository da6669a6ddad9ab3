"""``drive-vlm data synth``: the DriveLM-shaped files, determinism, resume, splits, the reader."""

import json
from pathlib import Path
import re

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.cli.main import main
from drive_vlm_pruned.data import synth
from drive_vlm_pruned.data.frame_qa import CATEGORIES, FAMILIES
from drive_vlm_pruned.data.plan_drill import (
    behavior_mc_turn,
    drill_behavior_mc,
    drill_motions,
    drill_planning,
    drill_scene,
    planning_turn,
)
from drive_vlm_pruned.data.synth import DataOptions, scene_seeds, token, write_dataset
from drive_vlm_pruned.pipeline.trajectory import parse_trajectory
from drive_vlm_pruned.scenes import Label
import numpy as np
from PIL import Image
import pytest

W, H = 160, 90
OPTIONS = DataOptions(scenes=2, frames_per_scene=2, seed=3, split='test', width=W, height=H)
CTAG = re.compile(r'<c(\d+),([A-Z_]+),(\d+\.\d),(\d+\.\d)>')


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp('data')
    result = write_dataset(out, OPTIONS)
    return out, result, json.loads((out / 'test.json').read_text())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def test_run_writes_what_it_reports(written):
    out, result, data = written
    assert result.json_path == out / 'test.json' and result.key_frames == 4
    assert len(data) == 2 and result.resumed_scenes == 0
    assert not (out / '.partial').exists()
    meta = json.loads((out / 'test.meta.json').read_text())
    assert meta['scene_seeds'] == [2_000_003, 2_000_004]
    assert sum(meta['qa_per_family'].values()) == result.qa
    assert set(result.majority) <= set(FAMILIES)
    for family, (n, answer, share) in result.majority.items():
        assert n == meta['qa_per_family'][family] and 0 < share <= 1 and answer
    # 6 images + 6 masks per key frame, nothing else under samples/ and masks/.
    assert len(list((out / 'samples').rglob('*.jpg'))) == 24
    assert len(list((out / 'masks').rglob('*.png'))) == 24


def test_same_seed_same_bytes(written, tmp_path):
    out, _, _ = written
    write_dataset(tmp_path, OPTIONS)
    first, second = tree_bytes(out), tree_bytes(tmp_path)
    assert list(first) == list(second)
    assert all(first[name] == second[name] for name in first)


def test_an_interrupted_run_resumes_to_the_same_bytes(written, tmp_path, monkeypatch):
    out, _, _ = written
    real = synth.render_scene

    def dies_on_second_scene(seed, options, where):
        if seed == scene_seeds(OPTIONS)[1]:
            raise KeyboardInterrupt
        return real(seed, options, where)

    monkeypatch.setattr(synth, 'render_scene', dies_on_second_scene)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, OPTIONS)
    assert len(list((tmp_path / '.partial' / 'test').glob('*.json'))) == 1
    assert not (tmp_path / 'test.json').exists()
    monkeypatch.setattr(synth, 'render_scene', real)
    result = write_dataset(tmp_path, OPTIONS)
    assert result.resumed_scenes == 1
    assert tree_bytes(tmp_path) == tree_bytes(out)


def test_existing_json_needs_overwrite(written):
    out, _, _ = written
    with pytest.raises(FileExistsError, match='--overwrite'):
        write_dataset(out, OPTIONS)


def test_splits_come_from_disjoint_seed_ranges():
    last_train = scene_seeds(DataOptions(scenes=10, seed=999_990, split='train'))
    first_val = scene_seeds(DataOptions(scenes=10, seed=0, split='val'))
    test = scene_seeds(DataOptions(scenes=10, seed=0, split='test'))
    assert max(last_train) < min(first_val) and max(first_val) < min(test)
    assert min(test) == 2_000_000
    scenes = {split: {token('drive-vlm-synth', 'scene', s) for s in scene_seeds(
        DataOptions(scenes=50, split=split))} for split in ('train', 'val', 'test')}
    assert not scenes['train'] & scenes['val'] and not scenes['val'] & scenes['test']
    with pytest.raises(ValueError, match='--seed 999995 with --scenes 10'):
        DataOptions(scenes=10, seed=999_995)
    with pytest.raises(ValueError, match='--split'):
        DataOptions(split='dev')


def test_json_follows_the_data_contract(written):
    out, _, data = written
    frame_tokens = set()
    for scene_token, scene in data.items():
        assert re.fullmatch(r'[0-9a-f]{32}', scene_token) and scene['scene_description']
        assert len(scene['key_frames']) == 2
        for frame_token, frame in scene['key_frames'].items():
            frame_tokens.add(frame_token)
            assert list(frame) == ['key_object_infos', 'QA', 'image_paths', 'gt']
            gt = frame['gt']
            assert gt['image_size'] == [W, H]
            assert list(frame['image_paths']) == list(NUSCENES_CAMERAS)
            for camera in NUSCENES_CAMERAS:
                image = out / frame['image_paths'][camera]
                assert image.is_file() and image.name.startswith(f'{scene_token}__{camera}__')
                assert image.parent == out / 'samples' / camera
                assert Image.open(image).size == (W, H)
                mask = np.asarray(Image.open(out / gt['masks'][camera]))
                assert mask.shape == (H, W) and set(np.unique(mask)) <= {int(v) for v in Label}
            assert Path(frame['image_paths']['CAM_FRONT']).stem.endswith(f"__{gt['timestamp_us']}")
            assert len(gt['ego_history']) == 4 and gt['ego_history'][-1] == [0.0, 0.0]
            assert len(gt['future_trajectory']) == 6 and len(gt['future_agents']) == 6
            assert len({len(step) for step in gt['future_agents']}) == 1
            for box in gt['future_agents'][0]:
                assert set(box) == {'center', 'size', 'yaw'} and len(box['center']) == 2
            _check_key_objects(frame)
            _check_qa(frame)
    assert len(frame_tokens) == 4


def _check_key_objects(frame):
    for i, (tag, info) in enumerate(frame['key_object_infos'].items()):
        m = CTAG.fullmatch(tag)
        assert m and int(m[1]) == i + 1 and m[2] in NUSCENES_CAMERAS
        x, y = float(m[3]), float(m[4])
        assert 0 <= x <= W and 0 <= y <= H
        x0, y0, x1, y1 = info['2d_bbox']
        assert abs((x0 + x1) / 2 - x) <= 0.11 and abs((y0 + y1) / 2 - y) <= 0.11
        assert info['Category'] in ('Vehicle', 'Pedestrian', 'Sign', 'Barrier')
        assert info['Status'] in ('Moving', 'Stationary') and info['Visual_description']


def _check_qa(frame):
    assert list(frame['QA']) == list(CATEGORIES)
    items = [(c, q) for c in CATEGORIES for q in frame['QA'][c]]
    assert items[0][1]['type'] == 'important_objects'  # DriveLM: the first QA fixes the graph
    assert CTAG.findall(items[0][1]['A']) == [CTAG.fullmatch(t).groups()
                                              for t in frame['key_object_infos']]
    families = [q['type'] for _, q in items]
    assert families.count('safe_action') == families.count('behavior_mc') == 1
    for category, qa in items:
        assert FAMILIES[qa['type']] == (category, qa['tag'][0]) and len(qa['tag']) == 1
        assert isinstance(qa['Q'], str) and isinstance(qa['A'], str) and qa['A']
        assert all(qa[k] is None for k in ('C', 'con_up', 'con_down', 'cluster', 'layer'))
        if qa['type'] in ('exists', 'in_moving_direction'):
            assert qa['A'] in ('Yes.', 'No.')
        if qa['type'] == 'count':
            assert qa['A'].isdigit()
        if qa['type'] == 'behavior_mc':
            assert qa['A'] in 'ABCD' and len(qa['A']) == 1
        if qa['type'] == 'in_moving_direction':
            assert CTAG.search(qa['Q'])[0] in frame['key_object_infos']
        if qa['type'] == 'planning_trajectory':
            points = parse_trajectory(qa['A']).points
            # the answer has one decimal, as the PLANNING prompt asks: within 5 cm of the GT
            assert np.allclose(points, frame['gt']['future_trajectory'], atol=0.0501)


def test_drivelm_reader_reads_it_back(written):
    from drive_vlm_pruned.data.drivelm import load_camera_set, load_drivelm

    out, result, data = written
    frames = load_drivelm(out, split='test')
    assert len(frames) == 4 and sum(len(f.qa) for f in frames) == result.qa
    scene = next(iter(data))
    first = frames[0]
    assert first.scene == scene and first.frame == next(iter(data[scene]['key_frames']))
    record = data[scene]['key_frames'][first.frame]
    flat = [q for c in CATEGORIES for q in record['QA'][c]]
    assert [qa.id for qa in first.qa] == [f'{scene}_{first.frame}_{i}' for i in range(len(flat))]
    assert [(qa.question, qa.answer, qa.family) for qa in first.qa] == [
        (q['Q'], q['A'], q['type']) for q in flat]
    assert first.gt.image_size == (W, H) and len(first.gt.future_trajectory) == 6
    assert first.gt.ego_history[-1] == (0.0, 0.0)
    assert set(first.key_objects) == set(record['key_object_infos'])
    images = load_camera_set(first).images
    assert len(images) == 6 and all(im.shape == (H, W, 3) for im in images)


def test_cli_writes_and_prints_speed(tmp_path, capsys):
    code = main(['data', 'synth', str(tmp_path), '--split', 'val', '--scenes', '1',
                 '--frames-per-scene', '1', '--width', str(W), '--height', str(H), '--quiet'])
    printed = capsys.readouterr().out
    assert code == 0 and (tmp_path / 'val.json').is_file()
    assert '1 key frames' in printed and 'key frames/s' in printed and 'behavior_mc' in printed


def test_cli_bad_input_names_the_option(tmp_path, capsys):
    assert main(['data', 'synth', str(tmp_path), '--scenes', '0', '--quiet']) == 2
    assert '--scenes 0' in capsys.readouterr().err
    assert main(['data', 'synth', str(tmp_path), '--width', '10', '--quiet']) == 2
    assert 'image size 10 x 252' in capsys.readouterr().err


def test_planning_drills_ask_the_rules_planning_turn_of_train_motions(written):
    """A drill on a written scene's seed and time is that frame's own planning turn."""
    out, _, data = written
    seeds = scene_seeds(OPTIONS)
    for scene_seed, scene in zip(seeds, data.values()):
        for k, frame in enumerate(scene['key_frames'].values()):
            own = [(qa['Q'], qa['A']) for qa in frame['QA']['planning']
                   if qa['type'] == 'planning_trajectory']
            drilled = planning_turn(drill_scene(scene_seed), synth.key_frame_times(2)[k])
            assert own == [drilled[1:]]
    motions = drill_motions(np.random.default_rng(0), 200)
    assert all(0 <= seed < synth.SPLIT_BASE['val'] for seed, _ in motions)  # never val or test
    assert len({seed for seed, _ in motions}) > 190
    turns = drill_planning(np.random.default_rng(0), 5)
    assert turns == drill_planning(np.random.default_rng(0), 5)  # seeded
    assert all(family == 'planning_trajectory' and parse_trajectory(answer).ok
               and len(parse_trajectory(answer).points) == 6 for family, _, answer in turns)
    with pytest.raises(ValueError, match='--drill-plan'):
        drill_planning(np.random.default_rng(0), -1)


def test_behavior_choice_drills_offer_the_rules_behavior_among_fresh_options(written):
    """A behavior-choice drill on a written frame's motion asks its question with new options."""
    _, _, data = written
    seeds = scene_seeds(OPTIONS)
    for scene_seed, scene in zip(seeds, data.values()):
        for k, frame in enumerate(scene['key_frames'].values()):
            qa = {q['type']: q for qs in frame['QA'].values() for q in qs}
            rng = np.random.default_rng([scene_seed, k])
            family, question, letter = behavior_mc_turn(drill_scene(scene_seed),
                                                        synth.key_frame_times(2)[k], rng)
            head, options = question.split(' A. ')
            assert family == 'behavior_mc' and head == qa['behavior_mc']['Q'].split(' A. ')[0]
            listed = re.split(r' [BCD]\. ', options)
            assert len(set(listed)) == 4 and listed['ABCD'.index(letter)] == qa['behavior']['A']
    turns = drill_behavior_mc(np.random.default_rng(0), 40)
    assert turns == drill_behavior_mc(np.random.default_rng(0), 40)  # seeded
    assert {answer for _, _, answer in turns} == set('ABCD')  # the answer's slot is drawn
    with pytest.raises(ValueError, match='--drill-mc'):
        drill_behavior_mc(np.random.default_rng(0), -1)
