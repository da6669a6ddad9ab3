"""The repository's own lint configuration (ruff.toml) holds everywhere."""

import importlib.util
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    if importlib.util.find_spec('ruff') is None:
        pytest.skip('ruff is not installed: pip install ".[test]"')
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
