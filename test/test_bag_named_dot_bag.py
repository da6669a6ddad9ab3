"""
A rosbag2 DIRECTORY named ``*.bag`` opens as rosbag2 everywhere, and is never called damaged.

rosbags' AnyReader takes any ``.bag`` path for a ROS 1 bag file. The README's own example wrote
``/tmp/drive.bag``; `drive-vlm run` then fell back to the mcap stream reader and said a healthy
bag was damaged (exit 3).
"""

import shutil
import subprocess
import sys

from drive_vlm_pruned.bag.play import play_bag, PlayOptions
from drive_vlm_pruned.bag.reading import BagReader
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.cameras import camera_topics
import pytest

CLI = [sys.executable, '-m', 'drive_vlm_pruned.cli.main']
FRAMES = 4


@pytest.fixture(scope='module')
def dot_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('dotbag') / 'drive.bag'
    synth_bag(path, SynthOptions(frames=FRAMES, width=64, height=36, seed=2))
    return path


def test_reader_reads_a_dot_bag_directory_whole_and_reports_no_damage(dot_bag, tmp_path):
    plain = tmp_path / 'drive3'
    shutil.copytree(dot_bag, plain)
    topics = camera_topics()
    got = BagReader(dot_bag, topics)
    named = [(m.topic, m.log_time_ns) for m in got.messages()]
    reference = [(m.topic, m.log_time_ns) for m in BagReader(plain, topics).messages()]
    assert got.damage is None
    assert named == reference and len(named) == FRAMES * len(topics)


def test_cli_synth_then_run_on_a_dot_bag_exits_0_without_damage_or_warnings(
        tiny_llava, tmp_path):
    bag = tmp_path / 'drive.bag'
    synth = subprocess.run([*CLI, 'bag', 'synth', str(bag), '--frames', str(FRAMES),
                            '--width', '64', '--height', '36', '--quiet'],
                           capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    out = subprocess.run([*CLI, 'run', '--model', str(tiny_llava), '--bag', str(bag),
                          '--out', str(tmp_path / 'r.jsonl'), '--max-new-tokens', '2',
                          '--no-progress'], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert 'damaged' not in text
    assert 'Warning' not in text, text  # e.g. transformers' FutureWarning on a renamed keyword
    assert len((tmp_path / 'r.jsonl').read_text().splitlines()) == FRAMES


def test_play_publishes_every_set_of_a_dot_bag(dot_bag):
    stats = play_bag(dot_bag, PlayOptions(rate=20.0))
    assert stats.published['/cam_front/image_raw'] == FRAMES
    assert not stats.interrupted
