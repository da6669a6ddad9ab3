"""
Paired statistics of the ``bench accuracy`` sweep (issue 25): every cell answers the same QA.

Each cell's record keeps, per closed-form QA, its key frame and whether the answer matched
(``closed``), and per trajectory its L2 at 3 s (``l2_3s``). Over all data seeds together:

- retention: the cell against the unpruned reference on the same items, ``mean(cell) /
  mean(reference)``, with a 95% interval from a bootstrap that resamples key frames
  (eval/paired.py): the QA of a frame share its images;
- versus random: the paired difference of accuracy to the random pruner at the same keep ratio,
  prune layer and allocation, with its interval; a pair is "stable" (the ranking holds) when the
  interval excludes zero;
- the smallest difference the run could detect: the median half-width of those intervals, so a
  reader knows what "no difference" means here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import statistics

from ..data.drivelm import KeyFrame, QA
from ..eval.families import answers_match
from ..eval.paired import Paired, paired_bootstrap
from ..eval.planning import score_trajectory
from ..eval.scoring import is_trajectory_qa, planning_truth
from ..pipeline.trajectory import parse_trajectory
from ..search.objective import is_closed_form

RANDOM = 'random'


def item_scores(pairs: Sequence[tuple[KeyFrame, QA]], answers: Mapping[str, str]) -> dict:
    """Return the per-item fields a cell's record keeps: ``closed`` and ``l2_3s``."""
    closed = [[qa.id, f'{f.scene}/{f.frame}', _hit(answers.get(qa.id, ''), qa.answer)]
              for f, qa in pairs if is_closed_form(qa)]
    l2 = []
    for f, qa in pairs:
        if f.gt is None or not f.gt.future_trajectory or not is_trajectory_qa(f, qa):
            continue
        parsed = parse_trajectory(answers.get(qa.id, ''))
        value = (score_trajectory(parsed.points, planning_truth(f.gt)).l2['3s']
                 if parsed.ok else None)
        l2.append([qa.id, f'{f.scene}/{f.frame}', value])
    return {'closed': closed, 'l2_3s': l2}


def _hit(answer: str, truth: str) -> int:
    return int(answers_match(answer, truth))


def _items(records: Sequence[dict]) -> dict[str, tuple[str, float]]:
    """QA id -> (frame, hit) over the seeds of one cell (seed in the frame key: disjoint)."""
    return {f'{r["seed"]}:{i}': (f'{r["seed"]}:{frame}', float(hit))
            for r in records for i, frame, hit in r.get('closed', ())}


def compare(reference: Sequence[dict], other: Sequence[dict]) -> Paired | None:
    """Pair two cells' closed-form items by QA id; None when they share none."""
    a, b = _items(reference), _items(other)
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    return paired_bootstrap([a[k][1] for k in common], [b[k][1] for k in common],
                            [a[k][0] for k in common])


def paired_rows(records: Sequence[dict], reference_key: str) -> dict[str, dict]:
    """Per cell key: n_closed, retention with its interval, and the difference to random."""
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(r['cell']['key'], []).append(r)
    reference = by_key.get(reference_key, [])
    randoms = {(c['keep_ratio'], c['prune_layer'], c['allocation']): recs
               for recs in by_key.values() if (c := recs[0]['cell'])['pruner'] == RANDOM}
    out = {}
    for key, recs in by_key.items():
        cell = recs[0]['cell']
        kept = compare(reference, recs) if key != reference_key else None
        rand = randoms.get((cell['keep_ratio'], cell['prune_layer'], cell['allocation']))
        vs = compare(rand, recs) if rand is not None and cell['pruner'] != RANDOM else None
        out[key] = {'n_closed': len(_items(recs)),
                    'retention': None if kept is None else kept.ratio,
                    'retention_ci': None if kept is None else kept.ratio_ci,
                    'vs_random': None if vs is None else {
                        'difference': vs.difference, 'ci': vs.difference_ci,
                        'stable': vs.differs, 'items': vs.items, 'frames': vs.frames}}
    return out


def detectable_difference(paired: Mapping[str, dict]) -> float | None:
    """Median half-width of the intervals of the differences to random (accuracy, 0..1)."""
    widths = [(p['vs_random']['ci'][1] - p['vs_random']['ci'][0]) / 2
              for p in paired.values() if p['vs_random']]
    return statistics.median(widths) if widths else None


def paired_lines(paired: Mapping[str, dict], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines: retention with its interval and the difference to random, per cell."""
    lines = ['| cell | closed-form QA | retention (95% CI) | minus random, points (95% CI) | '
             'stable |', '|---|---|---|---|---|']
    for key, p in paired.items():
        if p['retention'] is None:
            continue
        low, high = p['retention_ci'] or (float('nan'), float('nan'))
        ret = f'{100 * p["retention"]:.1f}% [{100 * low:.1f}, {100 * high:.1f}]'
        vs = p['vs_random']
        diff = ('—' if vs is None else f'{100 * vs["difference"]:+.1f} '
                f'[{100 * vs["ci"][0]:+.1f}, {100 * vs["ci"][1]:+.1f}]')
        stable = '—' if vs is None else ('yes' if vs['stable'] else 'no')
        lines.append(f'| {labels.get(key, key)} | {p["n_closed"]} | {ret} | {diff} | {stable} |')
    return lines
