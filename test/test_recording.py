"""
Recording a drive (issue 27): ``run --record`` into one ROS 2 mcap, and its failure modes.

The file is read back with rosbags and with mcap's own reader; the plan is projected into the
camera; killed, interrupted, full and unwritable recordings are tested.
"""

import json
import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from drive_vlm_pruned.bag.reading import BagReader
from drive_vlm_pruned.bag.recording import (
    ANSWER_TOPIC,
    CameraInput,
    check_record_path,
    Diagnostics,
    DIAGNOSTICS_TOPIC,
    overlay_topic,
    RecordedSet,
    RecordingError,
    RESULT_TOPIC,
    TRAJECTORY_TOPIC,
)
from drive_vlm_pruned.bag.repair import repair_mcap
from drive_vlm_pruned.bag.rig_calibration import scan_calibration
from drive_vlm_pruned.bag.run import run_bag, RunOptions
from drive_vlm_pruned.bag.snapshot import PLAN_COLOUR as PLAN_HEX
from drive_vlm_pruned.bag.snapshot import TRUTH_COLOUR as TRUTH_HEX
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.bag.topics import (
    camera_info_topic,
    GT_TRAJECTORY_TOPIC,
    read_ground_truth,
    TF_STATIC_TOPIC,
    typestore,
)
from drive_vlm_pruned.cameras import camera_topic, NUSCENES_CAMERAS
from drive_vlm_pruned.frames.calibration import (
    CameraCalibration,
    ground_polyline,
    read_calibration,
)
from drive_vlm_pruned.frames.plan_overlay import PLAN_COLOUR, plan_overlay, TRUTH_COLOUR
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
from drive_vlm_pruned.scenes.rig import nuscenes_rig
import numpy as np
import pytest

PLAN_COLOUR_2D = tuple(int(PLAN_HEX[i:i + 2], 16) for i in (1, 3, 5))
TRUTH_COLOUR_2D = tuple(int(TRUTH_HEX[i:i + 2], 16) for i in (1, 3, 5))
PER_SET = [ANSWER_TOPIC, RESULT_TOPIC, TRAJECTORY_TOPIC, DIAGNOSTICS_TOPIC, GT_TRAJECTORY_TOPIC,
           overlay_topic('CAM_FRONT'), overlay_topic('CAM_BACK')]
PER_SET += [camera_topic(c, compressed=True) for c in NUSCENES_CAMERAS]
PER_SET += [camera_info_topic(c) for c in NUSCENES_CAMERAS]


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _planning_question(bag: Path, options: SynthOptions) -> str:
    from drive_vlm_pruned.cli.demo_truth import DemoTruth

    return DemoTruth(bag, options).planning_question


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    """Run the embedded model over a compressed synthetic bag with --record (3 sets)."""
    root = tmp_path_factory.mktemp('rec')
    options = SynthOptions(frames=3, compressed=True, jitter_ms=2.0)
    bag = root / 'drive'
    synth_bag(bag, options)
    # The demo's planning question (with the ego history): the shipped model plans on it.
    settings = RuntimeSettings(keep_ratio=0.5, question=_planning_question(bag, options),
                               max_new_tokens=60)
    out, rec = root / 'results.jsonl', root / 'drive.mcap'
    summary = run_bag(RunOptions('', str(bag), str(out), settings, progress=False,
                                 record=str(rec), record_views=('CAM_FRONT', 'CAM_BACK')),
                      log=lambda _: None)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    return bag, rec, summary, lines


