"""
End to end: synth bag -> bag play -> node -> results over DDS, and the offline run agrees.

Every played frame set is answered or counted as dropped, and the node's answers equal the
offline runner's (greedy decoding) frame for frame.
"""

import json

from drive_vlm_pruned.bag.play import play_bag, PlayOptions
from drive_vlm_pruned.bag.run import run_bag, RunOptions
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.bag.topics import read_ground_truth
from drive_vlm_pruned.models.prompts import PLANNING
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings
import rclpy
from ros_harness import NodeUnderTest, Probe, ros_context, wait_for

FRAMES = 16


def test_played_bag_is_answered_or_counted_and_matches_the_offline_run(tiny_llava, tmp_path):
    bag = tmp_path / 'drive'
    synth_bag(bag, SynthOptions(frames=FRAMES, width=160, height=90, jitter_ms=2.0))
    played = [f.stamp_ns for f in read_ground_truth(bag).frames]

    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), max_new_tokens=6)
    probe = Probe(context)
    try:
        # quarter speed: the tiny model answers most sets, so the comparison covers many
        stats = play_bag(bag, PlayOptions(rate=0.25, wait_for_subscribers_s=20.0))
        assert stats.published['/cam_front/image_raw'] == FRAMES
        health = node.node.health

        def counted() -> int:
            with health.lock:
                return (health.processed + sum(health.dropped.values())
                        + sum(health.skipped.values()))

        # the last messages may still be in flight when the player returns
        wait_for(lambda: counted() == FRAMES and node.node.worker.idle, 30,
                 f'all {FRAMES} played sets to be answered or counted as dropped')
        wait_for(lambda: len(probe.results) == health.processed, 20,
                 'every answer to arrive over DDS')
        assert counted() == FRAMES, (health.processed, health.dropped, health.skipped)
        assert node.node.sync.pending() == 0 and sum(node.node.sync.evicted) == 0
        answered = {r['stamp_ns']: r for r in probe.results}
        assert set(answered) <= set(played) and len(answered) == health.processed
        assert len(answered) >= FRAMES // 2
    finally:
        probe.close()
        node.close()
        rclpy.shutdown(context=context)

    out = tmp_path / 'offline.jsonl'
    settings = RuntimeSettings(question=PLANNING, max_new_tokens=6)
    run_bag(RunOptions(str(tiny_llava), str(bag), str(out), settings, progress=False),
            log=lambda _: None)
    offline = {line['stamp_ns']: line for line in map(json.loads, out.read_text().splitlines())}
    assert list(offline) == played
    for stamp, result in answered.items():
        assert result['answer'] == offline[stamp]['answer'], stamp
        assert result['tokens_kept_per_view'] == offline[stamp]['tokens_kept_per_view']
        assert result['camera_stamps_ns'] == offline[stamp]['camera_stamps_ns']
