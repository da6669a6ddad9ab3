"""
The drive_vlm node over real DDS on loopback: outputs, live parameters, drops, bad input.

One node (tiny LLaVA-OneVision) serves this module; each test resets the live parameters it
touches. Compressed input and node start-up are in test_node_start.py.
"""

import math
import time

from diagnostic_msgs.msg import DiagnosticStatus
from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
import numpy as np
import pytest
import rclpy
from ros_harness import (
    camera_images,
    NodeUnderTest,
    Probe,
    raw_msg,
    ros_context,
    STAMP0,
    wait_for,
)
from sensor_msgs.msg import Image
from std_msgs.msg import String

DEFAULTS = {'keep_ratio': 0.25, 'pruner': 'tfps', 'max_new_tokens': 8, 'min_views': 6,
            'view_timeout': 1.0, 'prune_layer': 0, 'waypoint_grammar': True}


@pytest.fixture(scope='module')
def ros(tiny_llava):
    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), max_new_tokens=8,
                         diagnostics_period=0.2)
    probe = Probe(context)
    probe.wait_connected()
    yield node, probe
    probe.close()
    node.close()
    rclpy.shutdown(context=context)


@pytest.fixture
def fresh(ros):
    node, probe = ros
    results = probe.set_params(**DEFAULTS)
    assert all(r.successful for r in results), [r.reason for r in results]
    node.wait_idle()
    return node, probe


def result_for(probe: Probe, stamp: int, timeout: float = 30.0) -> dict:
    def found():
        with probe.lock:
            return any(r['stamp_ns'] == stamp for r in probe.results)

    wait_for(found, timeout, f'a result stamped {stamp}')
    with probe.lock:
        return next(r for r in probe.results if r['stamp_ns'] == stamp)


def diag_value(probe: Probe, key: str, want, timeout: float = 10.0) -> None:
    wait_for(lambda: probe.inference_diag().get(key) == str(want), timeout,
             f'diagnostics {key} == {want} (now {probe.inference_diag().get(key)})')


