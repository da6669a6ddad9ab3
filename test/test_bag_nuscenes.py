"""
`drive-vlm bag from-nuscenes` on a small synthetic nuScenes dataroot, converted for real.

The dataroot has the full v1.0 table set (what nuscenes-devkit loads, maps included), small
JPEGs under samples/ and sweeps/, and ego poses chosen so the GT trajectory is easy to compute
by hand: at keyframe k the LIDAR_TOP ego pose is (100 - k, 200 + 5k, 0.5) m with heading
90 + 10k degrees, so keyframe 0 (heading +y) sees its future at (5k, k) in its own frame.
"""

from collections import Counter
import io
import json
import math
from pathlib import Path

from drive_vlm_pruned.bag.nuscenes import (
    convert_nuscenes,
    NuScenesError,
    NuScenesTables,
    open_database,
)
from drive_vlm_pruned.bag.topics import (
    camera_info_topic,
    GT_FRAME_TOPIC,
    GT_TRAJECTORY_TOPIC,
    image_topic,
    ODOM_TOPIC,
    read_ground_truth,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    typestore,
)
from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.cli.main import main
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

T0_US = 1532402927647951
KEYFRAME_US = 500_000
SWEEP_US = 83_333
# Camera exposure relative to the LIDAR_TOP keyframe (scene-0061's first sample).
CAMERA_OFFSETS_US = {'CAM_FRONT': -35491, 'CAM_FRONT_LEFT': -43107, 'CAM_FRONT_RIGHT': -27612,
                     'CAM_BACK': -10426, 'CAM_BACK_LEFT': -528, 'CAM_BACK_RIGHT': -20058}
YAW_DEG = {'CAM_FRONT': 0, 'CAM_FRONT_LEFT': 55, 'CAM_FRONT_RIGHT': -55, 'CAM_BACK': 180,
           'CAM_BACK_LEFT': 110, 'CAM_BACK_RIGHT': -110}


def ego_at(k: float) -> tuple[list[float], list[float]]:
    """Return the ego pose (translation, rotation wxyz) at fractional keyframe time k."""
    yaw = math.radians(90 + 10 * k)
    return [100.0 - k, 200.0 + 5.0 * k, 0.5], [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((9, 16, 3), seed % 256, np.uint8)).save(buf, format='JPEG')
    return buf.getvalue()


def optical_rotation(yaw_deg: float) -> list[float]:
    """Return wxyz of a level camera looking along ``yaw_deg`` (optical frame in ego)."""
    from drive_vlm_pruned.scenes.rig import CameraExtrinsics

    return list(CameraExtrinsics((0.0, 0.0, 1.5), yaw_deg).quaternion())


