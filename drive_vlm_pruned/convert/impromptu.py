"""
Impromptu-VLA: already an HF ``Qwen2_5_VLForConditionalGeneration`` checkpoint; record its format.

Nothing in the weights changes. The output directory gets the source's files (weights hard-linked
when the file system allows, copied otherwise) and a config.json that names the 'impromptu-vla'
prompt format: Impromptu-VLA's six-view prompt in its camera order, LLaMA-Factory's qwen2_vl chat
template and its 262144-pixel image budget (models/prompts.py; sources in
docs/published_models.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil

from .safetensors_stream import ConversionError, refuse_pickles

ARCHITECTURE = 'Qwen2_5_VLForConditionalGeneration'
# Qwen/Qwen2.5-VL-3B-Instruct preprocessor_config.json, which LLaMA-Factory saves with the
# fine-tuned weights.
QWEN25_PROCESSOR = {'patch_size': 14, 'temporal_patch_size': 2, 'merge_size': 2,
                    'image_mean': [0.48145466, 0.4578275, 0.40821073],
                    'image_std': [0.26862954, 0.26130258, 0.27577711]}


def check_source(src: Path, config: dict) -> list[str]:
    """Check the source is a Qwen2.5-VL checkpoint; return notes on its processor settings."""
    archs = config.get('architectures') or [config.get('model_type', '?')]
    if ARCHITECTURE not in archs:
        raise ConversionError(f'{src / "config.json"} names architecture '
                              f'{", ".join(map(str, archs))}, not {ARCHITECTURE} (Impromptu-VLA '
                              'is a Qwen2.5-VL fine-tune)')
    refuse_pickles(src)
    if not any(src.glob('*.safetensors')):
        raise ConversionError(f'{src} has no .safetensors weights')
    proc_path = src / 'preprocessor_config.json'
    if not proc_path.is_file():
        raise ConversionError(f'{src} has no preprocessor_config.json')
    proc = json.loads(proc_path.read_text())
    notes = []
    for key, want in QWEN25_PROCESSOR.items():
        got = proc.get(key)
        if got is not None and got != want:
            raise ConversionError(f"{proc_path}: {key} {got} differs from Qwen2.5-VL's {want}")
    size = proc.get('size') if isinstance(proc.get('size'), dict) else {}
    pixels = (proc.get('min_pixels', size.get('shortest_edge')),
              proc.get('max_pixels', size.get('longest_edge')))
    notes.append(f'processor pixel range {pixels[0]}..{pixels[1]}; views are first shrunk to '
                 '262144 pixels as LLaMA-Factory did in training (image_max_pixels)')
    return notes


def copy_checkpoint(src: Path, out: Path, config: dict) -> int:
    """Link or copy every file of ``src`` into ``out`` except config.json; return files done."""
    count = 0
    for path in sorted(src.iterdir()):
        if path.is_dir() or path.name in ('config.json', 'README.md') or path.name.startswith('.'):
            continue
        target = out / path.name
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        count += 1
    (out / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
    return count
