"""ROS-standard docstring check (ament_pep257), as `colcon test` runs it."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = [ROOT / 'drive_vlm_pruned', ROOT / 'test', ROOT / 'launch']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip(
        'ament_pep257.main',
        reason='ament_pep257 is absent: source a ROS 2 install, or pip install ".[lint]"',
    )
    rc = main.main(argv=[str(p) for p in PATHS if p.exists()])
    assert rc == 0, 'Found code style errors / warnings'
