"""The QA rules of docs/qa_rules.md: a hand-built scene answered one question at a time."""

import math
import re

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data import frame_qa
from drive_vlm_pruned.data import qa_rules as rules
from drive_vlm_pruned.data.qa_rules import FrameFacts, SeenObject
from drive_vlm_pruned.data.synth import capture_times
from drive_vlm_pruned.models.prompts import PLANNING, VIEW_WORDS
from drive_vlm_pruned.pipeline.trajectory import parse_trajectory
from drive_vlm_pruned.scenes import Agent, nuscenes_rig, render_frame_set, Scene, SceneConfig
from drive_vlm_pruned.scenes.world import (
    OBJECT_LABELS,
    pedestrian_parts,
    Road,
    sign_parts,
    vehicle_parts,
)
import numpy as np
import pytest

T = 1.5          # the key frame: the ego has driven 15 m at 10 m/s
EGO_SPEED = 10.0
BLUE, RED, WHITE = (30, 60, 140), (150, 25, 30), (235, 235, 230)


def hand_scene() -> Scene:
    """
    Build a straight road (2 forward, 2 oncoming lanes), the ego in lane 0 at 10 m/s, 4 agents.

    At t = 1.5 s, in the ego frame (x forward, y left): a red car 24 m ahead in the ego lane at
    the ego's speed (front view), a white oncoming car at (35, 3.5) (front view), a blue sign at
    (6, -6) (front right view only) and a standing pedestrian on the far left at (-14, 17),
    about 28 px tall in the back left view only.
    """
    config = SceneConfig(seed=0, ego_speed=EGO_SPEED, lanes_forward=2, lanes_oncoming=2,
                         vehicles_per_100m=0, pedestrians_per_100m=0, signs_per_100m=0,
                         barriers_per_100m=0)
    road = Road(0.0, 3.5, 2, 2, 3.0)
    car = (4.5, 1.8, 1.5)
    ego_s = EGO_SPEED * T
    agents = (
        Agent(1, 'vehicle', ego_s + 24.0 - EGO_SPEED * T, -1.75, EGO_SPEED, 0.0, car,
              vehicle_parts(*car, RED)),
        Agent(2, 'vehicle', ego_s + 35.0 + 8.0 * T, 1.75, -8.0, math.pi, car,
              vehicle_parts(*car, WHITE)),
        Agent(3, 'sign', ego_s + 6.0, -1.75 - 6.0, 0.0, 0.0, (0.1, 0.7, 2.6),
              sign_parts(2.6, (30, 80, 190))),
        Agent(4, 'pedestrian', ego_s - 14.0, -1.75 + 17.0, 0.0, 0.0, (0.45, 0.6, 1.75),
              pedestrian_parts(1.75, BLUE, (60, 60, 60), (190, 140, 100))),
    )
    return Scene(config, road, agents)


@pytest.fixture(scope='module')
def hand():
    scene = hand_scene()
    frames = render_frame_set(scene, nuscenes_rig(448, 252), 0, capture_times(T))
    return scene, frames, rules.frame_facts(scene, frames)


# Which objects count in which camera (by hand from the layout above; the rig's fields of view).
EXPECTED_COUNTS = {('CAM_FRONT', 'vehicle'): 2, ('CAM_FRONT_RIGHT', 'sign'): 1,
                   ('CAM_BACK_LEFT', 'pedestrian'): 1}
SENTENCE = 'The ego vehicle is going straight. The ego vehicle is driving fast.'


def test_the_hand_scene_shows_what_the_layout_says(hand):
    _, _, facts = hand
    for camera in NUSCENES_CAMERAS:
        for label in OBJECT_LABELS:
            assert len(facts.counted(camera, label)) == EXPECTED_COUNTS.get((camera, label), 0), \
                (camera, label)
            assert not facts.marginal(camera, label)
    pedestrian = facts.counted('CAM_BACK_LEFT', 'pedestrian')[0]
    assert 20 < pedestrian.box[3] - pedestrian.box[1] < 0.12 * 252  # small: under 30 px
    assert rules.pair_is_small(facts, 'CAM_BACK_LEFT', 'pedestrian')
    assert not rules.pair_is_small(facts, 'CAM_FRONT_RIGHT', 'sign')
    lead = facts.counted('CAM_FRONT', 'vehicle')[0]
    assert lead.ahead_m == pytest.approx(24.0) and lead.lateral_m == pytest.approx(0.0)
    assert facts.speed_mps == EGO_SPEED and facts.curvature == 0.0


