"""In-LLM pruners (FastV, DART, MVPruner stage 2) against explicit references."""

import math

from drive_vlm_pruned.pruning import LayerState, make_pruner, prune, ViewTokens
from drive_vlm_pruned.pruning.attention import fastv_scores
import pytest
import torch


def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half form) over the last dim; pos is [B, S]."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / half))
    ang = pos[:, None, :, None].double() * freq
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., :half], x[..., half:]
    return (x * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


def eager_attention_layer(batch=2, seq=40, heads=4, kv_heads=2, hd=8, dim=32, pad=(0, 5), seed=0):
    """
    Compute a GQA attention layer the eager way: softmax(QK^T / sqrt(hd) + causal + padding).

    Returns the full attention weights [B, H, S, S] plus the LayerState an adapter would build.
    Sample b is left-padded by pad[b] positions.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, dim, generator=gen)
    wq = torch.randn(dim, heads * hd, generator=gen) / math.sqrt(dim)
    wk = torch.randn(dim, kv_heads * hd, generator=gen) / math.sqrt(dim)
    key_mask = torch.ones(batch, seq, dtype=torch.bool)
    for b, p in enumerate(pad):
        key_mask[b, :p] = False
    pos = (key_mask.long().cumsum(1) - 1).clamp_min(0)
    q = rope((hidden @ wq).view(batch, seq, heads, hd).transpose(1, 2), pos)
    k = rope((hidden @ wk).view(batch, seq, kv_heads, hd).transpose(1, 2), pos)
    k_rep = k.repeat_interleave(heads // kv_heads, dim=1)
    logits = q @ k_rep.transpose(-1, -2) / math.sqrt(hd)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None, None] & key_mask[:, None, None, :]
    weights = torch.softmax(logits.masked_fill(~allowed, float('-inf')), dim=-1)
    text = 6
    views = [torch.arange(10, 22), torch.arange(22, 34)]
    state = LayerState(
        hidden_states=hidden,
        keys=k,
        text_queries=q[:, :, -text:, :],
        text_mask=torch.ones(batch, text, dtype=torch.bool),
        key_mask=key_mask,
        visual_positions=tuple(v.expand(batch, -1) for v in views),
        scaling=hd**-0.5,
        input_embeds=hidden,
    )
    return weights, state


def test_fastv_scores_equal_eager_attention_of_the_last_token():
    weights, state = eager_attention_layer()
    reference = weights[:, :, -1, :].mean(dim=1)  # last prompt token, mean over heads
    scores = fastv_scores(state)
    for v, pos in enumerate(state.visual_positions):
        torch.testing.assert_close(scores[v], torch.gather(reference, 1, pos), rtol=1e-5,
                                   atol=1e-7)


def test_fastv_keeps_the_top_scored_tokens_jointly():
    weights, state = eager_attention_layer(batch=1, pad=(0,))
    reference = weights[0, :, -1, :].mean(0)
    tokens = state.view_tokens()
    kept = prune(make_pruner('fastv'), tokens, 0.25, layer=state)
    visual = torch.cat(state.visual_positions, dim=1)[0]
    top = set(visual[reference[visual].topk(6).indices].tolist())
    chosen = set(kept.flat(0, tokens.view_sizes()).add(10).tolist())
    assert chosen == top


def test_dart_keeps_the_pivots_and_drops_their_duplicates():
    gen = torch.Generator().manual_seed(0)
    n, d = 20, 16
    x = torch.randn(1, n, d, generator=gen)
    x[0, 7] = x[0, 3] * 1.01  # token 7 duplicates token 3
    keys = torch.randn(1, 1, n, 4, generator=gen) * 0.1
    keys[0, 0, 3] = 10.0  # token 3 has the largest key norm: the pivot
    state = LayerState(
        hidden_states=x,
        keys=keys,
        text_queries=torch.randn(1, 1, 2, 4, generator=gen),
        text_mask=torch.ones(1, 2, dtype=torch.bool),
        key_mask=torch.ones(1, n, dtype=torch.bool),
        visual_positions=(torch.arange(n)[None],),
        scaling=0.5,
    )
    kept = prune(make_pruner('dart', pivots=1), state.view_tokens(), 0.5, layer=state)
    ix = kept.indices[0][0].tolist()
    assert 3 in ix
    assert 7 not in ix
    assert len(ix) == 10


def test_mvpruner_stage2_gives_the_view_the_instruction_attends_to_the_largest_budget():
    gen = torch.Generator().manual_seed(0)
    views, per_view, hd, text = 3, 30, 16, 4
    seq = views * per_view + text
    target = torch.randn(hd, generator=gen)
    keys = 0.1 * torch.randn(1, 1, seq, hd, generator=gen)
    keys[0, 0, per_view:2 * per_view] += target  # view 1 answers the question
    queries = (target * 3.0).expand(1, 1, text, hd).clone()
    state = LayerState(
        hidden_states=torch.randn(1, seq, 24, generator=gen),
        keys=keys,
        text_queries=queries,
        text_mask=torch.ones(1, text, dtype=torch.bool),
        key_mask=torch.ones(1, seq, dtype=torch.bool),
        visual_positions=tuple(torch.arange(v * per_view, (v + 1) * per_view)[None]
                               for v in range(views)),
        scaling=hd**-0.5,
    )
    kept = prune(make_pruner('mvpruner-s2'), state.view_tokens(), 0.3, layer=state)
    counts = kept.counts()[0]
    assert sum(counts) == 27
    assert counts[1] == max(counts)
    assert counts[1] > counts[0] + counts[2]


def test_layer_state_validation_names_the_bad_tensor():
    _, state = eager_attention_layer()
    bad = LayerState(**{**state.__dict__, 'key_mask': state.key_mask[:, :-1]})
    with pytest.raises(ValueError, match='key_mask'):
        prune(make_pruner('fastv'), state.view_tokens(), 0.5, layer=bad)


def test_in_llm_pruners_respect_padding_counts():
    _, state = eager_attention_layer(batch=2, pad=(0, 0))
    counts = torch.tensor([[12, 12], [5, 9]])
    tokens = state.view_tokens(counts=counts)
    for name in ('fastv', 'dart', 'mvpruner-s2'):
        kept = prune(make_pruner(name), tokens, 0.5, layer=state)
        assert all(int(ix.max()) < 5 for ix in [kept.indices[1][0]])
        assert all(int(ix.max()) < 9 for ix in [kept.indices[1][1]])
        assert kept.total(1) == 7
        assert isinstance(tokens, ViewTokens)
