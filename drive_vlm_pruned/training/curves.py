"""The loss/accuracy PNG of a training run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: dict, path: Path) -> Path:
    """
    Draw training loss (raw and a 50-step running mean) and validation loss/accuracy by step.

    ``history`` holds ``train``: ``[[step, loss], ...]`` and ``val``: ``[{"step", "loss",
    "exact", ...}, ...]`` as ``train_vlm`` records them.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    train = np.array(history.get('train') or [[0, np.nan]], dtype=float)
    ax_loss.plot(train[:, 0], train[:, 1], color='0.8', lw=0.8, label='train (step)')
    if len(train) >= 50:
        kernel = np.ones(50) / 50
        ax_loss.plot(train[49:, 0], np.convolve(train[:, 1], kernel, 'valid'), color='C0',
                     label='train (50-step mean)')
    val = history.get('val') or []
    if val:
        steps = [v['step'] for v in val]
        ax_loss.plot(steps, [v['loss'] for v in val], 'o-', color='C1', label='validation')
        ax_acc.plot(steps, [100 * v['exact'] for v in val], 'o-', color='C2',
                    label='all turns')
        families = sorted({f for v in val for f in v.get('families', {})})
        for i, fam in enumerate(families):
            ax_acc.plot(steps, [100 * v['families'].get(fam, np.nan) for v in val], '--',
                        lw=0.8, color=f'C{(i + 3) % 10}', label=fam)
    ax_loss.set(xlabel='optimizer step', ylabel='loss (mean per turn)', yscale='log',
                title='loss')
    ax_acc.set(xlabel='optimizer step', ylabel='exact match % (teacher-forced, greedy-equal)',
               ylim=(0, 100), title='validation accuracy')
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
