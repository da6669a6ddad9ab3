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
  reader knows what "no difference" means here;
- where pruning should hurt: retention per question family and over the small-object questions
  alone (``by_group``), and for trajectories the parse rate and the L2-at-3-s ratio on the
  trajectories both parsed (``trajectories``), each with its interval.
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
SMALL = 'small objects'  # the exists/count questions whose objects are all small


def item_scores(pairs: Sequence[tuple[KeyFrame, QA]], answers: Mapping[str, str]) -> dict:
    """Return the per-item fields a cell's record keeps: ``closed`` and ``l2_3s``."""
    closed = [[qa.id, f'{f.scene}/{f.frame}', _hit(answers.get(qa.id, ''), qa.answer),
               qa.family or qa.category, int(qa.small)]
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


def _items(records: Sequence[dict], group: str | None = None) -> dict[str, tuple[str, float]]:
    """
    QA id -> (frame, hit) over the seeds of one cell (seed in the frame key: disjoint).

    ``group``: only the items of that family, or SMALL for the small-object questions.
    """
    out = {}
    for r in records:
        for item in r.get('closed', ()):
            i, frame, hit = item[:3]
            family, small = (item[3], bool(item[4])) if len(item) >= 5 else (None, False)
            if group is None or family == group or (group == SMALL and small):
                out[f'{r["seed"]}:{i}'] = (f'{r["seed"]}:{frame}', float(hit))
    return out


def compare(reference: Sequence[dict], other: Sequence[dict],
            group: str | None = None) -> Paired | None:
    """Pair two cells' closed-form items by QA id; None when they share none."""
    a, b = _items(reference, group), _items(other, group)
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    return paired_bootstrap([a[k][1] for k in common], [b[k][1] for k in common],
                            [a[k][0] for k in common])


def _l2(records: Sequence[dict]) -> dict[str, tuple[str, float | None]]:
    return {f'{r["seed"]}:{i}': (f'{r["seed"]}:{frame}', value)
            for r in records for i, frame, value in r.get('l2_3s', ())}


def trajectories(reference: Sequence[dict], other: Sequence[dict]) -> dict | None:
    """Parse rate kept, and the L2-at-3-s ratio with its interval on trajectories both parsed."""
    a, b = _l2(reference), _l2(other)
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    parsed = (sum(a[k][1] is not None for k in common), sum(b[k][1] is not None for k in common))
    both = [k for k in common if a[k][1] is not None and b[k][1] is not None]
    l2 = (paired_bootstrap([a[k][1] for k in both], [b[k][1] for k in both],
                           [a[k][0] for k in both]) if both else None)
    return {'items': len(common), 'parsed_reference': parsed[0], 'parsed': parsed[1],
            'l2_ratio': None if l2 is None else l2.ratio,
            'l2_ratio_ci': None if l2 is None else l2.ratio_ci}


def groups(reference: Sequence[dict], other: Sequence[dict]) -> dict[str, dict]:
    """Retention with its interval per family and for the small-object questions."""
    names = sorted({item[3] for r in reference for item in r.get('closed', ())
                    if len(item) >= 5}) + [SMALL]
    out = {}
    for name in names:
        paired = compare(reference, other, name)
        if paired is not None:
            out[name] = {'n': paired.items, 'retention': paired.ratio, 'ci': paired.ratio_ci}
    return out


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
                    'by_group': groups(reference, recs) if key != reference_key else {},
                    'trajectories': (trajectories(reference, recs) if key != reference_key
                                     else None),
                    'vs_random': None if vs is None else {
                        'difference': vs.difference, 'ci': vs.difference_ci,
                        'stable': vs.differs, 'items': vs.items, 'frames': vs.frames}}
    return out


MIN_FRAMES = 20  # below this many key frames a percentile bootstrap's interval is not usable


def frames_of(records: Sequence[dict], reference_key: str) -> int:
    """Return how many key frames the reference answered, over all seeds."""
    reference = [r for r in records if r['cell']['key'] == reference_key]
    return len({frame for frame, _ in _items(reference).values()})


def pairwise(records: Sequence[dict], reference_key: str) -> list[dict]:
    """
    Every pair of pruned cells at the same keep ratio (uniform allocation), any prune layer.

    Per pair the paired difference in closed-form accuracy (first minus second) with its
    key-frame bootstrap interval; ``stable`` when the interval excludes zero.
    """
    by_key: dict[str, list[dict]] = {}
    for r in records:
        if r['cell']['key'] != reference_key and r['cell']['allocation'] == 'uniform':
            by_key.setdefault(r['cell']['key'], []).append(r)
    keys = sorted(by_key, key=lambda k: (-by_key[k][0]['cell']['keep_ratio'], k))
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            keep = by_key[a][0]['cell']['keep_ratio']
            if by_key[b][0]['cell']['keep_ratio'] != keep:
                continue
            vs = compare(by_key[b], by_key[a])  # a - b
            if vs is not None:
                out.append({'keep_ratio': keep, 'first': a, 'second': b,
                            'difference': vs.difference, 'ci': vs.difference_ci,
                            'stable': vs.differs, 'items': vs.items, 'frames': vs.frames})
    return out


def pairwise_lines(pairs: Sequence[dict], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines: how many pairs per keep ratio, and the stable ones with their interval."""
    lines = []
    for keep in sorted({p['keep_ratio'] for p in pairs}, reverse=True):
        mine = [p for p in pairs if p['keep_ratio'] == keep]
        stable = [p for p in mine if p['stable']]
        text = '; '.join(
            f'{labels.get(w, w)} > {labels.get(l_, l_)} by {100 * abs(p["difference"]):.1f} '
            f'[{100 * min(abs(p["ci"][0]), abs(p["ci"][1])):.1f}, '
            f'{100 * max(abs(p["ci"][0]), abs(p["ci"][1])):.1f}] points'
            for p in stable
            for w, l_ in [(p['first'], p['second']) if p['difference'] > 0
                          else (p['second'], p['first'])])
        lines.append(f'- keep {keep:g}: {len(stable)} of {len(mine)} pairs stable'
                     + (f': {text}' if stable else ''))
    return lines


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


def _ci_text(value: float | None, ci) -> str:
    if value is None:
        return '—'
    low, high = ci or (float('nan'), float('nan'))
    return f'{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]'


def breakdown_lines(paired: Mapping[str, dict], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines: small-object retention and trajectories against the reference, per cell."""
    lines = ['| cell | small-object QA | small-object retention (95% CI) | trajectories parsed '
             '(reference) | L2 3 s ratio (95% CI) |', '|---|---|---|---|---|']
    for key, p in paired.items():
        if p['retention'] is None and not p['by_group']:
            continue
        small = p['by_group'].get(SMALL, {})
        t = p['trajectories'] or {}
        parsed = f'{t["parsed"]} ({t["parsed_reference"]}) of {t["items"]}' if t else '—'
        lines.append(f'| {labels.get(key, key)} | {small.get("n", 0)} | '
                     f'{_ci_text(small.get("retention"), small.get("ci"))} | {parsed} | '
                     f'{_ci_text(t.get("l2_ratio"), t.get("l2_ratio_ci"))} |')
    return lines