def make_dataroot(root: Path, scenes=(('scene-0001', 8, True), ('scene-0002', 3, False))):
    """Write tables, JPEGs and a map; scene tuples are (name, keyframes, with sweeps)."""
    tables = {name: [] for name in ('category', 'attribute', 'visibility', 'instance', 'sensor',
                                    'calibrated_sensor', 'ego_pose', 'log', 'scene', 'sample',
                                    'sample_data', 'sample_annotation', 'map')}
    tables['log'].append({'token': 'log0', 'logfile': 'n015-2018-07-24-11-22-45+0800',
                          'vehicle': 'n015', 'date_captured': '2018-07-24',
                          'location': 'singapore-onenorth'})
    tables['map'].append({'category': 'semantic_prior', 'token': 'map0',
                          'filename': 'maps/map0.png', 'log_tokens': ['log0']})
    (root / 'maps').mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / 'maps/map0.png')
    tables['category'].append({'token': 'cat0', 'name': 'vehicle.car', 'description': ''})
    tables['visibility'].append({'token': '4', 'level': 'v80-100', 'description': ''})
    for channel in (*NUSCENES_CAMERAS, 'LIDAR_TOP'):
        modality = 'lidar' if channel == 'LIDAR_TOP' else 'camera'
        tables['sensor'].append({'token': f'sensor-{channel}', 'channel': channel,
                                 'modality': modality})
        tables['calibrated_sensor'].append({
            'token': f'cal-{channel}', 'sensor_token': f'sensor-{channel}',
            'translation': [1.0, 0.0, 1.5] if modality == 'camera' else [0.9, 0.0, 1.8],
            'rotation': (optical_rotation(YAW_DEG[channel]) if modality == 'camera'
                         else [1.0, 0.0, 0.0, 0.0]),
            'camera_intrinsic': ([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]
                                 if modality == 'camera' else []),
        })

    def add_sample_data(token, sample, channel, k, key_frame, ext):
        t = T0_US + round(k * KEYFRAME_US) + CAMERA_OFFSETS_US.get(channel, 0)
        translation, rotation = ego_at((t - T0_US) / KEYFRAME_US)
        tables['ego_pose'].append({'token': f'ego-{token}', 'timestamp': t,
                                   'translation': translation, 'rotation': rotation})
        folder = 'samples' if key_frame else 'sweeps'
        filename = f'{folder}/{channel}/{token}.{ext}'
        if ext == 'jpg':
            (root / folder / channel).mkdir(parents=True, exist_ok=True)
            (root / filename).write_bytes(jpeg(len(tables['sample_data'])))
        tables['sample_data'].append({
            'token': token, 'sample_token': sample, 'ego_pose_token': f'ego-{token}',
            'calibrated_sensor_token': f'cal-{channel}', 'timestamp': t, 'fileformat': ext,
            'is_key_frame': key_frame, 'height': 900 if ext == 'jpg' else 0,
            'width': 1600 if ext == 'jpg' else 0, 'filename': filename, 'prev': '', 'next': ''})

    for s, (name, keyframes, sweeps) in enumerate(scenes):
        samples = [f'{name}-s{k}' for k in range(keyframes)]
        tables['scene'].append({'token': f'{name}-tok', 'log_token': 'log0',
                                'nbr_samples': keyframes, 'first_sample_token': samples[0],
                                'last_sample_token': samples[-1], 'name': name,
                                'description': 'synthetic'})
        base = s * 1000  # scenes apart in time
        for k, token in enumerate(samples):
            tables['sample'].append({
                'token': token, 'timestamp': T0_US + (base + k) * KEYFRAME_US,
                'prev': samples[k - 1] if k else '',
                'next': samples[k + 1] if k + 1 < keyframes else '', 'scene_token': f'{name}-tok'})
        for channel in (*NUSCENES_CAMERAS, 'LIDAR_TOP'):
            ext = 'pcd.bin' if channel == 'LIDAR_TOP' else 'jpg'
            chain = []
            if sweeps and channel != 'LIDAR_TOP':
                chain.append((f'{name}-{channel}-pre', samples[0], base - SWEEP_US / KEYFRAME_US,
                              False))
            for k, sample in enumerate(samples):
                chain.append((f'{name}-{channel}-k{k}', sample, base + k, True))
                if sweeps and channel != 'LIDAR_TOP' and k + 1 < keyframes:
                    chain += [(f'{name}-{channel}-k{k}-w{j}', sample,
                               base + k + j * SWEEP_US / KEYFRAME_US, False) for j in range(1, 6)]
            first = len(tables['sample_data'])
            for token, sample, k, key in chain:
                add_sample_data(token, sample, channel, k, key, ext)
            records = tables['sample_data'][first:]
            for a, b in zip(records, records[1:]):
                a['next'], b['prev'] = b['token'], a['token']
    # One car parked 30 m ahead of the first keyframe (at keyframes 0-3), one 100 m away.
    first_scene_keyframes = scenes[0][1]
    for inst, position, frames in (
            ('inst-near', [100.0, 230.0, 1.0], range(min(4, first_scene_keyframes))),
            ('inst-far', [100.0, 300.0, 1.0], range(min(2, first_scene_keyframes)))):
        tokens = [f'{inst}-a{k}' for k in frames]
        tables['instance'].append({'token': inst, 'category_token': 'cat0',
                                   'nbr_annotations': len(tokens),
                                   'first_annotation_token': tokens[0],
                                   'last_annotation_token': tokens[-1]})
        for k, token in zip(frames, tokens):
            tables['sample_annotation'].append({
                'token': token, 'sample_token': f'{scenes[0][0]}-s{k}', 'instance_token': inst,
                'visibility_token': '4', 'attribute_tokens': [], 'translation': position,
                'size': [1.8, 4.5, 1.6], 'rotation': ego_at(0)[1], 'num_lidar_pts': 10,
                'num_radar_pts': 0,
                'prev': tokens[k - 1] if k else '', 'next': tokens[k + 1] if k + 1 < len(
                    tokens) else ''})
    (root / 'v1.0-mini').mkdir()
    for name, records in tables.items():
        (root / 'v1.0-mini' / f'{name}.json').write_text(json.dumps(records))
    return root


