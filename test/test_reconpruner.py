"""ReconPruner: the scorer and pruner, its weights file and errors, the STE, pipeline and node."""

import math
import shutil

from drive_vlm_pruned.pruning import make_pruner, prune, pruner_names, ViewTokens
from drive_vlm_pruned.pruning.reconpruner import (
    default_weights,
    HiddenSizeMismatchError,
    load_scorer,
    ReconPruner,
    ReconScorer,
    resolve_weights,
    save_weights,
    ScorerConfig,
    WeightsCorruptError,
    WeightsMissingError,
)
from drive_vlm_pruned.training.recon_decoder import DecoderConfig, ReconDecoder
from drive_vlm_pruned.training.reconpruner import ReconObjective, straight_through_mask
from drive_vlm_pruned.training.ssim import ssim
import pytest
from safetensors.torch import save_file
import torch
import torch.nn.functional as F

D = 64  # the tiny LLaVA-OneVision's LLM width


def scorer(seed: int = 0, dim: int = D) -> ReconScorer:
    torch.manual_seed(seed)
    s = ReconScorer(ScorerConfig(dim))
    torch.nn.init.normal_(s.score.weight, std=0.5)  # spread the scores: no ties near zero
    return s.eval()


def test_registered_and_scores_are_the_top_k_of_each_view():
    assert 'reconpruner' in pruner_names()
    s = scorer()
    feats = [torch.randn(2, n, D) for n in (49, 49, 36, 49, 25, 49)]
    tokens = ViewTokens.from_list(feats)
    kept = prune(ReconPruner(scorer=s), tokens, keep_ratio=0.25)
    pruner = ReconPruner(scorer=s)
    with torch.no_grad():
        scores = pruner.scores(tokens)
    for b in range(2):
        for v, x in enumerate(feats):
            ix = kept.indices[b][v]
            assert torch.equal(ix, ix.sort().values)  # sorted: kept tokens keep their order
            with torch.no_grad():
                alone = s(x[b:b + 1])[0]  # the view scored alone, unpadded
            # Padding the short views in the batched call changes nothing.
            assert torch.allclose(alone, scores[v][b], atol=1e-5)
            expect = alone.topk(ix.numel()).indices.sort().values
            assert torch.equal(ix, expect)
    budgets = [k for row in kept.counts() for k in row]
    assert sum(kept.counts()[0]) == round(0.25 * sum(x.shape[1] for x in feats))
    assert min(budgets) >= 1


def test_one_batched_scorer_call_per_selection():
    s = scorer()
    calls = []
    s.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    tokens = ViewTokens.from_list([torch.randn(3, 16, D) for _ in range(6)])
    prune(ReconPruner(scorer=s), tokens, 0.5)
    assert calls == [torch.Size([18, 16, D])]  # B * V groups in one call


def test_straight_through_mask_is_hard_forward_and_passes_gradients():
    scores = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0], requires_grad=True)
    m = straight_through_mask(scores)
    assert torch.equal(m.detach(), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))
    (m * torch.arange(5.0)).sum().backward()
    sig = torch.sigmoid(scores.detach())
    assert torch.allclose(scores.grad, torch.arange(5.0) * sig * (1 - sig))


