"""The ament_python package metadata: package.xml, setup.cfg, and what a built wheel installs."""

from pathlib import Path
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python_with_ros_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'drive_vlm_pruned'
    assert root.findtext('export/build_type') == 'ament_python'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'std_msgs', 'sensor_msgs', 'nav_msgs', 'diagnostic_msgs'} <= exec_deps
    test_deps = {e.text for e in root.findall('test_depend')}
    assert {'ament_flake8', 'ament_pep257', 'python3-pytest'} <= test_deps


def test_setup_cfg_puts_scripts_where_ros2_run_finds_them():
    text = (ROOT / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/drive_vlm_pruned' in text
    assert 'install_scripts=$base/lib/drive_vlm_pruned' in text
    assert (ROOT / 'resource' / 'drive_vlm_pruned').is_file()


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp('wheel')
    subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
         '-w', str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    return zipfile.ZipFile(next(out.glob('*.whl')))


def test_wheel_installs_the_ament_marker_package_xml_config_and_cli(wheel):
    names = wheel.namelist()
    data = [n.split('.data/data/', 1)[1] for n in names if '.data/data/' in n]
    assert 'share/ament_index/resource_index/packages/drive_vlm_pruned' in data
    assert 'share/drive_vlm_pruned/package.xml' in data
    assert 'share/drive_vlm_pruned/config/view_weights.yaml' in data
    entry_points = wheel.read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'drive-vlm = drive_vlm_pruned.cli.main:main' in entry_points