def test_each_rule_on_the_hand_scene(hand):
    _, _, facts = hand
    assert rules.exists_answer(facts, 'CAM_BACK_LEFT', 'pedestrian') == 'Yes.'
    assert rules.exists_answer(facts, 'CAM_FRONT', 'pedestrian') == 'No.'
    assert rules.exists_answer(facts, 'CAM_BACK', 'vehicle') == 'No.'
    assert rules.count_answer(facts, 'CAM_FRONT', 'vehicle') == '2'
    assert rules.count_answer(facts, 'CAM_FRONT_RIGHT', 'sign') == '1'
    # Red car at 24 m: the nearest in the front view, 20-40 m band; the white car is 35 m away.
    assert rules.nearest_ahead_answer(facts) == 'vehicle, 20 to 40 m.'
    # Gap 24 - 2.25 (half the car) - 2.542 (ego front) = 19.2 m: 1.92 s at 10 m/s < 4 s.
    assert rules.lead_object(facts).track_id == 1
    assert rules.safe_action_answer(facts) == 'Slow down to keep a safe distance.'
    assert rules.behavior_answer(facts.future) == SENTENCE
    assert rules.history_text(facts.history) == (
        '(t-1.5s) [-15.00, 0.00], (t-1.0s) [-10.00, 0.00], (t-0.5s) [-5.00, 0.00], '
        '(t-0.0s) [0.00, 0.00]')
    assert rules.planning_answer(facts.future) == (
        '[5.0,0.0],[10.0,0.0],[15.0,0.0],[20.0,0.0],[25.0,0.0],[30.0,0.0]')


def test_key_objects_are_the_nearest_counted_ones_with_ctags_at_box_centres(hand):
    _, _, facts = hand
    objects = rules.key_objects(facts)
    # Sign 8.5 m, pedestrian 22.0 m, red car 24 m, white car 35.2 m: nearest first.
    assert [o.track_id for o in objects] == [3, 4, 1, 2]
    assert [o.camera for o in objects] == ['CAM_FRONT_RIGHT', 'CAM_BACK_LEFT', 'CAM_FRONT',
                                           'CAM_FRONT']
    assert [rules.in_moving_direction(o) for o in objects] == [False, False, True, False]
    answer = rules.important_objects_answer(objects)
    assert answer.startswith('There is a blue sign to the front right of the ego vehicle, a '
                             'pedestrian in blue to the back left of the ego vehicle, a red car '
                             'to the front of the ego vehicle and a white car to the front of '
                             'the ego vehicle. The IDs of these objects are <c1,CAM_FRONT_RIGHT,')
    for i, obj in enumerate(objects):
        tag = re.fullmatch(r'<c(\d),(\w+),([\d.]+),([\d.]+)>', rules.ctag(i + 1, obj))
        x0, y0, x1, y1 = obj.box
        assert int(tag[1]) == i + 1 and tag[2] == obj.camera
        assert float(tag[3]) == pytest.approx((x0 + x1) / 2, abs=0.051)
        assert float(tag[4]) == pytest.approx((y0 + y1) / 2, abs=0.051)
        assert 0 <= float(tag[3]) <= 448 and 0 <= float(tag[4]) <= 252


VIEWS = {words: camera for camera, words in VIEW_WORDS.items()}
SINGULAR = {plural: label for label, plural in rules.PLURALS.items()}


@pytest.mark.parametrize('seed', range(6))
def test_every_generated_question_has_the_hand_answer(hand, seed):
    """Each QA that frame_qa draws, checked against the hand table, not against the rules."""
    _, _, facts = hand
    qa = frame_qa.frame_qa(facts, np.random.default_rng(seed))
    tags = list(qa.key_object_infos)
    for category, items in qa.qa.items():
        for item in items:
            family, question, answer = item['type'], item['Q'], item['A']
            assert frame_qa.FAMILIES[family] == (category, item['tag'][0])
            if family == 'exists':
                m = re.fullmatch(r'Is there a (\w+) in the (.+)\?', question)
                n = EXPECTED_COUNTS.get((VIEWS[m[2]], m[1]), 0)
                assert answer == ('Yes.' if n else 'No.'), question
            elif family == 'count':
                m = re.fullmatch(r'How many (\w+) are in the (.+)\?', question)
                assert answer == str(EXPECTED_COUNTS.get((VIEWS[m[2]], SINGULAR[m[1]]), 0))
            elif family == 'nearest_ahead':
                assert answer == 'vehicle, 20 to 40 m.'
            elif family == 'in_moving_direction':
                tag = re.search(r'<c\d,[^>]*>', question)[0]
                assert tag in tags  # DriveLM's graph gating: only key objects are asked about
                assert answer == ('Yes.' if tag == tags[2] else 'No.')  # c3 is the red car
            elif family == 'safe_action':
                assert answer == 'Slow down to keep a safe distance.'
            elif family == 'behavior':
                assert answer == SENTENCE
            elif family == 'behavior_mc':
                options = dict(re.findall(r'([ABCD])\. (The ego vehicle is [^.]+\. The ego '
                                          r'vehicle is [^.]+\.)', question))
                assert len(options) == 4 and options[answer] == SENTENCE
            elif family == 'planning_trajectory':
                assert question.endswith(PLANNING) and '(t-1.5s) [-15.00, 0.00]' in question
                assert parse_trajectory(answer).points == tuple((5.0 * k, 0.0)
                                                                for k in range(1, 7))
            else:
                assert family == 'important_objects'
                assert re.findall(r'<c[^>]*>', answer) == tags


