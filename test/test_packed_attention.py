"""training/packed_attention.py: the block-by-block kernel gives the dense mask's attention."""

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data.synth import DataOptions, write_dataset
from drive_vlm_pruned.training.dataset import load_frames, tokenise_frames
from drive_vlm_pruned.training.packed_attention import (
    PACKED_ATTENTION,
    packed_attention,
    packed_attention_forward,
    packed_layout,
)
from drive_vlm_pruned.training.samples import pack_text, packed_mask, PackedVLM
import pytest
from test_train_vlm import make_adapter
import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM = 6, 2, 8


def segments(prefix: int, turns: list[list[int]]) -> torch.Tensor:
    """``[B, L]`` segments: the prefix, each frame's turns of the given lengths, -1 padding."""
    rows = [[0] * prefix + [k + 1 for k, n in enumerate(lengths) for _ in range(n)]
            for lengths in turns]
    length = max(map(len, rows))
    return torch.tensor([r + [-1] * (length - len(r)) for r in rows])


def dense(query, key, value, segment):
    """Return the reference: sdpa under the dense packed mask, key heads repeated."""
    repeats = HEADS // KV_HEADS
    key, value = (x.repeat_interleave(repeats, dim=1) for x in (key, value))
    mask = packed_mask(segment, 'sdpa', query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


def qkv(segment, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames, length = segment.shape
    return [torch.randn(frames, h, length, DIM, generator=generator, requires_grad=True)
            for h in (HEADS, KV_HEADS, KV_HEADS)]


@pytest.mark.parametrize('prefix, turns', [
    (7, [[3, 1, 5, 2, 4, 6, 1, 2, 3, 9]]),  # one frame, more turns than groups
    (5, [[2, 4], [3, 3, 3, 1]]),  # two frames, the first padded
    (0, [[4, 1, 2], [5]]),  # the language stage: no prefix
])
def test_packed_kernel_equals_the_dense_mask_forward_and_backward(prefix, turns):
    segment = segments(prefix, turns)
    layout = packed_layout(segment, groups=3)
    assert layout.prefix == prefix
    assert layout.turns == sum(map(len, turns))
    assert all(len(set(g.rows[g.valid].tolist())) == int(g.valid.sum()) for g in layout.groups)
    inputs = qkv(segment)
    got, weights = packed_attention_forward(None, *inputs, None, packed_layout=layout)
    assert weights is None
    want = dense(*inputs, segment)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), inputs)
    reference = torch.autograd.grad(want.square().sum(), inputs)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_without_a_layout_it_is_sdpa_with_the_given_mask():
    segment = segments(3, [[2, 2]])
    query, key, value = qkv(segment)
    mask = packed_mask(segment, 'sdpa', torch.float32)
    module = torch.nn.Module()
    module.num_key_value_groups = HEADS // KV_HEADS
    module.is_causal = True
    got, _ = packed_attention_forward(module, query, key, value, mask)
    torch.testing.assert_close(got, dense(query, key, value, segment))


@pytest.mark.parametrize('extra', [{'dropout': 0.1}, {'sliding_window': 4}])
def test_what_the_kernel_does_not_cover_is_refused_not_computed_as_plain_causal(extra):
    segment = segments(3, [[2, 2]])
    with pytest.raises(ValueError, match='dense_attention=True'):
        packed_attention_forward(None, *qkv(segment), None, packed_layout=packed_layout(segment),
                                 **extra)


@pytest.mark.parametrize('segment, problem', [
    ([[1, 1, 0, 0]], 'start with one prefix'),
    ([[0, 0, 1], [0, 1, 1]], 'start with one prefix'),
    ([[0, 1, 2, 1]], 'one run of rows'),
])
def test_a_layout_the_packer_never_builds_is_refused(segment, problem):
    with pytest.raises(ValueError, match=problem):
        packed_layout(torch.tensor(segment))


def test_the_kernel_is_on_only_inside_its_block():
    class Config:
        _attn_implementation = 'sdpa'

    config = Config()
    with packed_attention(config):
        assert config._attn_implementation == PACKED_ATTENTION
    assert config._attn_implementation == 'sdpa'


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp('drive')
    write_dataset(out, DataOptions(scenes=1, frames_per_scene=2, split='train', width=128,
                                   height=72))
    return load_frames(out, 'train')


@pytest.mark.parametrize('text_only', [False, True])
def test_training_loss_and_gradients_match_the_dense_mask(frames, text_only):
    """The whole packed step, view-routing loss included, through either attention path."""
    adapter = make_adapter(frames)
    adapter.model.train()
    text = pack_text(tokenise_frames(adapter, frames), adapter.pad_token_id)
    images = torch.randint(0, 256, (2, 6, *adapter.image_shape), dtype=torch.uint8)
    results = []
    for dense_attention in (False, True):
        net = PackedVLM(adapter, NUSCENES_CAMERAS, route_weight=0.0 if text_only else 0.5,
                        route_at=(1, 0), text_only=text_only, dense_attention=dense_attention)
        adapter.model.zero_grad()
        out = net(images, text)
        out.loss.backward()
        grads = [p.grad.clone() for p in adapter.model.parameters() if p.grad is not None]
        results.append((out.loss.detach(), grads))
    assert adapter.attn_implementation == 'sdpa'  # restored after each forward
    (loss, grads), (dense_loss, dense_grads) = results
    torch.testing.assert_close(loss, dense_loss, atol=1e-6, rtol=1e-6)
    assert len(grads) == len(dense_grads) > 0
    for g, r in zip(grads, dense_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)