def test_the_loss_reaches_the_scorer_and_the_decoder_sees_exactly_m():
    torch.manual_seed(0)
    s = ReconScorer(ScorerConfig(16))
    torch.nn.init.normal_(s.score.weight, std=0.5)
    decoder = ReconDecoder(DecoderConfig(16, grid=4, patch_pixels=4, width=32, layers=1,
                                         heads=2))
    seen = []
    decoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    objective = ReconObjective(s, decoder)
    tokens = torch.randn(3, 16, 16)
    images = torch.rand(3, 3, 16, 16)
    masks = (torch.rand(3, 1, 16, 16) > 0.5).float()
    parts = objective(tokens, images, masks)
    parts.total.backward()
    m = (s(tokens) > 0).float().unsqueeze(-1).detach()
    fore, back = seen[0].chunk(2)
    assert torch.equal(fore, m * tokens) and torch.equal(back, (1 - m) * tokens)
    assert 0 < float(m.mean()) < 1
    for name in ('query', 'score.weight', 'layer.qkv.weight'):
        grad = dict(s.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    total, fore, back = (float(p.detach()) for p in (parts.total, parts.fore, parts.back))
    assert math.isclose(total, 0.5 * fore + 0.5 * back, rel_tol=1e-6)


def test_ssim_matches_a_direct_2d_gaussian_window():
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    y = 0.6 * x + 0.4 * y
    g = torch.exp(-(torch.arange(11.0) - 5) ** 2 / (2 * 1.5**2))
    w = (g[:, None] * g[None]) / g.sum() ** 2
    w = w.expand(3, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = ((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    assert torch.allclose(ssim(x, y), ref, atol=1e-5)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, y)) < 0.95


def test_weights_round_trip(tmp_path):
    s = scorer(3)
    path = save_weights(s, tmp_path / 'w.safetensors', {'model': 'tiny'})
    loaded = load_scorer(path, hidden_size=D)
    x = torch.randn(2, 20, D)
    with torch.no_grad():
        assert torch.allclose(s(x), loaded(x), atol=1e-6)
    assert loaded.config == s.config
    tokens = ViewTokens.from_list([torch.randn(1, 30, D) for _ in range(6)])
    a = prune(make_pruner('reconpruner', weights=str(path)), tokens, 0.2)
    b = prune(ReconPruner(scorer=s), tokens, 0.2)
    assert all(torch.equal(p, q) for p, q in zip(a.indices[0], b.indices[0]))


def test_every_bad_weights_case_has_its_named_error(tmp_path):
    tokens = ViewTokens.from_list([torch.randn(1, 16, D) for _ in range(6)])
    with pytest.raises(WeightsMissingError, match='drive-vlm train reconpruner'):
        prune(make_pruner('reconpruner'), tokens, 0.5)
    with pytest.raises(WeightsMissingError, match='nope.safetensors do not exist'):
        load_scorer(tmp_path / 'nope.safetensors')
    with pytest.raises(WeightsMissingError, match=str(default_weights(tmp_path))):
        resolve_weights('', tmp_path)  # no weights given, none next to the model

    path = save_weights(scorer(dim=32), tmp_path / 'd32.safetensors')
    with pytest.raises(HiddenSizeMismatchError, match='hidden size 32.*hidden size 64'):
        load_scorer(path, hidden_size=D)
    with pytest.raises(HiddenSizeMismatchError, match='32.*64'):
        prune(make_pruner('reconpruner', weights=str(path)), tokens, 0.5)

    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\x00\x01 not a safetensors file' * 10)
    good = save_weights(scorer(), tmp_path / 'good.safetensors').read_bytes()
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(good[:len(good) // 2])
    other = tmp_path / 'other.safetensors'
    save_file({'x': torch.zeros(2)}, str(other), metadata={'format': 'pt'})
    wrong = tmp_path / 'wrong.safetensors'
    meta = ScorerConfig(D).resolved().metadata()
    save_file({'query': torch.zeros(1, 1, D)}, str(wrong), metadata=meta)
    nan = tmp_path / 'nan.safetensors'
    state = {k: v.clone() for k, v in scorer().state_dict().items()}
    state['query'][0, 0, 0] = float('nan')
    save_file(state, str(nan), metadata=meta)
    for bad in (garbage, cut, other, wrong, nan):
        with pytest.raises(WeightsCorruptError, match='drive-vlm train reconpruner'):
            load_scorer(bad, hidden_size=D)


def tiny_with_weights(tiny_llava, tmp_path, dim=D):
    model = tmp_path / 'model'
    shutil.copytree(tiny_llava, model)
    save_weights(scorer(7, dim), default_weights(model))
    return model


def test_the_pipeline_uses_the_models_default_weights(tiny_llava, tmp_path):
    from conftest import random_frame
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings

    model = tiny_with_weights(tiny_llava, tmp_path)
    pipe = Pipeline(load_adapter(LoadSpec(str(model))))
    frame = random_frame(4)
    result = pipe.run(frame, RuntimeSettings(keep_ratio=0.25, pruner='reconpruner',
                                             max_new_tokens=2))
    # The same selection by hand: encoder tokens, the default weights, top-k per view.
    adapter = pipe.adapter
    with torch.inference_mode():
        feats = adapter.encode(adapter.preprocess(list(frame.images)), 1)
        s = load_scorer(default_weights(model), D)
        for v, x in enumerate(feats.tokens.features):
            k = result.tokens_after[v]
            expect = s(x.float())[0].topk(k).indices.sort().values.tolist()
            assert result.kept_indices[v] == expect
    assert sum(result.tokens_after) == round(0.25 * sum(result.tokens_before))

    bare = Pipeline(load_adapter(LoadSpec(str(tiny_llava))))
    with pytest.raises(WeightsMissingError, match='reconpruner.safetensors'):
        bare.run(frame, RuntimeSettings(pruner='reconpruner', max_new_tokens=1))
    other = save_weights(scorer(dim=32), tmp_path / 'd32.safetensors')
    with pytest.raises(HiddenSizeMismatchError, match='32.*64'):
        pipe.run(frame, RuntimeSettings(pruner='reconpruner', reconpruner_weights=str(other),
                                        max_new_tokens=1))


def test_the_node_refuses_reconpruner_without_weights_and_keeps_running(tiny_llava, tmp_path):
    import rclpy
    from ros_harness import NodeUnderTest, Probe, ros_context, wait_for

    context = ros_context()
    node = NodeUnderTest(context, model=str(tiny_llava), max_new_tokens=2,
                         diagnostics_period=0.2)
    probe = Probe(context)
    try:
        probe.wait_connected()
        (refused,) = probe.set_params(pruner='reconpruner')
        assert not refused.successful
        assert 'reconpruner needs weights' in refused.reason
        assert 'drive-vlm train reconpruner' in refused.reason
        assert node.node.get_parameter('pruner').value == 'tfps'

        small = save_weights(scorer(dim=32), tmp_path / 'd32.safetensors')
        (mismatch,) = probe.set_params(reconpruner_weights=str(small))
        assert not mismatch.successful and '32' in mismatch.reason and '64' in mismatch.reason
        bad = tmp_path / 'bad.safetensors'
        bad.write_bytes(b'junk')
        (corrupt,) = probe.set_params(reconpruner_weights=str(bad))
        assert not corrupt.successful and 'corrupt' in corrupt.reason

        good = save_weights(scorer(), tmp_path / 'good.safetensors')
        results = probe.set_params(reconpruner_weights=str(good), pruner='reconpruner')
        assert all(r.successful for r in results), [r.reason for r in results]
        stamp = probe.publish_set(500)

        def answered():
            with probe.lock:
                return any(r['stamp_ns'] == stamp for r in probe.results)

        wait_for(answered, 30.0, 'a result from the reconpruner node')
        with probe.lock:
            result = next(r for r in probe.results if r['stamp_ns'] == stamp)
        assert result['pruner'] == 'reconpruner'
        assert sum(result['tokens_kept_per_view'].values()) == round(
            0.25 * sum(result['tokens_before']))
    finally:
        probe.close()
        node.close()
        rclpy.shutdown(context=context)
