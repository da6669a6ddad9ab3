"""
Which QA a search trial or a benchmark cell answers, and in what order they are batched.

- ``take_frames``: whole key frames, never single QA, so DriveLM's graph gating (the frame's
  first QA sets the graph) scores them as the official script would. Frames are dealt
  round-robin over scenes (first frame of every scene, then the second, ...) so a small budget
  still covers many scenes; the last frame may be cut to hit an exact QA count (its first QA
  stays).
- ``scene_subsets``: N disjoint subsets of one split, scenes dealt round-robin (scene i goes to
  subset i mod N): the benchmark's "data seeds" when it is given a single data set.
- ``batch_order``: the order the pipeline answers them in: grouped by family, so a batch holds
  answers of similar length (a batch decodes until its longest answer ends; a yes/no batch
  mixed with one trajectory answer would run 60 steps instead of 3). Scoring always uses the
  file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..data.drivelm import all_qa, KeyFrame, QA
from ..eval.scoring import family_key

Pair = tuple[KeyFrame, QA]


def scenes_in_order(frames: Sequence[KeyFrame]) -> list[str]:
    """Scene tokens in file order, each once."""
    return list(dict.fromkeys(f.scene for f in frames))


def scene_subsets(frames: Sequence[KeyFrame], n: int) -> list[list[KeyFrame]]:
    """Split ``frames`` into ``n`` disjoint subsets by scene (module doc)."""
    scenes = scenes_in_order(frames)
    if n < 1:
        raise ValueError(f'--seeds {n}: use 1 or more')
    if len(scenes) < n:
        raise ValueError(f'the data has {len(scenes)} scenes, fewer than --seeds {n}: disjoint '
                         'subsets need one scene each at least; write more scenes with '
                         '`drive-vlm data synth --scenes`, or lower --seeds')
    group = {scene: i % n for i, scene in enumerate(scenes)}
    return [[f for f in frames if group[f.scene] == s] for s in range(n)]


def take_frames(frames: Sequence[KeyFrame], qa_count: int = 0) -> list[KeyFrame]:
    """
    Return whole frames, round-robin over scenes, until they hold ``qa_count`` QA (0: all).

    The result is in file order; the last frame is cut to make the count exact.
    """
    if qa_count <= 0:
        return [f for f in frames if f.qa]
    by_scene: dict[str, list[KeyFrame]] = {}
    for f in frames:
        if f.qa:
            by_scene.setdefault(f.scene, []).append(f)
    picked: list[KeyFrame] = []
    total, depth = 0, 0
    while total < qa_count and any(depth < len(v) for v in by_scene.values()):
        for scene_frames in by_scene.values():
            if depth < len(scene_frames) and total < qa_count:
                frame = scene_frames[depth]
                room = qa_count - total
                if len(frame.qa) > room:
                    frame = replace(frame, qa=frame.qa[:room])
                picked.append(frame)
                total += len(frame.qa)
        depth += 1
    position = {(f.scene, f.frame): i for i, f in enumerate(frames)}
    return sorted(picked, key=lambda f: position[(f.scene, f.frame)])


def batch_order(pairs: Sequence[Pair]) -> list[Pair]:
    """Return ``pairs`` grouped by family, file order within a family (module doc)."""
    first: dict[str, int] = {}
    for i, (_, qa) in enumerate(pairs):
        first.setdefault(family_key(qa), i)
    indexed = list(enumerate(pairs))
    indexed.sort(key=lambda item: (first[family_key(item[1][1])], item[0]))
    return [pair for _, pair in indexed]


def qa_pairs(frames: Sequence[KeyFrame]) -> list[Pair]:
    """Every QA of ``frames`` with its frame, in file order."""
    return all_qa(frames)
