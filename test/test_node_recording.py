"""The node's record_path over real DDS: a readable mcap per path; failures counted, not fatal."""

import json

from drive_vlm_pruned.bag.recording import (
    ANSWER_TOPIC,
    DIAGNOSTICS_TOPIC,
    overlay_topic,
    RESULT_TOPIC,
    TRAJECTORY_TOPIC,
)
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.bag.topics import camera_info_topic, TF_STATIC_TOPIC, typestore
from drive_vlm_pruned.cameras import camera_topic, NUSCENES_CAMERAS
import rclpy
from ros_harness import NodeUnderTest, Probe, ros_context, wait_for
from sensor_msgs.msg import CameraInfo


def _read(path):
    from rosbags.highlevel import AnyReader

    with AnyReader([path], default_typestore=typestore()) as reader:
        out = {}
        for conn, log_time, raw in reader.messages():
            out.setdefault(conn.topic, []).append((log_time, reader.deserialize(raw,
                                                                                conn.msgtype)))
        return out


def _recording_diag(probe: Probe) -> dict:
    with probe.lock:
        return dict(probe.diagnostics.get('drive_vlm: recording', {}))


def _answer(probe: Probe, index: int) -> int:
    before = len(probe.results)
    stamp = probe.publish_set(index)
    wait_for(lambda: len(probe.results) > before, 60, f'the answer to set {index}')
    return stamp


def test_record_path_over_dds_writes_readable_files_and_failures_are_counted(tiny_llava,
                                                                             tmp_path):
    bag = tmp_path / 'rig'
    synth_bag(bag, SynthOptions(frames=1, width=160, height=90))
    first, second, taken = tmp_path / 'a.mcap', tmp_path / 'b.mcap', tmp_path / 'taken.mcap'
    taken.write_bytes(b'')
    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), max_new_tokens=4,
                         diagnostics_period=0.2, record_path=str(first),
                         calibration_file=str(bag / 'calibration.json'),
                         record_views=['CAM_FRONT', 'CAM_BACK'])
    probe = Probe(context)
    info_pubs = [probe.node.create_publisher(CameraInfo, camera_info_topic(c), 10)
                 for c in NUSCENES_CAMERAS]
    try:
        probe.wait_connected()
        wait_for(lambda: all(p.get_subscription_count() for p in info_pubs), 20,
                 'the node to subscribe to CameraInfo')
        for pub in info_pubs:
            pub.publish(CameraInfo(width=160, height=90, k=[100.0, 0, 80, 0, 100, 45, 0, 0, 1]))
        wait_for(lambda: len(node.node.recording.infos) == 6, 20, 'six CameraInfo')
        stamps = [_answer(probe, i) for i in range(2)]
        node.wait_idle()
        # a new path closes the first file (complete) and records on
        assert all(r.successful for r in probe.set_params(record_path=str(second)))
        stamps_second = [_answer(probe, 2)]
        node.wait_idle()
        # a path that cannot be written is refused with the reason, counted, and answers go on
        refused = probe.set_params(record_path=str(taken))[0]
        assert not refused.successful and 'exists' in refused.reason
        _answer(probe, 3)
        wait_for(lambda: _recording_diag(probe).get('failures') == '1', 10,
                 'the failed recording in /diagnostics')
        assert 'exists' in _recording_diag(probe)['error']
    finally:
        probe.close()
        node.close()

    results = {r['stamp_ns']: r for r in probe.results}
    for path, want in ((first, stamps), (second, stamps_second)):
        msgs = _read(path)
        assert [t for t, _ in msgs[ANSWER_TOPIC]] == want
        for topic in (RESULT_TOPIC, TRAJECTORY_TOPIC, DIAGNOSTICS_TOPIC, overlay_topic('CAM_BACK'),
                      camera_topic('CAM_BACK_RIGHT', compressed=True),
                      camera_info_topic('CAM_FRONT')):
            assert len(msgs[topic]) == len(want), topic
        assert len(msgs[TF_STATIC_TOPIC]) == 1
        for (t, res), (_, ans) in zip(msgs[RESULT_TOPIC], msgs[ANSWER_TOPIC]):
            result = json.loads(res.data)
            assert result['stamp_ns'] == t and result['answer'] == ans.data
            assert results[t]['answer'] == ans.data  # what went over DDS is what was recorded
        recorded = {s.name: {kv.key: kv.value for kv in s.values}
                    for s in msgs[DIAGNOSTICS_TOPIC][-1][1].status}
        assert recorded['drive_vlm: inference']['frames_processed'] == str(
            len(want) + (2 if path == second else 0))

    # a record_path that fails at start is logged and counted; the node still answers
    node = NodeUnderTest(context, model=str(tiny_llava), max_new_tokens=4,
                         diagnostics_period=0.2, record_path=str(taken))
    probe = Probe(context)
    try:
        probe.wait_connected()
        _answer(probe, 10)
        wait_for(lambda: _recording_diag(probe).get('failures') == '1', 10,
                 'the start-up failure in /diagnostics')
        assert _recording_diag(probe)['recording'] == 'False'
    finally:
        probe.close()
        node.close()
        rclpy.shutdown(context=context)
