"""
Layers import in one direction: ORDER below, lowest first, and no import circles.

The pruning library needs only torch (and pyyaml), the scene generator only numpy, and nothing
below the bag tools needs ROS.
"""

import ast
import functools
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


# Every subpackage (and the top-level cameras module) in one order, lowest first: a module may
# import from its own package and from packages before it, never from one after it. The order
# is the one the imports already follow (grep -rn "from \.\." drive_vlm_pruned, in functions
# too); where two packages do not import each other, the place keeps an older rule.
ORDER = (
    'library_logs',  # filters for expected third-party log lines; stdlib only, set at import
    'cameras',   # the camera layout constants everything shares; imports nothing of ours
    'pruning',   # torch only (tests above)
    'vision',    # encoder backends: ONNX export, onnxruntime, TensorRT
    'scenes',    # numpy only (tests above)
    'models',    # one adapter per family; vision backends, pruning hooks
    'convert',   # published checkpoints -> models; below pipeline, data and eval: needs none
    'pipeline',  # CameraSet -> Result
    'data',      # DriveLM-format data from scenes, prompts and trajectory text
    'eval',      # scoring and the eval loop over data files
    'training',  # may use models, data and eval; nothing below imports it (test below)
    'search',    # searches over pipeline settings, scored by eval
    'frames',    # messages -> CameraSet for the node and the offline runner; above training so
                 # that neither imports the other
    'bag',       # bag synth / play / offline run: frames, pipeline, eval
    'node',      # the ROS node: frames, pipeline, bag recording
    'bench',     # benchmarks drive everything below, the node included (bench/node_load.py)
    'cli',       # the drive-vlm front door
)
RANK = {name: i for i, name in enumerate(ORDER)}
PACKAGE_ROOT = ROOT / 'drive_vlm_pruned'

# Upward imports that exist today, as (module, package it imports from): a helper that lives
# too high, until it is moved down; delete the entry with the import. Anything not listed here
# fails. Empty since issue 24 (the benchmarks take typed options and never import cli/).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE_ROOT.rglob('*.py') if p != PACKAGE_ROOT / '__init__.py')


def _resolved_imports(path: Path) -> list[tuple[tuple[str, ...], int]]:
    """
    Return what ``path`` imports of ours as module paths under drive_vlm_pruned, with lines.

    Every import counts, the ones inside functions too: a function-level import still ties the
    two packages together, it only delays the tie until the call.
    """
    here = path.relative_to(PACKAGE_ROOT).with_suffix('').parts[:-1]  # the module's package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split('.'))
                if parts[0] == 'drive_vlm_pruned' and len(parts) > 1:
                    found.append((parts[1:], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split('.')) if node.module else ()
            if node.level == 0:
                if module[:1] != ('drive_vlm_pruned',):
                    continue
                base = module[1:]
            else:
                base = here[:len(here) - (node.level - 1)] + module
            if module and base:
                found.append((base, node.lineno))
            if not module or not base:  # from . import a, b: each name is a module
                found += [(base + (alias.name,), node.lineno) for alias in node.names]
    return found


@functools.cache
def package_imports() -> list[tuple[str, str, str, int]]:
    """Every import between two of our packages: (module, its package, imported package, line)."""
    edges = []
    for path in _modules():
        source = _package_of(path)
        for parts, line in _resolved_imports(path):
            if parts[0] != source:
                edges.append((str(path.relative_to(PACKAGE_ROOT)), source, parts[0], line))
    return edges


def test_the_order_names_every_subpackage_and_top_level_module_once():
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if (p / '__init__.py').is_file()}
    modules = {p.stem for p in PACKAGE_ROOT.glob('*.py') if p.name != '__init__.py'}
    assert len(ORDER) == len(set(ORDER))
    assert set(ORDER) == packages | modules
    # The package's own __init__ imports only the stdlib-only log filters: importing
    # drive_vlm_pruned.pruning must not pull in anything else
    # (test_importing_pruning_loads_no_ros_and_no_transformers).
    assert [p[0] for p, _ in _resolved_imports(PACKAGE_ROOT / '__init__.py')] == ['library_logs']
    assert {m for _, m in imported_modules(PACKAGE_ROOT / 'library_logs.py')} <= {
        '__future__', 'logging'}


def test_every_import_resolves_to_one_of_our_packages():
    """A typo'd or too-deep relative import would otherwise slip past the order check."""
    for module, _, target, line in package_imports():
        assert target in RANK, f'{module}:{line} imports {target!r}, which is not in ORDER'


def test_no_module_imports_from_a_higher_package():
    upward = sorted(
        f'{module}:{line} ({source}) imports {target}'
        for module, source, target, line in package_imports()
        if RANK[target] > RANK[source] and (module, target) not in KNOWN_UPWARD
    )
    assert not upward, 'imports against ORDER (move the code down instead):\n' + '\n'.join(upward)


def test_every_known_upward_import_is_still_there():
    """Remove an entry once its import is gone, so the list never allows a new one back in."""
    seen = {(module, target) for module, _, target, _ in package_imports()}
    assert KNOWN_UPWARD <= seen, f'gone, delete from KNOWN_UPWARD: {KNOWN_UPWARD - seen}'


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one import cycle of ``graph`` as a path [a, b, ..., a], or [] if there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) == []


def test_no_import_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, source, target, _ in package_imports():
        if (module, target) not in KNOWN_UPWARD:  # a known upward import would close a circle
            graph.setdefault(source, set()).add(target)
    assert not _cycle(graph), ' -> '.join(_cycle(graph))


def test_no_import_circle_between_modules():
    """Within a package too: vision/backends.py and tensorrt_engine.py once did."""
    names = {}
    for path in _modules():
        parts = path.relative_to(PACKAGE_ROOT).with_suffix('').parts
        names[parts[:-1] if parts[-1] == '__init__' else parts] = path  # a package is its init
    graph: dict[str, set[str]] = {}
    for parts, path in names.items():
        this = '.'.join(parts)
        for target, _ in _resolved_imports(path):
            # from .x import name: the module x (name is a function or class in it)
            while target and target not in names:
                target = target[:-1]
            if target and target != parts:
                graph.setdefault(this, set()).add('.'.join(target))
    assert not _cycle(graph), ' -> '.join(_cycle(graph))


# Below the bag tools nothing may need a ROS install (frames take duck-typed messages).
NO_ROS = ORDER[:RANK['bag']]


@pytest.mark.parametrize('package', NO_ROS)
def test_packages_below_the_bag_tools_never_import_ros(package):
    single = PACKAGE_ROOT / f'{package}.py'
    paths = [single] if single.is_file() else sorted((PACKAGE_ROOT / package).rglob('*.py'))
    for path in paths:
        external = {m.split('.')[0] for level, m in imported_modules(path) if level == 0}
        assert not external & {'rclpy', 'rosbags', 'sensor_msgs'}, f'{path.name} imports ROS'


def test_inference_never_imports_training():
    """The node, pipeline and models run without the training package (issue 13)."""
    for package in ('node', 'pipeline', 'models', 'vision', 'frames', 'eval'):
        bad = {m for m, source, target, _ in package_imports()
               if source == package and target == 'training'}
        assert not bad, f'{", ".join(sorted(bad))} import training'
