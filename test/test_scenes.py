"""The procedural scene generator: geometry, rendering, GT consistency, determinism, speed."""

import math
import time

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.scenes import (
    Agent,
    Label,
    make_scene,
    nuscenes_rig,
    render_frame_set,
    render_view,
    Scene,
    SceneConfig,
)
from drive_vlm_pruned.scenes.geometry import (
    clip_polygon_near,
    NEAR_M,
    quaternion_to_matrix,
    yaw_of_quaternion,
)
from drive_vlm_pruned.scenes.world import LABEL_OF, Road, vehicle_parts
import numpy as np
import pytest

RIG = nuscenes_rig(160, 90)


def one_car_scene(s0: float, d: float, speed: float = 0.0,
                  size: tuple = (4.5, 1.8, 1.5), yaw: float = 0.0) -> Scene:
    """Return an empty straight road with one vehicle of ``size`` at Frenet (s0, d)."""
    config = SceneConfig(seed=0, vehicles_per_100m=0, pedestrians_per_100m=0,
                         signs_per_100m=0, barriers_per_100m=0)
    road = Road(0.0, 3.5, 2, 1, 3.0)
    car = Agent(1, 'vehicle', s0, d, speed, yaw, size, vehicle_parts(*size, (200, 30, 30)))
    return Scene(config, road, (car,))


def camera(name):
    return next(c for c in RIG if c.name == name)


def test_rig_matches_nuscenes_layout():
    assert tuple(c.name for c in RIG) == NUSCENES_CAMERAS
    yaws = {c.name: c.extrinsics.yaw_deg for c in RIG}
    assert yaws['CAM_FRONT'] == 0 and yaws['CAM_BACK'] == 180
    assert yaws['CAM_FRONT_LEFT'] > 0 > yaws['CAM_FRONT_RIGHT']
    assert 80 < camera('CAM_BACK').intrinsics.hfov_deg < 95
    assert 60 < camera('CAM_FRONT').intrinsics.hfov_deg < 70
    for cam in RIG:
        rot = cam.extrinsics.rotation()
        np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(quaternion_to_matrix(cam.extrinsics.quaternion()), rot,
                                   atol=1e-12)
        # The optical axis (camera z) points along the mounting yaw, level with the ground.
        yaw = math.radians(cam.extrinsics.yaw_deg)
        np.testing.assert_allclose(rot[:, 2], [math.cos(yaw), math.sin(yaw), 0.0], atol=1e-12)


def test_pinhole_projection_by_hand():
    front = camera('CAM_FRONT')
    k = front.intrinsics
    tx, ty, tz = front.extrinsics.translation
    # 20 m ahead at camera height, 2 m left: u = cx - f * 2 / 20, v = cy.
    p = front.ego_to_camera(np.array([[tx + 20.0, ty + 2.0, tz]]))
    np.testing.assert_allclose(p, [[-2.0, 0.0, 20.0]], atol=1e-12)
    np.testing.assert_allclose(front.project(p), [[k.cx - k.fx * 0.1, k.cy]], atol=1e-9)
    with pytest.raises(ValueError, match='near plane'):
        front.project(np.array([[0.0, 0.0, -1.0]]))


def test_near_plane_clipping_keeps_only_points_in_front():
    quad = np.array([[-1.0, 0.0, -2.0], [1.0, 0.0, -2.0], [1.0, 0.0, 4.0], [-1.0, 0.0, 4.0]])
    clipped = clip_polygon_near(quad)
    assert clipped[:, 2].min() >= NEAR_M - 1e-12
    assert len(clipped) == 4 and np.isclose(clipped[:, 2], NEAR_M).sum() == 2
    assert len(clip_polygon_near(quad - [0.0, 0.0, 10.0])) == 0


def test_object_behind_is_in_back_camera_only_and_straddling_box_is_clipped():
    behind = one_car_scene(-15.0, -1.75)
    assert not render_view(behind, camera('CAM_FRONT'), 0.0).objects
    (seen,) = render_view(behind, camera('CAM_BACK'), 0.0).objects
    assert seen.visible_px > 50
    x, y, _ = seen.object3d.position
    assert x == pytest.approx(-15.0) and y == pytest.approx(0.0)
    # A 15 m truck alongside, from 3 m behind the ego origin to 12 m ahead, straddles the
    # front camera's plane: its box is clipped at the near plane (left image edge), never
    # mirrored across the image, and the rendered truck lies inside it.
    truck = one_car_scene(4.5, 1.75, size=(15.0, 1.8, 3.0))
    view = render_view(truck, camera('CAM_FRONT'), 0.0)
    (seen,) = view.objects
    x0, y0, x1, y1 = seen.box
    assert x0 == 0.0 and 0 < x1 < camera('CAM_FRONT').intrinsics.width / 2
    assert seen.visible_px > 0
    cols = np.nonzero((view.mask == Label.VEHICLE).any(axis=0))[0]
    assert cols.min() == 0 and cols.max() + 0.5 <= x1


