"""
Which questions a key frame gets, in what words, drawn how.

The families and how many of each a frame gets, the question text, and the seeded draw that
keeps the answers balanced (docs/qa_rules.md states each). The answers come from the rules in
:mod:`.qa_rules`; :func:`frame_qa` returns a key frame's QA in DriveLM-nuScenes shape, with the
key objects and their c-tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .qa_rules import (
    behavior_answer,
    behavior_choices,
    CATEGORY_NAMES,
    count_answer,
    ctag,
    exists_answer,
    FrameFacts,
    history_sentence,
    important_objects_answer,
    in_moving_direction,
    key_objects,
    nearest_ahead_answer,
    pair_is_clear,
    pair_is_small,
    planning_answer,
    planning_question,
    PLURALS,
    safe_action_answer,
    yes_no,
)
from ..cameras import NUSCENES_CAMERAS
from ..models.prompts import VIEW_WORDS
from ..scenes.world import OBJECT_LABELS

# --- question families: (category, DriveLM tag) ---------------------------------------------
FAMILIES: dict[str, tuple[str, int]] = {
    'important_objects': ('perception', 3),
    'exists': ('perception', 0),
    'count': ('perception', 0),
    'nearest_ahead': ('perception', 0),
    'in_moving_direction': ('prediction', 0),
    'safe_action': ('planning', 0),
    'planning_trajectory': ('planning', 2),
    'behavior_mc': ('behavior', 0),
    'behavior': ('behavior', 2),
}
CATEGORIES = ('perception', 'prediction', 'planning', 'behavior')
EXISTS_PER_FRAME = 3            # exists questions per key frame, each on another camera
COUNT_PER_FRAME = 2             # count questions per key frame, each on another camera
MAX_COUNT = 6                   # count questions are asked for answers 0..MAX_COUNT
EXISTS_YES_SHARE = 0.5          # target share of "Yes." among exists questions
SMALL_WEIGHT = 3.0              # a yes-pair whose objects are all small is drawn 3x as often
MOVING_YES_DRAW = 0.6           # ask about an object in the moving direction this often


# --- question text -----------------------------------------------------------------------------

IMPORTANT_Q = ('What are the important objects in the current scene? Those objects will be '
               'considered for the future reasoning and driving decision.')
NEAREST_Q = 'What is the nearest object in the front view, and how far is it from the ego vehicle?'
SAFE_Q = 'In this scenario, what is the safe action for the ego vehicle?'
BEHAVIOR_Q = 'Predict the behavior of the ego vehicle.'


def exists_question(camera: str, label: str) -> str:
    return f'Is there a {label} in the {VIEW_WORDS[camera]}?'


def count_question(camera: str, label: str) -> str:
    return f'How many {PLURALS[label]} are in the {VIEW_WORDS[camera]}?'


def moving_direction_question(tag: str) -> str:
    return f'Would {tag} be in the moving direction of the ego vehicle?'


def behavior_mc_question(history: Sequence[Sequence[float]], options: Sequence[str]) -> str:
    listing = ' '.join(f'{letter}. {text}' for letter, text in zip('ABCD', options))
    return (f'{history_sentence(history)} {BEHAVIOR_Q} Please select the correct answer from '
            f'the following options: {listing}')


# --- the per-camera object counts behind the exists and count answers ---------------------------

def view_counts(facts: FrameFacts) -> dict[str, dict[str, int | None]]:
    """
    Per camera and class: how many objects count (the count answer); None where unclear.

    None where a marginal object could change the answer (``pair_is_clear``). Written to
    ``gt.view_counts``: what every exists and count question of the frame would answer, so a
    trainer can ask any of them.
    """
    return {camera: {label: len(facts.counted(camera, label))
                     if pair_is_clear(facts, camera, label) else None
                     for label in OBJECT_LABELS}
            for camera in NUSCENES_CAMERAS}


def drill_qa(counts: dict[str, dict[str, int | None]], rng: np.random.Generator,
             exists: int, count: int) -> list[tuple[str, str, str]]:
    """
    Extra exists and count questions on one frame, as ``(family, question, answer)``.

    Training only (``Recipe.drill_exists``/``drill_count``): the frame's own 3 exists and 2
    count questions are a few of its 24 camera x class pairs; these ask more of the clear pairs
    (``view_counts``), with the rules' answers and words. Exists draws alternate "Yes." and "No."
    pairs while both remain; count draws, like the frame's own, take a count uniformly from the
    counts the frame offers (up to ``MAX_COUNT``), then a pair with it, so '0' does not dominate.
    """
    if exists < 0 or count < 0:
        raise ValueError(f'drill questions per frame must be >= 0, got {exists} exists and '
                         f'{count} count (--drill-exists, --drill-count)')
    pairs = [(c, lab, n) for c, by_label in counts.items() for lab, n in by_label.items()
             if n is not None]
    out: list[tuple[str, str, str]] = []
    yes = [p for p in pairs if p[2] > 0]
    no = [p for p in pairs if p[2] == 0]
    rng.shuffle(yes)
    rng.shuffle(no)
    for k in range(min(exists, len(yes) + len(no))):
        pool = yes if (k % 2 == 0 and yes) or not no else no
        camera, label, n = pool.pop()
        out.append(('exists', exists_question(camera, label), yes_no(n > 0)))
    by_count: dict[int, list[tuple[str, str, int]]] = {}
    for pair in pairs:
        if pair[2] <= MAX_COUNT:
            by_count.setdefault(pair[2], []).append(pair)
    for _ in range(min(count, sum(map(len, by_count.values())))):
        values = sorted(by_count)
        pool = by_count[values[int(rng.integers(len(values)))]]
        camera, label, n = pool.pop(int(rng.integers(len(pool))))
        if not pool:
            del by_count[n]
        out.append(('count', count_question(camera, label), str(n)))
    return out


# --- one key frame's QA --------------------------------------------------------------------------

@dataclass
class FrameQA:
    """A key frame's key objects (c-tag -> info) and QA lists by category, DriveLM-shaped."""

    key_object_infos: dict[str, dict] = field(default_factory=dict)
    qa: dict[str, list[dict]] = field(
        default_factory=lambda: {category: [] for category in CATEGORIES})

    def add(self, family: str, question: str, answer: str, **extra) -> None:
        category, tag = FAMILIES[family]
        item = {'Q': question, 'A': answer, 'C': None, 'con_up': None, 'con_down': None,
                'cluster': None, 'layer': None, 'tag': [tag], 'type': family}
        item.update(extra)
        self.qa[category].append(item)


