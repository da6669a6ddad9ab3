"""
The main demo: a synthetic bag played into the ROS node, and what the node publishes.

It writes a procedurally rendered six-camera bag (drive-vlm bag synth), starts the drive_vlm
node on the embedded trained model (or --model), replays the bag over DDS (drive-vlm bag play)
at a quarter of its speed, so a CPU answers most sets, while asking, in turn over the node's
~/question topic (the next one as each answer arrives), the planning question, whether a vehicle
is in the front view, and how many. It prints every ~/result: tokens kept per camera, prefill
time, end-to-end latency, the question, the answer, the ground truth from the bag's own scene
(correct or not; L2 for a trajectory). Then it sets keep_ratio to 1.0 through the node's
SetParameters service, exactly as ``ros2 param set`` does, replays, and prints accuracy and
prefill at both keep ratios. Without rclpy it runs the offline runner over the same bag instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import tempfile
import threading
import time

import numpy as np

from .demo_truth import DemoTruth
from .flags import keep_ratio_type, pruner_type
from ..bag.synth import synth_bag, SynthOptions

DEMO_HELP = """\
Write a synthetic six-camera bag, start the drive_vlm ROS node on the embedded trained model
(or --model), play the bag into it over DDS (loopback when ROS_AUTOMATIC_DISCOVERY_RANGE=
LOCALHOST) while asking in turn, over ~/question, whether a vehicle is in the front view, how
many, and the planning question. Print every ~/result: tokens kept per camera, prefill ms,
latency, question, answer and the ground truth from the bag's scene (correct or not; L2 for a
trajectory). Then set keep_ratio 1.0 through the parameter service (as `ros2 param set` does),
replay, and print accuracy and prefill at both keep ratios. Without rclpy it runs `drive-vlm run`.
"""


def add_demo_parser(sub) -> None:
    """Add ``demo``."""
    main_demo = sub.add_parser(
        'demo', help='run the pruned VLM on synthetic six-view frames (the main demo)',
        description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main_demo.add_argument('--frames', type=int, default=12,
                           help='six-camera sets in the bag, 12 per second (default 12)')
    main_demo.add_argument('--keep-ratio', type=keep_ratio_type, default=0.1,
                           help='fraction of visual tokens KEPT, in (0, 1] (default 0.1)')
    main_demo.add_argument('--pruner', type=pruner_type, default='tfps',
                           help='pruner (default tfps)')
    main_demo.add_argument('--prune-layer', type=int, default=0,
                           help='0: after the projector; K >= 1: before LLM layer K (default 0)')
    main_demo.add_argument('--model', help='checkpoint directory or cached model id '
                                           '(default: the embedded trained model)')
    main_demo.add_argument('--max-new-tokens', type=int, default=80,
                           help='tokens to generate (default 80: room for a 6-waypoint plan)')
    main_demo.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    main_demo.add_argument('--dtype', default='auto',
                           choices=['auto', 'float32', 'bfloat16', 'float16'],
                           help='model dtype (default auto: bfloat16 on CUDA, float32 on CPU)')
    main_demo.add_argument('--attn', default='auto',
                           choices=['auto', 'sdpa', 'eager', 'flash_attention_2'],
                           help='attention implementation (default auto: flash_attention_2 '
                                'when flash-attn is installed on CUDA, else sdpa)')
    main_demo.add_argument('--record-dir', default='demo-recordings', metavar='DIR',
                           help='record both passes into DIR/<time>/keep<R>.mcap (default '
                                "demo-recordings; '' records nothing)")
    main_demo.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``drive-vlm demo``; return the exit status."""
    return run_node_demo(args.frames, args.keep_ratio, args.pruner, args.prune_layer, args.model,
                         args.max_new_tokens, args.device, args.dtype, args.attn,
                         args.record_dir)


