"""Shared fixtures: tiny real checkpoints built once per test session."""

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.pipeline.camera_set import CameraSet
import numpy as np
import pytest

FAMILIES = ('llava-onevision', 'internvl', 'qwen2.5-vl')


@pytest.fixture(scope='session')
def tiny_checkpoints(tmp_path_factory):
    """Build each family's tiny checkpoint at most once per session."""
    from drive_vlm_pruned.models.tiny import make_tiny_model

    built = {}

    def get(family: str):
        if family not in built:
            built[family] = make_tiny_model(family, tmp_path_factory.mktemp('tiny') / family)
        return built[family]

    return get


@pytest.fixture(scope='session')
def tiny_llava(tiny_checkpoints):
    return tiny_checkpoints('llava-onevision')


@pytest.fixture(scope='session')
def small_model(tmp_path_factory):
    """Build a real LLaVA-OneVision of the training 'test' preset (16 tokens a view) once."""
    from drive_vlm_pruned.models.tiny import build_tokenizer
    from drive_vlm_pruned.training.model import build_vlm, save_checkpoint
    from drive_vlm_pruned.training.presets import PRESETS
    import torch

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model, processor = build_vlm(PRESETS['test'].model, tokenizer)
    return save_checkpoint(model, tokenizer, processor, tmp_path_factory.mktemp('small'))


@pytest.fixture(scope='module', params=FAMILIES)
def pipeline(request, tiny_checkpoints):
    """Load a pipeline on each family's tiny checkpoint."""
    from drive_vlm_pruned.models.load import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    return Pipeline(load_adapter(LoadSpec(str(tiny_checkpoints(request.param)))))


def random_frame(seed: int = 0, size=(90, 160), stamp_ns: int = 1_000_000_000,
                 question: str = '') -> CameraSet:
    rng = np.random.default_rng(seed)
    images = tuple(rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS)
    return CameraSet(stamp_ns, images, NUSCENES_CAMERAS, question)
