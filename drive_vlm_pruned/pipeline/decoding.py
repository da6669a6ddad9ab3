"""
Decode backends: ``eager`` (DynamicCache, one model call per token) and ``compiled``.

``compiled`` follows gpt-fast: the KV cache is static (pipeline/static_cache.py: allocated once
per shape, refilled each frame; the three most recently used shapes are kept, so a node that
switches between keep ratios does not reallocate or recompile), the one-token step
(embedding, the model's own forward, last logits) is ``torch.compile``d with ``fullgraph=True``
and, on CUDA, ``mode='reduce-overhead'`` (CUDA graphs), and nothing inside the token loop waits
for the device except the stop check. On CUDA the stop check reads an all-rows-done flag that
was copied to pinned memory one token earlier, so the host never waits for the step it just
queued and at most one extra step is computed (its token is cut from the output); on CPU, where
every op already runs synchronously, it is a plain check. ``stop_check_every`` batches it
further.

What the compiled step re-checks every token: dynamo's guards, which decide whether a graph may
run for these inputs (tensor shapes, strides and dtypes, the model's parameters and buffers, the
global grad mode). On the embedded model they took ~0.3 of a ~2.5 ms step on a 2-core CPU.
Once a step has run its first call under the full guards (that call compiles it, or finds its
graph), later calls evaluate only the guards that tell this code object's graphs apart
(``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``): within a token loop and across
frames of the same shape nothing the other guards check can change, since a slot's shapes,
static cache and the model's weights are fixed. ``CompileOptions(full_guards=True)`` turns that
off, and the tests check both against eager. It is verified on the CPU only: CUDA (with its CUDA
graphs) keeps every guard until a GPU run checks it.

Greedy output equals the eager path token for token (test/test_decode_backends.py); sampling
draws from the same generator in the same order. When the compiled path cannot run (a cache
layer that is not full attention, a compiler error, a missing C++ compiler), the decoder logs
why once and decodes eagerly from then on: an answer is never lost to the fast path.

``auto`` picks compiled on CUDA and eager on CPU: measured on a 2-core CPU, the tiny model decodes
faster compiled, but the first compile costs tens of seconds, more than a CPU run of a few hundred
frames gains back (docs/latency.md has the figures and the break-even).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .generate import choose_token, decode, Prefilled, Sampling
from .static_cache import CacheShape, StaticKV
from ..models.base import PrefillInputs
from ..models.call_contract import cache_keyword

if TYPE_CHECKING:
    from .waypoint_grammar import WaypointConstraint

DECODE_BACKENDS = ('auto', 'eager', 'compiled')
MAX_SLOTS = 3  # static caches kept at once: e.g. three keep ratios switched between live
RECOMPILE_LIMIT = 64  # graphs dynamo may keep for the one step function (all models, shapes)
_LOG = logging.getLogger(__name__)


def check_decode_backend(name: str) -> str:
    """Return ``name`` if it is a decode backend; ValueError lists the choices otherwise."""
    if name not in DECODE_BACKENDS:
        raise ValueError(f'decode_backend {name!r} is not one of {", ".join(DECODE_BACKENDS)} '
                         "('auto': compiled on CUDA, eager on CPU)")
    return name


def resolve_decode_backend(name: str, device: torch.device) -> str:
    """Turn ``auto`` into ``compiled`` on CUDA and ``eager`` elsewhere (module doc)."""
    check_decode_backend(name)
    if name == 'auto':
        return 'compiled' if device.type == 'cuda' else 'eager'
    return name


@dataclass(frozen=True)
class CompileOptions:
    """How the compiled step is built; the defaults are what the node and benchmarks use."""

    backend: str = 'inductor'  # torch.compile backend; tests use 'aot_eager' to compile fast
    mode: str | None = 'auto'  # 'auto': 'reduce-overhead' (CUDA graphs) on CUDA, default on CPU
    stop_check_every: int = 1  # tokens between stop checks (each check is one host read)
    full_guards: bool = False  # True: every guard on every call (module doc)

    def compile_mode(self, device: torch.device) -> str | None:
        if self.backend != 'inductor':
            return None
        if self.mode == 'auto':
            return 'reduce-overhead' if device.type == 'cuda' else None
        return self.mode


@dataclass(frozen=True)
class Decoded:
    """The generated ids ``[B, n]`` (finished rows padded) and the backend that made them."""

    tokens: Tensor
    backend: str


class Decoder:
    """Decode with the eager or the compiled backend; keeps static caches between frames."""

    def __init__(self, model, log: Callable[[str], None] | None = None,
                 options: CompileOptions = CompileOptions()) -> None:
        self.model = model
        self.log = log or _LOG.warning
        self.options = options
        # One static cache and compiled step per shape, most recently used last (module doc).
        self.slots: OrderedDict[CacheShape, _Slot] = OrderedDict()
        self.unavailable: str | None = None  # why the compiled path is off for this model

    def __call__(self, backend: str, start: Prefilled, inputs: PrefillInputs,
                 eos_ids: list[int], pad_id: int, sampling: Sampling,
                 constraint: WaypointConstraint | None = None) -> Decoded:
        device = start.logits.device
        if resolve_decode_backend(backend, device) == 'eager' or self.unavailable:
            return Decoded(decode(self.model, start, inputs, eos_ids, pad_id, sampling,
                                  constraint), 'eager')
        first_state = None if constraint is None else constraint.state
        try:
            tokens = self._compiled(start, inputs, eos_ids, pad_id, sampling, constraint)
        # The fallback must catch whatever the compiler stack raises (dynamo, inductor, the C++
        # toolchain); the reason is logged, and the frame is decoded eagerly from its prefill,
        # which the compiled path only read.
        except Exception as err:  # noqa: B902
            self.unavailable = f'{type(err).__name__}: {_first_line(err)}'
            self.slots.clear()
            self.log(f'decode_backend compiled is unavailable ({self.unavailable}); decoding '
                     'eagerly from now on')
            if constraint is not None:  # the compiled loop may have moved it
                constraint.state = first_state
            return Decoded(decode(self.model, start, inputs, eos_ids, pad_id, sampling,
                                  constraint), 'eager')
        return Decoded(tokens, 'compiled')

    @property
    def static(self) -> StaticKV | None:
        """Return the static cache the last compiled frame used (None before one)."""
        return next(reversed(self.slots.values())).static if self.slots else None

    @property
    def cache_bytes(self) -> int:
        """Return the bytes of every static cache now held (0 before the first frame)."""
        return sum(slot.static.nbytes for slot in self.slots.values())

    def _compiled(self, start: Prefilled, inputs: PrefillInputs, eos_ids: list[int],
                  pad_id: int, sampling: Sampling,
                  constraint: WaypointConstraint | None) -> Tensor:
        shape = StaticKV.shape_for(start.cache, sampling.max_new_tokens)
        slot = self.slots.pop(shape, None)
        if slot is None:
            while len(self.slots) >= MAX_SLOTS:
                self.slots.popitem(last=False)  # free the least recently used first
            static = StaticKV(self.model.config, shape)
            slot = _Slot(static, _CompiledStep(self.model, static, self.options, shape.device))
        self.slots[shape] = slot
        mask = slot.static.load(start.cache, start.attention_mask)
        return _generate(slot.step, start.logits, mask, inputs.next_position, eos_ids, pad_id,
                         sampling, self.options.stop_check_every, constraint)


class _CompiledStep:
    """``(token [B], position [B], mask [B, capacity]) -> logits [B, V]``, compiled once."""

    def __init__(self, model, static: StaticKV, options: CompileOptions,
                 device: torch.device) -> None:
        embed = model.get_input_embeddings()
        cache = {cache_keyword(model): static.cache}  # looked up here: dynamo skips its memo

        def step(token: Tensor, position: Tensor, mask: Tensor) -> Tensor:
            out = model(inputs_embeds=embed(token[:, None]), attention_mask=mask,
                        position_ids=position[:, None], use_cache=True, **cache)
            return out.logits[:, -1].float()

        self.fn = torch.compile(step, fullgraph=True, dynamic=False, backend=options.backend,
                                mode=options.compile_mode(device))
        self.full_guards = options.full_guards or device.type != 'cpu'  # module doc
        self.compiled = False

    def __call__(self, token: Tensor, position: Tensor, mask: Tensor) -> Tensor:
        if self.compiled:
            if self.full_guards:
                return self.fn(token, position, mask)
            with torch.compiler.set_stance('default', skip_guard_eval_unsafe=True):
                return self.fn(token, position, mask)
        # Every step shares one code object, and dynamo keeps a few graphs per code object;
        # each model and cache shape is one graph, compiled here, at the first call.
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            logits = self.fn(token, position, mask)
        self.compiled = True
        return logits


@dataclass(frozen=True)
class _Slot:
    static: StaticKV
    step: _CompiledStep


class _StopFlag:
    """All-rows-done, read without stalling the device (module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.posted = False
        if self.cuda:
            self.host = torch.zeros((), dtype=torch.bool, pin_memory=True)
            self.event = torch.cuda.Event()

    def all_done(self, done: Tensor) -> bool:
        """
        Say whether every row is done, reading the device without stalling it.

        On CPU: ``done.all()`` now. On CUDA: the flag posted at the previous call, whose copy was
        queued before the step that is still running; then post ``done`` for the next call.
        """
        if not self.cuda:
            return bool(done.all())
        previous = False
        if self.posted:
            self.event.synchronize()
            previous = bool(self.host)
        self.host.copy_(done.all(), non_blocking=True)
        self.event.record()
        self.posted = True
        return previous


def _generate(step: _CompiledStep, first_logits: Tensor, mask: Tensor, next_position: Tensor,
              eos_ids: list[int], pad_id: int, sampling: Sampling, check_every: int,
              constraint: WaypointConstraint | None = None) -> Tensor:
    """Run the token loop of ``decode`` over the compiled step, without per-token syncs."""
    batch, device = first_logits.shape[0], first_logits.device
    total, stops = sampling.max_new_tokens, sampling.stop_at_eos
    out = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    # Row i: which rows were done before token i. The eager loop stops right after the token
    # that finishes the last row, so it emits the tokens before which some row was not done.
    done_before = torch.ones(total, batch, dtype=torch.bool, device=device)  # unreached: done
    position = next_position.clone()
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    stop = _StopFlag(device)
    logits = first_logits
    for i in range(total):
        if constraint is not None:
            logits = constraint.mask(logits, total - 1 - i)
        token = choose_token(logits, sampling, generator)
        if stops:
            done_before[i] = done
            token.masked_fill_(done, pad_id)
        if constraint is not None:
            constraint.advance(token)
        out[:, i] = token
        if i == total - 1:
            break
        if stops:
            done |= torch.isin(token, eos)
            if (i + 1) % check_every == 0 and stop.all_done(done):
                break
        logits = step(token, position, mask)
        position += 1
    if not stops:
        return out
    return out[:, :int((~done_before).any(1).sum())]


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ''