@pytest.fixture(scope='module')
def dataroot(tmp_path_factory):
    return make_dataroot(tmp_path_factory.mktemp('nuscenes') / 'data')


@pytest.fixture(scope='module')
def converted(dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp('bags')
    bags, reader = convert_nuscenes(dataroot, 'v1.0-mini', out, reader='tables')
    assert reader == 'tables'
    return out, {b.scene: b for b in bags}


def read(path):
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        return [(c.topic, t, bytes(raw), reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


def ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_one_bag_per_scene_with_all_topics_and_counts(converted):
    out, bags = converted
    assert sorted(bags) == ['scene-0001', 'scene-0002']
    assert bags['scene-0001'].path == out / 'scene-0001'
    counts = Counter(topic for topic, *_ in read(out / 'scene-0001'))
    per_camera = 8 + 7 * 5 + 1  # keyframes, 5 sweeps between keyframes, 1 sweep before
    for cam in NUSCENES_CAMERAS:
        assert counts[image_topic(cam, True)] == per_camera
        assert counts[camera_info_topic(cam)] == per_camera
    assert counts[ODOM_TOPIC] == counts[TF_TOPIC] == 6 * per_camera
    assert counts[TF_STATIC_TOPIC] == 1
    assert counts[GT_TRAJECTORY_TOPIC] == counts[GT_FRAME_TOPIC] == 8
    assert set(counts) == {image_topic(c, True) for c in NUSCENES_CAMERAS} | {
        camera_info_topic(c) for c in NUSCENES_CAMERAS} | {
        ODOM_TOPIC, TF_TOPIC, TF_STATIC_TOPIC, GT_TRAJECTORY_TOPIC, GT_FRAME_TOPIC}
    assert dict(counts) == bags['scene-0001'].counts
    small = Counter(topic for topic, *_ in read(out / 'scene-0002'))
    assert small[image_topic('CAM_BACK', True)] == 3 and small[GT_TRAJECTORY_TOPIC] == 3


def test_images_are_the_original_jpeg_bytes_at_sample_data_stamps(converted, dataroot):
    out, _ = converted
    records = json.loads((dataroot / 'v1.0-mini/sample_data.json').read_text())
    by_file = {r['timestamp'] * 1000: r for r in records if r['filename'].endswith('.jpg')}
    seen = 0
    msgs = read(out / 'scene-0001')
    assert [t for _, t, _, _ in msgs] == sorted(t for _, t, _, _ in msgs)
    for topic, t, _, msg in msgs:
        if not topic.endswith('/compressed'):
            continue
        record = by_file[t]
        assert ns(msg) == t and msg.format == 'jpeg'
        assert topic == image_topic(record['filename'].split('/')[1], True)
        assert msg.data.tobytes() == (dataroot / record['filename']).read_bytes()
        seen += 1
    assert seen == 6 * 44
    info = next(m for topic, _, _, m in msgs if topic == camera_info_topic('CAM_FRONT'))
    np.testing.assert_allclose(info.k, [1266.4, 0, 816.3, 0, 1266.4, 491.5, 0, 0, 1])
    assert (info.width, info.height, info.header.frame_id) == (1600, 900, 'cam_front')


def test_odometry_and_tf_are_the_sample_data_ego_poses(converted, dataroot):
    out, _ = converted
    msgs = read(out / 'scene-0001')
    odom = [(t, m) for topic, t, _, m in msgs if topic == ODOM_TOPIC]
    first_t, first = odom[0]
    k = (first_t // 1000 - T0_US) / KEYFRAME_US
    translation, rotation = ego_at(k)
    p, q = first.pose.pose.position, first.pose.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z], translation)
    np.testing.assert_allclose([q.w, q.x, q.y, q.z], rotation)
    assert (first.header.frame_id, first.child_frame_id) == ('map', 'base_link')
    (static,) = [m for topic, _, _, m in msgs if topic == TF_STATIC_TOPIC]
    assert {tf.child_frame_id for tf in static.transforms} == {
        c.lower() for c in NUSCENES_CAMERAS}
    assert all(tf.header.frame_id == 'base_link' for tf in static.transforms)


def test_gt_future_trajectory_by_hand(converted):
    out, _ = converted
    msgs = read(out / 'scene-0001')
    gt = read_ground_truth(out / 'scene-0001')
    paths = [(t, m) for topic, t, _, m in msgs if topic == GT_TRAJECTORY_TOPIC]
    # Keyframe 0 heads +y: the ego then moves 5 m forward and 1 m left per 0.5 s.
    t0, first = paths[0]
    assert t0 == (T0_US + CAMERA_OFFSETS_US['CAM_FRONT']) * 1000  # the CAM_FRONT stamp
    got = [(p.pose.position.x, p.pose.position.y) for p in first.poses]
    np.testing.assert_allclose(got, [(5.0 * k, 1.0 * k) for k in range(1, 7)], atol=1e-9)
    assert [ns(p) for p in first.poses] == [(T0_US + k * KEYFRAME_US) * 1000 for k in range(1, 7)]
    # Keyframe i: R(yaw_i)^T (p_k - p_i) with yaw_i = 90 + 10 i degrees; steps past the
    # scene's 8th keyframe are masked.
    for i, (t, msg) in enumerate(paths):
        yaw = math.radians(90 + 10 * i)
        expected = []
        for k in range(i + 1, min(i + 7, 8)):
            dx, dy = -(k - i), 5.0 * (k - i)
            expected.append((math.cos(yaw) * dx + math.sin(yaw) * dy,
                             -math.sin(yaw) * dx + math.cos(yaw) * dy))
        got = [(p.pose.position.x, p.pose.position.y) for p in msg.poses]
        np.testing.assert_allclose(got, expected, atol=1e-9)
        record = gt.by_stamp()[t]
        assert record.future_valid == tuple(j < len(expected) for j in range(6))
        np.testing.assert_allclose(record.future_trajectory[:len(expected)], expected, atol=2e-3)
    assert gt.source == 'nuscenes' and gt.meta['pose_channel'] == 'LIDAR_TOP'
    assert gt.frames[0].camera_stamps_ns['CAM_BACK_LEFT'] == (T0_US - 528) * 1000


def test_future_agent_boxes_by_hand(converted):
    out, _ = converted
    gt = read_ground_truth(out / 'scene-0001')
    (near,) = gt.frames[0].future_objects      # the 100 m one is outside the 50 m radius
    assert near.track_id == 'inst-near' and near.label == 'vehicle.car'
    assert near.size == (4.5, 1.8, 1.6)        # length, width, height
    # 30 m straight ahead of keyframe 0, aligned with it; annotated until keyframe 3.
    for box in near.boxes[:3]:
        np.testing.assert_allclose(box, (30.0, 0.0, 0.0), atol=1e-3)
    assert near.boxes[3:] == (None, None, None)
    assert gt.frames[0].objects is None
    assert read_ground_truth(out / 'scene-0002').frames[0].future_objects == ()


def test_scene_selection_and_cli(dataroot, tmp_path, capsys):
    out = tmp_path / 'bags'
    assert main(['bag', 'from-nuscenes', '--dataroot', str(dataroot), '--scene', 'scene-0002',
                 '--reader', 'tables', '--storage', 'sqlite3', str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ['scene-0002']
    assert (out / 'scene-0002' / 'scene-0002.db3').is_file()
    captured = capsys.readouterr()
    assert 'JSON reader' in captured.out and '3 keyframes' in captured.out
    assert 'scenes' in captured.err  # the progress bar
    assert main(['bag', 'from-nuscenes', '--dataroot', str(dataroot), '--scene', 'scene-0002',
                 '--reader', 'tables', str(out)]) == 2
    assert 'exist' in capsys.readouterr().err


def test_clear_errors(dataroot, tmp_path):
    with pytest.raises(NuScenesError, match=f'dataroot not found: {tmp_path / "nope"}'):
        convert_nuscenes(tmp_path / 'nope', 'v1.0-mini', tmp_path / 'o')
    with pytest.raises(NuScenesError, match=r"'v1.0-trainval' not found.*versions in .*v1.0-mini"):
        convert_nuscenes(dataroot, 'v1.0-trainval', tmp_path / 'o')
    with pytest.raises(NuScenesError, match=r'scene-9999 not in .*scene.json; it has: scene-0001'):
        convert_nuscenes(dataroot, 'v1.0-mini', tmp_path / 'o', ['scene-9999'], reader='tables')
    broken = make_dataroot(tmp_path / 'broken', scenes=(('scene-0003', 2, False),))
    missing = next((broken / 'samples' / 'CAM_BACK').iterdir())
    missing.unlink()
    with pytest.raises(NuScenesError, match=f'image file missing: {missing}'):
        convert_nuscenes(broken, 'v1.0-mini', tmp_path / 'o2', reader='tables')
    (broken / 'v1.0-mini' / 'ego_pose.json').unlink()
    with pytest.raises(NuScenesError, match='ego_pose.json is missing'):
        NuScenesTables(broken, 'v1.0-mini')


def test_reader_choice(dataroot):
    db, used = open_database(dataroot, 'v1.0-mini', 'auto')
    try:
        import nuscenes  # noqa: F401
    except ImportError:
        assert used == 'tables'
        with pytest.raises(NuScenesError, match='nuscenes-devkit does not import'):
            open_database(dataroot, 'v1.0-mini', 'devkit')
    else:
        assert used == 'devkit'
    sample = db.get('sample', 'scene-0001-s0')
    assert set(sample['data']) == {*NUSCENES_CAMERAS, 'LIDAR_TOP'}
    assert sample['anns'] == ['inst-near-a0', 'inst-far-a0']


def test_calibration_sidecar_carries_calibrated_sensor_and_projects_the_horizon(converted):
    """calibration.json holds calibrated_sensor's K and pose; a far point ahead hits (cx, cy)."""
    from drive_vlm_pruned.frames.calibration import read_calibration

    out, _ = converted
    cameras = read_calibration(out / 'scene-0001')
    assert set(cameras) == set(NUSCENES_CAMERAS)
    front = cameras['CAM_FRONT']
    assert (front.width, front.height) == (1600, 900)
    np.testing.assert_allclose(front.k.reshape(-1), [1266.4, 0, 816.3, 0, 1266.4, 491.5, 0, 0, 1])
    np.testing.assert_allclose(front.translation, [1.0, 0.0, 1.5])
    yaw = math.radians(YAW_DEG['CAM_FRONT'])
    far = [1.0 + 1e6 * math.cos(yaw), 1e6 * math.sin(yaw), 1.5]  # at camera height, far ahead
    uv, ahead = front.project(np.array([far]))
    assert ahead[0]
    np.testing.assert_allclose(uv[0], [816.3, 491.5], atol=1e-3)
