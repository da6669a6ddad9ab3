"""Layers import in one direction: the pruning library needs only torch (and pyyaml)."""

import ast
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRUNING = ROOT / 'drive_vlm_pruned' / 'pruning'
ALLOWED_EXTERNAL = {'torch', 'yaml', 'safetensors', '__future__', 'abc', 'collections',
                    'dataclasses', 'enum', 'math', 'pathlib', 'typing'}


def imported_modules(path: Path) -> set[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(0, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.level, node.module or ''))
    return found


def test_pruning_imports_only_torch_and_its_own_modules():
    for path in PRUNING.glob('*.py'):
        for level, module in imported_modules(path):
            if level == 0:
                assert module.split('.')[0] in ALLOWED_EXTERNAL, f'{path.name} imports {module}'
            elif level == 2:  # drive_vlm_pruned.<x>: only the plain camera-layout constants
                assert module == 'cameras', f'{path.name} imports ..{module}'
            else:
                assert level == 1, f'{path.name} imports from {"." * level}{module}'


def test_importing_pruning_loads_no_ros_and_no_transformers():
    code = ('import sys, drive_vlm_pruned.pruning; '
            'print(sorted({m.split(".")[0] for m in sys.modules}))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    loaded = out.stdout
    for forbidden in ('rclpy', 'transformers', 'sensor_msgs', 'rosbags'):
        assert f"'{forbidden}'" not in loaded
    assert "'torch'" in loaded


SCENES = ROOT / 'drive_vlm_pruned' / 'scenes'


def test_scenes_import_only_numpy_the_stdlib_and_the_camera_layout():
    """The scene generator stays reusable for training: numpy only, no torch, no ROS."""
    for path in SCENES.glob('*.py'):
        for level, module in imported_modules(path):
            if level == 0:
                top = module.split('.')[0]
                assert top == 'numpy' or top in sys.stdlib_module_names, (
                    f'scenes/{path.name} imports {module}')
            elif level == 2:  # drive_vlm_pruned.<x>: only the plain camera-layout constants
                assert module == 'cameras', f'scenes/{path.name} imports ..{module}'
            else:
                assert level == 1, f'scenes/{path.name} imports from {"." * level}{module}'


HIGHER = {'frames', 'node', 'bag', 'bench', 'cli'}
LOWER_MAY_NOT_IMPORT = {
    'vision': {'models', 'pipeline', 'data', 'eval', 'training'} | HIGHER,
    'models': {'pipeline', 'data', 'eval', 'training'} | HIGHER,
    'pipeline': {'data', 'eval', 'training'} | HIGHER,
    # message -> CameraSet code the node and the offline runner share: no ROS, no node
    'frames': HIGHER - {'frames'},
    # checkpoint conversion: models, transformers and safetensors; never ROS or the pipeline
    'convert': {'pipeline', 'data', 'eval'} | HIGHER,
    # DriveLM-format data: scenes, prompts and trajectory text in, files out; no ROS, no node
    'data': HIGHER | {'eval'},
    # scoring and the eval loop: drive the pipeline over data files; no ROS, no node, no bag
    'eval': HIGHER,
    # searches over pipeline settings: drive eval/pipeline/models; no ROS, no node, no bench
    'search': HIGHER,
    # training may import models, data and pipeline; inference never imports training
    'training': HIGHER,
}


def internal_targets(path: Path, package: str) -> set[str]:
    """Names of the drive_vlm_pruned subpackages a module imports (relative or absolute)."""
    targets = set()
    for level, module in imported_modules(path):
        parts = module.split('.') if module else []
        if level == 0 and parts[:1] == ['drive_vlm_pruned'] and len(parts) > 1:
            targets.add(parts[1])
        elif level == 1 and parts:
            targets.add(package)
        elif level == 2 and parts:
            targets.add(parts[0])
    return targets


@pytest.mark.parametrize('package', sorted(LOWER_MAY_NOT_IMPORT))
def test_lower_layers_never_import_higher_ones_or_ros(package):
    for path in (ROOT / 'drive_vlm_pruned' / package).glob('*.py'):
        bad = internal_targets(path, package) & LOWER_MAY_NOT_IMPORT[package]
        assert not bad, f'{package}/{path.name} imports {bad}'
        external = {m.split('.')[0] for level, m in imported_modules(path) if level == 0}
        assert not external & {'rclpy', 'rosbags', 'sensor_msgs'}, f'{path.name} imports ROS'


def test_inference_never_imports_training():
    """The node, pipeline and models run without the training package (issue 13)."""
    for package in ('node', 'pipeline', 'models', 'vision', 'frames', 'eval'):
        for path in (ROOT / 'drive_vlm_pruned' / package).glob('*.py'):
            assert 'training' not in internal_targets(path, package), (
                f'{package}/{path.name} imports training')