def test_mask_labels_and_boxes_agree():
    scene = make_scene(SceneConfig(seed=4, duration_s=3.0, pedestrians_per_100m=20,
                                   signs_per_100m=6, barriers_per_100m=6))
    frames = render_frame_set(scene, RIG, 5)
    seen = set()
    for view in frames.views:
        assert view.mask.shape == view.image.shape[:2] and view.mask.dtype == np.uint8
        cover = {label: np.zeros(view.mask.shape, bool) for label in LABEL_OF.values()}
        for obj in view.objects:
            x0, y0, x1, y1 = obj.box
            j0, j1 = math.ceil(x0 - 0.5), math.floor(x1 - 0.5)
            i0, i1 = math.ceil(y0 - 0.5), math.floor(y1 - 0.5)
            label = LABEL_OF[obj.object3d.label]
            inside = view.mask[i0:i1 + 1, j0:j1 + 1] == label
            # All of the object's visible pixels lie in its box and carry its class.
            assert inside.sum() >= obj.visible_px
            cover[label][i0:i1 + 1, j0:j1 + 1] = True
            if obj.visible_px:
                seen.add(obj.object3d.label)
        for label, covered in cover.items():
            # Every object pixel of the mask lies inside a box of an object of its class.
            assert not ((view.mask == label) & ~covered).any(), (view.camera, label)
    assert seen == {'vehicle', 'pedestrian', 'sign', 'barrier'}
    front = frames.view('CAM_FRONT').mask
    assert (front[0] == Label.BACKGROUND).all()          # sky
    assert (front[-1] == Label.ROAD).mean() > 0.3          # road under the car


def test_same_seed_same_frames_other_seed_other_frames():
    def images(seed):
        return [v.image for v in render_frame_set(
            make_scene(SceneConfig(seed=seed, duration_s=2.0)), RIG, 3).views]

    a, b, c = images(7), images(7), images(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_future_trajectory_straight_and_on_a_curve():
    straight = make_scene(SceneConfig(seed=1, ego_speed=10.0, duration_s=6.0))
    frames = render_frame_set(straight, RIG, 2)
    np.testing.assert_allclose(frames.future_trajectory,
                               [[5.0 * k, 0.0] for k in range(1, 7)], atol=1e-9)
    curvature, speed = 0.02, 8.0
    curved = make_scene(SceneConfig(seed=1, curvature=curvature, ego_speed=speed,
                                    duration_s=6.0))
    traj = render_frame_set(curved, RIG, 4).future_trajectory
    # The ego lane (1.75 m right of the centre line) is a circle of radius 1/k + 1.75 about
    # (0, r) in the ego frame; consecutive waypoints are 4 m of arc apart.
    r = 1.0 / curvature + 1.75
    np.testing.assert_allclose(np.hypot(traj[:, 0], traj[:, 1] - r), r, atol=1e-6)
    chord = np.linalg.norm(np.diff(np.vstack([[0.0, 0.0], traj]), axis=0), axis=1)
    np.testing.assert_allclose(chord, 2 * r * math.sin(speed * 0.5 / (2 * r)), atol=1e-6)
    assert (traj[:, 1] > 0).all()  # a left curve


def test_future_objects_move_with_their_agents():
    scene = one_car_scene(20.0, 1.75, speed=-10.0, yaw=math.pi)  # oncoming at 10 m/s
    frames = render_frame_set(scene, RIG, 0)
    (car,) = frames.future_objects
    # Boxes stay in the reference ego frame: the car moves 5 m per 0.5 s step in it.
    x0 = scene.ego_pose(frames.time_s).to_ego(
        np.array([scene.objects(frames.time_s)[0].position]))[0, 0]
    xs = [b[0] for b in car.boxes]
    np.testing.assert_allclose(np.diff([x0, *xs]), -5.0, atol=1e-9)
    assert all(abs(abs(b[2]) - math.pi) < 1e-9 for b in car.boxes)  # facing the ego


def test_views_render_at_their_own_exposure_times():
    scene = make_scene(SceneConfig(seed=2, ego_speed=10.0, duration_s=2.0))
    frames = render_frame_set(scene, RIG, 1)
    times = [v.time_s for v in frames.views]
    assert max(times) - min(times) == pytest.approx(0.0426)
    assert frames.view('CAM_BACK_LEFT').ego_pose.x > frames.view('CAM_FRONT_LEFT').ego_pose.x
    assert yaw_of_quaternion((1.0, 0.0, 0.0, 0.0)) == 0.0


def test_bad_config_names_the_problem():
    with pytest.raises(ValueError, match='curvature'):
        SceneConfig(curvature=0.2)
    with pytest.raises(ValueError, match='ego_lane'):
        SceneConfig(ego_lane=5)


def test_six_views_render_fast():
    scene = make_scene(SceneConfig(seed=0, duration_s=3.0))
    rig = nuscenes_rig(320, 180)
    render_frame_set(scene, rig, 0)  # warm the per-camera ray caches
    times = []
    for index in range(1, 4):
        start = time.perf_counter()
        render_frame_set(scene, rig, index)
        times.append(time.perf_counter() - start)
    # ~40-70 ms on a busy 2-core CI machine; the bound leaves room for noisy neighbours.
    assert min(times) < 0.25
