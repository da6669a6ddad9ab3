"""The offline runner over real bags, and the planning metrics against hand-computed values."""

import json
import math
import os

from drive_vlm_pruned.bag.run import run_bag, RunOptions
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.bag.topics import FrameTruth, FutureObjectTruth, read_ground_truth
from drive_vlm_pruned.eval.planning import (
    box_corners,
    collisions,
    rectangles_overlap,
    score_trajectory,
)
from drive_vlm_pruned.models.prompts import PLANNING
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
import pytest

SETTINGS = RuntimeSettings(question=PLANNING, max_new_tokens=6)


def truth(points, valid=(True,) * 6, agents=()):
    return FrameTruth(stamp_ns=0, index=0, camera_stamps_ns={}, ego_pose={},
                      future_trajectory=tuple(points), future_valid=tuple(valid),
                      future_objects=tuple(agents))


def test_l2_uses_the_cumulative_convention_and_masks_steps_past_the_scene():
    gt = [(4.0 * (k + 1), 0.0) for k in range(6)]
    pred = [(x, 1.0 * (k + 1)) for k, (x, _) in enumerate(gt)]  # errors 1, 2, ..., 6 m
    score = score_trajectory(pred, truth(gt))
    assert score.l2 == {'1s': 1.5, '2s': 2.5, '3s': 3.5}
    masked = score_trajectory(pred, truth(gt, valid=(True,) * 3 + (False,) * 3))
    assert masked.l2 == {'1s': 1.5, '2s': 2.0, '3s': 2.0}
    assert score.collision == {'1s': 0.0, '2s': 0.0, '3s': 0.0}


def test_collision_counts_overlapping_steps_and_skips_where_gt_collides():
    gt = [(4.0 * (k + 1), 0.0) for k in range(6)]
    # an agent parked 3.5 m left of the GT path at step 4 (index 3) only
    parked = FutureObjectTruth(1, 'car', (4.0, 1.8, 1.5), (None, None, None, (16.0, 3.5, 0.0),
                                                           None, None))
    swerve = [(x, 3.5 if k == 3 else 0.0) for k, (x, _) in enumerate(gt)]
    score = score_trajectory(swerve, truth(gt, agents=[parked]))
    assert score.collision == {'1s': 0.0, '2s': 0.25, '3s': pytest.approx(1 / 6)}
    # the same agent on the GT path: that step is not scored at all
    blocking = FutureObjectTruth(2, 'car', (4.0, 1.8, 1.5), (None, None, None, (16.0, 0.0, 0.0),
                                                             None, None))
    score = score_trajectory(gt, truth(gt, agents=[blocking]))
    assert score.collision == {'1s': 0.0, '2s': 0.0, '3s': 0.0}


def test_ego_box_is_shifted_forward_and_oriented_along_the_path():
    ahead = FutureObjectTruth(1, 'car', (1.0, 1.0, 1.0), ((3.0, 0.0, 0.0),) + (None,) * 5)
    # Ego box centre at x = 1 + 0.5, reaching x = 1.5 + 2.042 = 3.542 > 3.0 - 0.5: overlap.
    assert collisions([(1.0, 0.0)] + [(2.0 + k, 0.0) for k in range(5)], [ahead])[0]
    # Heading along +y (driving left): the long axis turns, the box no longer reaches x = 2.5.
    assert not collisions([(0.0, 1.0)] + [(0.0, 2.0 + k) for k in range(5)], [ahead])[0]
    a = box_corners(0, 0, 0, 2, 2)
    assert rectangles_overlap(a, box_corners(1.1, 0, math.pi / 4, 0.2, 0.2))  # tip at 0.96
    assert not rectangles_overlap(a, box_corners(1.9, 0, math.pi / 4, 0.2, 0.2))  # tip 1.76
    assert not rectangles_overlap(a, box_corners(3.0, 3.0, 0.3, 1, 1))


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp('bags') / 'drive'
    synth_bag(path, SynthOptions(frames=8, width=160, height=90, jitter_ms=2.0))
    return path


def test_run_writes_one_line_per_set_with_its_ground_truth(synth, tiny_llava, tmp_path):
    out = tmp_path / 'results.jsonl'
    summary = run_bag(RunOptions(str(tiny_llava), str(synth), str(out), SETTINGS,
                                 progress=False), log=lambda _: None)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    gt = read_ground_truth(synth)
    assert [line['stamp_ns'] for line in lines] == [f.stamp_ns for f in gt.frames]
    assert summary.frames == 8 and summary.unpaired_messages == 0
    for line, record in zip(lines, gt.frames):
        assert line['gt_stamp_ns'] == record.stamp_ns
        assert line['gt_trajectory'] == [list(p) for p in record.future_trajectory]
        assert line['camera_stamps_ns'] == list(record.camera_stamps_ns.values())
        assert sum(line['tokens_kept_per_view'].values()) == round(0.25 * 6 * 729)
    assert '| frames run' in summary.table()


def test_a_truncated_bag_reports_where_it_broke_and_keeps_earlier_results(
        synth, tiny_llava, tmp_path):
    damaged = tmp_path / 'damaged'
    damaged.mkdir()
    for f in synth.iterdir():
        data = f.read_bytes()
        (damaged / f.name).write_bytes(data[: int(len(data) * 0.6)] if f.suffix == '.mcap'
                                       else data)
    out = tmp_path / 'partial.jsonl'
    summary = run_bag(RunOptions(str(tiny_llava), str(damaged), str(out), SETTINGS,
                                 progress=False), log=lambda _: None)
    lines = out.read_text().splitlines()
    assert 0 < len(lines) < 8 and summary.frames == len(lines)
    assert 'damaged' in summary.damage and 'stopped after' in summary.damage
    assert str(damaged) in summary.damage


def test_a_bag_without_the_camera_topics_names_what_it_has(synth, tiny_llava, tmp_path):
    options = RunOptions(str(tiny_llava), str(synth), str(tmp_path / 'r.jsonl'), SETTINGS,
                         camera_namespace='/car1', progress=False)
    with pytest.raises(ValueError, match='has none of the camera topics.*/cam_front/image_raw'):
        run_bag(options, log=lambda _: None)


def test_run_cli_prints_the_table_and_names_a_missing_bag(tiny_llava, tmp_path, synth):
    from drive_vlm_pruned.cli.main import main

    assert main(['run', '--model', str(tiny_llava), '--bag', str(tmp_path / 'none'),
                 '--out', str(tmp_path / 'x.jsonl')]) == 2
    out = tmp_path / 'cli.jsonl'
    assert main(['run', '--model', str(tiny_llava), '--bag', str(synth), '--out', str(out),
                 '--max-new-tokens', '2', '--limit', '3', '--keep-ratio', '0.1',
                 '--no-progress']) == 0
    assert len(out.read_text().splitlines()) == 3
    assert os.path.getsize(out) > 0
