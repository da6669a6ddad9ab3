"""The DriveLM reader and writer on a hand-written fixture in the real schema."""

import json
from pathlib import Path
import shutil

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data.drivelm import (
    all_qa,
    CTag,
    data_file,
    DriveLMError,
    load_camera_set,
    load_drivelm,
    parse_ctags,
    Prediction,
    read_predictions,
    write_predictions,
)
import numpy as np
import pytest

FIXTURE = Path(__file__).parent / 'fixtures' / 'drivelm'
SAMPLE = FIXTURE / 'drivelm' / 'v1_1_val_nus_sample.json'
Q_ONLY = FIXTURE / 'drivelm' / 'v1_1_val_nus_q_only.json'
NUSCENES = FIXTURE / 'nuscenes'


def test_reads_frames_qa_ids_and_tags_in_drivelm_order():
    frames = load_drivelm(SAMPLE)
    raw = json.loads(SAMPLE.read_text())
    assert [(f.scene, f.frame) for f in frames] == [
        (s, k) for s, scene in raw.items() for k in scene['key_frames']]
    first = frames[0]
    qa = raw[first.scene]['key_frames'][first.frame]['QA']
    flat = qa['perception'] + qa['prediction'] + qa['planning'] + qa['behavior']
    ids = [f'{first.scene}_{first.frame}_{i}' for i in range(len(flat))]
    assert [q.id for q in first.qa] == ids
    assert [q.question for q in first.qa] == [q['Q'] for q in flat]
    assert [q.answer for q in first.qa] == [q['A'] for q in flat]
    assert [q.tags for q in first.qa] == [tuple(q['tag']) for q in flat]
    assert [q.category for q in first.qa] == ['perception'] * 2 + ['prediction'] * 2 + \
        ['planning'] * 2 + ['behavior']
    assert all(q.family is None for q in first.qa)  # real DriveLM has no `type`
    assert list(first.image_paths) == list(NUSCENES_CAMERAS)
    assert all(p.is_absolute() and p.is_file() for p in first.image_paths.values())
    assert list(first.key_objects) == list(raw[first.scene]['key_frames'][first.frame][
        'key_object_infos'])


def test_q_only_file_resolves_images_against_image_root():
    frames = load_drivelm(Q_ONLY, image_root=NUSCENES)
    sample = load_drivelm(SAMPLE)
    assert [f.image_paths for f in frames] == [f.image_paths for f in sample]
    assert all(q.answer == '' for f in frames for q in f.qa)
    assert frames[0].key_objects == {}
    assert frames[0].image_paths['CAM_BACK'].parent == NUSCENES.resolve() / 'samples' / 'CAM_BACK'


def test_prediction_round_trip_keeps_ids_order_and_drivelm_keys(tmp_path):
    pairs = all_qa(load_drivelm(SAMPLE))
    preds = [Prediction(qa.id, qa.question, f'answer {n}') for n, (_, qa) in enumerate(pairs)]
    path = write_predictions(tmp_path / 'out' / 'preds.json', preds)
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and all(set(r) == {'id', 'question', 'answer'} for r in raw)
    assert read_predictions(path) == preds
    assert [r['id'] for r in raw] == [qa.id for _, qa in pairs]
    # what DriveLM's evaluation.py does with it: index by id, look up every QA of the GT file
    by_id = {r['id']: r for r in raw}
    assert all(by_id[qa.id]['question'] == qa.question for _, qa in pairs)


def test_data_directory_picks_the_split_file(tmp_path):
    shutil.copy(SAMPLE, tmp_path / 'val.json')
    assert data_file(tmp_path, 'val') == tmp_path / 'val.json'
    with pytest.raises(DriveLMError, match=r"has no test\.json; it holds \['val\.json'\]"):
        data_file(tmp_path, 'test')


