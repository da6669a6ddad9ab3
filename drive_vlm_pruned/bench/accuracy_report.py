"""
The report of ``drive-vlm bench accuracy``: figures over data seeds, rankings, verdict, tables.

``summarize`` turns the (cell, seed) records into one row per cell (mean ± sample std over the
seeds, retention against the unpruned cell, measured prefill speed-up); ``write_report`` writes
``accuracy.json`` and ``accuracy.md``. See bench/accuracy.py for the sweep as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import statistics

from .accuracy_cells import BASE_CELL, BLIND, MAJORITY, NONE, UNIFORM
from .accuracy_paired import (
    breakdown_lines,
    detectable_difference,
    frames_of,
    MIN_FRAMES,
    paired_lines,
    paired_rows,
    pairwise,
    pairwise_lines,
)

BREAK_RETENTION = 0.95  # a pruner "breaks" at the largest keep ratio where it keeps less
CLAIM_RETENTION = 0.97  # Prune2Drive's claim at keep 0.1 (MVPruner claims 0.985)


@dataclass
class Stat:
    """Mean and sample standard deviation over data seeds (std 0 with one seed)."""

    mean: float | None
    std: float | None
    n: int

    @staticmethod
    def of(values: Iterable[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return Stat(None, None, 0)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return Stat(statistics.fmean(vals), std, len(vals))

    def text(self, fmt: str = '.3f', pct: bool = False) -> str:
        if self.mean is None:
            return '—'
        scale = 100.0 if pct else 1.0
        body = format(self.mean * scale, fmt)
        return body if self.n < 2 else f'{body} ± {format(self.std * scale, fmt)}'

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.mean is None:
            return None
        return self.mean - (self.std or 0.0), self.mean + (self.std or 0.0)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per cell: mean ± std over seeds of every figure, retention and speed-up."""
    base = {r['seed']: r for r in records if r['cell']['key'] == BASE_CELL.key}
    groups: dict[str, list[dict]] = {}
    cells: dict[str, dict] = {}
    for r in records:
        groups.setdefault(r['cell']['key'], []).append(r)
        cells[r['cell']['key']] = r['cell']
    rows = []
    for key, recs in groups.items():
        def stat(fn, recs=recs):
            return Stat.of(fn(r) for r in recs)

        def retention(metric, recs=recs):
            return Stat.of(_ratio(metric(r), metric(base[r['seed']])) for r in recs
                           if r['seed'] in base)

        acc = lambda r: r['accuracy']  # noqa: E731
        final = lambda r: (r.get('drivelm') or {}).get('final_score_no_gpt')  # noqa: E731
        families = sorted({f for r in recs for f in r.get('families', {})})
        rows.append({
            'cell': cells[key], 'seeds': len(recs), 'qa': recs[0]['qa'],
            'accuracy': stat(acc), 'accuracy_retention': retention(acc),
            'language': stat(lambda r: r['language']),
            'quality': stat(lambda r: r['quality']),
            'quality_retention': retention(lambda r: r['quality']),
            'drivelm_accuracy': stat(lambda r: (r.get('drivelm') or {}).get('accuracy')),
            'final_score': stat(final), 'final_retention': retention(final),
            'match_f1': stat(lambda r: (r.get('drivelm') or {}).get('match_f1')),
            'l2_avg': stat(lambda r: (r.get('planning') or {}).get('l2_avg')),
            'collision_avg': stat(lambda r: (r.get('planning') or {}).get('collision_avg')),
            'speedup': Stat.of(_ratio(base[r['seed']].get('prefill_ms'), r.get('prefill_ms'))
                               for r in recs if r['seed'] in base and 'prefill_ms' in r),
            'flops_share': stat(lambda r: r.get('flops_share')),
            'foreground_recall': stat(lambda r: r.get('foreground_recall')),
            'tokens_kept': stat(lambda r: r.get('tokens_kept_mean')),
            'tokens_total': stat(lambda r: r.get('tokens_total_mean')),
            'families': {f: {'metric': next(r['families'][f]['metric'] for r in recs
                                            if f in r['families']),
                             'value': Stat.of(r['families'].get(f, {}).get('value')
                                              for r in recs)}
                         for f in families},
            'errors': sum(r.get('errors', 0) for r in recs),
            'seconds': sum(r.get('seconds', 0.0) for r in recs),
        })
    order = {NONE: 0, BLIND: 1, MAJORITY: 2}
    rows.sort(key=lambda row: (order.get(row['cell']['pruner'], 3), row['cell']['prune_layer'],
                               row['cell']['pruner'], row['cell']['allocation'],
                               -row['cell']['keep_ratio']))
    return rows


