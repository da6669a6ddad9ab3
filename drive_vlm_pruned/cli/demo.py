"""
The main demo: tiny-model inference on synthetic six-view frames, pruned vs unpruned.

The model is a tiny checkpoint with random weights (built once, then cached), so its answers are
nonsense; what the demo shows is the real path: tokens kept per camera, prefill time with and
without pruning, and the answer's parsed trajectory or why none was found.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..models.load import load_adapter
from ..models.loading import LoadSpec
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..pipeline.synthetic_frames import synthetic_frame


def tiny_model_dir() -> Path:
    """Build the tiny LLaVA-OneVision once under the user cache, and return its directory."""
    from ..models.tiny import make_tiny_model

    root = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'drive_vlm_pruned'
    path = root / 'tiny-llava-onevision'
    if not (path / 'config.json').is_file():
        tmp = root / f'.tiny-{os.getpid()}'
        make_tiny_model('llava-onevision', tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(path)
    return path


def run_demo(frames: int = 3, keep_ratio: float = 0.1, pruner: str = 'tfps',
             prune_layer: int = 0, model: str | None = None, max_new_tokens: int = 24,
             device: str = 'cpu', dtype: str = 'auto', attn: str = 'auto') -> int:
    """Print, per frame, tokens kept per view, prefill ms pruned vs unpruned, answer, path."""
    directory = model or str(tiny_model_dir())
    pipe = Pipeline(load_adapter(LoadSpec(directory, device=device, dtype=dtype,
                                          attn_implementation=attn)))
    print(f'Model: {directory}')
    if model is None:
        print('NOTE: this is a tiny model with RANDOM weights. It answers nonsense and almost '
              'never a trajectory; the demo shows the pipeline, its token counts and timings.\n')
    pruned = RuntimeSettings(keep_ratio=keep_ratio, pruner=pruner, prune_layer=prune_layer,
                             max_new_tokens=max_new_tokens)
    unpruned = RuntimeSettings(keep_ratio=1.0, max_new_tokens=max_new_tokens)
    pipe.run(synthetic_frame(0), pruned)  # warm-up, untimed
    for i in range(frames):
        frame = synthetic_frame(i)
        full, cut = pipe.run(frame, unpruned), pipe.run(frame, pruned)
        kept = ', '.join(f'{n[4:]} {k}' for n, k in zip(cut.view_names, cut.tokens_after))
        print(f'frame {i} (stamp {frame.stamp_ns / 1e9:.3f} s), {pruner} keep {keep_ratio} '
              f'at layer {prune_layer}')
        print(f'  tokens kept per view: {kept} (of {cut.tokens_before[0]} each)')
        print(f'  prefill: {cut.timings_ms["prefill"]:.1f} ms pruned vs '
              f'{full.timings_ms["prefill"]:.1f} ms unpruned '
              f'({cut.prompt_tokens_kept} vs {full.prompt_tokens} prompt tokens; FLOPs '
              f'{cut.prefill_flops / cut.prefill_flops_unpruned:.1%} of unpruned)')
        print(f'  answer: {cut.answer!r}')
        if cut.trajectory.ok:
            print(f'  trajectory: {list(cut.trajectory.points)}')
        else:
            print(f'  trajectory: none ({cut.trajectory.reason})')
    return 0
