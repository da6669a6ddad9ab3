"""
The embedded default model: the trained nano checkpoint shipped inside the package.

``embedded_model_dir()`` is the one place that finds it. ``pip install`` and ``colcon build``
install ``drive_vlm_pruned/checkpoints/drive-vlm-nano/`` with the package (setup.py package
data), so it is found next to this module with no download. Its model card is the README.md in
that directory.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_NAME = 'drive-vlm-nano'
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / 'checkpoints' / EMBEDDED_NAME
REQUIRED = ('config.json', 'model.safetensors', 'tokenizer.json', 'preprocessor_config.json')


def embedded_model_dir() -> Path:
    """Return the shipped checkpoint directory; FileNotFoundError names what is missing."""
    return check_embedded(EMBEDDED_DIR)


def check_embedded(directory: Path) -> Path:
    """Return ``directory`` if it holds a complete checkpoint, else explain how to get one."""
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f'the embedded model is not installed: {directory} lacks {", ".join(missing)}. '
            'Reinstall the package (pip install . / colcon build), or train it with '
            '`drive-vlm data synth` + `drive-vlm train vlm` (see its README.md model card) and '
            "pass the run's final/ directory as --model"
        )
    return directory
