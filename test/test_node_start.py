"""Node start-up and shutdown: compressed input, fail-fast on a bad model, no leaked threads."""

import os
from pathlib import Path
import subprocess
import sys
import threading

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
import pytest
import rclpy
from ros_harness import (
    camera_images,
    compressed_msg,
    NodeUnderTest,
    Probe,
    ros_context,
    STAMP0,
    wait_for,
)
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_compressed_jpeg_and_png_are_answered_and_a_corrupt_jpeg_is_counted(tiny_llava):
    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), use_compressed=True, max_new_tokens=4,
                         diagnostics_period=0.2)
    probe = Probe(context, compressed=True)
    try:
        probe.wait_connected()
        assert node.node.topics[0] == '/cam_front/image_raw/compressed'
        for index, fmt in ((1, 'jpeg'), (2, 'png')):
            stamp = probe.publish_set(index, make=lambda img, s, f=fmt: compressed_msg(img, s, f))
            wait_for(lambda s=stamp: any(r['stamp_ns'] == s for r in probe.results), 30,
                     f'the {fmt} set to be answered')
        stamp = STAMP0 + 3 * 83_333_333
        msgs = [compressed_msg(img, stamp + v * 7_000_000)
                for v, img in enumerate(camera_images(3))]
        msgs[1].data = bytes(msgs[1].data)[:40]  # a JPEG cut off after its header
        probe.publish_msgs(msgs)
        wait_for(lambda: probe.inference_diag().get('skipped_bad.corrupt_compressed') == '1', 20,
                 'the corrupt JPEG to be counted')
        assert probe.inference_diag()['skipped_bad.corrupt_compressed.camera'] == \
            NUSCENES_CAMERAS[1]
        stamp = probe.publish_set(4, make=compressed_msg)
        wait_for(lambda: any(r['stamp_ns'] == stamp for r in probe.results), 30,
                 'the node to answer after the corrupt JPEG')
    finally:
        probe.close()
        node.close()
        rclpy.shutdown(context=context)


def test_node_threads_stop_when_destroyed(tiny_llava):
    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava))
    node.close()
    rclpy.shutdown(context=context)
    names = {t.name for t in threading.enumerate()}
    assert not names & {'vlm-worker', 'vlm-loader'}


def run_node(*ros_args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'drive_vlm_pruned.node.main', '--ros-args', *ros_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ)


@pytest.mark.parametrize('case', ['missing', 'broken', 'bad_keep_ratio', 'int4_without_cuda'])
def test_a_bad_model_or_parameter_fails_fast_with_the_reason(case, tmp_path, tiny_llava):
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text('{not json')
    args = {
        'missing': ['-p', f'model:={tmp_path / "nowhere"}'],
        'broken': ['-p', f'model:={broken}'],
        'bad_keep_ratio': ['-p', f'model:={tiny_llava}', '-p', 'keep_ratio:=1'],
        'int4_without_cuda': ['-p', f'model:={tiny_llava}', '-p', 'device:=cuda',
                              '-p', 'llm_weights:=int4'],
    }[case]
    if case == 'int4_without_cuda' and torch.cuda.is_available():
        pytest.skip('this machine has CUDA: int4 on cuda has a kernel here')
    out = run_node(*args)
    assert out.returncode != 0
    expected = {'missing': 'nowhere', 'broken': 'not valid JSON',
                'bad_keep_ratio': 'write 1.0 for a double',
                'int4_without_cuda': 'llm_weights int4 needs CUDA, and torch sees no CUDA '
                                     "device ('cuda')"}[case]
    assert expected in out.stderr, out.stderr[-2000:]
    assert 'Traceback' not in out.stderr


def test_with_no_model_parameter_the_node_answers_with_the_embedded_model():
    from drive_vlm_pruned.models.embedded import embedded_model_dir

    context = ros_context()
    node = NodeUnderTest(context, max_new_tokens=4)  # config default: model ''
    try:
        assert node.node.health.model_state == 'ready'
        loaded = node.node.pipeline.adapter.model.config._name_or_path
        assert Path(loaded).resolve() == embedded_model_dir().resolve()
        probe = Probe(context)
        probe.wait_connected()
        stamp = probe.publish_set(1)
        wait_for(lambda: any(r['stamp_ns'] == stamp for r in probe.results), 60, 'an answer')
        probe.close()
    finally:
        node.close()
        rclpy.shutdown(context=context)


def test_drive_vlm_node_shorthands_become_typed_ros_parameters(tmp_path):
    # --keep-ratio 1 must reach ROS as the double 1.0; the missing model is what stops it.
    cmd = [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'node', '--model',
           str(tmp_path / 'nowhere'), '--keep-ratio', '1', '--max-new-tokens', '5',
           '--', '--ros-args', '-p', 'pruner:=stride']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert 'nowhere' in out.stderr and 'Traceback' not in out.stderr


@pytest.mark.parametrize('onnx', ['exported', 'missing'])
def test_vision_backend_parameters_use_onnxruntime_or_fall_back(onnx, tiny_llava, tmp_path):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.vision.onnx_export import export_onnx

    path = tmp_path / 'vision.onnx'
    if onnx == 'exported':
        adapter = load_adapter(LoadSpec(str(tiny_llava)))
        export_onnx(adapter.vision_module(), adapter.image_shape, path)
    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), vision_backend='onnxruntime',
                         vision_onnx=str(path), max_new_tokens=2)
    try:
        # missing file: onnxruntime -> compile (CUDA only) -> torch, each reason logged once
        want = 'onnxruntime' if onnx == 'exported' else 'torch'
        assert f'vision backend {want},' in node.node.health.model_detail + ','
        probe = Probe(context)
        probe.wait_connected()
        stamp = probe.publish_set(1)
        wait_for(lambda: any(r['stamp_ns'] == stamp for r in probe.results), 30, 'an answer')
        probe.close()
    finally:
        node.close()
        rclpy.shutdown(context=context)
