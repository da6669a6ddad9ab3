"""
The ``drive_vlm`` node: six synchronized cameras in; answers, results, trajectories out.

Threads: the executor runs the camera callbacks, the synchronizer and the timers (all quick);
one worker thread decodes and runs the newest complete set (latest-wins); one loader thread
loads the model at start, so the executor, the parameter services and /diagnostics answer
while it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from .health import NodeHealth
from .latest_wins import LatestWinsWorker
from .messages import (
    diagnostic_status,
    result_json,
    rgb_image,
    string_msg,
    trajectory_path,
)
from .parameters import check_record_views, llm_hidden_size, PARAMETERS, settings_from
from .recording import camera_info_topic_of, NodeRecording
from ..bag.recording import Diagnostics
from ..bag.topics import GT_TRAJECTORY_TOPIC
from ..cameras import namespaced, NUSCENES_CAMERAS
from ..frames.approximate_sync import ApproximateTimeSynchronizer, SyncedSet
from ..frames.assembly import assemble, FrameError
from ..frames.calibration import read_calibration
from ..frames.mosaic import render_mosaic
from ..frames.stamps import header_stamp_ns
from ..models.loading import check_spec, LoadSpec
from ..pipeline.pipeline import Pipeline

NODE_NAME = 'drive_vlm'
MOSAIC_FRAME = 'kept_tokens_mosaic'  # an image of six cameras has no single optical frame


@dataclass(frozen=True)
class Job:
    """A complete set for the worker, with the monotonic time it was completed."""

    synced: SyncedSet
    completed: float


class VlmNode(Node):
    """Run the pruned driving VLM on synchronized six-camera sets (see module doc)."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        for name, spec in PARAMETERS.items():
            self.declare_parameter(name, spec.default, spec.descriptor(name))
        self.values = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.spec = self._load_spec()
        directory, self.family, self.llm_layers = check_spec(self.spec)  # fail fast
        self.model_dir, self.hidden_size = str(directory), llm_hidden_size(directory)
        self.settings = self._settings(self.values)
        check_record_views(self.values['record_views'])
        self.topics = self._camera_topics()
        calibration_file = self.values['calibration_file']
        self.recording = NodeRecording(read_calibration(calibration_file)
                                       if calibration_file else {})
        self.health = NodeHealth(NUSCENES_CAMERAS)
        self.pipeline: Pipeline | None = None
        self.fatal: str | None = None
        self.mosaics_rendered = 0
        self._logged: set[str] = set()
        self.sync: ApproximateTimeSynchronizer = ApproximateTimeSynchronizer(
            len(NUSCENES_CAMERAS), self.values['slop'])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._make_publishers()
        self._make_subscriptions()
        self.worker: LatestWinsWorker[Job] = LatestWinsWorker(self._run_job)
        self._loader = threading.Thread(target=self._load_model, name='vlm-loader', daemon=True)
        self._loader.start()
        self._start_recording()
        self.create_timer(self.values['diagnostics_period'], self._publish_diagnostics)
        self.create_timer(0.1, self._watch_cameras)
        self.get_logger().info(
            f'{self.family} from {self.spec.model} loading on {self.spec.device}; cameras: '
            f'{", ".join(self.topics)}'
        )

    # --- start-up -------------------------------------------------------------------------

    def _load_spec(self) -> LoadSpec:
        v = self.values
        device = v['device']
        if device == 'auto':
            import torch

            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        return LoadSpec(v['model'], v['family'], device, v['dtype'], v['attn_implementation'],
                        v['vision_backend'], v['vision_onnx'], v['vision_engine'],
                        v['llm_weights'])

    def _camera_topics(self) -> list[str]:
        topics = list(self.values['camera_topics'])
        if len(topics) != len(NUSCENES_CAMERAS):
            raise ValueError(f'camera_topics has {len(topics)} entries; give '
                             f'{len(NUSCENES_CAMERAS)}, in order {", ".join(NUSCENES_CAMERAS)}')
        suffix = '/compressed' if self.values['use_compressed'] else ''
        topics = [namespaced(t, self.values['camera_namespace']) for t in topics]
        return [t + suffix if suffix and not t.endswith(suffix) else t for t in topics]

    def _start_recording(self) -> None:
        """Start ``record_path``; a path that fails is logged and counted, never fatal."""
        if self.values['record_path']:
            error = self.recording.switch(self.values['record_path'])
            if error:
                self.get_logger().error(f'{error}; answering without recording (counted in '
                                        '/diagnostics)')
            else:
                self.get_logger().info(f'recording to {self.values["record_path"]}')

    def _make_publishers(self) -> None:
        self.answer_pub = self.create_publisher(String, '~/answer', 10)
        self.result_pub = self.create_publisher(String, '~/result', 10)
        self.path_pub = self.create_publisher(Path, '~/trajectory', 10)
        self.kept_pub = self.create_publisher(Image, '~/kept_tokens', 2)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def _make_subscriptions(self) -> None:
        kind = CompressedImage if self.values['use_compressed'] else Image
        self.camera_subs = [
            self.create_subscription(kind, topic, lambda msg, i=i: self._on_image(i, msg),
                                     qos_profile_sensor_data)
            for i, topic in enumerate(self.topics)
        ]
        self.question_sub = self.create_subscription(String, '~/question', self._on_question, 10)
        # For the recording: each camera's calibration and, on replayed bags, the true future.
        self.info_subs = [
            self.create_subscription(CameraInfo, camera_info_topic_of(topic),
                                     lambda msg, i=i: self.recording.on_camera_info(i, msg),
                                     qos_profile_sensor_data)
            for i, topic in enumerate(self.topics)
        ]
        self.truth_sub = self.create_subscription(Path, GT_TRAJECTORY_TOPIC,
                                                  self.recording.on_truth, 10)

    def _load_model(self) -> None:
        from ..models.adapters import load_adapter

        start = time.monotonic()
        try:
            adapter = load_adapter(self.spec, log=self.get_logger().warning)
            pipeline = Pipeline(adapter, log=self.get_logger().warning)
            # The compiled decode compiles at its first frame: do that here, while 'loading'.
            decode = pipeline.warm_up(self.settings)
            self.pipeline = pipeline
        # Any load failure must reach the user (diagnostics, exit status), not kill a thread.
        except Exception as err:  # noqa: B902
            self.fatal = f'model load failed: {type(err).__name__}: {err}'
            self.health.model_state, self.health.model_detail = 'failed', self.fatal
            self.get_logger().fatal(self.fatal)
            return
        self.health.model_state = 'ready'
        self.health.model_detail = (f'{self.family}, {time.monotonic() - start:.1f} s, vision '
                                    f'backend {adapter.vision_backend}, decode {decode}')
        self.get_logger().info(f'model ready: {self.health.model_detail}')

    # --- parameters -----------------------------------------------------------------------

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values = dict(self.values)
        values.update({p.name: p.value for p in params})
        try:
            settings = self._settings(values)
            check_record_views(values['record_views'])
        except Exception as err:  # noqa: B902 - e.g. an unreadable weights file: say why
            return SetParametersResult(successful=False, reason=str(err))
        if values['record_path'] != self.values['record_path']:
            error = self.recording.switch(values['record_path'])
            if error:  # the previous file is closed either way; the reason reaches the caller
                values['record_path'] = ''
                self.values = values
                return SetParametersResult(successful=False, reason=error)
        self.values, self.settings = values, settings
        return SetParametersResult(successful=True)

    def _settings(self, values):
        return settings_from(values, self.llm_layers, self.model_dir, self.hidden_size)

    def _on_question(self, msg: String) -> None:
        result = self.set_parameters([Parameter('question', value=msg.data)])[0]
        if not result.successful:
            self._log_once('question_rejected', f'question rejected: {result.reason}')

    # --- cameras and synchronisation (executor thread) -------------------------------------

    def _on_image(self, index: int, msg) -> None:
        try:
            self._pair(index, msg)
        except Exception as err:  # noqa: B902 - a camera callback must never stop the executor
            self._fault('callback_error', NUSCENES_CAMERAS[index], f'{type(err).__name__}: {err}')

    def _pair(self, index: int, msg) -> None:
        now = time.monotonic()
        self.health.cameras[index].mark(now)
        if not self.sync.active[index]:
            self._set_active(self._wanted_active(now))
        synced = self.sync.add(index, header_stamp_ns(msg), msg)
        if synced is not None:
            self._submit(synced, now)

    def _submit(self, synced: SyncedSet, now: float) -> None:
        if self.pipeline is None:
            self.health.count_drop('model_not_ready')
            return
        if self.worker.submit(Job(synced, now)):
            self.health.count_drop('stale')

    def _wanted_active(self, now: float) -> list[bool]:
        silent = set(self.health.silent_cameras(self.values['view_timeout'], now))
        active = [name not in silent for name in NUSCENES_CAMERAS]
        if not any(active):  # input stopped altogether: nothing to re-pair, keep the choice
            return list(self.sync.active)
        min_views = self.values['min_views']
        if min_views < len(NUSCENES_CAMERAS) and sum(active) >= min_views:
            return active
        return [True] * len(NUSCENES_CAMERAS)

    def _set_active(self, active: list[bool]) -> None:
        if tuple(active) == self.sync.active:
            return
        left_out = [n for n, on in zip(NUSCENES_CAMERAS, active) if not on]
        completed = self.sync.set_active(active)
        if left_out:
            self.get_logger().warning(f'running degraded without {", ".join(left_out)}')
        else:
            self.get_logger().info('all cameras back in the synchronizer')
        now = time.monotonic()
        for synced in completed:
            self._submit(synced, now)

    def _watch_cameras(self) -> None:
        self._set_active(self._wanted_active(time.monotonic()))

    # --- inference (worker thread) --------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        settings = self.settings
        try:
            frame = assemble(job.synced, NUSCENES_CAMERAS, settings.question)
            result = self.pipeline.run(frame, settings)
        except FrameError as err:
            self._fault(err.kind, err.camera, str(err))
            return
        # A failed frame is skipped and counted; the node lives on.
        except Exception as err:  # noqa: B902
            self._fault('inference_error', None, f'{type(err).__name__}: {err}')
            return
        latency_ms = (time.monotonic() - job.completed) * 1000.0
        if not self.context.ok():  # shutting down: the publishers may be gone
            self.health.count_drop('shutdown')
            return
        try:
            self._publish(frame, result, latency_ms, job.synced.stamps_ns)
        except Exception as err:  # noqa: B902 - e.g. a context shut down mid-publish
            self._fault('publish_error', None, f'{type(err).__name__}: {err}')
            return
        self.health.count_result(latency_ms, dict(zip(result.view_names, result.tokens_after)),
                                 bool(result.missing_views))
        self._record(job, frame, result, latency_ms)

    def _record(self, job: Job, frame, result, latency_ms: float) -> None:
        if self.recording.recorder is None:
            return
        try:
            self.recording.record(
                job.synced, frame, result,
                result_json(result, latency_ms, job.synced.stamps_ns),
                list(self.values['record_views']),
                [_plain(s) for s in self._statuses()], self.values['frame_id'])
        except Exception as err:  # noqa: B902 - a recording never stops the answers
            self._fault('record_error', None, f'{type(err).__name__}: {err}')

    def _publish(self, frame, result, latency_ms: float, stamps_ns) -> None:
        self.answer_pub.publish(string_msg(result.answer))
        self.result_pub.publish(string_msg(result_json(result, latency_ms, stamps_ns)))
        self.path_pub.publish(trajectory_path(result, self.values['frame_id']))
        if self.kept_pub.get_subscription_count() > 0:
            mosaic = render_mosaic(frame.images, frame.names, result.kept_indices,
                                   result.tokens_before)
            self.mosaics_rendered += 1
            self.kept_pub.publish(rgb_image(mosaic, result.stamp_ns, MOSAIC_FRAME))

    def _fault(self, kind: str, camera: str | None, message: str) -> None:
        if self.health.count_fault(kind, camera, message):
            self.get_logger().error(f'skipping set: {message} (logged once per kind; '
                                    'counted in /diagnostics)')

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.get_logger().warning(message)

    # --- diagnostics ----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self._statuses()
        self.diag_pub.publish(msg)

    def _statuses(self) -> list[DiagnosticStatus]:
        return [self._model_status(), self._camera_status(), self._inference_status(),
                self._recording_status()]

    def _recording_status(self) -> DiagnosticStatus:
        values = self.recording.values()
        level = DiagnosticStatus.WARN if values['error'] else DiagnosticStatus.OK
        message = values['error'] or (f'recording to {values["path"]}' if values['path']
                                      else 'not recording')
        return diagnostic_status(f'{self.get_name()}: recording', level, message, values)

    def _model_status(self) -> DiagnosticStatus:
        h = self.health
        level = {'ready': DiagnosticStatus.OK, 'loading': DiagnosticStatus.WARN}.get(
            h.model_state, DiagnosticStatus.ERROR)
        return diagnostic_status(f'{self.get_name()}: model', level, h.model_state, {
            'state': h.model_state, 'detail': h.model_detail, 'model': self.spec.model,
            'family': self.family, 'device': self.spec.device,
        })

    def _camera_status(self) -> DiagnosticStatus:
        now, timeout = time.monotonic(), self.values['view_timeout']
        silent = self.health.silent_cameras(timeout, now)
        values = {}
        for cam, topic in zip(self.health.cameras, self.topics):
            values[f'{cam.name}.rate_hz'] = f'{cam.rate_hz(now):.2f}'
            values[f'{cam.name}.received'] = cam.received
            values[f'{cam.name}.topic'] = topic
        values['silent'] = ','.join(silent)
        values['active_in_sync'] = ','.join(
            n for n, on in zip(NUSCENES_CAMERAS, self.sync.active) if on)
        values['unpaired_messages'] = sum(self.sync.evicted)
        if not silent:
            return diagnostic_status(f'{self.get_name()}: cameras', DiagnosticStatus.OK,
                                     'all cameras publishing', values)
        waiting = all(self.sync.active)
        message = (f'silent for more than {timeout:g} s: {", ".join(silent)}; '
                   + ('waiting for them (min_views '
                      f'{self.values["min_views"]})' if waiting else 'running degraded'))
        return diagnostic_status(f'{self.get_name()}: cameras', DiagnosticStatus.WARN,
                                 message, values)

    def _inference_status(self) -> DiagnosticStatus:
        h = self.health
        with h.lock:
            values = {'frames_processed': h.processed, 'frames_degraded': h.degraded,
                      'dropped_total': sum(h.dropped.values()),
                      'skipped_bad_total': sum(h.skipped.values()),
                      'last_error': h.last_error}
            values.update({f'dropped.{k}': n for k, n in sorted(h.dropped.items())})
            for kind, n in sorted(h.skipped.items()):
                values[f'skipped_bad.{kind}'] = n
                if kind in h.fault_cameras:
                    values[f'skipped_bad.{kind}.camera'] = h.fault_cameras[kind]
            values.update({f'tokens_kept.{k}': n for k, n in h.tokens_kept.items()})
            values['tokens_kept_total'] = sum(h.tokens_kept.values())
        values.update({f'latency_ms.{k}': f'{v:.1f}' for k, v in h.latency_percentiles().items()})
        values.update({'keep_ratio': self.settings.keep_ratio, 'pruner': self.settings.pruner})
        values['worker_errors'] = self.worker.errors
        level = DiagnosticStatus.WARN if h.skipped or self.worker.errors else DiagnosticStatus.OK
        message = f'{h.processed} frames' + (f'; last error: {h.last_error}' if h.skipped else '')
        if not self.worker.alive:
            level, message = DiagnosticStatus.ERROR, 'inference worker stopped'
        return diagnostic_status(f'{self.get_name()}: inference', level, message, values)

    # --- shutdown -------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the worker (finishing its frame) and wait for the loader, then destroy."""
        # getattr: a constructor that failed its checks never made them, yet rclpy destroys it.
        if getattr(self, 'worker', None) is not None:
            self.worker.stop()
        if getattr(self, 'recording', None) is not None:
            self.recording.close()  # after the worker: its last set is in the file
        if getattr(self, '_loader', None) is not None:
            # A load cannot be interrupted; the loader is a daemon thread, so Ctrl-C during a
            # long load leaves it behind rather than hanging the shutdown.
            self._loader.join(timeout=5.0)
            if self._loader.is_alive():
                self.get_logger().warning('model still loading at shutdown; abandoned')
        super().destroy_node()


def _plain(status: DiagnosticStatus) -> Diagnostics:
    """Return an rclpy DiagnosticStatus as the recorder's plain record."""
    level = status.level if isinstance(status.level, int) else ord(status.level)
    return Diagnostics(status.name, level, status.message,
                       {kv.key: kv.value for kv in status.values})
