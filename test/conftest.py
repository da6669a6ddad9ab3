"""Shared fixtures: tiny real checkpoints built once per test session."""

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.pipeline.camera_set import CameraSet
import numpy as np
import pytest


@pytest.fixture(scope='session')
def tiny_llava(tmp_path_factory):
    from drive_vlm_pruned.models.tiny import make_tiny_model

    return make_tiny_model('llava-onevision', tmp_path_factory.mktemp('tiny') / 'llava-ov')


def random_frame(seed: int = 0, size=(90, 160), stamp_ns: int = 1_000_000_000,
                 question: str = '') -> CameraSet:
    rng = np.random.default_rng(seed)
    images = tuple(rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS)
    return CameraSet(stamp_ns, images, NUSCENES_CAMERAS, question)
