"""
The main demo: a synthetic bag played into the ROS node, and what the node publishes.

It writes a procedurally rendered six-camera bag (drive-vlm bag synth), starts the drive_vlm
node on a tiny random-weight LLaVA-OneVision (built once, then cached), replays the bag over
DDS (drive-vlm bag play) and prints every ~/result: tokens kept per camera, prefill time,
end-to-end latency, the answer and its trajectory (or why none was parsed). Then it sets
keep_ratio to 1.0 through the node's SetParameters service, exactly as ``ros2 param set`` does,
and replays a few frames to show the unpruned prefill. The model's answers are nonsense; the
demo shows the real path. Without rclpy it runs the offline runner over the same bag instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import tempfile
import threading
import time

import numpy as np

from ..bag.synth import synth_bag, SynthOptions


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


def run_demo(frames: int = 12, keep_ratio: float = 0.1, pruner: str = 'tfps',
             prune_layer: int = 0, model: str | None = None, max_new_tokens: int = 24,
             device: str = 'cpu', dtype: str = 'auto', attn: str = 'auto') -> int:
    """Play a synthetic bag into the node and print its outputs (see module doc)."""
    directory = model or str(tiny_model_dir())
    print(f'Model: {directory}')
    if model is None:
        print('NOTE: a tiny model with RANDOM weights: it answers nonsense and almost never a '
              'trajectory; the demo shows the node, its token counts, timings and stamps.')
    params = {'model': directory, 'keep_ratio': float(keep_ratio), 'pruner': pruner,
              'prune_layer': prune_layer, 'max_new_tokens': max_new_tokens, 'device': device,
              'dtype': dtype, 'attn_implementation': attn}
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'synthetic_drive'
        written = synth_bag(bag, SynthOptions(frames=frames, jitter_ms=2.0))
        print(f'Bag: {frames} six-camera sets at 12 Hz, {sum(written.counts.values())} '
              'messages with ground truth (drive-vlm bag synth)')
        try:
            import rclpy  # noqa: F401
        except ImportError as err:
            print(f'rclpy is not importable ({err}); running the offline runner instead')
            return _offline(bag, directory, keep_ratio, pruner, prune_layer, max_new_tokens)
        return _through_the_node(bag, params)


def _through_the_node(bag: Path, params: dict) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from std_msgs.msg import String

    from ..bag.play import play_bag, PlayOptions
    from ..cameras import camera_topics
    from ..node.vlm_node import VlmNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = VlmNode(context=context,
                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    listener = rclpy.create_node('demo_listener', context=context)
    results: list[dict] = []
    listener.create_subscription(String, '/drive_vlm/result',
                                 lambda m: results.append(json.loads(m.data)), 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        while node.health.model_state == 'loading':
            time.sleep(0.05)
        if node.fatal:
            print(node.fatal)
            return 1
        print(f'Node ready ({node.health.model_detail}); playing the bag over DDS...\n')
        # Only the cameras the node reads: the bag's /tf needs tf2_msgs, which pip-only ROS lacks.
        play = PlayOptions(wait_for_subscribers_s=30.0, topics=camera_topics())
        stats = play_bag(bag, play)
        _settle(node, results, 0)
        _print_results(results, node)
        print(f'\n{stats.summary()}')
        pruned = list(results)
        client = AsyncParameterClient(listener, 'drive_vlm')
        client.wait_for_services(timeout_sec=10.0)
        future = client.set_parameters([Parameter('keep_ratio', value=1.0)])
        while not future.done():
            time.sleep(0.02)
        print(f'\nros2 param set /drive_vlm keep_ratio 1.0 -> '
              f'{"accepted" if future.result().results[0].successful else "rejected"}; '
              'replaying the bag unpruned...')
        results.clear()
        before = node.health.processed
        play_bag(bag, play)
        _settle(node, results, before)
        _compare(pruned, [r for r in results if r['keep_ratio'] == 1.0])
    finally:
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


def _settle(node, results: list, processed_before: int) -> None:
    """Wait until the pass is over: nothing waiting to pair or run, every answer arrived."""
    def quiet() -> bool:
        return (node.worker.idle and node.sync.pending() == 0
                and len(results) >= node.health.processed - processed_before)

    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        if quiet():
            time.sleep(0.3)  # the last messages of the pass may still be in flight
            if quiet():
                return
        time.sleep(0.05)


def _print_results(results: list[dict], node) -> None:
    for r in results:
        kept = ' '.join(f'{n[4:]} {k}' for n, k in r['tokens_kept_per_view'].items())
        trajectory = r['trajectory'] or f'none ({r["trajectory_reason"]})'
        print(f'stamp {r["stamp"]["sec"]}.{r["stamp"]["nanosec"]:09d}  {r["pruner"]} keep '
              f'{r["keep_ratio"]}: kept {kept} (of {r["tokens_before"][0]} each)')
        print(f'  prefill {r["timings_ms"]["prefill"]:.1f} ms, {r["prompt_tokens_kept"]} of '
              f'{r["prompt_tokens"]} prompt tokens (FLOPs '
              f'{r["prefill_flops"] / r["prefill_flops_unpruned"]:.1%} of unpruned); latency '
              f'{r["latency_ms"]:.0f} ms')
        print(f'  answer: {r["answer"]!r}')
        print(f'  trajectory: {trajectory}')
    h = node.health
    print(f'\nNode: {h.processed} sets answered, dropped {dict(h.dropped) or 0} (latest-wins: '
          f'inference is slower than 12 Hz here), skipped as bad {dict(h.skipped) or 0}')


def _compare(pruned: list[dict], full: list[dict]) -> None:
    def median(rs, key):
        return float(np.median([r['timings_ms'][key] for r in rs])) if rs else float('nan')

    if not pruned or not full:
        return
    print(f'prefill median: {median(pruned, "prefill"):.1f} ms at keep '
          f'{pruned[0]["keep_ratio"]} ({pruned[0]["prompt_tokens_kept"]} prompt tokens) vs '
          f'{median(full, "prefill"):.1f} ms at keep 1.0 ({full[0]["prompt_tokens_kept"]} '
          'prompt tokens)')


def _offline(bag: Path, model: str, keep_ratio: float, pruner: str, prune_layer: int,
             max_new_tokens: int) -> int:
    from ..bag.run import run_bag, RunOptions
    from ..models.prompts import PLANNING
    from ..pipeline.pipeline import RuntimeSettings

    settings = RuntimeSettings(keep_ratio=keep_ratio, pruner=pruner, prune_layer=prune_layer,
                               question=PLANNING, max_new_tokens=max_new_tokens)
    out = bag.parent / 'results.jsonl'
    print(run_bag(RunOptions(model, str(bag), str(out), settings)).table())
    return 0
