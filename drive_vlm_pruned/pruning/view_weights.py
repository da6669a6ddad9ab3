"""
Per-view keep weights (Prune2Drive's view-adaptive rates) from a YAML file.

File format (``config/view_weights.yaml``)::

    view_keep_weights:
      CAM_FRONT: 1.0
      CAM_FRONT_LEFT: 0.6
      ...

Keys are view names (nuScenes camera names by default); values are positive relative keep rates.
"""

from __future__ import annotations

from pathlib import Path

import yaml

KEY = 'view_keep_weights'


def load_view_weights(path: str | Path) -> dict[str, float]:
    """Read and check a view-weights YAML file; ValueError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'view-weights file {path} does not exist: pass the path of a YAML file')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f'view-weights file {path} is not valid YAML: {err}') from None
    if not isinstance(data, dict) or not isinstance(data.get(KEY), dict):
        raise ValueError(f'view-weights file {path} needs a mapping under the key {KEY!r}')
    return check_view_weights(data[KEY], source=str(path))


def check_view_weights(weights: dict, source: str = 'view weights') -> dict[str, float]:
    """Return ``{name: float}`` or raise ValueError on a non-numeric or non-positive weight."""
    out: dict[str, float] = {}
    for name, value in weights.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not 0 < value < float('inf'):
            raise ValueError(f'{source}: weight of {name!r} is {value!r}; use a finite number > 0')
        out[str(name)] = float(value)
    if not out:
        raise ValueError(f'{source}: no view weights given')
    return out