def is_reference(row: dict) -> bool:
    return row['cell']['pruner'] in (NONE, BLIND, MAJORITY)


def rankings(rows: Sequence[dict], metric: str = 'accuracy_retention') -> list[dict]:
    """Per (prune layer, keep ratio): cells ranked by ``metric``, and whether the top is stable."""
    groups: dict[tuple[int, float], list[dict]] = {}
    for row in rows:
        if not is_reference(row) and row[metric].mean is not None:
            c = row['cell']
            groups.setdefault((c['prune_layer'], c['keep_ratio']), []).append(row)
    out = []
    for (layer, keep), members in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1])):
        ranked = sorted(members, key=lambda r: -r[metric].mean)
        stable, why = None, 'one cell only'
        if len(ranked) >= 2:
            a, b = ranked[0][metric], ranked[1][metric]
            if min(a.n, b.n) < 2:
                stable, why = None, 'one data seed: no spread, cannot tell'
            else:
                stable = a.interval[0] > b.interval[1]
                why = ('mean ± std intervals of the top two do not overlap' if stable else
                       'mean ± std intervals of the top two overlap')
        out.append({'prune_layer': layer, 'keep_ratio': keep, 'ranked': ranked,
                    'stable': stable, 'why': why})
    return out


def breaking_points(rows: Sequence[dict], threshold: float = BREAK_RETENTION) -> list[str]:
    """Per (pruner, allocation, layer): the largest keep ratio where retention falls below."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not is_reference(row):
            c = row['cell']
            groups.setdefault((c['prune_layer'], c['pruner'], c['allocation']), []).append(row)
    lines = []
    for (layer, pruner, allocation), members in sorted(groups.items()):
        members.sort(key=lambda r: -r['cell']['keep_ratio'])
        label = members[0]['cell']['pruner'] if allocation == UNIFORM else \
            f'{pruner}+{allocation}'
        broke = next((r for r in members if r['accuracy_retention'].mean is not None
                      and r['accuracy_retention'].mean < threshold), None)
        if broke is None:
            low = members[-1]
            lines.append(f'K={layer} {label}: keeps >= {threshold:.0%} of the unpruned accuracy '
                         f'down to keep {low["cell"]["keep_ratio"]:g} '
                         f'({low["accuracy_retention"].text(".1f", pct=True)}%)')
        else:
            lines.append(f'K={layer} {label}: breaks at keep {broke["cell"]["keep_ratio"]:g} '
                         f'(accuracy retention {broke["accuracy_retention"].text(".1f", True)}%)')
    return lines


def verdict(rows: Sequence[dict]) -> list[str]:
    """Return the verdict: best pruner at keep 0.25 and 0.1, its stability, the 97% claim."""
    lines = []
    for rank in rankings(rows):
        if rank['keep_ratio'] not in (0.25, 0.1):
            continue
        top = rank['ranked'][0]
        nxt = rank['ranked'][1] if len(rank['ranked']) > 1 else None
        stable = {True: 'stable', False: 'NOT stable', None: 'stability unknown'}[rank['stable']]
        text = (f'keep {rank["keep_ratio"]:g}, K={rank["prune_layer"]}: best '
                f'{label_of(top)} keeps '
                f'{top["accuracy_retention"].text(".1f", pct=True)}% of the unpruned accuracy')
        if nxt is not None:
            text += (f', then {label_of(nxt)} {nxt["accuracy_retention"].text(".1f", True)}%'
                     f' ({stable}: {rank["why"]})')
        lines.append(text)
        if rank['keep_ratio'] == 0.1:
            m = top['accuracy_retention'].mean
            holds = 'holds' if m >= CLAIM_RETENTION else 'does NOT hold'
            lines.append(f"  the seeds' claim (>= {CLAIM_RETENTION:.0%} kept at keep 0.1; "
                         f'MVPruner 98.5%) {holds} here at K={rank["prune_layer"]} '
                         f'({100 * m:.1f}%)')
    return lines


def label_of(row: dict) -> str:
    c = row['cell']
    return c['pruner'] if c['allocation'] in (UNIFORM, NONE, BLIND, MAJORITY) else \
        f'{c["pruner"]}+{c["allocation"]}'


def full_label(row: dict) -> str:
    """Return the label with the keep ratio and the prune layer: 'tfps keep 0.1 K0'."""
    c = row['cell']
    return f'{label_of(row)} keep {c["keep_ratio"]:g} K{c["prune_layer"]}'


def markdown(rows: Sequence[dict]) -> str:
    """Return the main table: one row per cell, figures as mean ± std over the data seeds."""
    head = ['K', 'pruner', 'keep', 'tokens kept', 'accuracy', 'retention', 'final (no GPT)',
            'final ret.', 'L2 avg (m)', 'collision', 'fg recall', 'prefill speed-up',
            'FLOPs share']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        c = row['cell']
        ref = is_reference(row)
        kept = ('—' if row['tokens_kept'].mean is None else
                f'{row["tokens_kept"].mean:.0f}/{row["tokens_total"].mean:.0f}')
        cells = [
            '—' if ref else str(c['prune_layer']), label_of(row),
            f'{c["keep_ratio"]:g}' if c['pruner'] != MAJORITY else '—', kept,
            row['accuracy'].text('.1f', pct=True), row['accuracy_retention'].text('.1f', True),
            row['final_score'].text('.3f'), row['final_retention'].text('.1f', True),
            row['l2_avg'].text('.2f'), row['collision_avg'].text('.1f', True),
            row['foreground_recall'].text('.1f', True),
            '—' if c['pruner'] in (BLIND, MAJORITY) else row['speedup'].text('.2f'),
            '—' if c['pruner'] in (BLIND, MAJORITY) else row['flops_share'].text('.1f', True),
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def family_markdown(rows: Sequence[dict]) -> str:
    """Per-family scores per cell (means over seeds): exact match %, match F1, language, L2."""
    families: dict[str, str] = {}
    for row in rows:
        for f, v in row['families'].items():
            families.setdefault(f, v['metric'])
    names = list(families)
    head = ['K', 'pruner', 'keep'] + [f'{f} [{families[f]}]' for f in names]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        c = row['cell']
        vals = []
        for f in names:
            v = row['families'].get(f)
            if v is None or v['value'].mean is None:
                vals.append('—')
            elif v['metric'] == 'exact match':
                vals.append(f'{100 * v["value"].mean:.0f}%')
            else:
                vals.append(f'{v["value"].mean:.2f}')
        first = ['—' if is_reference(row) else str(c['prune_layer']), label_of(row),
                 f'{c["keep_ratio"]:g}']
        lines.append('| ' + ' | '.join(first + vals) + ' |')
    return '\n'.join(lines)


def stat_json(value):
    if isinstance(value, Stat):
        return asdict(value)
    if isinstance(value, dict):
        return {k: stat_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stat_json(v) for v in value]
    return value


def write_report(out: Path, rows: Sequence[dict], header: Mapping, how: str,
                 notes: Sequence[str], model: str, records: Sequence[dict] = (),
                 wall_s: float | None = None, processes: int = 1) -> str:
    """
    Write accuracy.json and accuracy.md; return the markdown.

    ``wall_s``: this run's wall time, start to report (None: --report-only); a resumed run's
    earlier cells are in ``cell_seconds``.
    """
    ranks = rankings(rows)
    paired = paired_rows(records, BASE_CELL.key)
    pairs = pairwise(records, BASE_CELL.key)
    for row in rows:
        row.update(paired.get(row['cell']['key'], {}))
    smallest = detectable_difference(paired)
    frames = frames_of(records, BASE_CELL.key)
    cell_labels = {r['cell']['key']: full_label(r) for r in rows}
    paired_text = [
        '', '### Paired, all seeds together (95% intervals: bootstrap over key frames)', '',
        *paired_lines(paired, cell_labels), '',
        'Smallest difference this run could detect (median half-width of the intervals of the '
        'differences to random): '
        + ('—' if smallest is None else f'±{100 * smallest:.1f} points') + f', over {frames} '
        'key frames' + (f'. **Fewer than {MIN_FRAMES} key frames: a bootstrap over so few frames '
                        'gives no usable interval; give the sweep more QA per cell.**'
                        if frames < MIN_FRAMES else '.'),
        '', '### Pairs of pruners at the same keep ratio (paired difference, 95% CI)', '',
        'A pair is stable when the interval of its difference excludes zero; every other pair '
        'is not ranked by this run.', '', *pairwise_lines(pairs, cell_labels),
        '', '### Where pruning should hurt: small objects and trajectories (paired, 95% CI)', '',
        *breakdown_lines(paired, cell_labels),
        '', 'Per-family retention with its interval: `by_group` of each row in accuracy.json.']
    text = '\n'.join([
        f'Model: {model}. Data seeds: {how}. Figures: mean ± sample std over the seeds. '
        'Accuracy = closed-form (DriveLM tag 0) QA by our exact-match rule; retention = '
        'cell / unpruned on the same QA; final = DriveLM final score with the GPT term absent, '
        "weights renormalised; prefill speed-up = unpruned (prune + prefill) ms / the cell's "
        'on the same batches, vision encoder NOT included; FLOPs share = analytic prefill '
        'FLOPs / unpruned; fg recall = GT foreground patches kept.'
        + ('' if wall_s is None else f' Wall time of this run: {wall_s:.0f} s on {processes} '
           f'process{"es" if processes > 1 else ""}.'),
        '', markdown(rows), *paired_text, '', '### Per family (means over seeds)', '',
        family_markdown(rows), '', '### Rankings by accuracy retention', '',
        *[f'- keep {r["keep_ratio"]:g}, K={r["prune_layer"]}: '
          + ' > '.join(f'{label_of(x)} {x["accuracy_retention"].text(".1f", True)}%'
                       for x in r['ranked'])
          + f' — {"stable" if r["stable"] else "not stable" if r["stable"] is False else "?"}'
          f' ({r["why"]})' for r in ranks],
        '', '### Where each breaks (accuracy retention < '
        f'{BREAK_RETENTION:.0%})', '', *[f'- {line}' for line in breaking_points(rows)],
        '', '### Verdict', '', *[f'- {line}' for line in verdict(rows)],
        *(['', '### Notes', ''] + [f'- {n}' for n in notes] if notes else []),
    ])
    out.mkdir(parents=True, exist_ok=True)
    (out / 'accuracy.md').write_text(text + '\n')
    payload = {'schema': 'drive_vlm_pruned/bench_accuracy', 'version': 1, 'run': dict(header),
               'seeds': how, 'notes': list(notes), 'rows': stat_json(list(rows)),
               'rankings': [{k: (stat_json([label_of(x) for x in v]) if k == 'ranked' else v)
                             for k, v in r.items()} for r in ranks],
               'breaking_points': breaking_points(rows), 'verdict': verdict(rows),
               'detectable_difference': smallest, 'paired_frames': frames, 'pairs': pairs,
               'wall_s': wall_s, 'processes': processes,
               'cell_seconds': sum(r.get('seconds', 0.0) for r in records)}
    (out / 'accuracy.json').write_text(json.dumps(payload, indent=1) + '\n')
    return text
