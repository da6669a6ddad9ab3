"""Foreground recall: the GT mask on the encoder's patch grid, and the recall of kept tokens."""

import math

from drive_vlm_pruned.pruning import make_pruner, prune, ViewTokens
from drive_vlm_pruned.pruning.foreground import (
    foreground_recall,
    patch_foreground,
    patch_foreground_share,
    PatchGrid,
    Recall,
)
import pytest
import torch


def test_the_grid_follows_the_square_resize_of_a_wide_image():
    # A 100 x 200 (H x W) camera image squashed to 28 x 28, patched 2 x 2 (14 px cells): the
    # left half of the image becomes the left column of patches, whatever the aspect ratio.
    mask = torch.zeros(100, 200, dtype=torch.uint8)
    mask[:, :100] = 3  # any nonzero label is foreground
    grid = PatchGrid.of(28, 4)
    assert grid.cell == 14
    assert patch_foreground(mask, grid).tolist() == [True, False, True, False]
    mask = torch.zeros(100, 200, dtype=torch.uint8)
    mask[50:, :] = 1
    assert patch_foreground(mask, grid).tolist() == [False, False, True, True]


def test_siglip_grid_drops_the_remainder_like_the_patch_conv():
    grid = PatchGrid.of(384, 729)  # LLaVA-OneVision: 27 x 27 patches of 14 px over 378 px
    assert (grid.grid, grid.cell) == (27, 14)
    mask = torch.zeros(384, 384)
    mask[378:, :] = 1  # only the 6 px the conv never reads
    assert not patch_foreground(mask, grid).any()
    mask[364:378, 14:28] = 1  # exactly patch (26, 1)
    fg = patch_foreground(mask, grid)
    assert fg.nonzero().flatten().tolist() == [26 * 27 + 1]


def test_threshold_is_the_foreground_share_of_a_patch():
    mask = torch.zeros(20, 20)
    mask[:10, :3] = 1  # 30% of the top-left 10 x 10 patch
    grid = PatchGrid.of(20, 4)
    share = patch_foreground_share(mask, grid)
    assert share[0].item() == pytest.approx(0.3, abs=1e-6)
    assert not patch_foreground(mask, grid)[0]
    assert patch_foreground(mask, grid, threshold=0.25)[0]
    with pytest.raises(ValueError, match='not a square patch grid'):
        PatchGrid.of(384, 730)
    with pytest.raises(ValueError, match=r'\[H, W\]'):
        patch_foreground(torch.zeros(1, 4, 4), grid)


def test_the_grid_matches_the_tiny_encoders_patches(tiny_llava):
    import json

    config = json.loads((tiny_llava / 'config.json').read_text())
    vision = config['vision_config']
    tokens = (vision['image_size'] // vision['patch_size']) ** 2
    assert PatchGrid.of(vision['image_size'], tokens).cell == vision['patch_size']


def test_recall_counts_kept_foreground_over_all_foreground():
    fg = [torch.tensor([True, True, False, False]), torch.tensor([False, True, True, True])]
    r = foreground_recall([torch.tensor([0, 2]), [1, 2, 3]], fg)
    assert r == Recall(4, 5) and r.value == pytest.approx(0.8)
    assert (r + Recall(1, 5)).value == pytest.approx(0.5)
    assert math.isnan(foreground_recall([[0]], [torch.zeros(3, dtype=torch.bool)]).value)
    with pytest.raises(ValueError, match='one per view'):
        foreground_recall([[0]], fg)
    with pytest.raises(ValueError, match='outside'):
        foreground_recall([[0, 9], [1]], fg)


def test_recall_is_one_for_an_oracle_and_zero_for_its_complement():
    gen = torch.Generator().manual_seed(0)
    fg = [torch.rand(49, generator=gen) < 0.3 for _ in range(6)]
    oracle = [torch.nonzero(f).flatten() for f in fg]
    complement = [torch.nonzero(~f).flatten() for f in fg]
    assert foreground_recall(oracle, fg).value == 1.0
    assert foreground_recall(complement, fg).value == 0.0
    tokens = ViewTokens.from_list([torch.randn(1, 49, 8, generator=gen) for _ in range(6)])
    kept = prune(make_pruner('stride'), tokens, 0.5)
    expect = sum(int(f[ix].sum()) for f, ix in zip(fg, kept.indices[0]))
    assert foreground_recall(kept.indices[0], fg) == Recall(expect, sum(int(f.sum()) for f in fg))


def test_recall_table_runs_every_pruner_through_the_pipeline(tiny_llava, tmp_path):
    from drive_vlm_pruned.cli.main import main
    from drive_vlm_pruned.data.drivelm import load_drivelm
    from drive_vlm_pruned.eval.foreground_recall import foreground_recall_table, recall_table
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline
    from drive_vlm_pruned.pruning.reconpruner import ReconScorer, save_weights, ScorerConfig

    data = tmp_path / 'data'
    assert main(['data', 'synth', str(data), '--split', 'test', '--scenes', '1',
                 '--frames-per-scene', '1', '--quiet']) == 0
    frames = load_drivelm(data, split='test')
    weights = save_weights(ReconScorer(ScorerConfig(64)), tmp_path / 'w.safetensors')
    pipeline = Pipeline(load_adapter(LoadSpec(str(tiny_llava))))
    cells = foreground_recall_table(pipeline, frames, ['reconpruner', 'stride', 'fastv'],
                                    [1.0, 0.25], str(weights), progress=False)
    assert len(cells) == 6
    totals = {c.total for c in cells}
    assert len(totals) == 1 and totals.pop() > 0  # the same GT patches for every pruner
    by = {(c.pruner, c.keep_ratio): c for c in cells}
    assert all(by[(n, 1.0)].recall == 1.0 for n in ('reconpruner', 'stride', 'fastv'))
    assert all(0.0 <= by[(n, 0.25)].recall < 1.0 for n in ('reconpruner', 'stride', 'fastv'))
    assert by[('fastv', 0.25)].prune_layer == 2 and by[('stride', 0.25)].prune_layer == 0
    table = recall_table(cells)
    assert '| reconpruner | pre-LLM |' in table and 'keep 0.25' in table
