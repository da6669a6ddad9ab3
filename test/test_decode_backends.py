"""
The compiled decode (static KV cache + torch.compile) against the eager reference decode.

Compiling is slow on a small CPU, so each family compiles once, with dynamo's own 'eager'
backend: the graph capture (fullgraph), the static cache and the token loop are the real ones,
and the kernels are the eager ones. One test compiles with inductor, the backend the node uses.
Nothing here depends on timing.
"""

from dataclasses import replace
import logging

from conftest import random_frame
from drive_vlm_pruned.pipeline.decoding import (
    check_decode_backend,
    CompileOptions,
    Decoder,
    resolve_decode_backend,
)
from drive_vlm_pruned.pipeline.generate import decode, prefill, Sampling
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
from drive_vlm_pruned.pipeline.static_cache import SLOT_QUANTUM
from drive_vlm_pruned.pruning import make_pruner, prune, UniformAllocator, ViewTokens
import pytest
import torch

NEW_TOKENS = 12
FRAMES = [random_frame(1), random_frame(2)]
# Two questions of different lengths and two keep ratios: the batch is left-padded.
ROWS = (('Where?', 0.1), ('What are the important objects in the current scene now?', 0.3))
# pytest captures every log record; dynamo's structured trace log writes large DEBUG ones.
logging.getLogger('torch.__trace').setLevel(logging.INFO)


def batch_settings(prune_layer: int, backend: str, **extra) -> list[RuntimeSettings]:
    pruner = 'tfps' if prune_layer == 0 else 'fastv'
    return [RuntimeSettings(keep_ratio=keep, pruner=pruner, prune_layer=prune_layer,
                            question=question, max_new_tokens=NEW_TOKENS,
                            decode_backend=backend, **extra)
            for question, keep in ROWS]


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: two threads on a small shared CPU wait on each other; restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def compiled(pipeline):
    """Wrap the same model in a pipeline whose compiled step uses dynamo's eager backend."""
    return Pipeline(pipeline.adapter, compile_options=CompileOptions(backend='eager'))


def test_compiled_greedy_equals_eager_at_layer_0_and_k_for_a_padded_batch(pipeline, compiled):
    pointers = None
    for prune_layer in (0, 2):
        eager = pipeline.run_batch(FRAMES, batch_settings(prune_layer, 'eager'))
        fast = compiled.run_batch(FRAMES, batch_settings(prune_layer, 'compiled'))
        assert [r.decode_backend for r in fast] == ['compiled', 'compiled']
        assert [r.decode_backend for r in eager] == ['eager', 'eager']
        assert eager[0].prompt_tokens_kept != eager[1].prompt_tokens_kept  # left padding
        for e, f in zip(eager, fast):
            assert f.generated_tokens == e.generated_tokens
            assert f.answer == e.answer
            assert f.kept_indices == e.kept_indices
        # The static cache is allocated at the first frame and reused by the next.
        cache = compiled.decoder.static
        if pointers is None:
            first, pointers = cache, [layer.keys.data_ptr() for layer in cache.cache.layers]
        assert cache is first
        assert [layer.keys.data_ptr() for layer in cache.cache.layers] == pointers
    assert cache.shape.capacity % SLOT_QUANTUM == 0
    assert compiled.decoder.cache_bytes == cache.nbytes > 0


def test_compiled_stops_where_eager_stops_when_rows_end_apart(pipeline, compiled):
    adapter, frame, sampling = pipeline.adapter, random_frame(3), Sampling(NEW_TOKENS)
    with torch.inference_mode():
        feats = adapter.encode(adapter.preprocess(list(frame.images) * 2), 2)
        tokens = ViewTokens(feats.tokens.features, frame.names, feats.tokens.counts)
        kept = prune(make_pruner('tfps'), tokens, [keep for _, keep in ROWS],
                     UniformAllocator())
        inputs = adapter.build_inputs(feats, kept, [adapter.prompt(q, frame.names)
                                                    for q, _ in ROWS])
        free = decode(adapter.model, prefill(adapter.model, inputs), inputs, [-1],
                      adapter.pad_token_id, sampling)
        stop = _first_token_only_row_0_emits(free)
        eager = decode(adapter.model, prefill(adapter.model, inputs), inputs, [stop],
                       adapter.pad_token_id, sampling)
        fast = compiled.decoder('compiled', prefill(adapter.model, inputs), inputs, [stop],
                                adapter.pad_token_id, sampling)
    assert fast.backend == 'compiled'
    assert (eager[0] == stop).any()
    if not torch.equal(free[0], free[1]):  # a random model may answer both rows alike
        row0_end = int((eager[0] == stop).nonzero()[0, 0])
        assert row0_end < eager.shape[1] - 1  # row 0 ended first; row 1 went on, row 0 padded
    assert torch.equal(fast.tokens, eager)


