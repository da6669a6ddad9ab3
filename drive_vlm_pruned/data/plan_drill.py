"""
Ego-motion drill turns: more planning and behavior-choice questions than train frames hold.

A key frame asks one planning question, and on this generator its answer follows from the ego
history alone: the ego drives its lane centre at a constant curvature and acceleration
(``synth.scene_config``), so the six waypoints extrapolate the four history points. That is
arithmetic the LLM learns from examples, and one example per frame is few of them.
``drill_planning`` draws more: each drill takes a train-split scene seed, builds that scene's
road and ego motion (no agents, no rendering), picks a key frame time, and asks the frame's
planning question with the rules' answer (``qa_rules.planning_question``/``planning_answer``).
Training only (``Recipe.drill_plan``): val and test keep their own QA, and the seeds stay in the
train split's range, so no val or test motion is ever drilled.

``drill_behavior_mc`` asks the multiple-choice behavior question on such motions, each with its
own draw of options (``qa_rules.behavior_choices``). A model can know the behavior sentence
and still miss the letter: picking the option that matches is a lookup it learns from examples,
and a frame holds one.
"""

from __future__ import annotations

import numpy as np

from .frame_qa import behavior_mc_question
from .qa_rules import (
    behavior_answer,
    behavior_choices,
    ego_history,
    planning_answer,
    planning_question,
)
from .synth import key_frame_times, scene_config, SPLIT_BASE, SPLIT_SPAN
from ..scenes.frames import future_trajectory
from ..scenes.world import ego_scene, Scene

DRILL_FRAMES_PER_SCENE = 10  # the recipe's train split: key frames 1.5 s .. 6.0 s


def drill_scene(scene_seed: int) -> Scene:
    """Return the road and ego motion of scene ``scene_seed`` (any split), without agents."""
    return ego_scene(scene_config(scene_seed, DRILL_FRAMES_PER_SCENE))


def drill_motions(rng: np.random.Generator, n: int, flag: str = '--drill-plan'
                  ) -> list[tuple[int, float]]:
    """``n`` (scene seed, key frame time): seeds uniform over the train split's range."""
    if n < 0:
        raise ValueError(f'drill turns per frame must be >= 0, got {n} ({flag})')
    times = key_frame_times(DRILL_FRAMES_PER_SCENE)
    return [(SPLIT_BASE['train'] + int(rng.integers(SPLIT_SPAN)),
             times[int(rng.integers(len(times)))]) for _ in range(n)]


def planning_turn(scene: Scene, time_s: float) -> tuple[str, str, str]:
    """Return the planning turn ``(family, question, answer)`` of ``scene`` at ``time_s``."""
    return ('planning_trajectory', planning_question(ego_history(scene, time_s)),
            planning_answer(future_trajectory(scene, time_s)))


def drill_planning(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """
    ``n`` planning turns ``(family, question, answer)`` on train-split ego motions.

    The question and answer are the rules' own (``qa_rules``), so a drill turn reads exactly
    like a frame's planning turn.
    """
    return [planning_turn(drill_scene(seed), t) for seed, t in drill_motions(rng, n)]


def behavior_mc_turn(scene: Scene, time_s: float, rng: np.random.Generator
                     ) -> tuple[str, str, str]:
    """Return a behavior-choice turn of ``scene`` at ``time_s``, its options drawn from ``rng``."""
    options, letter = behavior_choices(behavior_answer(future_trajectory(scene, time_s)), rng)
    return ('behavior_mc', behavior_mc_question(ego_history(scene, time_s), options), letter)


def drill_behavior_mc(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """``n`` behavior-choice turns ``(family, question, answer)`` on train-split ego motions."""
    return [behavior_mc_turn(drill_scene(seed), t, rng)
            for seed, t in drill_motions(rng, n, '--drill-mc')]
