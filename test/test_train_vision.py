"""The vision stage (issue 28): targets, a short run that learns and resumes, a frozen tower."""

from dataclasses import replace

from drive_vlm_pruned.data.synth import (
    capture_times,
    DataOptions,
    key_frame_times,
    scene_config,
    write_dataset,
)
from drive_vlm_pruned.scenes.frames import render_frame_set
from drive_vlm_pruned.scenes.rig import nuscenes_rig
from drive_vlm_pruned.scenes.world import Label, make_scene, OBJECT_LABELS
from drive_vlm_pruned.training.vision_stage import train_vision, VisionConfig
from drive_vlm_pruned.training.vision_targets import ground_range, view_targets
from drive_vlm_pruned.training.vlm import train_vlm, VLMTrainConfig
import numpy as np
import pytest
from safetensors.torch import load_file
import torch

QUIET = {'log': lambda _: None}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('drive')
    for split in ('train', 'val'):
        write_dataset(out, DataOptions(scenes=1, frames_per_scene=2, split=split, width=128,
                                       height=72))
    return out


def _view(camera_index: int = 0):
    options = DataOptions(scenes=1, frames_per_scene=2, width=448, height=252)
    scene = make_scene(scene_config(0, options.frames_per_scene))
    rig = nuscenes_rig(options.width, options.height)
    t = key_frame_times(options.frames_per_scene)[0]
    frames = render_frame_set(scene, rig, 0, capture_times(t))
    return frames.views[camera_index], rig[camera_index]


def test_targets_follow_the_mask_the_ground_geometry_and_the_counted_objects():
    view, camera = _view(0)
    t = view_targets(view, camera, 224, 14, min_visible_px=60)
    h, w = view.mask.shape
    # patch (13, 7): the bottom rows in the middle, road under the car's nose
    block = view.mask[13 * h // 14:h, 7 * w // 14:8 * w // 14]
    assert t.semantic[13, 7] == np.bincount(block.ravel(), minlength=6).argmax() == Label.ROAD
    # the ground range of the bottom centre pixel, by hand: camera height over the ray's drop
    k, (x0, y0, z0) = camera.intrinsics, camera.extrinsics.translation
    v = (h - 0.5 - k.cy) / k.fy  # level camera: the ray drops v per metre forward
    by_hand = np.hypot(x0 + z0 / v, y0)
    ranges = ground_range(camera, np.full((h, w), np.inf))
    assert ranges[h - 1, int(k.cx)] == pytest.approx(by_hand, rel=1e-3)
    assert t.band[13, 7] == 0 and t.band[0, 0] == 4  # near road; sky
    counted = [o for o in view.objects if o.visible_px >= 60]
    assert t.counts.sum() == len(counted) and t.centre.sum() <= len(counted)
    for c, label in enumerate(OBJECT_LABELS):
        assert t.counts[c] == sum(o.object3d.label == label for o in counted)
    assert t.image.shape == (3, 224, 224) and t.present.shape == (5, 14, 14)


def _config(data_dir, out, **kw):
    base = {'data': data_dir, 'out': out, 'preset': 'test', 'steps': 12, 'batch': 8,
            'warmup': 0, 'lr': 3e-3, 'eval_every': 12, 'save_every': 6}
    return VisionConfig(**{**base, **kw})


def test_a_short_run_lowers_its_loss_saves_and_resumes_to_the_same_weights(data_dir,
                                                                           tmp_path):
    whole = train_vision(_config(data_dir, tmp_path / 'whole'), **QUIET)
    first, last = whole.history['train'][0], whole.history['train'][-1]
    assert (first['step'], last['step']) == (1, 12) and last['total'] < first['total']
    report = whole.report
    assert 0 <= report['patch_accuracy'] <= 1 and 0 <= report['miou'] <= 1
    assert {'presence_accuracy', 'presence_majority', 'count_accuracy'} <= set(report)
    expected = load_file(whole.tower_dir / 'model.safetensors')

    cut = train_vision(_config(data_dir, tmp_path / 'cut', max_minutes=1e-9), **QUIET)
    assert cut.step == 1 and cut.tower_dir is None
    rest = train_vision(_config(data_dir, tmp_path / 'cut', resume=True), **QUIET)
    assert rest.step == 12 and rest.history['train'][0]['step'] == 1
    for name, tensor in load_file(rest.tower_dir / 'model.safetensors').items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match='--resume'):
        train_vision(_config(data_dir, tmp_path / 'cut'), **QUIET)