def _exists_questions(facts: FrameFacts, rng: np.random.Generator, out: FrameQA) -> None:
    cameras = list(NUSCENES_CAMERAS)
    for _ in range(EXISTS_PER_FRAME):
        pairs = [(c, lab) for c in cameras for lab in OBJECT_LABELS
                 if pair_is_clear(facts, c, lab)]
        if not pairs:
            return
        yes = [p for p in pairs if facts.counted(*p)]
        no = [p for p in pairs if not facts.counted(*p)]
        want_yes = rng.random() < EXISTS_YES_SHARE
        pool = yes if (want_yes and yes) or not no else no
        weights = np.array([SMALL_WEIGHT if pair_is_small(facts, *p) else 1.0 for p in pool])
        camera, label = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        cameras.remove(camera)
        out.add('exists', exists_question(camera, label), exists_answer(facts, camera, label),
                camera=camera, small=pair_is_small(facts, camera, label))


def _count_questions(facts: FrameFacts, rng: np.random.Generator, out: FrameQA) -> None:
    cameras = list(NUSCENES_CAMERAS)
    for _ in range(COUNT_PER_FRAME):
        by_count: dict[int, list[tuple[str, str]]] = {}
        for c in cameras:
            for lab in OBJECT_LABELS:
                n = len(facts.counted(c, lab))
                if n <= MAX_COUNT and pair_is_clear(facts, c, lab):
                    by_count.setdefault(n, []).append((c, lab))
        if not by_count:
            return
        # Draw the answer first, uniformly over the counts this frame offers, then a pair with
        # that count: zeros abound in any frame, so drawing pairs directly would make '0' the
        # majority answer.
        values = sorted(by_count)
        pool = by_count[values[int(rng.integers(len(values)))]]
        camera, label = pool[int(rng.integers(len(pool)))]
        cameras.remove(camera)
        out.add('count', count_question(camera, label), count_answer(facts, camera, label),
                camera=camera, small=pair_is_small(facts, camera, label))


def frame_qa(facts: FrameFacts, rng: np.random.Generator) -> FrameQA:
    """
    Return a key frame's key objects and QA (docs/qa_rules.md lists the families and order).

    perception: important_objects, exists x3, count x2, nearest_ahead (when unambiguous);
    prediction: in_moving_direction (when there are key objects); planning: safe_action,
    planning_trajectory; behavior: behavior_mc, behavior.
    """
    out = FrameQA()
    objects = key_objects(facts)
    tags = [ctag(i + 1, o) for i, o in enumerate(objects)]
    for tag, obj in zip(tags, objects):
        out.key_object_infos[tag] = {
            'Category': CATEGORY_NAMES[obj.label],
            'Status': 'Moving' if obj.moving else 'Stationary',
            'Visual_description': obj.phrase[0].upper() + obj.phrase[1:] + '.',
            '2d_bbox': [round(v, 1) for v in obj.box],
        }
    out.add('important_objects', IMPORTANT_Q, important_objects_answer(objects))
    _exists_questions(facts, rng, out)
    _count_questions(facts, rng, out)
    nearest = nearest_ahead_answer(facts)
    if nearest is not None:
        out.add('nearest_ahead', NEAREST_Q, nearest, camera='CAM_FRONT')
    if objects:
        yes = [i for i, o in enumerate(objects) if in_moving_direction(o)]
        no = [i for i, o in enumerate(objects) if not in_moving_direction(o)]
        pool = yes if (rng.random() < MOVING_YES_DRAW and yes) or not no else no
        pick = pool[int(rng.integers(len(pool)))]
        out.add('in_moving_direction', moving_direction_question(tags[pick]),
                yes_no(in_moving_direction(objects[pick])), camera=objects[pick].camera)
    history = facts.history
    out.add('safe_action', f'{history_sentence(history)} {SAFE_Q}', safe_action_answer(facts))
    out.add('planning_trajectory', planning_question(history), planning_answer(facts.future))
    sentence = behavior_answer(facts.future)
    options, letter = behavior_choices(sentence, rng)
    out.add('behavior_mc', behavior_mc_question(history, options), letter)
    out.add('behavior', f'{history_sentence(history)} {BEHAVIOR_Q}', sentence)
    return out