def seen(label='vehicle', camera='CAM_FRONT', px=500, xy=(20.0, 0.0), box=(10, 10, 50, 60),
         ahead=None, lateral=0.0, half_lateral=0.9, track=1) -> SeenObject:
    return SeenObject(track, label, camera, box, px, xy, xy[0] if ahead is None else ahead,
                      lateral, 2.25, half_lateral, True, f'red {label}')


def facts_of(*objects, speed=8.0, curvature=0.0, size=(448, 252)) -> FrameFacts:
    views = {c: tuple(o for o in objects if o.camera == c) for c in NUSCENES_CAMERAS}
    future = tuple((speed * 0.5 * k, 0.0) for k in range(1, 7))
    history = tuple((-speed * 0.5 * k, 0.0) for k in range(3, -1, -1))
    return FrameFacts(size, views, speed, curvature, history, future)


def test_visibility_thresholds_count_marginal_and_ignore():
    assert rules.min_visible_px(448, 252) == 60 and rules.marginal_px(448, 252) == 24
    assert rules.min_visible_px(224, 126) == 15 and rules.marginal_px(224, 126) == 6
    assert rules.min_visible_px(896, 504) == 240
    f = facts_of(seen(px=60, track=1), seen('pedestrian', px=59, track=2),
                 seen('sign', px=23, track=3))
    assert rules.count_answer(f, 'CAM_FRONT', 'vehicle') == '1'
    assert rules.exists_answer(f, 'CAM_FRONT', 'pedestrian') == 'No.'
    assert not rules.pair_is_clear(f, 'CAM_FRONT', 'pedestrian')   # 59 px: marginal
    assert rules.pair_is_clear(f, 'CAM_FRONT', 'sign')             # 23 px: invisible
    assert rules.exists_answer(f, 'CAM_FRONT', 'sign') == 'No.'
    # A marginal pair is never asked about.
    for seed in range(20):
        qa = frame_qa.frame_qa(f, np.random.default_rng(seed))
        asked = [q['Q'] for q in qa.qa['perception'] if q['type'] in ('exists', 'count')]
        assert not any('pedestrian' in q and 'front view' in q for q in asked)


def test_nearest_ahead_bands_and_ambiguity():
    assert [rules.distance_band(d) for d in (0.0, 9.9, 10.0, 19.9, 20.0, 39.9, 40.0, 90.0)] == [
        'under 10 m', 'under 10 m', '10 to 20 m', '10 to 20 m', '20 to 40 m', '20 to 40 m',
        'over 40 m', 'over 40 m']
    assert rules.nearest_ahead_answer(facts_of(seen('pedestrian', xy=(12.0, 3.0)))) == \
        'pedestrian, 10 to 20 m.'
    assert rules.nearest_ahead_answer(facts_of()) == 'None.'
    assert rules.nearest_ahead_answer(facts_of(seen(xy=(19.5, 0.0)))) is None   # band edge
    assert rules.nearest_ahead_answer(facts_of(seen(xy=(15.0, 0.0), track=1),
                                               seen('sign', xy=(15.5, 0.0), track=2))) is None
    assert rules.nearest_ahead_answer(facts_of(seen(px=30))) is None   # only a marginal one


def test_in_moving_direction_corridor():
    assert rules.in_moving_direction(seen(lateral=0.3))
    assert not rules.in_moving_direction(seen(ahead=-6.0))             # behind
    assert not rules.in_moving_direction(seen(lateral=3.5))            # next lane
    # A barrier 0.3 m inside the outer edge of the ego's lane: 1.45 - 0.2 = 1.25 > 1.125.
    assert not rules.in_moving_direction(seen('barrier', lateral=-1.45, half_lateral=0.2))
    assert rules.in_moving_direction(seen('barrier', lateral=-1.3, half_lateral=0.2))


def test_safe_action_rules_apply_in_order():
    near_lead = seen(xy=(20.0, 0.0))       # gap 20 - 2.25 - 2.542 = 15.2 m
    assert rules.safe_action_answer(facts_of(near_lead, speed=0.3)) == 'Remain stopped.'
    assert rules.safe_action_answer(facts_of(near_lead, speed=10.0, curvature=0.011)) == \
        'Slow down for the curve.'        # 100 * 0.011 = 1.1 m/s^2
    assert rules.safe_action_answer(facts_of(near_lead, speed=4.0)) == \
        'Slow down to keep a safe distance.'   # 3.8 s
    assert rules.safe_action_answer(facts_of(near_lead, speed=3.7)) == \
        'Keep going at the same speed.'         # 4.1 s
    assert rules.safe_action_answer(facts_of(seen(xy=(20.0, 3.5), lateral=3.5), speed=10.0)) \
        == 'Keep going at the same speed.'      # the car is in the next lane


