"""
The demo's questions and their ground truth, frame by frame, from the synthetic bag's own scene.

The bag comes from ``drive-vlm bag synth`` with a known seed, so its scene can be rebuilt and
each answered frame re-rendered. The answers then follow the same rules as the training data
(data/qa_rules.py, docs/qa_rules.md): existence and count in the front view, and the planning
trajectory, scored by L2 against the bag's sidecar (eval/planning.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bag.synth import scene_config, SynthOptions
from ..bag.topics import read_ground_truth
from ..cameras import HALF_FRAME_NS
from ..data import frame_qa, qa_rules
from ..eval.families import answers_match
from ..eval.planning import score_trajectory
from ..pipeline.trajectory import parse_trajectory
from ..scenes import make_scene, nuscenes_rig, render_frame_set

FRONT = 'CAM_FRONT'


@dataclass(frozen=True)
class Check:
    """One answer against its ground truth: ``correct`` for closed answers, ``l2_3s`` for plans."""

    truth: str
    correct: bool | None = None
    l2_3s: float | None = None


class DemoTruth:
    """Ground truth for the demo's questions at any answered stamp of one synthetic bag."""

    def __init__(self, bag: Path, options: SynthOptions) -> None:
        self.scene = make_scene(scene_config(options))
        self.rig = nuscenes_rig(options.width, options.height)
        self.truth = read_ground_truth(bag)
        first = self.truth.frames[0]
        facts = self._facts(first.index)
        self.exists_question = frame_qa.exists_question(FRONT, 'vehicle')
        self.count_question = frame_qa.count_question(FRONT, 'vehicle')
        # Speed and curvature are constant in a synthetic bag, so the ego history, and with it
        # the planning question, is the same at every frame.
        self.planning_question = qa_rules.planning_question(facts.history)
        # The order they are asked in: planning first, so that each pass (whose first answered
        # set takes the first question) shows a trajectory even when the CPU answers few sets.
        self.questions = (self.planning_question, self.exists_question, self.count_question)

    def _facts(self, index: int) -> qa_rules.FrameFacts:
        return qa_rules.frame_facts(self.scene, render_frame_set(self.scene, self.rig, index))

    def check(self, stamp_ns: int, question: str, answer: str) -> Check | None:
        """Return the check of ``answer``, or None for a stamp or question the demo can't score."""
        record = self.truth.frame_at(stamp_ns, HALF_FRAME_NS)
        if record is None or question not in self.questions:
            return None
        if question == self.planning_question:
            truth = qa_rules.planning_answer(record.future_trajectory)
            parsed = parse_trajectory(answer)
            l2 = score_trajectory(parsed.points, record).l2['3s'] if parsed.ok else None
            return Check(truth, l2_3s=l2)
        facts = self._facts(record.index)
        exists = question == self.exists_question
        rule = qa_rules.exists_answer if exists else qa_rules.count_answer
        truth = rule(facts, FRONT, 'vehicle')
        return Check(truth, correct=answers_match(answer, truth))