def run_node_demo(frames: int = 12, keep_ratio: float = 0.1, pruner: str = 'tfps',
                  prune_layer: int = 0, model: str | None = None, max_new_tokens: int = 80,
                  device: str = 'cpu', dtype: str = 'auto', attn: str = 'auto',
                  record_dir: str = '') -> int:
    """Play a synthetic bag into the node and print its outputs (see module doc)."""
    from ..models.loading import resolve_checkpoint

    directory = str(resolve_checkpoint(model or ''))
    print(f'Model: {directory}' + ('' if model else ' (the embedded trained model)'))
    params = {'model': directory, 'keep_ratio': float(keep_ratio), 'pruner': pruner,
              'prune_layer': prune_layer, 'max_new_tokens': max_new_tokens, 'device': device,
              'dtype': dtype, 'attn_implementation': attn}
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'synthetic_drive'
        options = SynthOptions(frames=frames, jitter_ms=2.0)
        written = synth_bag(bag, options)
        print(f'Bag: {frames} six-camera sets at 12 Hz, {sum(written.counts.values())} '
              'messages with ground truth (drive-vlm bag synth)')
        try:
            import rclpy  # noqa: F401
        except ImportError as err:
            print(f'rclpy is not importable ({err}); running the offline runner instead')
            return _offline(bag, directory, keep_ratio, pruner, prune_layer, max_new_tokens)
        recordings = _recording_paths(record_dir, keep_ratio)
        params['calibration_file'] = str(bag / 'calibration.json')
        return _through_the_node(bag, params, DemoTruth(bag, options), recordings)


def _recording_paths(record_dir: str, keep_ratio: float) -> tuple[str, str]:
    """Return the two passes' recording files (new, under DIR/<time>/), or '' for none."""
    if not record_dir:
        return '', ''
    root = Path(record_dir) / time.strftime('%Y%m%d-%H%M%S')
    while root.exists():
        root = root.with_name(root.name + '-1')
    return str(root / f'keep{keep_ratio:g}.mcap'), str(root / 'keep1.0.mcap')


