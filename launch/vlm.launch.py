"""
Start the drive_vlm node with config/vlm.yaml plus command-line overrides.

    ros2 launch drive_vlm_pruned vlm.launch.py model:=/models/drivemm keep_ratio:=0.1
    ros2 launch drive_vlm_pruned vlm.launch.py params_file:=my_car.yaml camera_namespace:=/car1
    ros2 launch drive_vlm_pruned vlm.launch.py record_path:=/data/drive.mcap

Launch arguments left empty keep the value from the parameter file, so a params_file of your own
is never silently overridden by a launch default.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'drive_vlm_pruned'

# launch argument -> (parameter type, description); '' means "keep the parameter file's value"
OVERRIDES = {
    'model': (str, "checkpoint directory or cached model id ('' = the embedded model)"),
    'family': (str, 'llava-onevision | internvl | qwen2.5-vl | auto'),
    'keep_ratio': (float, 'fraction of visual tokens kept, 0.01-1.0'),
    'pruner': (str, 'token pruner (tfps, divprune, mvpruner, fastv, dart, ...)'),
    'camera_namespace': (str, "prefix for the six camera topics, e.g. '/car1'"),
    'device': (str, "'auto', 'cpu' or 'cuda[:N]'"),
    'vision_backend': (str, 'torch | compile | onnxruntime | tensorrt'),
    'llm_weights': (str, "the LLM's linear weights: native | int8 | int4 (CUDA sm80+ or CPU)"),
    'decode_backend': (str, 'auto | eager | compiled (static KV cache + torch.compile)'),
    'record_path': (str, 'FILE.mcap to record inputs and outputs to (Foxglove, rosbags)'),
    'calibration_file': (str, "the rig's calibration.json, for the plan overlays"),
}


def _node(context, *args, **kwargs):
    overrides = {}
    for name, (kind, _) in OVERRIDES.items():
        text = LaunchConfiguration(name).perform(context)
        if text == '':
            continue
        try:
            overrides[name] = kind(text)
        except ValueError:
            raise ValueError(
                f'launch argument {name}:={text!r} must be a {kind.__name__}') from None
    params_file = LaunchConfiguration('params_file').perform(context)
    return [Node(
        package=PACKAGE,
        executable='vlm_node',
        name=LaunchConfiguration('node_name').perform(context),
        output='screen',
        emulate_tty=True,
        parameters=[params_file] + ([overrides] if overrides else []),
    )]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'vlm.yaml'])
    arguments = [
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML parameter file (default: config/vlm.yaml)'),
        DeclareLaunchArgument('node_name', default_value='drive_vlm',
                              description='node name (outputs are ~/answer, ~/result, ...)'),
    ]
    arguments += [
        DeclareLaunchArgument(name, default_value='', description=f'{text} (empty: from the '
                                                                  'parameter file)')
        for name, (_, text) in OVERRIDES.items()
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
