"""
QA -> packed training sequences that are exactly the inference prompt, with a label mask.

Prefix-shared packing. All QA turns of one key frame share one sequence::

    [system + user header + 6 x (view text, 196 visual tokens, image newline)]  <- prefix, once
    [tail + question_1 + assistant header][answer_1]                              <- turn 1
    [tail + question_2 + assistant header][answer_2]                              <- turn 2 ...

Each turn attends to the prefix and to itself only (never to another turn: a dense 4-D mask
under eager attention, packed_attention.py's block-by-block kernel under sdpa), and
each turn's position ids restart right after the prefix, so every turn sees exactly the sequence
``Pipeline`` prefills for its question (``VLMAdapter.build_inputs`` with every token kept) and
then decodes. The prefix is built by the adapter's own ``encode`` and ``build_inputs`` (a prompt
whose last piece is empty); a turn's text is the adapter's own last prompt piece. The visual
tokens are paid once per frame instead of once per question.

Labels: only the answer tokens and the end-of-turn token ``<|im_end|>`` (the stop token that
``Pipeline`` decodes until) carry a target; every other row is ignored (-100). Each turn weighs
the same in the loss (its token losses are averaged), so a 70-token trajectory does not drown
the one-token yes/no answers; ``pack_text``'s family weights change that share on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn, Tensor
import torch.nn.functional as F

from .packed_attention import packed_attention, packed_layout
from .patch_labels import PATCH_CLASSES
from .view_routing import (
    asked_class,
    asked_view,
    attention_probs,
    AttentionInputs,
    routing_loss,
    share_loss,
)
from .visual_scale import norm_penalty
from ..models.base import Pixels, PromptPieces, VLMAdapter
from ..pruning import keep_all

IGNORE = -100


@dataclass(frozen=True)
class Turn:
    """One QA as token ids: the last prompt piece and the answer followed by end-of-turn."""

    prompt: tuple[int, ...]  # tail of the six-view preamble + question + assistant header
    answer: tuple[int, ...]  # answer tokens + <|im_end|>
    family: str
    view: int = -1  # the camera the question names (view_routing.py), -1: none
    object_class: int = -1  # the PATCH_CLASSES entry it names (view_routing.py), -1: none
    object_count: int = -1  # how many of them count in that view (gt.view_counts), -1: unknown


@dataclass(frozen=True)
class FrameTurns:
    """All QA turns of one key frame (they share its six views)."""

    turns: tuple[Turn, ...]


def prefix_prompt(adapter: VLMAdapter, names: Sequence[str]) -> PromptPieces:
    """Return the prompt pieces without the question: the last piece is empty."""
    pieces = adapter.prompt('', names).pieces
    return PromptPieces((*pieces[:-1], []))


def tokenise_turn(adapter: VLMAdapter, names: Sequence[str], question: str, answer: str,
                  family: str, prefix: PromptPieces,
                  view_counts: Mapping[str, Mapping[str, int | None]] | None = None) -> Turn:
    """
    Tokenise one QA with the adapter's own prompt; ValueError if the prefix would differ.

    ``view_counts`` (the frame's ``gt.view_counts``) gives the turn its ``object_count``.
    """
    pieces = adapter.prompt(question, names).pieces
    if tuple(map(tuple, pieces[:-1])) != tuple(map(tuple, prefix.pieces[:-1])):
        raise ValueError(f'question {question[:60]!r} changes the shared prompt prefix; only the '
                         'last prompt piece may depend on the question')
    ids = adapter.tokenizer(answer, add_special_tokens=False).input_ids
    view, object_class = asked_view(question, names), asked_class(question)
    count = None
    if view >= 0 and object_class >= 0 and view_counts:
        count = view_counts.get(names[view], {}).get(PATCH_CLASSES[object_class])
    return Turn(tuple(pieces[-1]), (*ids, adapter.eos_token_ids[0]), family, view, object_class,
                -1 if count is None else int(count))


@dataclass(frozen=True)
class PackedText:
    """The text rows that follow the prefix, for a batch of frames (right-padded)."""

    ids: Tensor  # [B, T] turn tokens (prompt piece + answer without its last token)
    offsets: Tensor  # [B, T] position offset from the prefix end (restarts at 0 per turn)
    segment: Tensor  # [B, T] turn number 1..n; -1 at padding
    labels: Tensor  # [B, T] next-token target or IGNORE
    weight: Tensor  # [B, T] float: turn weight / answer length at label rows (pack_text)
    turn_of_row: Tensor  # [B, T] index into ``families`` of the row's turn, -1 elsewhere
    families: tuple[str, ...]  # family per turn of the batch (flattened over frames)
    views: tuple[int, ...] = ()  # named camera per turn (-1: none), like ``families``
    classes: tuple[int, ...] = ()  # named object class per turn (-1: none), like ``families``
    counts: tuple[int, ...] = ()  # objects of that class in that view per turn (-1: unknown)

    @property
    def turns(self) -> int:
        return len(self.families)

    @property
    def norm(self) -> Tensor:
        """Return what the answer loss is divided by: the turns' total weight, at least 1."""
        # each turn's weight is spread over its answer rows, so the rows sum to the turn weights
        return self.weight.sum().clamp_min(1.0)

    def to(self, device: torch.device) -> PackedText:
        return PackedText(self.ids.to(device), self.offsets.to(device), self.segment.to(device),
                          self.labels.to(device), self.weight.to(device),
                          self.turn_of_row.to(device), self.families, self.views, self.classes,
                          self.counts)


def pack_text(frames: Sequence[FrameTurns], pad_id: int,
              family_weights: Mapping[str, float] | None = None) -> PackedText:
    """
    Lay out the turns of each frame after its prefix (module doc); right-pad the batch.

    Each turn weighs 1 in the answer loss, or ``family_weights[family]``: a turn's weight is
    spread evenly over its answer tokens, and the loss is divided by the batch's total weight,
    so a weight raises that family's share of the loss without changing its scale.
    """
    weights = family_weights or {}
    rows = []
    families: list[str] = []
    views: list[int] = []
    classes: list[int] = []
    counts: list[int] = []
    for frame in frames:
        ids, offsets, segment, labels, weight, owner = [], [], [], [], [], []
        for number, turn in enumerate(frame.turns, start=1):
            text = list(turn.prompt) + list(turn.answer[:-1])
            targets = [IGNORE] * (len(turn.prompt) - 1) + list(turn.answer)
            ids += text
            offsets += range(len(text))
            segment += [number] * len(text)
            labels += targets
            share = weights.get(turn.family, 1.0)
            answer = [share / len(turn.answer)] * len(turn.answer)
            weight += [0.0] * (len(turn.prompt) - 1) + answer
            owner += [len(families)] * len(text)
            families.append(turn.family)
            views.append(turn.view)
            classes.append(turn.object_class)
            counts.append(turn.object_count)
        rows.append((ids, offsets, segment, labels, weight, owner))
    width = max(len(r[0]) for r in rows)
    pads = (pad_id, 0, -1, IGNORE, 0.0, -1)

    def column(k: int, dtype: torch.dtype) -> Tensor:
        return torch.tensor([r[k] + [pads[k]] * (width - len(r[k])) for r in rows], dtype=dtype)

    return PackedText(column(0, torch.long), column(1, torch.long), column(2, torch.long),
                      column(3, torch.long), column(4, torch.float32), column(5, torch.long),
                      tuple(families), tuple(views), tuple(classes), tuple(counts))


def packed_mask(segment: Tensor, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """
    Return the ``[B, 1, L, L]`` mask: causal, and a turn sees the prefix (segment 0) and itself.

    Boolean (True = attend) for sdpa, additive float for eager attention. Padding rows see only
    themselves, so no softmax row is empty.
    """
    if attn_implementation not in ('sdpa', 'eager'):
        raise ValueError(f'packed training needs sdpa or eager attention (a custom 4-D mask); '
                         f'got {attn_implementation!r}')
    length = segment.shape[1]
    index = torch.arange(length, device=segment.device)
    causal = index[None, :] <= index[:, None]
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((key == 0) | (key == query)) & (key >= 0) & (query >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment.device)
    allowed = allowed[:, None]
    if attn_implementation == 'sdpa':
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


@dataclass
class PackedOutput:
    loss: Tensor  # answer loss + aux loss (what is optimised)
    logits: Tensor  # [B, K, vocab] at the label rows ``rows``
    labels: Tensor  # [B, K]
    turn_of_row: Tensor  # [B, K]
    answer_loss: Tensor  # turn-weighted mean of each turn's mean token cross-entropy
    # routing losses (view_routing.py) + visual norm penalty (visual_scale.py)
    aux_loss: Tensor | None = None


class PackedVLM(nn.Module):
    """
    The training forward: pixels + packed text -> loss, through the model's own forward.

    A module around the VLM so that DDP (``accelerate launch`` / ``torchrun``) wraps the whole
    step; the adapter's ``encode``/``build_inputs``/``embed`` use the same parameters.
    """

    def __init__(self, adapter: VLMAdapter, names: Sequence[str], norm_ratio: float = 0.0,
                 route_weight: float = 0.0, route_at: tuple[int, int] = (2, 0),
                 object_weight: float = 0.0, object_at: tuple[int, int] = (2, 1),
                 object_count: bool = False, text_only: bool = False,
                 dense_attention: bool = False) -> None:
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter
        self.names = tuple(names)
        # keep visual tokens below this multiple of the text norm after layer 1 (visual_scale.py)
        self.norm_ratio = norm_ratio
        # weight of the routing loss (view_routing.py) and its (LLM layer, query head)
        self.route_weight = route_weight
        self.route_at = route_at
        # weight of the object-routing loss (view_routing.py; needs patch labels), where it acts
        self.object_weight = object_weight
        self.object_at = object_at
        # count-aware object routing: the sink keeps 1 / (n + 1) of the head's mass
        self.object_count = object_count
        # the language stage (Recipe.text_only): every turn alone, without the views' prefix
        self.text_only = text_only
        # attention through the dense 4-D mask instead of packed_attention.py (same result)
        self.dense_attention = dense_attention
        self.prefix = prefix_prompt(adapter, names)
        proc = adapter.image_processor
        self.register_buffer('mean', torch.tensor(proc.image_mean).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(proc.image_std).view(1, 1, 3, 1, 1),
                             persistent=False)

    def pixels(self, images: Tensor) -> Pixels:
        """Normalise cached uint8 ``[B, V, 3, H, W]`` views (resized by ``preprocess``)."""
        x = (images.float() / 255.0 - self.mean) / self.std
        return Pixels(x.flatten(0, 1).to(self.adapter.dtype))

    def forward(self, images: Tensor, text: PackedText,
                patch_labels: Tensor | None = None) -> PackedOutput:
        """
        Return the answer loss plus the auxiliary losses that are on.

        ``patch_labels`` bool ``[B, V, C, g, g]`` adds the object-routing loss (needs
        ``object_weight``). The language stage reads no images.
        """
        if self.text_only:
            return self._language_forward(text)
        adapter, batch = self.adapter, images.shape[0]
        feats = adapter.encode(self.pixels(images), batch)
        capped = self.norm_ratio > 0
        kept = keep_all(feats.tokens.valid_counts(), images.device)
        prefix = adapter.build_inputs(feats, kept, [self.prefix] * batch)
        start = prefix.full_length[0]
        if prefix.kept_length != [start] * batch:
            raise ValueError('frames of a batch must give equal prefixes (same views and size)')
        embeds = torch.cat([prefix.inputs_embeds, adapter.embed(text.ids)], dim=1)
        positions = torch.cat([prefix.position_ids, start + text.offsets], dim=1)
        segment = torch.cat([torch.zeros_like(prefix.position_ids), text.segment], dim=1)
        # Logits only where a target is: rows predicting answer tokens, any frame of the batch.
        rows = (text.labels != IGNORE).any(0).nonzero()[:, 0]
        routing = self.route_weight > 0 and any(v >= 0 for v in text.views)
        finding = self.object_weight > 0 and patch_labels is not None and \
            any(c >= 0 for c in text.classes)
        layers = adapter.decoder_layers
        watched = {self.route_at[0]} if routing else set()
        watched |= {self.object_at[0]} if finding else set()
        seen = {k: AttentionInputs(layers[k].self_attn) for k in sorted(watched)}
        try:
            out = self._llm(segment, inputs_embeds=embeds, position_ids=positions,
                            logits_to_keep=start + rows,
                            use_cache=False, output_hidden_states=capped)
        finally:
            for hook in seen.values():
                hook.close()
        aux = []
        if routing or finding:
            aux += self._answer_routing_losses(seen, prefix, text, segment, start, patch_labels,
                                               routing, finding)
        if capped:
            aux.append(norm_penalty(prefix, out.hidden_states[1], self.norm_ratio))
        return _packed_output(out.logits, text, rows, sum(aux) if aux else None)

    def _language_forward(self, text: PackedText) -> PackedOutput:
        """
        Return the answer loss of the turns alone: the language stage, before any view.

        Each turn sees only itself, from position 0 (rotary attention depends on relative
        positions only, so a turn reads the same after the 1,200-token prefix later on).
        """
        embeds = self.adapter.embed(text.ids)
        rows = (text.labels != IGNORE).any(0).nonzero()[:, 0]
        out = self._llm(text.segment, inputs_embeds=embeds, position_ids=text.offsets,
                        logits_to_keep=rows, use_cache=False)
        return _packed_output(out.logits, text, rows, None)

    def _llm(self, segment: Tensor, inputs_embeds: Tensor, **inputs):
        """
        Run the model on packed inputs: under sdpa, with the block-by-block kernel.

        packed_attention.py computes what the dense ``packed_mask`` gives at about a third of
        its cost, and needs no L x L mask; eager attention (and ``dense_attention``) build the
        dense mask.
        """
        implementation = self.adapter.attn_implementation
        if self.dense_attention or implementation != 'sdpa':
            mask = packed_mask(segment, implementation, inputs_embeds.dtype)
            return self.model(inputs_embeds=inputs_embeds, attention_mask=mask, **inputs)
        with packed_attention(self.adapter.text_config):
            return self.model(inputs_embeds=inputs_embeds, packed_layout=packed_layout(segment),
                              **inputs)

    def _answer_routing_losses(self, seen: dict[int, AttentionInputs], prefix,
                               text: PackedText, segment: Tensor, start: int,
                               labels: Tensor | None, routing: bool,
                               finding: bool) -> list[Tensor]:
        """
        Return the weighted view- and object-routing losses at the answer rows (view_routing.py).

        Both read the same rows: their keys, and the attention of a layer both watch, are
        computed once.
        """
        frame, row, turn = answer_rows(text)
        allowed, named = _named_view_keys(frame, start + row, turn, text, prefix, segment)
        asks_view = allowed.any(-1)
        frame, row, turn = frame[asks_view], (start + row)[asks_view], turn[asks_view]
        allowed, named = allowed[asks_view], named[asks_view]
        probs: dict[int, Tensor] = {}

        def attention(layer: int) -> Tensor:
            if layer not in probs:
                probs[layer] = attention_probs(seen[layer], frame, row, allowed)
            return probs[layer]

        losses = []
        if routing:
            layer, head = self.route_at
            losses.append(self.route_weight * routing_loss(attention(layer), head, named))
        if finding:
            classes = torch.tensor(text.classes, device=turn.device)[turn]
            counts = (torch.tensor(text.counts, device=turn.device)[turn] if self.object_count
                      else torch.full_like(classes, -1))  # -1: all of the mass on the class
            present, share = object_targets(named, classes,
                                            _object_keys(prefix, labels, segment)[frame], counts)
            asks = (classes >= 0) & named.any(-1)
            if asks.any():
                layer, head = self.object_at
                losses.append(self.object_weight * share_loss(attention(layer)[asks], head,
                                                              present[asks], share[asks]))
        return losses


def _packed_output(logits: Tensor, text: PackedText, rows: Tensor,
                   aux_loss: Tensor | None) -> PackedOutput:
    """Add the answer loss (turn-weighted mean, ``pack_text``) to the auxiliary terms."""
    labels, weight = text.labels[:, rows], text.weight[:, rows]
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE,
                                 reduction='none')
    answer_loss = (token_loss * weight).sum() / text.norm
    loss = answer_loss if aux_loss is None else answer_loss + aux_loss
    return PackedOutput(loss, logits, labels, text.turn_of_row[:, rows], answer_loss, aux_loss)


def _named_view_keys(frame: Tensor, row: Tensor, turn: Tensor, text: PackedText, prefix,
                     segment: Tensor) -> tuple[Tensor, Tensor]:
    """
    Bool ``[n, T]`` keys (allowed, named) of query rows ``(frame, row)`` of ``turn``.

    ``allowed`` is the packed mask's row (the prefix and the query's own turn, causal), all
    False for a turn that names no camera; ``named`` the visual tokens of the camera the turn
    names.
    """
    view = torch.tensor(text.views, device=frame.device)[turn]
    allowed = _turn_keys(frame, row, segment) & (view >= 0)[:, None]
    seen = _view_of_key(prefix, segment)[frame]
    return allowed, seen == view[:, None]


def _turn_keys(frame: Tensor, row: Tensor, segment: Tensor) -> Tensor:
    """Bool ``[n, T]``: the packed mask's row of each query (the prefix and its turn, causal)."""
    keys = torch.arange(segment.shape[1], device=segment.device)
    own = segment[frame, row][:, None]
    return ((segment[frame] == 0) | (segment[frame] == own)) & (keys <= row[:, None])


def _view_of_key(prefix, segment: Tensor) -> Tensor:
    """Long ``[B, T]``: the camera index of each visual-token key, -1 for every other key."""
    rows_of = torch.stack(prefix.visual_rows, dim=1)  # [B, V, N]: every token is kept
    batch, views = rows_of.shape[:2]
    view_of_key = torch.full_like(segment, -1)
    view_of_key[torch.arange(batch, device=segment.device)[:, None, None], rows_of] = \
        torch.arange(views, device=segment.device)[None, :, None]
    return view_of_key


def object_targets(named: Tensor, asked: Tensor, class_keys: Tensor,
                   counts: Tensor) -> tuple[Tensor, Tensor]:
    """
    Object routing's targets per answer row (view_routing.py): the class tokens and their share.

    ``named`` ``[n, T]``: the named view's tokens (none for a turn that names no camera);
    ``asked`` ``[n]``: the class the turn names (-1: none); ``class_keys`` ``[n, C, T]``;
    ``counts`` ``[n]``: the objects that count there (-1: unknown). Returns (bool ``[n, T]`` the
    named view's tokens of the asked class, float ``[n]`` their share of the head's mass); key 0,
    the first prefix token where attention rests when it has nothing to read, is asked for the
    rest. An unknown count asks for all of the mass on the class, so the head's output says
    "found"; a view whose labels show none of the class, or whose count is 0, asks for key 0
    alone: "not found". With ``n`` objects that count (``Recipe.object_count``) the share is
    ``n / (n + 1)``: the output mixes the class tokens' values and key 0's as ``n : 1``, so a
    linear read of it gives the count, where all of the mass on the class reads the same for
    one car as for five.
    """
    present = named & class_keys[torch.arange(len(asked), device=asked.device),
                                 asked.clamp_min(0)] & (asked >= 0)[:, None]
    n = counts.float()
    share = torch.where(counts >= 0, n / (n + 1), torch.ones_like(n))
    return present, torch.where(present.any(-1), share, torch.zeros_like(share))


def _object_keys(prefix, labels: Tensor, segment: Tensor) -> Tensor:
    """
    Bool ``[B, C, T]``: the keys that are visual tokens whose patch shows class ``c``.

    ``labels`` is ``[B, V, C, g, g]`` (patch_labels.py); token ``r * g + c`` of a view is patch
    ``(r, c)``, and every token is kept in training.
    """
    rows_of = torch.stack(prefix.visual_rows, dim=1)  # [B, V, N]
    batch, views, classes = labels.shape[:3]
    per_token = labels.flatten(3).permute(0, 2, 1, 3).flatten(2)  # [B, C, V * N]
    keys = torch.zeros(batch, classes, segment.shape[1], dtype=torch.bool,
                       device=segment.device)
    index = rows_of.flatten(1)[:, None].expand(-1, classes, -1)
    return keys.scatter(2, index, per_token.to(segment.device))


def answer_rows(text: PackedText) -> tuple[Tensor, Tensor, Tensor]:
    """Each turn's answer position: (frame, text row, turn) of its first label row."""
    b, r = (text.labels != IGNORE).nonzero(as_tuple=True)
    turn = text.turn_of_row[b, r]
    first = torch.ones_like(turn, dtype=torch.bool)
    first[1:] = turn[1:] != turn[:-1]
    return b[first], r[first], turn[first]


def turn_exact(output: PackedOutput, turns: int) -> Tensor:
    """
    Return ``[turns]`` bool: every answer token (and end-of-turn) is the argmax, teacher-forced.

    All argmaxes right under teacher forcing is the same as greedy decoding producing exactly
    the target tokens, so this is greedy exact match on the token level (a lower bound of the
    string exact match: another tokenisation of the same text would count as wrong here).
    """
    wrong = (output.logits.argmax(-1) != output.labels) & (output.labels != IGNORE)
    bad = torch.zeros(turns, dtype=torch.long, device=wrong.device)
    owner = output.turn_of_row[output.labels != IGNORE]
    bad.index_add_(0, owner, wrong[output.labels != IGNORE].long())
    return bad == 0