def _copy_fixture(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / 'fx'
    shutil.copytree(FIXTURE, root)
    path = root / 'drivelm' / SAMPLE.name
    return path, json.loads(path.read_text())


def _first_frame(data):
    scene = next(iter(data))
    frame = next(iter(data[scene]['key_frames']))
    return scene, frame, data[scene]['key_frames'][frame]


def test_missing_image_names_the_frame_camera_file_and_fix(tmp_path):
    path, data = _copy_fixture(tmp_path)
    scene, frame, record = _first_frame(data)
    image = (path.parent / record['image_paths']['CAM_BACK_LEFT']).resolve()
    image.unlink()
    with pytest.raises(DriveLMError) as err:
        load_drivelm(path)
    text = str(err.value)
    for part in (str(path), scene, frame, 'CAM_BACK_LEFT', str(image), '--image-root'):
        assert part in text


def test_unknown_camera_names_the_item_and_file(tmp_path):
    path, data = _copy_fixture(tmp_path)
    scene, frame, record = _first_frame(data)
    record['image_paths']['CAM_TOP'] = record['image_paths'].pop('CAM_FRONT')
    path.write_text(json.dumps(data))
    with pytest.raises(DriveLMError, match=r"unknown camera 'CAM_TOP'") as err:
        load_drivelm(path)
    assert str(path) in str(err.value) and frame in str(err.value)


@pytest.mark.parametrize('tag, problem', [
    ('<c1,CAM_FRONT,812.5>', 'malformed c-tag'),
    ('<c1,CAM_FRONT,abc,431.0>', 'malformed c-tag'),
    ('<c1 CAM_FRONT 812.5 431.0>', 'malformed c-tag'),
    ('<c1,CAM_SIDE,812.5,431.0>', "unknown camera 'CAM_SIDE'"),
])
def test_bad_ctag_in_a_question_names_the_qa_id_and_file(tmp_path, tag, problem):
    path, data = _copy_fixture(tmp_path)
    scene, frame, record = _first_frame(data)
    record['QA']['prediction'][1]['Q'] = f'Is {tag} a traffic sign or a road barrier?'
    path.write_text(json.dumps(data))
    with pytest.raises(DriveLMError, match=problem) as err:
        load_drivelm(path)
    text = str(err.value)
    assert f'QA {scene}_{frame}_3 (question)' in text and str(path) in text
    assert tag.split('>')[0] in text


def test_parse_ctags():
    text = ('IDs are <c1,CAM_BACK,1088.3,497.5>, <c2,CAM_FRONT_LEFT,231.5,472.1> and '
            '<c3,CAM_FRONT,5,6>.')
    assert parse_ctags(text) == [CTag(1, 'CAM_BACK', 1088.3, 497.5),
                                 CTag(2, 'CAM_FRONT_LEFT', 231.5, 472.1),
                                 CTag(3, 'CAM_FRONT', 5.0, 6.0)]
    assert str(parse_ctags(text)[0]) == '<c1,CAM_BACK,1088.3,497.5>'


def test_camera_set_reads_rgb_and_blank_never_reads_a_pixel(tmp_path):
    frame = load_drivelm(SAMPLE)[0]
    real = load_camera_set(frame)
    assert real.names == NUSCENES_CAMERAS
    assert all(i.dtype == np.uint8 and i.shape == (36, 64, 3) for i in real.images)
    assert all(i.any() for i in real.images)
    blank = load_camera_set(frame, blank=True)
    assert [i.shape for i in blank.images] == [i.shape for i in real.images]
    assert not any(i.any() for i in blank.images)
    # A JPEG cut after its header: decoding fails, the blind path (size only) still works.
    path, data = _copy_fixture(tmp_path)
    cut = load_drivelm(path)[0]
    image = cut.image_paths['CAM_FRONT']
    raw = image.read_bytes()
    image.write_bytes(raw[:raw.index(b'\xff\xda') + 20])  # up to the start of the pixel data
    assert not any(i.any() for i in load_camera_set(cut, blank=True).images)
    with pytest.raises(DriveLMError, match='cannot read the CAM_FRONT image') as err:
        load_camera_set(cut)
    assert str(image) in str(err.value)


def test_malformed_view_counts_name_the_frame_and_the_gt_field(tmp_path):
    path, data = _copy_fixture(tmp_path)
    _, frame, record = _first_frame(data)
    record['gt'] = {'view_counts': {'CAM_FRONT': ['vehicle', 2]}}  # a list, not class -> count
    path.write_text(json.dumps(data))
    with pytest.raises(DriveLMError, match='malformed "gt"') as err:
        load_drivelm(path)
    assert frame in str(err.value)