def _first_token_only_row_0_emits(free: torch.Tensor) -> int:
    """Pick an end-of-sequence id that stops row 0 at a step j >= 1 and row 1 later, if any."""
    rows = free.tolist()
    for j in range(1, len(rows[0])):
        token = rows[0][j]
        if token not in rows[0][:j] and token not in rows[1][:j + 1]:
            return token
    return rows[0][0]  # the rows answer alike: both stop at the first token


def test_sampling_draws_the_same_tokens_on_both_backends(pipeline, compiled):
    extra = {'temperature': 0.8, 'top_p': 0.9, 'seed': 7}
    eager = pipeline.run_batch(FRAMES, batch_settings(0, 'eager', **extra))
    fast = compiled.run_batch(FRAMES, batch_settings(0, 'compiled', **extra))
    assert [r.answer for r in fast] == [r.answer for r in eager]


@pytest.fixture(scope='module')
def llava(tiny_llava):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec

    return load_adapter(LoadSpec(str(tiny_llava)))


def test_a_failing_compiler_falls_back_to_eager_and_says_why(llava):
    messages, adapter = [], llava
    broken = Pipeline(adapter, log=messages.append,
                      compile_options=CompileOptions(backend='no_such_backend'))
    settings = RuntimeSettings(keep_ratio=0.1, max_new_tokens=6, decode_backend='compiled')
    first = broken.run(FRAMES[0], settings)
    again = broken.run(FRAMES[0], settings)
    reference = Pipeline(adapter).run(FRAMES[0], replace(settings, decode_backend='eager'))
    assert first.decode_backend == again.decode_backend == 'eager'
    assert first.answer == again.answer == reference.answer
    assert len(messages) == 1  # logged once, not per frame
    assert 'compiled is unavailable' in messages[0] and 'no_such_backend' in messages[0]


@pytest.mark.parametrize('full_guards', [False, True])
def test_switching_shapes_back_and_forth_keeps_compiled_equal_to_eager(pipeline, full_guards):
    """
    After a step's first call only the guards that tell graphs apart run (decoding.py doc).

    Shapes switch A, B, A, C, B (keep ratio, batch size): each frame must still run its own
    slot's graph, so every answer equals eager's, with and without the full guards.
    """
    compiled = Pipeline(pipeline.adapter,
                        compile_options=CompileOptions(backend='eager', full_guards=full_guards))
    plan = [(1.0, 1), (0.1, 1), (1.0, 1), (0.1, 2), (0.1, 1)]
    for keep, batch in plan:
        settings = [RuntimeSettings(keep_ratio=keep, max_new_tokens=6, stop_at_eos=False,
                                    question=f'q{i}')
                    for i in range(batch)]
        frames = FRAMES[:batch]
        fast = compiled.run_batch(frames, [replace(x, decode_backend='compiled')
                                           for x in settings])
        eager = pipeline.run_batch(frames, [replace(x, decode_backend='eager') for x in settings])
        assert [r.decode_backend for r in fast] == ['compiled'] * batch
        assert [r.answer for r in fast] == [r.answer for r in eager], (keep, batch)
    # batch 1 and batch 2 are two slots at least (keep ratios share one where their cache
    # capacities round to the same quantum), so frames switched between graphs
    assert len(compiled.decoder.slots) >= 2


def test_inductor_compiled_decode_equals_eager(llava):
    """Compile with the backend the node runs: inductor (C++ kernels on CPU), once."""
    adapter = llava
    settings = batch_settings(2, 'compiled')
    fast = Pipeline(adapter).run_batch(FRAMES, settings)
    eager = Pipeline(adapter).run_batch(FRAMES, [replace(s, decode_backend='eager')
                                                 for s in settings])
    assert [r.decode_backend for r in fast] == ['compiled', 'compiled']
    assert [r.answer for r in fast] == [r.answer for r in eager]


def test_warm_up_compiles_before_the_first_frame_only_for_the_compiled_backend(pipeline,
                                                                               compiled):
    assert pipeline.warm_up(RuntimeSettings(decode_backend='auto')) == 'eager'  # CPU: no run
    assert not pipeline.decoder.slots
    settings = RuntimeSettings(keep_ratio=0.1, max_new_tokens=4, decode_backend='compiled')
    assert compiled.warm_up(settings) == 'compiled'
    assert compiled.decoder.static.shape.batch == 1


def test_backend_names_and_the_auto_rule(pipeline):
    assert resolve_decode_backend('auto', torch.device('cpu')) == 'eager'
    assert resolve_decode_backend('auto', torch.device('cuda')) == 'compiled'
    assert resolve_decode_backend('compiled', torch.device('cpu')) == 'compiled'
    with pytest.raises(ValueError, match='eager, compiled'):
        check_decode_backend('fast')
    with pytest.raises(ValueError, match='decode_backend'):
        RuntimeSettings(decode_backend='fast').validate(4)
    with pytest.raises(ValueError, match='decode_backend'):
        pipeline.run_batch(FRAMES, [RuntimeSettings(), RuntimeSettings(decode_backend='eager')])
    assert Decoder(pipeline.adapter.model).cache_bytes == 0  # nothing allocated before a frame
