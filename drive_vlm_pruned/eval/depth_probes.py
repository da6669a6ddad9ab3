"""
Where is the camera information lost? Linear probes at each depth of a VLM (issue 28).

For every closed-form camera question ("Is there a sign in the back left view?", "How many
vehicles are in the front view?") the model is run through the one frame path (``Pipeline``,
keep 1.0, one new token) while forward hooks read three kinds of representation:

- ``tower``: the vision tower's hidden state that the projector reads (its input);
- ``projector``: the projector's output, the visual tokens the LLM gets;
- ``llm.K``: the residual stream after LLM layer K at the answer position (the last prompt
  token, where the first answer token is predicted).

The tower and projector rows pool the named view's tokens (mean and max), the LLM rows take the
answer position as it is. One linear probe per class and family (eval/linear_probe.py) is fit on
the fitting frames and scored on the held-out frames, beside two baselines fit on the same
frames: the class's majority answer, and the question prior (the majority answer of the same
class and camera). A depth whose probe beats the prior holds the answer; the depth where it
stops beating it is where the model loses what its cameras showed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
import re

import torch
from torch import Tensor

from .linear_probe import linear_probe_accuracy
from .scoring import is_trajectory_qa
from ..cameras import NUSCENES_CAMERAS
from ..data.drivelm import KeyFrame, load_camera_set, QA
from ..data.qa_rules import PLURALS
from ..models.prompts import VIEW_WORDS
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..pruning import keep_all

FAMILIES = ('exists', 'count')
_VIEW = '|'.join(re.escape(w) for w in VIEW_WORDS.values())
_PATTERNS = {
    'exists': re.compile(rf'^Is there an? (?P<label>\w+) in the (?P<view>{_VIEW})\?$'),
    'count': re.compile(rf'^How many (?P<label>\w+) are in the (?P<view>{_VIEW})\?$'),
}
_SINGULAR = {plural: label for label, plural in PLURALS.items()}
_CAMERA = {words: camera for camera, words in VIEW_WORDS.items()}


@dataclass(frozen=True)
class CameraQuestion:
    """A closed-form question about one class in one camera, with its true answer."""

    family: str
    label: str
    camera: str
    answer: str


@dataclass(frozen=True)
class ProbeRow:
    """Held-out accuracy of the probes at one depth for one family, beside its baselines."""

    depth: str
    family: str
    accuracy: float
    majority: float  # the class's majority answer on the fitting frames
    prior: float  # the majority answer of the same class and camera on the fitting frames
    fit_items: int
    eval_items: int


def camera_question(qa: QA) -> CameraQuestion | None:
    """Return what an exists/count question asks, or None for any other question."""
    pattern = _PATTERNS.get(qa.family or '')
    match = pattern.match(qa.question) if pattern else None
    if match is None:
        return None
    label = match['label'] if qa.family == 'exists' else _SINGULAR.get(match['label'])
    if label is None:
        return None
    return CameraQuestion(qa.family, label, _CAMERA[match['view']], qa.answer.strip().lower())


class DepthTaps:
    """Forward hooks that keep each depth's features of the current batch (module doc)."""

    def __init__(self, projector, decoder_layers) -> None:
        self.projector, self.layers = projector, list(decoder_layers)
        self.views: dict[str, Tensor] = {}  # depth -> [views, tokens, D]
        self.answer: dict[str, Tensor] = {}  # depth -> [B, D], the last prompt row

    @contextmanager
    def attached(self):
        projector = self.projector
        handles = [projector.register_forward_pre_hook(self._tower),
                   projector.register_forward_hook(self._projector)]
        handles += [layer.register_forward_hook(self._layer_hook(f'llm.{k + 1}'))
                    for k, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _tower(self, module, args) -> None:
        self.views['tower'] = args[0].detach().float()

    def _projector(self, module, args, output) -> None:
        self.views['projector'] = output.detach().float()

    def _layer_hook(self, depth: str):
        def hook(module, args, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] > 1:  # the prefill, not a decode step
                self.answer[depth] = hidden[:, -1].detach().float()
        return hook


def projector_of(model):
    """Return the model's ``multi_modal_projector`` module (LLaVA family), or None."""
    return next((m for name, m in model.named_modules()
                 if name.split('.')[-1] == 'multi_modal_projector'), None)


def pooled(tokens: Tensor) -> Tensor:
    """Return ``[..., 2D]``: mean and max over a view's tokens (dim -2)."""
    return torch.cat([tokens.mean(-2), tokens.amax(-2)], dim=-1)


def collect_features(pipeline: Pipeline, frames: Sequence[KeyFrame],
                     progress: Callable[[int], None] = lambda n: None,
                     ) -> tuple[list[CameraQuestion], dict[str, Tensor]]:
    """Run every camera question of ``frames``; return them and their features by depth."""
    projector = projector_of(pipeline.adapter.model)
    if projector is None:
        raise ValueError(f'{pipeline.adapter.family}: depth probes read a LLaVA-style '
                         'multi_modal_projector; this model has none')
    taps = DepthTaps(projector, pipeline.adapter.decoder_layers)
    settings = RuntimeSettings(keep_ratio=1.0, pruner='random', max_new_tokens=1)
    items: list[CameraQuestion] = []
    feats: dict[str, list[Tensor]] = defaultdict(list)
    with taps.attached(), torch.inference_mode():
        for frame in frames:
            pairs = [(qa, q) for qa in frame.qa if (q := camera_question(qa)) is not None]
            if pairs:
                camera_set = load_camera_set(frame)
                pipeline.run_batch([camera_set] * len(pairs),
                                   [replace(settings, question=qa.question) for qa, _ in pairs])
                views = [NUSCENES_CAMERAS.index(q.camera) for _, q in pairs]
                for depth, tokens in taps.views.items():
                    feats[depth].append(pooled(tokens[:len(NUSCENES_CAMERAS)][views]))
                for depth, hidden in taps.answer.items():
                    feats[depth].append(hidden)
                items += [q for _, q in pairs]
            progress(1)
    order = ['tower', 'projector'] + [f'llm.{k + 1}' for k in range(len(taps.layers))]
    return items, {d: torch.cat(feats[d]) for d in order if feats[d]}


def probe_table(fit: tuple[list[CameraQuestion], dict[str, Tensor]],
                held_out: tuple[list[CameraQuestion], dict[str, Tensor]]) -> list[ProbeRow]:
    """Fit one probe per depth, family and class on ``fit``; score them on ``held_out``."""
    fit_items, fit_feats = fit
    eval_items, eval_feats = held_out
    rows = []
    for family in FAMILIES:
        groups = _groups(fit_items, eval_items, family)
        if not groups:
            continue
        majority, prior = _baselines(fit_items, eval_items, groups)
        n_fit = sum(len(g[0]) for g in groups.values())
        n_eval = sum(len(g[1]) for g in groups.values())
        for depth in fit_feats:
            correct = 0.0
            for fit_idx, eval_idx, y_fit, y_eval in groups.values():
                acc = linear_probe_accuracy(fit_feats[depth][fit_idx], y_fit,
                                            eval_feats[depth][eval_idx], y_eval)
                correct += acc * len(eval_idx)
            rows.append(ProbeRow(depth, family, correct / n_eval, majority, prior, n_fit,
                                 n_eval))
    return rows


def _groups(fit_items, eval_items, family: str) -> dict[str, tuple]:
    """Per class: fitting and held-out indices and answer ids (answers unseen in fit dropped)."""
    out = {}
    for label in sorted({q.label for q in fit_items if q.family == family}):
        fit_idx = [i for i, q in enumerate(fit_items) if q.family == family and q.label == label]
        answers = sorted({fit_items[i].answer for i in fit_idx})
        ids = {a: k for k, a in enumerate(answers)}
        eval_idx = [i for i, q in enumerate(eval_items)
                    if q.family == family and q.label == label and q.answer in ids]
        if len(answers) < 2 or not eval_idx:
            continue
        out[label] = (torch.tensor(fit_idx), torch.tensor(eval_idx),
                      torch.tensor([ids[fit_items[i].answer] for i in fit_idx]),
                      torch.tensor([ids[eval_items[i].answer] for i in eval_idx]))
    return out


def _baselines(fit_items, eval_items, groups: dict[str, tuple]) -> tuple[float, float]:
    """Accuracy on the probes' held-out items of the class and class-and-camera majorities."""
    by_label: dict[str, Counter] = defaultdict(Counter)
    by_pair: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for fit_idx, _, _, _ in groups.values():
        for q in (fit_items[i] for i in fit_idx.tolist()):
            by_label[q.label][q.answer] += 1
            by_pair[(q.label, q.camera)][q.answer] += 1
    held = [eval_items[i] for _, eval_idx, _, _ in groups.values() for i in eval_idx.tolist()]

    def hits(table, key) -> float:
        return sum(bool(table[key(q)]) and table[key(q)].most_common(1)[0][0] == q.answer
                   for q in held) / len(held)
    return hits(by_label, lambda q: q.label), hits(by_pair, lambda q: (q.label, q.camera))


def format_table(rows: Sequence[ProbeRow]) -> str:
    """Return the rows as a markdown table, a family per column pair."""
    depths = list(dict.fromkeys(r.depth for r in rows))
    families = list(dict.fromkeys(r.family for r in rows))
    cell = {(r.depth, r.family): r for r in rows}
    first = {f: next(r for r in rows if r.family == f) for f in families}
    head = '| depth | ' + ' | '.join(f'{f} probe' for f in families) + ' |'
    lines = [head, '|' + ' --- |' * (1 + len(families))]
    for depth in depths:
        lines.append(f'| {depth} | ' + ' | '.join(
            f'{100 * cell[(depth, f)].accuracy:.1f}%' for f in families) + ' |')
    for name in ('majority', 'prior'):
        lines.append(f'| ({name}) | ' + ' | '.join(
            f'{100 * getattr(first[f], name):.1f}%' for f in families) + ' |')
    counts = ', '.join(f'{f}: {first[f].fit_items} fit / {first[f].eval_items} held out'
                       for f in families)
    return '\n'.join(lines) + f'\n\nitems: {counts}'


def view_identity_features(adapter, frames: Sequence[KeyFrame], every: int = 7,
                           ) -> tuple[Tensor, dict[str, Tensor]]:
    """
    Visual tokens by depth, labelled with the view they come from (keep 1.0, no question).

    To answer "Is there a sign in the back left view?" a layer must tell the back left view's
    tokens from the others; the tower sees each image alone, so what the LLM knows of a token's
    view it must take from the view names before it (named-views prompt) or from its position.
    Returns ``(views [n], {depth: [n, D]})`` for every ``every``-th token of each view, at
    ``llm.0`` (the visual tokens as the LLM gets them) and after each LLM layer ``llm.K``: the
    keys that layer K+1 attends over.
    """
    names = NUSCENES_CAMERAS
    pieces = adapter.prompt('', names)
    labels, feats = [], defaultdict(list)
    with torch.inference_mode():
        for frame in frames:
            visual = adapter.encode(adapter.preprocess(list(load_camera_set(frame).images)), 1)
            inputs = adapter.build_inputs(visual, keep_all(visual.tokens.valid_counts(),
                                                           adapter.device), [pieces])
            rows = torch.stack(inputs.visual_rows, 1)[0, :, ::every]  # [V, n]
            out = adapter.model.get_decoder()(
                inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids, output_hidden_states=True)
            for k, hidden in enumerate(out.hidden_states):
                feats[f'llm.{k}'].append(hidden[0, rows.flatten()].float().cpu())
            labels.append(torch.arange(len(names)).repeat_interleave(rows.shape[1]))
    return torch.cat(labels), {depth: torch.cat(v) for depth, v in feats.items()}


def view_identity_table(fit: tuple[Tensor, dict[str, Tensor]],
                        held_out: tuple[Tensor, dict[str, Tensor]]) -> dict[str, float]:
    """Held-out accuracy of a linear probe of the view id at each depth (chance: 1/6)."""
    return {depth: linear_probe_accuracy(fit[1][depth], fit[0], held_out[1][depth], held_out[0])
            for depth in fit[1]}


def planning_view_attention(adapter, frames: Sequence[KeyFrame], last_rows: int = 8
                            ) -> dict[str, list[float]]:
    """
    Attention mass on the six views from the end of each frame's planning question, by layer.

    The planning answer copies numbers from the ego history in the question text. A layer whose
    rows there put most of their attention on the ~1,200 visual tokens reads little of the
    history: the drilled model of issue 28 spent 54-95% there at LLM layers 1-2, the shipped
    model 1-20% (model card). Returns ``{"llm.K": [mass per query head]}`` averaged over the
    last ``last_rows`` prompt rows (the end of the question and the assistant header) of the
    frames that have a planning question, keep 1.0, eager attention (switched on for the pass).
    """
    model = adapter.model
    before = model.config._attn_implementation
    model.set_attn_implementation('eager')
    sums: dict[str, Tensor] = {}
    seen = 0
    try:
        with torch.inference_mode():
            for frame in frames:
                qa = next((q for q in frame.qa if is_trajectory_qa(frame, q)), None)
                if qa is None:
                    continue
                images = list(load_camera_set(frame).images)
                visual = adapter.encode(adapter.preprocess(images), 1)
                inputs = adapter.build_inputs(
                    visual, keep_all(visual.tokens.valid_counts(), adapter.device),
                    [adapter.prompt(qa.question, NUSCENES_CAMERAS)])
                out = model.get_decoder()(
                    inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids, output_attentions=True)
                views = torch.cat(inputs.visual_rows, dim=1)[0]
                for k, weights in enumerate(out.attentions, start=1):
                    mass = weights[0, :, -last_rows:][..., views].sum(-1).mean(-1)  # [heads]
                    sums[f'llm.{k}'] = sums.get(f'llm.{k}', 0) + mass.float().cpu()
                seen += 1
    finally:
        model.set_attn_implementation(before)
    return {depth: (total / max(seen, 1)).tolist() for depth, total in sums.items()}
