"""The loss/accuracy PNGs of the training runs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    """Return matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict, path: Path) -> Path:
    """
    Draw training loss (raw and a 50-step running mean) and validation loss/accuracy by step.

    A third panel shows the greedy planning L2 of the validation passes that have it
    (training/val_planning.py).

    ``history`` holds ``train``: ``[[step, loss], ...]`` and ``val``: ``[{"step", "loss",
    "exact", ...}, ...]`` as ``train_vlm`` records them.
    """
    import numpy as np

    plt = _pyplot()
    val = history.get('val') or []
    planned = [v for v in val if (v.get('planning') or {}).get('items')]
    fig, axes = plt.subplots(1, 3 if planned else 2, figsize=(16 if planned else 11, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    train = np.array(history.get('train') or [[0, np.nan]], dtype=float)
    ax_loss.plot(train[:, 0], train[:, 1], color='0.8', lw=0.8, label='train (step)')
    if len(train) >= 50:
        kernel = np.ones(50) / 50
        ax_loss.plot(train[49:, 0], np.convolve(train[:, 1], kernel, 'valid'), color='C0',
                     label='train (50-step mean)')
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
    if planned:
        _plot_planning(axes[2], planned)
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_planning(ax, records: list[dict]) -> None:
    """Greedy planning L2 at 3 s by step, beside constant velocity on the same frames."""
    import numpy as np

    steps = [v['step'] for v in records]
    model = [v['planning']['l2_3s'] for v in records]
    velocity = [v['planning']['constant_velocity_3s'] for v in records]
    ax.plot(steps, [np.nan if m is None else m for m in model], 'o-', color='C3',
            label='model (greedy, parsed answers)')
    ax.plot(steps, [np.nan if c is None else c for c in velocity], ':', color='0.4',
            label='constant velocity')
    ax.set(xlabel='optimizer step', ylabel='L2 at 3 s (m)', title='validation planning')
    ax.legend(fontsize=7)


def plot_recon_history(history: dict, path: Path) -> Path:
    """Draw ReconPruner's losses (total, fore, back, val) and val AUROC / positive share."""
    plt = _pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ('loss', 'fore', 'back'):
        ax1.plot(history['step'], history[key], label=f'train {key}')
    if history['val_step']:
        ax1.plot(history['val_step'], history['val_loss'], 'o-', label='val loss')
    ax1.set_xlabel('step')
    ax1.set_ylabel('0.2 (1 - SSIM) + 0.8 MSE')
    ax1.set_yscale('log')
    ax1.legend()
    ax2.plot(history['step'], history['positive_share'], label='train share S > 0')
    if history['val_step']:
        ax2.plot(history['val_step'], history['val_auroc'], 'o-', label='val foreground AUROC')
        ax2.plot(history['val_step'], history['val_positive_share'], 's-',
                 label='val share S > 0')
    ax2.set_xlabel('step')
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle('ReconPruner adversarial reconstruction')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
