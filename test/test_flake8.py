"""ROS-standard flake8 check (ament_flake8), as `colcon test` runs it."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = [ROOT / 'drive_vlm_pruned', ROOT / 'test', ROOT / 'launch', ROOT / 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    main = pytest.importorskip(
        'ament_flake8.main',
        reason='ament_flake8 is absent: source a ROS 2 install, or pip install ".[lint]"',
    )
    rc, errors = main.main_with_errors(argv=[str(p) for p in PATHS if p.exists()])
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
