"""ROS-standard flake8 check (ament_flake8), as `colcon test` runs it."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = [ROOT / 'drive_vlm_pruned', ROOT / 'test', ROOT / 'launch', ROOT / 'setup.py']
# flake8 checks files in a fork()ed multiprocessing pool. Forking this pytest process, whose
# earlier tests left DDS, torch and tqdm threads running, can deadlock a child on a lock one of
# those threads held (seen: the suite hung here), so flake8 runs in a fresh interpreter.
RUN_FLAKE8 = ('import sys; from ament_flake8.main import main; '
              'sys.exit(main(argv=sys.argv[1:]))')


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    pytest.importorskip(
        'ament_flake8.main',
        reason='ament_flake8 is absent: source a ROS 2 install, or pip install ".[lint]"',
    )
    result = subprocess.run([sys.executable, '-c', RUN_FLAKE8, *(str(p) for p in PATHS)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'code style errors / warnings:\n{result.stdout}{result.stderr}'