def test_outputs_carry_the_input_sets_stamp(fresh):
    node, probe = fresh
    stamp = probe.publish_set(100)
    result = result_for(probe, stamp)
    assert result['stamp'] == {'sec': stamp // 10**9, 'nanosec': stamp % 10**9}
    # CAM_FRONT's stamp is the set's; the other five carry the capture spread.
    assert result['camera_stamps_ns'][0] == stamp
    assert result['camera_stamps_ns'][5] - stamp == 5 * 7_000_000
    wait_for(lambda: any(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec == stamp
                         for p in probe.paths), 10, 'the Path of that set')
    path = next(p for p in probe.paths
                if p.header.stamp.sec * 10**9 + p.header.stamp.nanosec == stamp)
    assert path.header.frame_id == 'base_link'
    assert result['answer'] in probe.answers
    assert result['pruner'] == 'tfps' and result['keep_ratio'] == 0.25
    assert set(result['tokens_kept_per_view']) == set(NUSCENES_CAMERAS)
    assert set(result['timings_ms']) == {'preprocess', 'vision', 'prune', 'prefill', 'decode'}
    assert result['question'].startswith('<PLANNING>')
    # A random-weight model writes no trajectory; the Path is then empty and ~/result says why.
    assert len(path.poses) == (6 if result['trajectory'] else 0)
    assert result['degraded'] is False


def test_the_waypoint_grammar_gives_a_random_model_six_waypoints_and_turns_off_live(fresh):
    """Under the grammar (the default) a random-weight model's plan is a full Path; free, not."""
    node, probe = fresh
    (budget,) = probe.set_params(max_new_tokens=96)
    assert budget.successful, budget.reason
    held = result_for(probe, probe.publish_set(105))
    assert held['waypoint_grammar'] is True and len(held['trajectory']) == 6
    wait_for(lambda: any(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec
                         == held['stamp_ns'] and len(p.poses) == 6 for p in probe.paths),
             10, 'a six-pose Path for that set')
    (off,) = probe.set_params(waypoint_grammar=False)
    assert off.successful, off.reason
    free = result_for(probe, probe.publish_set(106))
    assert free['waypoint_grammar'] is False and free['trajectory'] is None
    assert free['trajectory_reason']


def test_keep_ratio_and_pruner_change_live_through_set_parameters(fresh, tmp_path):
    node, probe = fresh
    full = result_for(probe, probe.publish_set(110))
    (ok,) = probe.set_params(keep_ratio=0.1)
    assert ok.successful, ok.reason
    cut = result_for(probe, probe.publish_set(111))
    assert cut['keep_ratio'] == 0.1
    before = sum(full['tokens_before'])
    assert sum(cut['tokens_kept_per_view'].values()) == round(0.1 * before)
    assert sum(full['tokens_kept_per_view'].values()) == round(0.25 * before)

    (too_big,) = probe.set_params(keep_ratio=1.5)
    assert not too_big.successful and 'keep_ratio' in too_big.reason and '1.0' in too_big.reason
    (unknown,) = probe.set_params(pruner='no_such_pruner')
    assert not unknown.successful
    assert 'no_such_pruner' in unknown.reason and 'tfps' in unknown.reason
    (in_llm,) = probe.set_params(pruner='fastv')  # FastV needs prune_layer >= 1
    assert not in_llm.successful and 'prune_layer' in in_llm.reason
    (read_only,) = probe.set_params(model='/elsewhere')
    assert not read_only.successful
    partial = tmp_path / 'front_only.yaml'
    partial.write_text('view_keep_weights:\n  CAM_FRONT: 1.0\n')
    (weights,) = probe.set_params(view_keep_weights_file=str(partial))
    assert not weights.successful and 'CAM_BACK' in weights.reason

    after = result_for(probe, probe.publish_set(112))
    assert after['keep_ratio'] == 0.1 and after['pruner'] == 'tfps'
    assert node.node.get_parameter('keep_ratio').value == 0.1


def test_question_topic_and_in_llm_pruning_apply_from_the_next_frame(fresh):
    node, probe = fresh
    results = probe.set_params(prune_layer=2, pruner='fastv', max_new_tokens=4)
    assert all(r.successful for r in results), [r.reason for r in results]
    probe.question_pub.publish(String(data='Is the road clear?'))
    wait_for(lambda: node.node.get_parameter('question').value == 'Is the road clear?', 10,
             'the question topic to set the question parameter')
    result = result_for(probe, probe.publish_set(120))
    assert result['question'] == 'Is the road clear?'
    assert result['pruner'] == 'fastv' and result['prune_layer'] == 2
    assert result['generated_tokens'] <= 4


def test_faster_than_inference_drops_stale_sets_and_latency_stays_bounded(fresh):
    node, probe = fresh
    probe.set_params(max_new_tokens=24)
    before = _counts(node)
    first = len(probe.results)
    sets = 40
    for i in range(sets):
        probe.publish_set(200 + i)
        time.sleep(0.025)  # 40 Hz, several times faster than the tiny model answers
    node.wait_idle()
    wait_for(lambda: _counts(node)[0] + _counts(node)[1] - sum(before) >= sets, 20,
             'every set to be answered or counted as dropped')
    processed, stale = (a - b for a, b in zip(_counts(node), before))
    assert processed + stale == sets
    assert stale > 0 and processed > 1
    diag_value(probe, 'dropped.stale', node.node.health.dropped['stale'])
    # A set counts as processed when it is published; its result still has to cross DDS.
    wait_for(lambda: len(probe.results) - first >= processed, 10, 'every answer to arrive')
    with probe.lock:
        new = probe.results[first:]
    assert len(new) == processed
    longest_run = max(sum(r['timings_ms'].values()) for r in new)
    # Latest-wins: a set waits at most one run of the set before it, never a growing queue.
    assert max(r['latency_ms'] for r in new) < 2 * longest_run + 300
    assert [r['stamp_ns'] for r in new] == sorted(r['stamp_ns'] for r in new)
    assert new[-1]['stamp_ns'] == STAMP0 + (200 + sets - 1) * 83_333_333  # newest always runs


def _counts(node) -> tuple[int, int]:
    h = node.node.health
    with h.lock:
        return h.processed, h.dropped['stale']


def _bad(kind_of_damage: str, rgb: np.ndarray, stamp: int) -> Image:
    msg = raw_msg(rgb, stamp)
    if kind_of_damage == 'unsupported_encoding':
        msg.encoding = '16UC1'
    elif kind_of_damage == 'empty_image':
        msg.height = msg.width = msg.step = 0
        msg.data = b''
    elif kind_of_damage == 'truncated_image':
        msg.data = bytes(msg.data)[: len(msg.data) // 2]
    return msg


@pytest.mark.parametrize('damage', ['unsupported_encoding', 'empty_image', 'truncated_image',
                                    'mismatched_sizes'])
def test_bad_images_are_counted_named_and_survived(fresh, damage):
    node, probe = fresh
    index = 300 + len(damage)
    images = camera_images(index)
    stamp = STAMP0 + index * 83_333_333
    msgs = [raw_msg(img, stamp + v * 7_000_000) for v, img in enumerate(images)]
    if damage == 'mismatched_sizes':
        msgs[4] = raw_msg(np.zeros((60, 80, 3), np.uint8), stamp + 4 * 7_000_000)
    else:
        msgs[2] = _bad(damage, images[2], stamp + 2 * 7_000_000)
    seen = node.node.health.skipped[damage]
    probe.publish_msgs(msgs)
    wait_for(lambda: node.node.health.skipped[damage] == seen + 1, 20, f'the {damage} fault')
    diag_value(probe, f'skipped_bad.{damage}', seen + 1)
    if damage != 'mismatched_sizes':
        diag_value(probe, f'skipped_bad.{damage}.camera', 'CAM_FRONT_RIGHT')
    assert damage in probe.inference_diag()['last_error']
    assert probe.diag_levels['drive_vlm: inference'] == DiagnosticStatus.WARN[0]
    assert result_for(probe, probe.publish_set(index + 1))['stamp_ns'] == stamp + 83_333_333


def test_an_exception_inside_inference_skips_the_frame_and_the_node_lives_on(fresh):
    node, probe = fresh
    seen = node.node.health.skipped['inference_error']
    # 6 x 730 visual tokens + 4,096 new tokens exceed the tiny model's 8,192-token context.
    assert probe.set_params(max_new_tokens=4096)[0].successful
    probe.publish_set(400)
    wait_for(lambda: node.node.health.skipped['inference_error'] == seen + 1, 20,
             'the inference error to be counted')
    assert 'context' in node.node.health.last_error
    assert probe.set_params(max_new_tokens=8)[0].successful
    assert result_for(probe, probe.publish_set(401))['generated_tokens'] <= 8


def test_silent_camera_is_named_and_min_views_5_runs_degraded(fresh):
    node, probe = fresh
    assert all(r.successful for r in probe.set_params(view_timeout=0.3))
    processed = node.node.health.processed
    for i in range(12):  # CAM_BACK (index 3) stays silent
        probe.publish_set(500 + i, skip=(3,))
        time.sleep(0.08)
    wait_for(lambda: 'CAM_BACK' in probe.camera_diag()[1], 10, 'diagnostics to name CAM_BACK')
    level, message, values = probe.camera_diag()
    assert level == DiagnosticStatus.WARN[0] and 'waiting' in message
    assert values['silent'] == 'CAM_BACK'
    assert node.node.health.processed == processed  # min_views 6: it waits

    assert probe.set_params(min_views=5)[0].successful
    time.sleep(0.3)
    stamp = probe.publish_set(520, skip=(3,))
    result = result_for(probe, stamp)
    assert result['degraded'] is True and result['missing_views'] == ['CAM_BACK']
    assert 'CAM_BACK' not in result['tokens_kept_per_view']
    assert len(result['tokens_kept_per_view']) == 5
    wait_for(lambda: 'degraded' in probe.camera_diag()[1], 10, 'a degraded camera status')

    assert probe.set_params(min_views=6)[0].successful
    stamp = probe.publish_set(530)  # CAM_BACK is back: full sets again
    assert result_for(probe, stamp)['degraded'] is False


def test_kept_token_mosaic_renders_only_while_subscribed(fresh):
    node, probe = fresh
    assert probe.node.count_subscribers('/drive_vlm/kept_tokens') == 0
    assert node.node.health.processed > 0 and node.node.mosaics_rendered == 0
    sub = probe.subscribe_mosaic()
    wait_for(lambda: node.node.kept_pub.get_subscription_count() == 1, 10, 'the subscription')
    stamp = probe.publish_set(600)
    wait_for(lambda: probe.mosaics, 20, 'a kept-token mosaic')
    mosaic = probe.mosaics[-1]
    assert mosaic.header.stamp.sec * 10**9 + mosaic.header.stamp.nanosec == stamp
    assert (mosaic.height, mosaic.width, mosaic.encoding) == (360, 960, 'rgb8')
    pixels = np.frombuffer(bytes(mosaic.data), np.uint8).reshape(360, 960, 3)
    assert pixels.std() > 0  # pruned patches are dimmed, kept ones are not
    probe.node.destroy_subscription(sub)


def test_diagnostics_report_model_cameras_and_latency(fresh):
    node, probe = fresh
    result_for(probe, probe.publish_set(700))
    wait_for(lambda: 'latency_ms.p50' in probe.inference_diag(), 10, 'latency percentiles')
    values = probe.inference_diag()
    assert int(values['frames_processed']) >= 1
    assert float(values['latency_ms.p50']) <= float(values['latency_ms.p99'])
    assert int(values['tokens_kept_total']) > 0
    with probe.lock:
        model = probe.diagnostics['drive_vlm: model']
        assert model['state'] == 'ready'
        assert probe.diag_levels['drive_vlm: model'] == DiagnosticStatus.OK[0]
    cameras = probe.camera_diag()[2]
    assert all(int(cameras[f'{n}.received']) > 0 for n in NUSCENES_CAMERAS)
    assert not math.isnan(float(cameras['CAM_FRONT.rate_hz']))