def _through_the_node(bag: Path, params: dict, truth: DemoTruth,
                      recordings: tuple[str, str] = ('', '')) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from std_msgs.msg import String

    from ..bag.play import play_bag, PlayOptions
    from ..bag.topics import camera_info_topic, GT_TRAJECTORY_TOPIC
    from ..cameras import camera_topics, NUSCENES_CAMERAS
    from ..node.vlm_node import VlmNode

    params = {**params, 'question': truth.questions[0], 'record_path': recordings[0]}
    context = rclpy.Context()
    rclpy.init(context=context)
    node = VlmNode(context=context,
                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    listener = rclpy.create_node('demo_listener', context=context)
    results: list[dict] = []
    listener.create_subscription(String, '/drive_vlm/result',
                                 lambda m: results.append(json.loads(m.data)), 50)
    asker = listener.create_publisher(String, '/drive_vlm/question', 10)
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
        # A quarter of the recorded 12 Hz: on a CPU most sets get answered, and each answer's
        # next question reaches the node before the next set does.
        # CameraInfo and the true future go along for the recording (all core ROS types).
        topics = (*camera_topics(), *(camera_info_topic(c) for c in NUSCENES_CAMERAS),
                  GT_TRAJECTORY_TOPIC)
        play = PlayOptions(rate=0.25, wait_for_subscribers_s=30.0, topics=topics)
        with _asking(asker, truth.questions, results):
            stats = play_bag(bag, play)
        _settle(node, results, 0)
        _print_results(results, node, truth)
        print(f'\n{stats.summary()}')
        pruned = list(results)
        client = AsyncParameterClient(listener, 'drive_vlm')
        client.wait_for_services(timeout_sec=10.0)
        future = client.set_parameters([Parameter('keep_ratio', value=1.0),
                                        Parameter('record_path', value=recordings[1])])
        while not future.done():
            time.sleep(0.02)
        print(f'\nros2 param set /drive_vlm keep_ratio 1.0 -> '
              f'{"accepted" if future.result().results[0].successful else "rejected"}; '
              'replaying the bag unpruned...')
        results.clear()
        before = node.health.processed
        with _asking(asker, truth.questions, results):
            play_bag(bag, play)
        _settle(node, results, before)
        full = [r for r in results if r['keep_ratio'] == 1.0]
        _print_results(full, node, truth)
        _compare(pruned, full, truth)
        node.recording.close()
        _print_recordings(recordings, node)
    finally:
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


def _print_recordings(recordings: tuple[str, str], node) -> None:
    """Say where both passes were recorded and how to look at them."""
    files = [p for p in recordings if p and Path(p).is_file()]
    if not files:
        if any(recordings):
            print(f'\nrecording failed: {node.recording.error}')
        return
    print('\nRecorded both passes (ROS 2 mcap: cameras, answers, trajectories, plan overlays, '
          'diagnostics):')
    for path in files:
        print(f'  {path}')
    print('Open one in Foxglove (File > Open local file) with the layout '
          'config/foxglove_layout.json (Layout > Import), or render its panels to a PNG: '
          f'drive-vlm bag snapshot {files[0]} --out snapshot.png')


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


class _asking:
    """
    Ask the demo's questions in turn on the node's ~/question topic while a pass plays.

    The next question goes out as soon as an answer arrives, so each pass asks every question
    once before any repeats, however few sets the CPU answers (a timer would skip some).
    """

    def __init__(self, publisher, questions: tuple[str, ...], results: list) -> None:
        self.publisher, self.questions, self.results = publisher, questions, results
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from std_msgs.msg import String

        answered = len(self.results)
        turn = 0
        self.publisher.publish(String(data=self.questions[0]))
        while not self.stop.wait(0.01):
            if len(self.results) > answered:
                answered = len(self.results)
                turn += 1
                self.publisher.publish(String(data=self.questions[turn % len(self.questions)]))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(2.0)


def _print_results(results: list[dict], node, truth: DemoTruth) -> None:
    for r in results:
        kept = ' '.join(f'{n[4:]} {k}' for n, k in r['tokens_kept_per_view'].items())
        trajectory = r['trajectory'] or f'none ({r["trajectory_reason"]})'
        print(f'stamp {r["stamp"]["sec"]}.{r["stamp"]["nanosec"]:09d}  {r["pruner"]} keep '
              f'{r["keep_ratio"]}: kept {kept} (of {r["tokens_before"][0]} each)')
        print(f'  prefill {r["timings_ms"]["prefill"]:.1f} ms, {r["prompt_tokens_kept"]} of '
              f'{r["prompt_tokens"]} prompt tokens (FLOPs '
              f'{r["prefill_flops"] / r["prefill_flops_unpruned"]:.1%} of unpruned); latency '
              f'{r["latency_ms"]:.0f} ms')
        print(f'  question: {_short(r["question"])}')
        print(f'  answer: {r["answer"]!r}')
        check = truth.check(r['stamp_ns'], r['question'], r['answer'])
        if check is not None and check.correct is not None:
            print(f'  ground truth: {check.truth!r} -> {"correct" if check.correct else "WRONG"}')
        elif check is not None:
            l2 = 'no trajectory parsed' if check.l2_3s is None else f'L2 (3 s) {check.l2_3s:.2f} m'
            print(f'  trajectory: {trajectory}')
            print(f'  ground truth: {check.truth}; {l2}')
    h = node.health
    print(f'\nNode: {h.processed} sets answered, dropped {dict(h.dropped) or 0} (latest-wins: '
          f'inference is slower than the sets arrive), skipped as bad {dict(h.skipped) or 0}')


def _short(question: str, width: int = 90) -> str:
    return question if len(question) <= width else question[:width - 30] + ' ... ' + question[-25:]


def _compare(pruned: list[dict], full: list[dict], truth: DemoTruth) -> None:
    """Print accuracy, trajectory L2 and prefill at the pruned keep ratio and at 1.0."""
    print('\n| keep ratio | closed answers correct | trajectory L2 (3 s) | prefill median | '
          'prompt tokens |')
    print('|---|---|---|---|---|')
    for rs in (pruned, full):
        if not rs:
            continue
        checks = [truth.check(r['stamp_ns'], r['question'], r['answer']) for r in rs]
        closed = [c.correct for c in checks if c is not None and c.correct is not None]
        l2 = [c.l2_3s for c in checks if c is not None and c.l2_3s is not None]
        right = f'{sum(closed)}/{len(closed)}' if closed else 'none asked'
        mean_l2 = f'{np.mean(l2):.2f} m (n={len(l2)})' if l2 else 'none parsed'
        prefill = float(np.median([r['timings_ms']['prefill'] for r in rs]))
        tokens = int(np.median([r['prompt_tokens_kept'] for r in rs]))
        print(f'| {rs[0]["keep_ratio"]} | {right} | {mean_l2} | {prefill:.1f} ms | {tokens} |')


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