def test_run_record_reads_back_with_rosbags_one_message_per_set_and_topic(recorded):
    from rosbags.highlevel import AnyReader

    bag, rec, summary, lines = recorded
    assert summary.frames == 3 and len(lines) == 3
    with AnyReader([rec], default_typestore=typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        msgs = {}
        for conn, log_time, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            msgs.setdefault(conn.topic, []).append((log_time, msg))
    for topic in PER_SET:
        assert counts.get(topic) == summary.frames, (topic, counts.get(topic))
    assert counts[TF_STATIC_TOPIC] == 1
    assert len(msgs[TF_STATIC_TOPIC][0][1].transforms) == 6

    for line, (t_res, res), (t_path, path), (t_diag, diag) in zip(
            lines, msgs[RESULT_TOPIC], msgs[TRAJECTORY_TOPIC], msgs[DIAGNOSTICS_TOPIC]):
        result = json.loads(res.data)
        # every output is stamped with its input set: the CAM_FRONT image of that set
        assert result['stamp_ns'] == line['stamp_ns'] == t_res == t_path == t_diag
        assert _stamp(path) == _stamp(diag) == line['stamp_ns']
        assert result['camera_stamps_ns'] == line['camera_stamps_ns']
        front = dict(msgs[camera_topic('CAM_FRONT', True)])
        assert _stamp(front[line['stamp_ns']]) == line['stamp_ns']
        # the Path's poses are the Result's trajectory
        xy = [[p.pose.position.x, p.pose.position.y] for p in path.poses]
        assert xy == (line['trajectory'] or [])
    assert any(line['trajectory'] for line in lines), 'no trajectory parsed to compare'
    # the true future, as the bag's sidecar has it
    truth = read_ground_truth(bag).by_stamp()
    for line, (_, gt) in zip(lines, msgs[GT_TRAJECTORY_TOPIC]):
        want = [list(p) for p in truth[line['stamp_ns']].future_trajectory]
        assert [[p.pose.position.x, p.pose.position.y] for p in gt.poses] == want


def test_run_record_copies_the_bags_jpegs_byte_for_byte(recorded):
    bag, rec, _, lines = recorded
    topic = camera_topic('CAM_BACK_LEFT', compressed=True)
    source = {_stamp(m.msg): bytes(m.msg.data) for m in BagReader(bag, [topic]).messages()}
    copied = [m.msg for m in BagReader(rec, [topic]).messages()]
    assert len(copied) == len(lines)
    for msg in copied:
        assert bytes(msg.data) == source[_stamp(msg)]


def test_run_record_reads_back_with_mcaps_own_reader(recorded):
    from mcap.reader import make_reader

    _, rec, summary, lines = recorded
    store = typestore()
    with rec.open('rb') as stream:
        reader = make_reader(stream)
        assert reader.get_header().profile == 'ros2'
        counts = reader.get_summary().statistics.channel_message_counts
        channels = reader.get_summary().channels
        by_topic = {channels[cid].topic: n for cid, n in counts.items()}
        answers = [(schema.name, store.deserialize_cdr(message.data, schema.name))
                   for schema, _, message in reader.iter_messages(topics=[ANSWER_TOPIC])]
    for topic in PER_SET:
        assert by_topic[topic] == summary.frames, topic
    assert {name for name, _ in answers} == {'std_msgs/msg/String'}
    assert [a.data for _, a in answers] == [line['answer'] for line in lines]


def test_the_sidecar_calibration_equals_the_rig_and_the_bags_tf_static(recorded):
    bag = recorded[0]
    sidecar, scanned = read_calibration(bag), scan_calibration(bag)
    for cam in nuscenes_rig():
        for cal in (sidecar[cam.name], scanned[cam.name]):
            np.testing.assert_allclose(cal.k, cam.intrinsics.matrix(), atol=1e-3)
            np.testing.assert_allclose(cal.rotation, cam.extrinsics.rotation(), atol=1e-6)
            np.testing.assert_allclose(cal.translation, cam.extrinsics.translation, atol=1e-9)


def _front() -> CameraCalibration:
    cam = nuscenes_rig(400, 225)[0]
    assert cam.name == 'CAM_FRONT'
    k = cam.intrinsics
    return CameraCalibration.from_fields(k.width, k.height, k.matrix().reshape(-1),
                                         cam.extrinsics.translation, cam.extrinsics.quaternion())


def test_a_known_ground_point_lands_on_the_pixel_computed_by_hand():
    camera = _front()
    # CAM_FRONT sits at (1.70, 0.02, 1.51) in base_link, level, facing +x; f = 200 / tan(32.3 deg)
    f = 200.0 / math.tan(math.radians(64.6 / 2))
    uv, front = camera.project(np.array([[11.70, 0.02, 0.0], [11.70, -1.02, 0.0],
                                         [1.0, 0.0, 0.0]]))
    assert front.tolist() == [True, True, False]  # the last is behind the camera
    np.testing.assert_allclose(uv[0], [200.0, 112.5 + f * 1.51 / 10.0], atol=1e-9)
    np.testing.assert_allclose(uv[1], [200.0 + f * 1.04 / 10.0, 112.5 + f * 1.51 / 10.0],
                               atol=1e-9)
    half = camera.scaled(200, 112)  # the same camera at half size: K scales, the rays do not
    np.testing.assert_allclose(half.project(np.array([[11.70, 0.02, 0.0]]))[0][0],
                               [100.0, (112.5 + f * 1.51 / 10.0) * 112 / 225], atol=1e-9)


def test_the_drawn_paths_lie_where_the_projection_says():
    camera = _front()
    plan = [(4.0, 0.0), (8.0, 0.5), (12.0, 1.5), (16.0, 3.0)]
    truth = [(4.0, 0.0), (8.0, -0.5), (12.0, -1.5), (16.0, -3.0)]
    black = np.zeros((225, 400, 3), np.uint8)
    out = plan_overlay(black, list(range(196)), 196, camera, plan, truth)
    for path, colour, width in ((plan, PLAN_COLOUR, 3), (truth, TRUTH_COLOUR, 7)):
        drawn = np.argwhere(np.all(out == colour, axis=-1))[:, ::-1].astype(float)  # (u, v)
        assert len(drawn) > 100, colour
        line = np.concatenate(ground_polyline(camera, path, step_m=0.05))
        # every drawn pixel centre is within the line's half width of the projected path
        dist = np.min(np.linalg.norm(drawn[:, None, :] + 0.5 - line[None], axis=-1), axis=1)
        assert dist.max() <= width / 2 + 1.5, (colour, dist.max())
        # and the projected waypoints are drawn (where the plan does not cover the truth)
        uv, _ = camera.project(np.array([[x, y, 0.0] for x, y in path]))
        for u, v in uv[1:]:
            assert np.all(out[int(v), int(u)] == colour) or colour == TRUTH_COLOUR
    pruned = plan_overlay(np.full((225, 400, 3), 200, np.uint8), [0], 196)
    assert pruned[200, 300].max() < 200  # a pruned patch is dimmed


def _fake_set(i: int, payload: bytes) -> RecordedSet:
    cams = [CameraInput(c, 10**9 + i, c.lower(), payload, 'jpeg') for c in NUSCENES_CAMERAS]
    return RecordedSet(10**9 + i, 'ok', '{}', [(1.0, 0.0)], cams,
                       diagnostics=[Diagnostics('x', 0, 'ok', {'i': i})])


def test_a_full_disk_stops_the_recording_counts_every_lost_set_and_never_raises(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 300 kB, as a full disk does (EFBIG)."""
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_recording import _fake_set
from drive_vlm_pruned.bag.recording import Recorder
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
payload = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
r = Recorder({str(tmp_path / 'full.mcap')!r})
ok = [r.record(_fake_set(i, payload)) for i in range(20)]
r.close()
print(sum(ok), r.sets_recorded, r.sets_lost, repr(r.error))
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    good, recorded, lost, error = out.stdout.split(maxsplit=3)
    assert int(good) == int(recorded) and 0 < int(recorded) < 20
    assert int(recorded) + int(lost) == 20
    assert 'stopped' in error and 'too large' in error.lower()


def test_an_unwritable_or_taken_path_fails_at_start_with_a_clear_message(tmp_path):
    taken = tmp_path / 'taken.mcap'
    taken.write_bytes(b'')
    with pytest.raises(RecordingError, match='exists'):
        check_record_path(taken)
    with pytest.raises(RecordingError, match='FILE.mcap'):
        check_record_path(tmp_path / 'drive.bag')
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a file in the way instead
        with pytest.raises(RecordingError, match='cannot create'):
            check_record_path(taken / 'sub' / 'x.mcap')
    else:
        with pytest.raises(RecordingError, match='not writable'):
            check_record_path(locked / 'x.mcap')
    with pytest.raises(RecordingError, match='MiB free'):
        check_record_path(tmp_path / 'x.mcap', min_free_bytes=2**62)


def test_cli_run_record_to_a_taken_path_exits_2_before_loading(tmp_path, tiny_llava):
    bag = tmp_path / 'drive'
    synth_bag(bag, SynthOptions(frames=1, width=160, height=90))
    taken = tmp_path / 'taken.mcap'
    taken.write_bytes(b'')
    out = subprocess.run([sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'run', '--model',
                          str(tiny_llava), '--bag', str(bag), '--out', str(tmp_path / 'r.jsonl'),
                          '--record', str(taken)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert 'exists' in out.stderr and 'never overwritten' in out.stderr


def _record_until_killed(tmp_path, tiny_llava, sig) -> Path:
    bag = tmp_path / 'drive'
    synth_bag(bag, SynthOptions(frames=40, width=160, height=90))
    rec = tmp_path / f'killed-{sig}.mcap'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'run', '--model', str(tiny_llava),
         '--bag', str(bag), '--out', str(tmp_path / 'r.jsonl'), '--record', str(rec),
         '--max-new-tokens', '2', '--no-progress'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # wait for a few sets past the first flushed chunk (~2 sets of six 160 x 90 JPEGs)
    while time.monotonic() < deadline and proc.poll() is None:
        if rec.exists() and rec.stat().st_size > 40_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, 'the run ended before it could be killed'
    proc.send_signal(sig)
    # it finishes the frame in flight: quick alone, over 30 s once on cores shared with training
    proc.wait(90)
    return rec


def test_a_killed_recording_reads_up_to_the_break_and_repairs_for_rosbags(tmp_path, tiny_llava):
    from rosbags.highlevel import AnyReader, AnyReaderError

    rec = _record_until_killed(tmp_path, tiny_llava, signal.SIGKILL)
    with pytest.raises(AnyReaderError):  # no footer: why repair exists
        with AnyReader([rec]):
            pass
    reader = BagReader(rec)
    answers = [m for m in reader.messages() if m.topic == ANSWER_TOPIC]
    assert reader.damage is not None and len(answers) >= 1
    fixed = tmp_path / 'fixed.mcap'
    report = repair_mcap(rec, fixed)
    with AnyReader([fixed], default_typestore=typestore()) as r:
        counts = {c.topic: c.msgcount for c in r.connections}
    assert counts[ANSWER_TOPIC] == len(answers)
    assert report.messages == sum(counts.values())


def test_ctrl_c_closes_the_recording_whole(tmp_path, tiny_llava):
    from rosbags.highlevel import AnyReader

    rec = _record_until_killed(tmp_path, tiny_llava, signal.SIGINT)
    with AnyReader([rec], default_typestore=typestore()) as r:
        counts = {c.topic: c.msgcount for c in r.connections}
    assert counts[ANSWER_TOPIC] >= 1
    assert counts[camera_topic('CAM_FRONT', True)] == counts[ANSWER_TOPIC]


def test_snapshot_renders_the_layouts_panels(recorded, tmp_path):
    from drive_vlm_pruned.bag.snapshot import render_snapshot
    from PIL import Image

    lines = recorded[3]
    planned = next(i for i, line in enumerate(lines) if line['trajectory'])
    png = render_snapshot(recorded[1], tmp_path / 'snap.png', index=planned)
    image = np.asarray(Image.open(png).convert('RGB')).astype(int)
    assert image.shape[0] > 500 and image.shape[1] > 1000
    for colour in (PLAN_COLOUR_2D, TRUTH_COLOUR_2D):  # the top-down panel's two paths
        assert (np.abs(image - colour).sum(-1) < 30).sum() > 50, colour


def test_the_foxglove_layout_names_only_topics_a_recording_has(recorded):
    layout = json.loads((Path(__file__).parents[1] / 'config' / 'foxglove_layout.json')
                        .read_text())
    recorded_topics = set(BagReader(recorded[1]).available) or {
        m.topic for m in BagReader(recorded[1]).messages()}
    named = set()
    for config in layout['configById'].values():
        named |= {config.get('imageMode', {}).get('imageTopic'), config.get('topicToRender')}
        named |= {p['value'].split('.')[0] for p in config.get('paths', [])}
        named |= set(config.get('topics', {}))
        if 'topicPath' in config:
            named.add(config['topicPath'].split('.')[0])
    named.discard(None)
    assert named and named <= recorded_topics, named - recorded_topics
