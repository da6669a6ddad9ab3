"""config/vlm.yaml documents every node parameter; the launch file is right for a real ROS."""

import ast
import importlib.util
from pathlib import Path

from drive_vlm_pruned.models.prompts import PLANNING
from drive_vlm_pruned.node.parameters import PARAMETERS
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'vlm.launch.py'


def test_vlm_yaml_sets_every_parameter_with_its_declared_type_and_default():
    params = yaml.safe_load((ROOT / 'config' / 'vlm.yaml').read_text())['/**']['ros__parameters']
    assert set(params) == set(PARAMETERS)
    for name, spec in PARAMETERS.items():
        assert type(params[name]) is type(spec.default), name  # ROS types are strict
        assert params[name] == spec.default, name
    assert params['question'] == PLANNING
    text = (ROOT / 'config' / 'vlm.yaml').read_text()
    assert all(f'{name}:' in text for name in PARAMETERS)


def _launch_tree():
    return ast.parse(LAUNCH.read_text())


def _assigned(tree, name):
    """Return the value of the launch file's module-level assignment ``name = ...``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise AssertionError(f'{LAUNCH.name} assigns no {name}')


def _overrides(tree) -> dict[str, str]:
    """Return OVERRIDES as {launch argument: the name of the type its text converts to}."""
    table = _assigned(tree, 'OVERRIDES')
    assert isinstance(table, ast.Dict)
    out = {}
    for key, value in zip(table.keys, table.values):
        assert isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Name), (
            f'OVERRIDES[{ast.unparse(key)}] is not (type, description)')
        out[ast.literal_eval(key)] = value.elts[0].id
    return out


def _calls(tree, function):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == function]


def _keywords(call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords}


def test_every_launch_override_is_a_node_parameter_of_the_same_type():
    overrides = _overrides(_launch_tree())
    assert set(overrides) <= set(PARAMETERS), set(overrides) - set(PARAMETERS)
    for name, kind in overrides.items():
        want = type(PARAMETERS[name].default).__name__
        # bool('false') is True, and list parameters have no text form: only these convert.
        assert kind in {'str', 'float', 'int'}, f'{name}: launch text cannot become a {kind}'
        assert kind == want, f'launch argument {name} is a {kind}, the parameter a {want}'
    # The ones the README's examples and table use.
    assert {'model', 'family', 'keep_ratio', 'pruner', 'camera_namespace', 'record_path',
            'calibration_file'} <= set(overrides)


def test_launch_file_declares_each_override_and_its_own_two_arguments():
    tree = _launch_tree()
    declared = [c.args[0] for c in _calls(tree, 'DeclareLaunchArgument')]
    literal = {ast.literal_eval(a) for a in declared if isinstance(a, ast.Constant)}
    # Launch-level arguments, not node parameters: the YAML file and the node's name.
    assert literal == {'params_file', 'node_name'}
    assert not literal & set(PARAMETERS)
    # The rest are declared in one comprehension over OVERRIDES, with '' meaning "keep the
    # parameter file's value", and _node reads each back by the same name.
    comprehensions = [n for n in ast.walk(tree) if isinstance(n, ast.ListComp)
                      and isinstance(n.elt, ast.Call)
                      and ast.unparse(n.elt.func) == 'DeclareLaunchArgument']
    assert len(comprehensions) == 1
    comp = comprehensions[0]
    assert ast.unparse(comp.generators[0].iter) == 'OVERRIDES.items()'
    assert ast.unparse(comp.elt.args[0]) == ast.unparse(comp.generators[0].target.elts[0])
    assert ast.literal_eval(_keywords(comp.elt)['default_value']) == ''
    node_function = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                         and n.name == '_node')
    loops = [n for n in ast.walk(node_function) if isinstance(n, ast.For)]
    assert [ast.unparse(loop.iter) for loop in loops] == ['OVERRIDES.items()']


def test_launch_file_starts_the_installed_node_with_the_shipped_yaml():
    tree = _launch_tree()
    assert ast.literal_eval(_assigned(tree, 'PACKAGE')) == 'drive_vlm_pruned'
    (node,) = _calls(tree, 'Node')
    keywords = _keywords(node)
    assert ast.unparse(keywords['package']) == 'PACKAGE'
    executable = ast.literal_eval(keywords['executable'])
    assert f"'{executable} = drive_vlm_pruned.node.main:main'" in (ROOT / 'setup.py').read_text()
    assert ast.unparse(keywords['parameters']).startswith('[params_file]')
    (joined,) = _calls(tree, 'PathJoinSubstitution')
    parts = [ast.literal_eval(e) for e in joined.args[0].elts if isinstance(e, ast.Constant)]
    assert parts == ['config', 'vlm.yaml'] and (ROOT / 'config' / 'vlm.yaml').is_file()


def test_launch_description_builds_where_launch_ros_is_installed():
    if importlib.util.find_spec('launch_ros') is None:
        pytest.skip('launch_ros is not installed (no PyPI wheel; it comes with a ROS 2 install)')
    spec = importlib.util.spec_from_file_location('vlm_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert {'model', 'keep_ratio', 'pruner', 'params_file', 'camera_namespace'} <= names
