"""
ReconPruner training: the planted task, the degenerate fore-only ablation, resume, and the CLI.

The planted task (``training.reconpruner.planted_task``): bright squares on a textured
background, tokens from a fixed random patch conv. The scorer never sees a label; it must learn
the foreground from the adversarial reconstruction alone.
"""

from pathlib import Path

from drive_vlm_pruned.cli.main import main
from drive_vlm_pruned.pruning.reconpruner import load_scorer
from drive_vlm_pruned.training.recon_data import find_pairs
from drive_vlm_pruned.training.reconpruner import (
    planted_task,
    ReconTrainConfig,
    scorer_quality,
    train_reconpruner,
)
import numpy as np
from PIL import Image
import pytest
import torch

PLANTED = ReconTrainConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10,
                           decoder_warmup_steps=40, eval_every=10**6, save_every=10**6,
                           decoder={'patch_pixels': 4, 'width': 64, 'layers': 1, 'heads': 2})


@pytest.fixture(scope='module')
def planted():
    torch.set_num_threads(1)  # small tensors: threads only add contention
    train, val = planted_task(n=192, seed=0), planted_task(n=64, seed=1)
    full = train_reconpruner(train, PLANTED, progress=False)
    fore = train_reconpruner(train, ReconTrainConfig(**{**PLANTED.as_dict(), 'background': False}),
                             progress=False)
    return val, full, fore


def test_short_training_ranks_the_planted_foreground_first(planted):
    val, full, _ = planted
    quality = scorer_quality(full.scorer, val)
    assert quality.auroc >= 0.9, quality
    assert quality.recall_at_quarter >= 0.8, quality  # fg is ~14% of tokens: top 25% holds it


def test_without_the_background_loss_nearly_every_score_turns_positive(planted):
    val, full, fore = planted
    with_bg, without = scorer_quality(full.scorer, val), scorer_quality(fore.scorer, val)
    # The paper's degenerate solution: fore-only training marks (nearly) everything positive.
    assert max(fore.history['positive_share']) >= 0.9
    assert without.positive_share >= 0.7, without
    # The full adversarial loss keeps the positive share near the true foreground share (~0.15;
    # patches on a square's edge count as positives too).
    assert with_bg.positive_share <= 0.5, with_bg
    assert max(full.history['positive_share'][4:]) <= 0.6  # after the decoder warm-up
    assert without.positive_share - with_bg.positive_share >= 0.3


def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path):
    data = planted_task(n=48, seed=2)
    config = ReconTrainConfig(steps=12, batch_size=8, warmup_steps=2, decoder_warmup_steps=4,
                              eval_every=10**6, save_every=5,
                              decoder={'patch_pixels': 4, 'width': 32, 'layers': 1, 'heads': 2})
    whole = train_reconpruner(data, config, run_dir=tmp_path / 'a', progress=False)
    first = train_reconpruner(data, config, run_dir=tmp_path / 'b', progress=False,
                              max_seconds=0.0)
    assert first.stopped_by_time and first.steps == 1
    logs = []
    rest = train_reconpruner(data, config, run_dir=tmp_path / 'b', progress=False,
                             log=logs.append)
    assert rest.resumed_from == 1 and any('resuming from step 1' in m for m in logs)
    for (name, a), b in zip(whole.scorer.state_dict().items(), rest.scorer.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert (tmp_path / 'b' / 'loss.png').stat().st_size > 1000


def write_pairs(root: Path, n: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        camera = 'CAM_FRONT' if i % 2 else 'CAM_BACK'
        img = rng.integers(0, 90, (90, 160, 3), dtype=np.uint8)
        mask = np.zeros((90, 160), np.uint8)
        mask[30:70, 20 + 8 * i:70 + 8 * i] = 2
        img[mask > 0] = 230
        for sub, arr, ext in (('images', img, 'jpg'), ('masks', mask, 'png')):
            path = root / sub / camera / f'{i:03d}.{ext}'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)


def test_image_mask_pairs_layout(tmp_path):
    write_pairs(tmp_path)
    train, val = find_pairs(tmp_path, 'train'), find_pairs(tmp_path, 'val')
    assert len(train) == 9 and len(val) == 1  # every tenth pair is held out
    assert all(p.mask.parent.parent.name == 'masks' for p in train)
    (tmp_path / 'val.txt').write_text('CAM_BACK/000.jpg\nCAM_BACK/002.jpg\n')
    assert [p.image.name for p in find_pairs(tmp_path, 'val')] == ['000.jpg', '002.jpg']
    (tmp_path / 'masks' / 'CAM_BACK' / '004.png').unlink()
    with pytest.raises(ValueError, match='004.jpg has no mask'):
        find_pairs(tmp_path, 'train')


def test_cli_trains_writes_weights_card_and_curves_and_resumes(tiny_llava, tmp_path, capsys):
    data = tmp_path / 'pairs'
    write_pairs(data)
    out = tmp_path / 'w.safetensors'
    args = ['train', 'reconpruner', '--model', str(tiny_llava), '--data', str(data),
            '--out', str(out), '--steps', '3', '--batch-size', '2', '--decoder-warmup', '1',
            '--patch-pixels', '1', '--decoder-width', '16', '--decoder-layers', '1',
            '--eval-every', '3', '--save-every', '3', '--no-progress', '--cpu']
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert 'foreground AUROC' in printed and str(out) in printed
    scorer = load_scorer(out, hidden_size=64)  # the tiny LLaVA-OneVision's LLM width
    assert scorer.hidden_size == 64
    card = out.with_suffix('.md').read_text()
    assert '--steps 3' in card and 'seed' in card and 'wall time' in card
    run = tmp_path / 'w_run'
    assert (run / 'loss.png').is_file() and (run / 'state.pt').is_file()
    assert (run / 'cache_train.pt').is_file()

    assert main(args) == 2  # the run directory holds a run: say how to continue
    assert '--resume' in capsys.readouterr().err
    args[args.index('--steps') + 1] = '4'
    assert main(args + ['--resume']) == 0
    assert 'encoded views from' in capsys.readouterr().out  # the cache was reused


def test_cli_names_a_data_directory_it_cannot_read(tiny_llava, tmp_path, capsys):
    assert main(['train', 'reconpruner', '--model', str(tiny_llava), '--data', str(tmp_path),
                 '--out', str(tmp_path / 'w.safetensors')]) == 2
    assert 'images/ and masks/' in capsys.readouterr().err
