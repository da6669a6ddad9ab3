"""Shared fixtures: tiny real checkpoints built once per test session."""

from pathlib import Path

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.pipeline.camera_set import CameraSet
import numpy as np
import pytest

FAMILIES = ('llava-onevision', 'internvl', 'qwen2.5-vl')

# Test modules marked ``slow``, with why: `pytest -m "not slow"` leaves them out for a fast inner
# loop, and scripts/test.sh (CI) still runs everything. Kept here rather than as a pytestmark in
# each module so the list is one place to review when a module gets faster or slower.
SLOW_MODULES = {
    'test_bag_named_dot_bag.py': 'plays a bag to a node over DDS',
    'test_bag_play.py': 'bag play over DDS, a player subprocess stopped with Ctrl-C',
    'test_bench_accuracy.py': 'the accuracy benchmark on a small model',
    'test_bench_latency.py': 'the latency and soak benchmarks',
    'test_bench_prefill.py': 'the prefill benchmark through a CLI subprocess',
    'test_cli.py': 'CLI subprocesses, the demo on the embedded model',
    'test_convert_drivemm.py': 'conversion through a CLI subprocess',
    'test_decode_backends.py': 'torch.compile of each family, inductor once',
    'test_depth_probes.py': 'fits linear probes at every depth of a small model',
    'test_e2e_bag_node.py': 'the node over DDS, fed by bag play',
    'test_embedded_model.py': 'evaluates the shipped model on a generated set (~90 s setup)',
    'test_eval_run.py': 'the eval loop, and a subprocess',
    'test_impromptu.py': 'the node over DDS, a CLI subprocess',
    'test_llm_weights.py': 'int8 on every family, compiled decode, CLI subprocesses',
    'test_node.py': 'the node over DDS',
    'test_node_recording.py': 'the node over DDS, recording',
    'test_node_start.py': 'node start-up over DDS, subprocesses',
    'test_package.py': 'builds a wheel in a subprocess',
    'test_reconpruner.py': 'the node over DDS',
    'test_recording.py': 'CLI subprocesses, killed and full recordings',
    'test_score_file.py': 'data synth and eval --score through CLI subprocesses',
    'test_search_view_rates.py': 'Optuna searches, worker subprocesses',
    'test_train_reconpruner.py': 'training',
    'test_train_vision.py': 'training',
    'test_train_vlm.py': 'training',
    'test_vision_backends.py': 'ONNX export of every family, the vision benchmark (~70 s)',
}


def pytest_configure(config):
    """Refuse to run when SLOW_MODULES names a test module that no longer exists."""
    here = Path(__file__).parent
    gone = sorted(name for name in SLOW_MODULES if not (here / name).is_file())
    if gone:  # a renamed module would silently join the fast loop
        raise pytest.UsageError(f'test/conftest.py SLOW_MODULES names missing files: {gone}')


def pytest_collection_modifyitems(config, items):
    """Mark every test of the modules in SLOW_MODULES ``slow``."""
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    return Pipeline(load_adapter(LoadSpec(str(tiny_checkpoints(request.param)))))


def random_frame(seed: int = 0, size=(90, 160), stamp_ns: int = 1_000_000_000,
                 question: str = '') -> CameraSet:
    rng = np.random.default_rng(seed)
    images = tuple(rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS)
    return CameraSet(stamp_ns, images, NUSCENES_CAMERAS, question)
