"""
The printed table: every metric of the model beside its baselines, from the metrics JSON.

Columns are the ``columns`` of one or more metrics files (runner.EvalReport.as_json): the model
(or a blind run), then blind, majority, const_velocity where present, then any column added with
``--compare`` from another eval's metrics file. A dash marks a metric a column does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import json
from pathlib import Path

from .language import LANGUAGE_KEYS
from .planning import HORIZONS_S
from .scoring import EXACT, GPT, LANGUAGE, MATCH, PLANNING

DASH = '—'
ORDER = ('model', 'blind', 'majority', 'const_velocity')
Getter = Callable[[dict], object]


def _get(column: dict, *keys):
    value = column
    for key in keys:
        if not isinstance(value, Mapping) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _pct(value) -> str:
    return f'{100 * value:.1f}%'


def _fmt(value, spec: str | Callable) -> str:
    if value is None:
        return DASH
    if callable(spec):
        return spec(value)
    return format(value, spec)


def _rows(columns: Mapping[str, dict]) -> list[tuple[str, Getter, str | Callable]]:
    rows: list[tuple[str, Getter, str | Callable]] = [
        ('DriveLM accuracy (tag 0, exact string)', lambda c: _get(c, 'drivelm', 'accuracy'),
         _pct),
    ]
    names = {'Bleu_1': 'BLEU-1', 'Bleu_2': 'BLEU-2', 'Bleu_3': 'BLEU-3', 'Bleu_4': 'BLEU-4',
             'ROUGE_L': 'ROUGE-L', 'CIDEr': 'CIDEr'}
    rows += [(f'{names[k]} (tag 2)', lambda c, k=k: _get(c, 'drivelm', 'language', k), '.3f')
             for k in LANGUAGE_KEYS]
    rows += [
        ('language score (tag 2)', lambda c: _get(c, 'drivelm', 'language_score'), '.3f'),
        ('match F1 x100 (tag 3, L1 < 16 px; F1 part only)',
         lambda c: _get(c, 'drivelm', 'match_f1'), '.1f'),
        ('GPT score (tag 1)', lambda c: 'absent' if _get(c, 'drivelm') else None, str),
        ('final score, GPT term absent, weights renormalised',
         lambda c: _get(c, 'drivelm', 'final_score_no_gpt'), '.3f'),
        ('QA scored / gated out by the graph', _scored, str),
    ]
    seen: dict[str, tuple[str, int]] = {}
    for column in columns.values():
        for name, fam in (column.get('families') or {}).items():
            seen.setdefault(name, (fam['metric'], fam['n']))
    for name, (metric, n) in seen.items():
        rows.append((f'{name} [{metric}, n={n}]', _family_value(name, metric),
                     _FAMILY_FORMAT.get(metric, '.3f')))
        if metric == PLANNING:
            rows.append((f'{name} collision avg',
                         lambda c, name=name: _get(c, 'families', name, 'extra', 'collision_avg'),
                         _pct))
    for t in (*[f'{h}s' for h in HORIZONS_S], 'avg'):
        rows.append((f'L2 {t} (m, cumulative)', lambda c, t=t: _get(c, 'planning', 'l2', t),
                     '.3f'))
    for t in (*[f'{h}s' for h in HORIZONS_S], 'avg'):
        rows.append((f'collision {t}', lambda c, t=t: _get(c, 'planning', 'collision', t),
                     _pct))
    rows.append(('trajectories parsed', _parsed, str))
    return rows


_FAMILY_FORMAT: dict[str, str | Callable] = {EXACT: _pct, MATCH: '.1f', LANGUAGE: '.3f',
                                             PLANNING: lambda v: f'{v:.3f} m', GPT: str}


def _family_value(name: str, metric: str) -> Getter:
    if metric == GPT:  # never scored: say so where the family exists
        return lambda c: 'absent' if _get(c, 'families', name) else None
    return lambda c: _get(c, 'families', name, 'value')


def _scored(column: dict):
    counts = _get(column, 'drivelm', 'counts')
    if not counts:
        return None
    return f'{counts["qa"] - counts["gated_out"]} / {counts["gated_out"]}'


def _parsed(column: dict):
    plan = _get(column, 'planning')
    return None if plan is None else f'{plan["parsed"]} / {plan["items"]}'


def table(columns: Mapping[str, dict]) -> str:
    """Return a markdown table: one row per metric, one column per answer set."""
    names = sorted(columns, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), ))
    body = []
    for label, getter, spec in _rows(columns):
        cells = [_fmt(getter(columns[n]), spec) for n in names]
        if any(c != DASH for c in cells):
            body.append([label, *cells])
    header = ['metric', *names]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ['| ' + ' | '.join(h.ljust(w) for h, w in zip(header, widths)) + ' |',
             '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    lines += ['| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |' for row in body]
    return '\n'.join(lines)


def run_lines(run: Mapping) -> list[str]:
    """Return the run's speed and token figures, one line per pass."""
    lines = []
    for name, p in (run.get('passes') or {}).items():
        rate = 'no new QA'
        if p.get('qa_per_s'):  # the goal: 1,000 QA of the tiny model in < 10 min on 2 cores
            rate = (f'{p["qa_per_s"]:.2f} QA/s, 1,000 QA in '
                    f'{1000 / p["qa_per_s"] / 60:.1f} min at this rate')
        kept, total = p.get('visual_tokens_kept_mean'), p.get('visual_tokens_total_mean')
        tokens = f', visual tokens kept {kept:.0f} of {total:.0f}' if kept and total else ''
        lines.append(f'{name}: {p["qa"]} QA ({p["new_qa"]} run now in {p["seconds"]:.1f} s, '
                     f'{rate}){tokens}, {p["errors"]} failed')
    return lines


def load_compare_column(path: str | Path) -> tuple[str, dict]:
    """Return (label, main column) of another eval's metrics JSON, for ``--compare``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        label = data['run']['label']
        return label, data['columns'][label]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f'{path}: not a metrics file of drive-vlm eval ({type(err).__name__}: '
                         f'{err}); pass the .metrics.json that eval wrote') from None