def turning_future(speed: float, turn_deg: float) -> list[tuple[float, float]]:
    """Six waypoints at ``speed``, straight but for the last segment turned by ``turn_deg``."""
    step = speed * 0.5
    points = [(step * k, 0.0) for k in range(1, 6)]
    a = math.radians(turn_deg)
    return points + [(points[-1][0] + step * math.cos(a), step * math.sin(a))]


@pytest.mark.parametrize('speed,turn,expected', [
    (0.2, 30.0, 'going straight. The ego vehicle is not moving'),
    (3.9, 3.9, 'going straight. The ego vehicle is driving slowly'),
    (4.1, 4.1, 'slightly steering to the left. The ego vehicle is driving with normal speed'),
    (8.1, -14.9, 'slightly steering to the right. The ego vehicle is driving fast'),
    (12.1, 15.1, 'steering to the left. The ego vehicle is driving very fast'),
    (7.9, -40.0, 'steering to the right. The ego vehicle is driving with normal speed'),
])
def test_behavior_thresholds(speed, turn, expected):
    future = turning_future(speed, turn)
    assert rules.mean_speed_mps(future) == pytest.approx(speed)
    assert rules.heading_change_deg(future) == pytest.approx(turn)
    assert rules.behavior_answer(future) == f'The ego vehicle is {expected}.'
    assert rules.behavior_answer(future) in rules.BEHAVIOR_OPTIONS


def test_behavior_options_and_choices():
    assert len(set(rules.BEHAVIOR_OPTIONS)) == 21
    assert 'The ego vehicle is going straight. The ego vehicle is not moving.' in \
        rules.BEHAVIOR_OPTIONS
    letters = set()
    for seed in range(40):
        options, letter = rules.behavior_choices(SENTENCE, np.random.default_rng(seed))
        assert len(set(options)) == 4 and set(options) <= set(rules.BEHAVIOR_OPTIONS)
        assert options['ABCD'.index(letter)] == SENTENCE
        letters.add(letter)
    assert letters == set('ABCD')
    a = rules.behavior_choices(SENTENCE, np.random.default_rng(7))
    assert a == rules.behavior_choices(SENTENCE, np.random.default_rng(7))


def test_planning_answer_parses_and_never_writes_minus_zero():
    future = [(4.996, -0.001), (10.0, -0.04), (15.0, 0.2), (20.0, 0.5), (25.0, 1.0), (30.0, 2.0)]
    answer = rules.planning_answer(future)
    assert '-0.0' not in answer and answer.startswith('[5.0,0.0],[10.0,0.0]')
    assert parse_trajectory(answer).points == ((5.0, 0.0), (10.0, 0.0), (15.0, 0.2), (20.0, 0.5),
                                               (25.0, 1.0), (30.0, 2.0))


@pytest.mark.parametrize('seed', range(3))
def test_view_counts_and_drill_questions_have_the_hand_answers(hand, seed):
    """gt.view_counts and the training drills, checked against the hand table, not the rules."""
    _, _, facts = hand
    counts = frame_qa.view_counts(facts)
    assert set(counts) == set(NUSCENES_CAMERAS)
    for camera, by_label in counts.items():
        for label, n in by_label.items():
            assert n in (None, EXPECTED_COUNTS.get((camera, label), 0)), (camera, label)
    drills = frame_qa.drill_qa(counts, np.random.default_rng(seed), exists=6, count=5)
    exists = [(q, a) for family, q, a in drills if family == 'exists']
    count = [(q, a) for family, q, a in drills if family == 'count']
    assert len(exists) == 6 and len(count) == 5
    # yes and no alternate while both last: this scene has 3 yes pairs
    assert [a for _, a in exists] == ['Yes.', 'No.'] * 3
    for question, answer in exists:
        m = re.fullmatch(r'Is there a (\w+) in the (.+)\?', question)
        assert answer == ('Yes.' if EXPECTED_COUNTS.get((VIEWS[m[2]], m[1])) else 'No.')
    for question, answer in count:
        m = re.fullmatch(r'How many (\w+) are in the (.+)\?', question)
        assert answer == str(EXPECTED_COUNTS.get((VIEWS[m[2]], SINGULAR[m[1]]), 0))
    with pytest.raises(ValueError, match='--drill-exists'):
        frame_qa.drill_qa(counts, np.random.default_rng(seed), exists=-1, count=0)