def test_the_vision_tower_loads_into_the_vlm_stage_and_stays_frozen_bit_for_bit(
        data_dir, tmp_path):
    tower = train_vision(_config(data_dir, tmp_path / 'vision', steps=2), **QUIET).tower_dir
    pretrained = load_file(tower / 'model.safetensors')
    config = VLMTrainConfig(data=data_dir, out=tmp_path / 'vlm', preset='test', steps=1,
                            frames_per_step=2, storage='float32', train_limit=2, cpu=True,
                            precision='no', vision_init=tower, freeze_vision=True)
    result = train_vlm(config, **QUIET)
    after = load_file(result.final_dir / 'model.safetensors')
    prefix = 'vision_tower.'
    tower_keys = [k for k in after if k.startswith(prefix)]
    assert tower_keys
    for key in tower_keys:
        assert torch.equal(after[key], pretrained[key[len(prefix):]]), key
    # the rest did train: the projector moved
    moved = replace(config, out=tmp_path / 'vlm2', steps=1, freeze_vision=False)
    assert any(not torch.equal(after[k], load_file(
        train_vlm(moved, **QUIET).final_dir / 'model.safetensors')[k]) for k in tower_keys)


def test_the_imagenet_teacher_loads_every_weight_and_reads_pixels_as_it_was_trained():
    from drive_vlm_pruned.training.imagenet_teacher import (
        EfficientNetLite0Features,
        FEATURE_CHANNELS,
        load_teacher,
        weights_path,
    )

    teacher = load_teacher()
    state = torch.load(weights_path(), map_location='cpu', weights_only=True)
    assert set(teacher.state_dict()) <= set(state)  # every weight came from the file
    assert len(teacher.state_dict()) > 150 and not any(p.requires_grad
                                                       for p in teacher.parameters())
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert teacher(images).shape == (2, (64 // 16) ** 2, FEATURE_CHANNELS)
    # The stem's batch norm remembers what ImageNet pixels gave it. An image of ImageNet's
    # mean colour, scaled as the teacher scales pixels, must reproduce the pattern of those
    # means across the 32 channels; RGB order or another scaling (x / 255) does not.
    mean_rgb = torch.tensor([124.0, 116.0, 104.0]).reshape(1, 3, 1, 1)
    stem = EfficientNetLite0Features()._conv_stem
    stem.load_state_dict({'weight': state['_conv_stem.weight']})

    def agreement(image: torch.Tensor) -> float:
        out = stem(image.expand(1, 3, 32, 32))[0, :, 8, 8].detach()
        return torch.corrcoef(torch.stack([out, state['_bn0.running_mean']]))[0, 1].item()

    assert agreement((mean_rgb - 127.0) / 128.0) > 0.9
    assert agreement((mean_rgb.flip(1) - 127.0) / 128.0) < 0.8
    assert agreement(mean_rgb / 255.0) < 0.0


def test_a_short_run_with_the_imagenet_hint_learns_it(data_dir, tmp_path):
    run = train_vision(_config(data_dir, tmp_path / 'hint', distill_imagenet=1.0), **QUIET)
    first, last = run.history['train'][0], run.history['train'][-1]
    assert 'hint' in first and last['hint'] < first['hint']
    assert last['total'] < first['total'] and run.tower_dir is not None
    with pytest.raises(ValueError, match='with --distill-imagenet'):
        train_vision(_config(data_dir, tmp_path / 'hint', resume=True), **QUIET)
