"""`drive-vlm bag synth`: real rosbag2 files, read back with rosbags and checked against the GT."""

from collections import Counter, defaultdict
import io
import json
import math
from pathlib import Path

from drive_vlm_pruned.bag.synth import (
    MAX_SPREAD_NS,
    scene_config,
    scene_time,
    synth_bag,
    SynthOptions,
)
from drive_vlm_pruned.bag.topics import (
    camera_info_topic,
    GT_FRAME_TOPIC,
    GT_TRAJECTORY_TOPIC,
    image_topic,
    mask_topic,
    ODOM_TOPIC,
    read_ground_truth,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    typestore,
)
from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.cli.main import main
from drive_vlm_pruned.scenes import make_scene, nuscenes_rig, render_view
from drive_vlm_pruned.scenes.world import LABEL_OF
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

SMALL = {'frames': 5, 'width': 96, 'height': 54, 'seed': 3}


def read_bag(path: Path):
    """Return [(topic, msgtype, bag stamp ns, raw bytes, decoded message)] in bag order."""
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        return [(c.topic, c.msgtype, t, bytes(raw), reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope='module')
def raw_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('synth') / 'raw'
    result = synth_bag(path, SynthOptions(**SMALL, jitter_ms=4.0))
    return path, result, read_bag(path)


def test_topics_counts_and_stamps(raw_bag):
    path, result, msgs = raw_bag
    counts = Counter(m[0] for m in msgs)
    for cam in NUSCENES_CAMERAS:
        assert counts[image_topic(cam, False)] == 5
        assert counts[camera_info_topic(cam)] == 5
        assert counts[mask_topic(cam)] == 5
    assert counts[ODOM_TOPIC] == counts[TF_TOPIC] == 30
    assert counts[TF_STATIC_TOPIC] == 1
    assert counts[GT_TRAJECTORY_TOPIC] == counts[GT_FRAME_TOPIC] == counts['/gt/objects'] == 5
    assert dict(counts) == result.counts
    stamps = [m[2] for m in msgs]
    assert stamps == sorted(stamps)
    sets = defaultdict(list)
    for topic, _, t, _, msg in msgs:
        if topic.endswith('/image_raw'):
            assert stamp_ns(msg) == t                      # header stamp = bag stamp
            sets[(t - 1_700_000_000_000_000_000) // 83_333_333].append(t)
    assert len(sets) == 5
    for set_stamps in sets.values():
        assert len(set_stamps) == 6 and max(set_stamps) - min(set_stamps) <= MAX_SPREAD_NS
    gt = read_ground_truth(path)
    assert [f.stamp_ns for f in gt.frames] == sorted(gt.frames[i].stamp_ns for i in range(5))
    front = [t for topic, _, t, _, _ in msgs if topic == image_topic('CAM_FRONT', False)]
    assert [f.stamp_ns for f in gt.frames] == front  # records keyed by the CAM_FRONT stamp


def test_images_are_the_rendered_views_and_masks_match_the_boxes(raw_bag):
    path, _, msgs = raw_bag
    gt = read_ground_truth(path)
    scene = make_scene(scene_config(SynthOptions(**SMALL)))
    rig = {c.name: c for c in nuscenes_rig(96, 54)}
    checked = 0
    for topic, _, t, _, msg in msgs:
        cam = next((c for c in NUSCENES_CAMERAS if topic == image_topic(c, False)), None)
        if cam is None:
            continue
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', 96, 54, 288)
        expected = render_view(scene, rig[cam], scene_time(t)).image
        np.testing.assert_array_equal(msg.data.reshape(54, 96, 3), expected)
        checked += 1
    assert checked == 30
    masks = {(topic, t): msg for topic, _, t, _, msg in msgs if topic.endswith('foreground_mask')}
    visible = 0
    for frame in gt.frames:
        for cam, objects in frame.objects.items():
            mask_msg = masks[(mask_topic(cam), frame.camera_stamps_ns[cam])]
            assert mask_msg.encoding == 'mono8'
            mask = mask_msg.data.reshape(54, 96)
            for obj in objects:
                x0, y0, x1, y1 = obj.box
                window = mask[math.ceil(y0 - 0.5):math.floor(y1 - 0.5) + 1,
                              math.ceil(x0 - 0.5):math.floor(x1 - 0.5) + 1]
                assert (window == LABEL_OF[obj.label]).sum() >= obj.visible_px > 0
                visible += 1
    assert visible > 10


def test_gt_topics_equal_the_sidecar(raw_bag):
    path, _, msgs = raw_bag
    gt = read_ground_truth(path)
    by_stamp = gt.by_stamp()
    paths = [(t, msg) for topic, _, t, _, msg in msgs if topic == GT_TRAJECTORY_TOPIC]
    for t, msg in paths:
        record = by_stamp[t]
        assert msg.header.frame_id == 'base_link' and stamp_ns(msg) == t
        got = [(p.pose.position.x, p.pose.position.y) for p in msg.poses]
        np.testing.assert_allclose(got, record.future_trajectory, atol=1e-3)
        assert [stamp_ns(p) - t for p in msg.poses] == [500_000_000 * k for k in range(1, 7)]
        # 8 m/s on a straight road: 4 m per 0.5 s step.
        np.testing.assert_allclose(got, [(4.0 * k, 0.0) for k in range(1, 7)], atol=1e-6)
    frames = [json.loads(msg.data) for topic, _, _, _, msg in msgs if topic == GT_FRAME_TOPIC]
    assert frames == json.loads((path / 'ground_truth.json').read_text())['frames']
    assert all(f.future_objects for f in gt.frames)
    assert gt.frame_at(gt.frames[2].stamp_ns + 30_000_000, tolerance_ns=41_000_000) is gt.frames[2]
    assert gt.frame_at(gt.frames[2].stamp_ns + 30_000_000) is None


def test_camera_info_odometry_and_static_tf(raw_bag):
    _, _, msgs = raw_bag
    rig = {c.name: c for c in nuscenes_rig(96, 54)}
    info = {topic: msg for topic, _, _, _, msg in msgs if topic.endswith('camera_info')}
    for cam in NUSCENES_CAMERAS:
        msg = info[camera_info_topic(cam)]
        np.testing.assert_allclose(msg.k.reshape(3, 3), rig[cam].intrinsics.matrix())
        assert msg.header.frame_id == cam.lower() and (msg.width, msg.height) == (96, 54)
    (static,) = [msg for topic, _, _, _, msg in msgs if topic == TF_STATIC_TOPIC]
    frames = {tf.child_frame_id: tf for tf in static.transforms}
    assert set(frames) == {c.lower() for c in NUSCENES_CAMERAS}
    back = frames['cam_back'].transform.rotation
    # CAM_BACK looks along -x: its optical z axis is ego -x; R[:, 2] from the quaternion.
    w, x, y, z = back.w, back.x, back.y, back.z
    np.testing.assert_allclose([2 * (x * z + w * y), 2 * (y * z - w * x)], [-1.0, 0.0],
                               atol=1e-9)
    odoms = [msg for topic, _, _, _, msg in msgs if topic == ODOM_TOPIC]
    xs = [o.pose.pose.position.x for o in odoms]
    assert xs == sorted(xs) and xs[-1] - xs[0] == pytest.approx(8.0 * (4 / 12 + 0.0426), abs=0.1)
    assert all(o.twist.twist.linear.x == pytest.approx(8.0) for o in odoms)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    # Same bag name in different folders: mcap's metadata records the file name.
    opts = SynthOptions(**dict(SMALL, frames=2), compressed=True)
    first, second, other = (tmp_path / d / 'bag' for d in ('1', '2', '3'))
    synth_bag(first, opts)
    synth_bag(second, opts)
    synth_bag(other, SynthOptions(**dict(SMALL, frames=2, seed=4), compressed=True))
    for name in ('bag.mcap', 'metadata.yaml', 'ground_truth.json'):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / 'bag.mcap').read_bytes() != (other / 'bag.mcap').read_bytes()


def test_compressed_sqlite3_with_drops(tmp_path):
    from PIL import Image

    path = tmp_path / 'jpeg'
    result = synth_bag(path, SynthOptions(**dict(SMALL, frames=8), compressed=True,
                                          storage='sqlite3', drop_prob=0.3))
    assert (path / 'jpeg.db3').is_file()
    msgs = read_bag(path)
    gt = read_ground_truth(path)
    present = {(topic, t) for topic, _, t, _, _ in msgs}
    dropped = 0
    for frame in gt.frames:
        for cam, t in frame.camera_stamps_ns.items():
            if t is None:
                dropped += 1
                assert cam not in frame.objects
            else:
                assert (image_topic(cam, True), t) in present
                assert (mask_topic(cam), t) in present
    images = [m for m in msgs if m[0].endswith('/compressed')]
    assert dropped == result.dropped > 0 and len(images) == 48 - dropped
    assert not any(f.complete for f in gt.frames if None in f.camera_stamps_ns.values())
    _, msgtype, t, _, msg = images[0]
    assert msgtype == 'sensor_msgs/msg/CompressedImage' and msg.format == 'jpeg'
    decoded = np.asarray(Image.open(io.BytesIO(msg.data.tobytes())).convert('RGB'))
    scene = make_scene(scene_config(SynthOptions(**SMALL)))
    cam = next(c for c in nuscenes_rig(96, 54) if image_topic(c.name, True) == images[0][0])
    exact = render_view(scene, cam, scene_time(t)).image
    assert decoded.shape == exact.shape
    assert np.abs(decoded.astype(int) - exact).mean() < 6  # JPEG q90 of the same render


def test_cli_writes_a_bag_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert main(['bag', 'synth', str(out), '--frames', '2', '--width', '64', '--height', '36',
                 '--curve', '0.02', '--quiet']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    gt = read_ground_truth(out)
    assert gt.meta['scene']['curvature'] == 0.02
    assert all(y > 0 for _, y in gt.frames[0].future_trajectory)  # a left curve
    assert main(['bag', 'synth', str(out), '--frames', '1']) == 2
    assert 'exists' in capsys.readouterr().err
    assert main(['bag', 'synth', str(tmp_path / 'x'), '--drop-prob', '1.5']) == 2
    assert '--drop-prob' in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match='ground_truth.json'):
        read_ground_truth(tmp_path)


def test_options_outside_the_scene_limits_name_the_flag_and_the_range():
    with pytest.raises(ValueError, match=r'--curve 0.09 .*use \|curvature\| <= 0.05'):
        SynthOptions(curve=0.09)
    with pytest.raises(ValueError, match='--speed 55.0: .*use 0 to 40 m/s'):
        SynthOptions(speed=55.0)
    with pytest.raises(ValueError, match='--drop-prob 1.0'):
        SynthOptions(drop_prob=1.0)
