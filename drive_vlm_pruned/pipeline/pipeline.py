"""
The one frame path: CameraSet -> preprocess -> vision -> budgets -> pruner -> prefill -> decode.

The ROS node, the offline bag runner, the benchmarks and the tests all call ``Pipeline.run`` /
``Pipeline.run_batch``; none has a private copy of any step. Runtime settings travel with each
call, so the node can change them between frames without reloading the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
import time

import torch

from .camera_set import CameraSet
from .decoding import check_decode_backend, CompileOptions, Decoder, resolve_decode_backend
from .flops import LLMShape, prefill_flops
from .generate import prefill, Sampling
from .trajectory import parse_trajectory, TrajectoryParse
from .waypoint_grammar import is_planning_question, WaypointGrammar
from ..cameras import NUSCENES_CAMERAS
from ..models.base import VisualFeatures, VLMAdapter
from ..models.layer_pruning import InLLMRequest, LayerPruningHooks
from ..models.prompts import DRIVELM_QA
from ..pruning import (
    check_keep_ratio,
    check_pruner_name,
    keep_all,
    KeptTokens,
    make_pruner,
    MVPruner,
    prune,
    Stage,
    UniformAllocator,
    ViewTokens,
    WeightedAllocator,
)
from ..pruning.reconpruner import resolve_weights

STAGES = ('preprocess', 'vision', 'prune', 'prefill', 'decode')


@dataclass(frozen=True)
class RuntimeSettings:
    """What may change between frames without reloading the model (the node's live parameters)."""

    keep_ratio: float = 0.25
    pruner: str = 'tfps'
    view_weights: Mapping[str, float] | None = None
    prune_layer: int = 0
    question: str = DRIVELM_QA
    max_new_tokens: int = 96  # six waypoints: at most 95 characters + end (waypoint_grammar)
    temperature: float = 0.0
    top_p: float = 1.0
    min_tokens_per_view: int = 1
    seed: int = 0
    stop_at_eos: bool = True
    # pruner 'reconpruner': its weights; '' = the model's own <model dir>/reconpruner.safetensors
    reconpruner_weights: str = ''
    decode_backend: str = 'auto'  # eager | compiled | auto (pipeline/decoding.py)
    # answers to the PLANNING prompt are decoded under its waypoint grammar, so they always parse
    # (pipeline/waypoint_grammar.py)
    waypoint_grammar: bool = True

    def validate(self, llm_layers: int) -> None:
        """Raise ValueError naming the bad setting and its valid range."""
        check_keep_ratio(self.keep_ratio)
        check_pruner_name(self.pruner)
        if not 0 <= self.prune_layer < llm_layers:
            raise ValueError(f'prune_layer={self.prune_layer} must be in [0, {llm_layers - 1}]')
        if self.prune_layer == 0 and make_pruner(self.pruner).stage is Stage.IN_LLM:
            raise ValueError(
                f'pruner {self.pruner!r} acts inside the LLM; set prune_layer >= 1 (FastV and '
                'DART use 2), or pick tfps, divprune, mvpruner, random or stride'
            )
        if self.max_new_tokens < 1:
            raise ValueError(f'max_new_tokens={self.max_new_tokens} must be >= 1')
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError('temperature must be >= 0 and top_p in (0, 1]')
        check_decode_backend(self.decode_backend)


@dataclass
class Result:
    """Everything one frame produced, with the input set's stamp."""

    stamp_ns: int
    question: str
    answer: str
    trajectory: TrajectoryParse
    keep_ratio: float
    pruner: str
    prune_layer: int
    view_names: tuple[str, ...]
    kept_indices: list[list[int]]  # per view, sorted rows of that view's tokens
    tokens_before: list[int]  # prunable visual tokens per view
    tokens_after: list[int]  # kept visual tokens per view
    prompt_tokens: int  # LLM prompt length unpruned
    prompt_tokens_kept: int  # LLM prompt length the model actually prefilled
    generated_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    prefill_flops: int = 0
    prefill_flops_unpruned: int = 0
    missing_views: tuple[str, ...] = ()  # cameras the set lacked (degraded when non-empty)
    decode_backend: str = ''  # the decode backend that ran: eager or compiled
    waypoint_grammar: bool = False  # whether the answer was decoded under the waypoint grammar

    def summary(self) -> dict:
        """JSON-ready dict (the node's ~/result payload and the offline runner's lines)."""
        out = asdict(self)
        out['trajectory'] = (
            [list(p) for p in self.trajectory.points] if self.trajectory.ok else None
        )
        out['trajectory_reason'] = self.trajectory.reason
        del out['kept_indices']  # large; callers that want it read the attribute
        out['tokens_kept_per_view'] = dict(zip(self.view_names, self.tokens_after))
        out['degraded'] = bool(self.missing_views)
        return out


class StageTimer:
    """Milliseconds per stage: CUDA events on GPU (one sync at the end), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.marks: list[tuple[str, object, object]] = []

    @contextmanager
    def stage(self, name: str):
        start = self._now()
        yield
        self.marks.append((name, start, self._now()))

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def result(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {n: s.elapsed_time(e) for n, s, e in self.marks}
        return {n: (e - s) * 1000.0 for n, s, e in self.marks}


class Pipeline:
    """Runs camera sets through one loaded VLM adapter."""

    def __init__(self, adapter: VLMAdapter, views: int = len(NUSCENES_CAMERAS),
                 log: Callable[[str], None] | None = None,
                 compile_options: CompileOptions = CompileOptions()) -> None:
        self.adapter = adapter
        self.views = views
        self.shape = LLMShape.from_config(adapter.text_config)
        # where the checkpoint was loaded from: its reconpruner.safetensors is the default
        self.model_dir = str(getattr(adapter.model, 'name_or_path', '') or '')
        # Holds the static KV cache and the compiled step between frames; ``log`` hears why
        # the compiled path fell back to eager, if it does.
        self.decoder = Decoder(adapter.model, log, compile_options)
        self.grammar = WaypointGrammar(adapter.tokenizer, adapter.eos_token_ids, log)

    def warm_up(self, settings: RuntimeSettings) -> str:
        """
        Compile the decode step now if ``settings`` use the compiled backend; else do nothing.

        Runs one drawn frame, so a node pays the compile while it loads, not on its first set.
        Builds the waypoint grammar's table too, where the settings' question will use it.
        Returns the decode backend the settings get on this device ('eager' after a fallback).
        """
        from .synthetic_frames import synthetic_frame

        head = self.adapter.model.get_output_embeddings()
        if settings.waypoint_grammar and is_planning_question(settings.question) and head:
            self.grammar.prepare(head.weight.shape[0], self.adapter.device)

        if resolve_decode_backend(settings.decode_backend, self.adapter.device) == 'eager':
            return 'eager'
        return self.run(synthetic_frame(0, size=(90, 160)), settings).decode_backend

    def run(self, frame: CameraSet, settings: RuntimeSettings = RuntimeSettings()) -> Result:
        return self.run_batch([frame], [settings])[0]

    @torch.inference_mode()
    def run_batch(self, frames: Sequence[CameraSet],
                  settings: Sequence[RuntimeSettings]) -> list[Result]:
        """Run B frames together; settings may differ per frame in keep ratio and question."""
        shared = self._check_batch(frames, settings)
        adapter, batch = self.adapter, len(frames)
        timer = StageTimer(adapter.device)
        # Items that share one CameraSet object (several questions about one frame, as eval
        # batches them) are preprocessed and encoded once.
        distinct, index = _distinct_frames(frames)
        with timer.stage('preprocess'):
            pixels = adapter.preprocess([img for f in distinct for img in f.images])
        with timer.stage('vision'):
            feats = _per_item(adapter.encode(pixels, len(distinct)), index)
        plan = PrunePlan(shared, [s.keep_ratio for s in settings],
                         self.reconpruner_weights(settings))
        names = tuple(frames[0].names)
        with timer.stage('prune'):
            tokens = ViewTokens(feats.tokens.features, names, feats.tokens.counts)
            kept = plan.before_llm(tokens)
        questions = [f.question or s.question for f, s in zip(frames, settings)]
        prompts = [adapter.prompt(q, names) for q in questions]
        inputs = adapter.build_inputs(feats, kept, prompts)
        self._check_context(inputs.full_length, shared.max_new_tokens)
        hooks = plan.in_llm_hooks(adapter, inputs, names)
        with timer.stage('prefill'):
            start = prefill(adapter.model, inputs, hooks)
        if hooks is not None:
            kept = _compose(kept, hooks.kept)
        sampling = Sampling(shared.max_new_tokens, shared.temperature, shared.top_p, shared.seed,
                            shared.stop_at_eos)
        constrained = [s.waypoint_grammar and is_planning_question(q)
                       for s, q in zip(settings, questions)]
        with timer.stage('decode'):
            constraint = self.grammar.constraint(constrained, start.logits.shape[-1],
                                                 start.logits.device)
            if constraint is None:  # no planning row, or a tokenizer that cannot spell it
                constrained = [False] * batch
            decoded = self.decoder(shared.decode_backend, start, inputs, adapter.eos_token_ids,
                                   adapter.pad_token_id, sampling, constraint)
        generated = decoded.tokens
        timings = timer.result()
        kept_lengths = start.attention_mask.sum(1).tolist()
        results = [
            self._result(frames[b], settings[b], questions[b], kept, b, inputs, generated[b],
                         tokens.view_sizes(), timings, kept_lengths[b])
            for b in range(batch)
        ]
        for result, grammar in zip(results, constrained):
            result.decode_backend = decoded.backend
            result.waypoint_grammar = grammar
        return results

    def _check_batch(self, frames, settings) -> RuntimeSettings:
        if not frames or len(frames) != len(settings):
            raise ValueError(f'{len(frames)} frames for {len(settings)} settings: give one each')
        first = settings[0]
        for s in settings:
            s.validate(self.shape.layers)
            if (s.pruner, s.prune_layer, s.view_weights, s.max_new_tokens,
                    s.decode_backend) != (first.pruner, first.prune_layer, first.view_weights,
                                          first.max_new_tokens, first.decode_backend):
                raise ValueError('a batch shares pruner, prune_layer, view weights, '
                                 'max_new_tokens and decode_backend; only keep_ratio and '
                                 'question may differ')
        for f in frames:
            f.validate(self.views)
            if tuple(f.names) != tuple(frames[0].names):
                raise ValueError('every frame of a batch needs the same cameras in the same order')
        return first

    def reconpruner_weights(self, settings: Sequence[RuntimeSettings]) -> str:
        """Return the ReconPruner weights file of a batch ('' for other pruners)."""
        first = settings[0]
        if check_pruner_name(first.pruner) != 'reconpruner':
            return ''
        if any(s.reconpruner_weights != first.reconpruner_weights for s in settings):
            raise ValueError('a batch shares its reconpruner_weights')
        return str(resolve_weights(first.reconpruner_weights, self.model_dir or None))

    def _check_context(self, full_lengths: list[int], new_tokens: int) -> None:
        # Kept tokens keep their original positions, so the unpruned length is what must fit.
        context = getattr(self.adapter.text_config, 'max_position_embeddings', None)
        if context and max(full_lengths) + new_tokens > context:
            raise ValueError(
                f'the prompt is {max(full_lengths)} tokens (images unpruned) + {new_tokens} new '
                f'tokens, more than the model context of {context}: shorten the question or '
                'lower max_new_tokens'
            )

    def _result(self, frame, settings, question, kept, b, inputs, generated, sizes,
                timings, kept_len) -> Result:
        eos = set(self.adapter.eos_token_ids) | {self.adapter.pad_token_id}
        ids = [t for t in generated.tolist() if t not in eos]
        answer = self.adapter.tokenizer.decode(ids, skip_special_tokens=True)
        after = [int(ix.numel()) for ix in kept.indices[b]]
        full, first_len = inputs.full_length[b], inputs.kept_length[b]
        return Result(
            stamp_ns=frame.stamp_ns,
            question=question,
            answer=answer,
            trajectory=parse_trajectory(answer),
            keep_ratio=settings.keep_ratio,
            pruner=settings.pruner,
            prune_layer=settings.prune_layer,
            view_names=tuple(frame.names),
            kept_indices=[ix.tolist() for ix in kept.indices[b]],
            tokens_before=list(sizes),
            tokens_after=after,
            prompt_tokens=full,
            prompt_tokens_kept=kept_len,
            generated_tokens=len(ids),
            timings_ms=dict(timings),
            prefill_flops=prefill_flops(self.shape, first_len, kept_len, settings.prune_layer),
            prefill_flops_unpruned=prefill_flops(self.shape, full),
            missing_views=tuple(frame.missing),
        )


@dataclass(frozen=True)
class PrunePlan:
    """
    Which pruner runs where for one batch.

    prune_layer 0: the pruner runs on the projector output. prune_layer K >= 1: layers 0..K-1
    see every token (or, for MVPruner, the stage-1 survivors at ratio r1) and the pruner runs
    before layer K on the hidden states, with the LayerState of layer K-1.
    """

    settings: RuntimeSettings
    ratios: list[float]
    reconpruner_weights: str = ''  # resolved weights file when the pruner is reconpruner

    def _pruner(self):
        if self.reconpruner_weights:
            return make_pruner(self.settings.pruner, weights=self.reconpruner_weights)
        return make_pruner(self.settings.pruner)

    def _allocator(self):
        s = self.settings
        if s.view_weights:
            return WeightedAllocator(s.view_weights, s.min_tokens_per_view)
        return UniformAllocator(s.min_tokens_per_view)

    def before_llm(self, tokens: ViewTokens) -> KeptTokens:
        s, pruner = self.settings, self._pruner()
        if s.prune_layer > 0:
            if isinstance(pruner, MVPruner):
                ratios = [pruner.ratios(r)[0] for r in self.ratios]
                return prune(pruner.stage1, tokens, ratios, self._allocator(), seed=s.seed)
            return keep_all(tokens.valid_counts(), tokens.device)
        if isinstance(pruner, MVPruner):  # at layer 0 only stage 1 can run (docs/pruning.md)
            pruner = pruner.stage1
        return prune(pruner, tokens, self.ratios, self._allocator(), seed=s.seed)

    def in_llm_hooks(self, adapter: VLMAdapter, inputs, names) -> LayerPruningHooks | None:
        s = self.settings
        if s.prune_layer == 0:
            return None
        pruner = self._pruner()
        ratios = self.ratios
        if isinstance(pruner, MVPruner):
            ratios = [pruner.ratios(r)[1] for r in self.ratios]
            pruner = pruner.stage2

        def select(state, counts) -> KeptTokens:
            tokens = state.view_tokens(names, counts)
            layer = state if pruner.stage is Stage.IN_LLM else None
            return prune(pruner, tokens, ratios, self._allocator(), layer=layer, seed=s.seed)

        attn = adapter.decoder_layers[s.prune_layer - 1].self_attn
        request = InLLMRequest(
            layer=s.prune_layer, select=select, visual_rows=inputs.visual_rows,
            counts=inputs.visual_counts, text_len=inputs.text_len, text_mask=inputs.text_mask,
            scaling=float(attn.scaling),
        )
        return LayerPruningHooks(adapter.decoder_layers, adapter.attn_implementation, request,
                                 inputs.inputs_embeds, inputs.attention_mask)


def _distinct_frames(frames: Sequence[CameraSet]) -> tuple[list[CameraSet], list[int]]:
    """Return the distinct frame objects and, per item, the index of its frame among them."""
    distinct: list[CameraSet] = []
    position: dict[int, int] = {}
    index = []
    for frame in frames:
        if id(frame) not in position:
            position[id(frame)] = len(distinct)
            distinct.append(frame)
        index.append(position[id(frame)])
    return distinct, index


def _per_item(feats: VisualFeatures, index: list[int]) -> VisualFeatures:
    """Repeat each distinct frame's features for every batch item that uses it."""
    if index == list(range(len(index))):
        return feats
    rows = torch.tensor(index, device=feats.tokens.features[0].device)
    tokens = feats.tokens
    counts = tokens.counts[torch.tensor(index)] if tokens.counts is not None else None
    grid = feats.grid_thw
    if grid is not None:
        per_frame = grid.view(-1, len(tokens.features), grid.shape[-1])
        grid = per_frame[rows.to(grid.device)].reshape(-1, grid.shape[-1])
    return VisualFeatures(
        tokens=ViewTokens(tuple(f[rows] for f in tokens.features), tokens.names, counts),
        suffix=tuple(x[rows] for x in feats.suffix),
        grid_thw=grid,
    )


def _compose(first: KeptTokens, second: KeptTokens) -> KeptTokens:
    """Map second-step indices back to original view rows: the tokens that survive both."""
    return KeptTokens(tuple(
        tuple(a[b.to(a.device)] for a, b in zip(views_a, views_b))
        for views_a, views_b in zip(first.indices, second.indices)
    ))
