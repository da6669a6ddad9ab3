"""
PNG plots of ``drive-vlm bench accuracy``: accuracy vs keep ratio, and vs measured speed-up.

Both take the summary rows of bench/accuracy.py (figures as mean ± std over data seeds; error
bars are the std). The second marks the Pareto front: the cells no other cell beats on both
accuracy and measured prefill speed-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _label(row: dict) -> str:
    c = row['cell']
    return c['pruner'] if c['allocation'] in ('uniform', 'none', 'blind', 'majority') else \
        f'{c["pruner"]}+{c["allocation"]}'


def _refs(rows: Sequence[dict]) -> dict[str, dict]:
    return {r['cell']['pruner']: r for r in rows if r['cell']['pruner'] in
            ('none', 'blind', 'majority')}


def plot_keep(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Accuracy vs keep ratio per pruner, one panel per prune layer, references as lines."""
    plt = _plt()
    refs = _refs(rows)
    pruned = [r for r in rows if r['cell']['pruner'] not in refs]
    layers = sorted({r['cell']['prune_layer'] for r in pruned}) or [0]
    fig, axes = plt.subplots(1, len(layers), figsize=(6.5 * len(layers), 4.8), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        at = [r for r in pruned if r['cell']['prune_layer'] == layer]
        for name in sorted({_label(r) for r in at}):
            pts = sorted((r['cell']['keep_ratio'], r['accuracy'].mean, r['accuracy'].std or 0.0)
                         for r in at if _label(r) == name and r['accuracy'].mean is not None)
            if 'none' in refs and refs['none']['accuracy'].mean is not None:
                base = refs['none']['accuracy']
                pts.append((1.0, base.mean, base.std or 0.0))
            if pts:
                ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts],
                            yerr=[100 * p[2] for p in pts], marker='o', capsize=3, label=name)
        for ref, style in (('blind', ':'), ('majority', '--')):
            if ref in refs and refs[ref]['accuracy'].mean is not None:
                ax.axhline(100 * refs[ref]['accuracy'].mean, color='grey', linestyle=style,
                           label=f'{ref} baseline')
        ax.set_xscale('log')
        ax.set_xlabel('keep ratio (fraction of visual tokens kept)')
        ax.set_ylabel('closed-form accuracy (%)')
        ax.set_title(f'prune layer {layer}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Return the points no other point beats on both coordinates (higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Accuracy vs measured prefill speed-up of every cell, with the Pareto front."""
    plt = _plt()
    refs = _refs(rows)
    cells = [r for r in rows if r['cell']['pruner'] not in ('blind', 'majority')
             and r['accuracy'].mean is not None and r['speedup'].mean is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    markers = 'os^vD<>pPX*h'
    names = sorted({_label(r) for r in cells})
    for k, name in enumerate(names):
        at = [r for r in cells if _label(r) == name]
        ax.errorbar([r['speedup'].mean for r in at], [100 * r['accuracy'].mean for r in at],
                    xerr=[r['speedup'].std or 0.0 for r in at],
                    yerr=[100 * (r['accuracy'].std or 0.0) for r in at],
                    fmt=markers[k % len(markers)], capsize=2, label=name, alpha=0.85)
    pts = [(r['speedup'].mean, r['accuracy'].mean) for r in cells]
    front = pareto_front(pts)
    if front:
        ax.plot([pts[i][0] for i in front], [100 * pts[i][1] for i in front], 'k--', lw=1,
                label='Pareto front')
        for i in front:
            c = cells[i]['cell']
            ax.annotate(f'{_label(cells[i])} {c["keep_ratio"]:g} K{c["prune_layer"]}',
                        (pts[i][0], 100 * pts[i][1]), fontsize=6, xytext=(3, 3),
                        textcoords='offset points')
    for ref, style in (('blind', ':'), ('majority', '--')):
        if ref in refs and refs[ref]['accuracy'].mean is not None:
            ax.axhline(100 * refs[ref]['accuracy'].mean, color='grey', linestyle=style,
                       label=f'{ref} baseline')
    ax.set_xscale('log')
    ax.set_xlabel('measured prefill speed-up vs unpruned (prune + prefill; vision excluded)')
    ax.set_ylabel('closed-form accuracy (%)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
