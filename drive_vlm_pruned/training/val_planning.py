"""
Free-running planning check for the validation pass: greedy trajectories, scored by L2 at 3 s.

Teacher-forced exact match cannot see how well a model plans: it stays at the share of stopped
frames (all-zero answers) whether or not the model reads the ego history. The drilled model of
issue 28 kept 12% there, like the shipped model, while its greedy trajectories were 5x worse
(model card). So each validation pass also answers the planning question of the fixed val frames
through the ``Pipeline``, the path the node and ``drive-vlm eval`` run (keep 1.0, greedy), and
scores the parsed waypoints as ``eval/scoring.py`` does. It decodes freely, without the waypoint
grammar: the check watches whether the model itself writes a trajectory, and its figures stay
comparable with the runs before the grammar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .samples import FrameTurns
from ..data.drivelm import KeyFrame, load_camera_set
from ..eval.baselines import constant_velocity
from ..eval.planning import score_trajectory
from ..eval.scoring import is_trajectory_qa, planning_truth, TRAJECTORY_FAMILY
from ..models.base import VLMAdapter
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..pipeline.trajectory import parse_trajectory, TrajectoryParse

# A whole trajectory is at most 56 tokens (model card); a few more show a model that runs on.
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class PlanningCheck:
    items: int  # frames with a planning question and a GT trajectory
    parsed: int  # answers that parse as six waypoints
    l2_3s: float | None  # mean L2 at 3 s (m) over the parsed answers; None if none parsed
    constant_velocity_3s: float | None  # the same frames, the last history step held

    def as_json(self) -> dict:
        return {'items': self.items, 'parsed': self.parsed, 'l2_3s': self.l2_3s,
                'constant_velocity_3s': self.constant_velocity_3s}


def planning_check(adapter: VLMAdapter, frames: Sequence[KeyFrame],
                   max_new_tokens: int = MAX_NEW_TOKENS) -> PlanningCheck:
    """Answer each frame's planning QA greedily at keep 1.0 and score it (module doc)."""
    pipeline = Pipeline(adapter)

    def answers() -> Iterator[tuple[KeyFrame, TrajectoryParse]]:
        for frame in frames:
            qa = next((q for q in frame.qa if is_trajectory_qa(frame, q)), None)
            if qa is not None and _has_truth(frame):
                settings = RuntimeSettings(keep_ratio=1.0, question=qa.question,
                                           max_new_tokens=max_new_tokens,
                                           waypoint_grammar=False)
                yield frame, pipeline.run(load_camera_set(frame), settings).trajectory

    return _score(answers())


def language_planning_check(adapter: VLMAdapter, frames: Sequence[KeyFrame],
                            turns: Sequence[FrameTurns],
                            max_new_tokens: int = MAX_NEW_TOKENS) -> PlanningCheck:
    """
    Answer each planning turn's own prompt greedily, without any view: the language stage.

    A text-only LLM has never seen a visual token, so the ``Pipeline``'s prompt would test
    something it was not taught; its turn alone is what it learned (samples.py).
    """
    def answers() -> Iterator[tuple[KeyFrame, TrajectoryParse]]:
        for frame, frame_turns in zip(frames, turns):
            turn = next((t for t in frame_turns.turns if t.family == TRAJECTORY_FAMILY), None)
            if turn is not None and _has_truth(frame):
                yield frame, parse_trajectory(_greedy(adapter, turn.prompt, max_new_tokens))

    return _score(answers())


def _has_truth(frame: KeyFrame) -> bool:
    """Return True when the frame has a GT future trajectory to score against."""
    return frame.gt is not None and bool(frame.gt.future_trajectory)


@torch.no_grad()
def _greedy(adapter: VLMAdapter, prompt: Sequence[int], max_new_tokens: int) -> str:
    """Decode greedily from token ids alone, through the model's own ``generate``."""
    ids = torch.tensor([list(prompt)], device=adapter.device)
    out = adapter.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=adapter.eos_token_ids,
                                 pad_token_id=adapter.pad_token_id)
    return adapter.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _score(answers: Iterable[tuple[KeyFrame, TrajectoryParse]]) -> PlanningCheck:
    """L2 at 3 s of the parsed answers, and of constant velocity on the same frames."""
    items, model_l2, cv_l2 = 0, [], []
    for frame, trajectory in answers:
        items += 1
        truth = planning_truth(frame.gt)
        if trajectory.ok:
            model_l2.append(score_trajectory(trajectory.points, truth).l2['3s'])
        baseline = constant_velocity(frame.gt.ego_history)
        if baseline is not None:
            cv_l2.append(score_trajectory(baseline, truth).l2['3s'])
    return PlanningCheck(items, len(model_l2), _mean(model_l2), _mean(cv_l2))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
