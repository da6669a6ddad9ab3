"""
The waypoint grammar: its language, its token automaton, and decoding under it.

The strongest check is an untrained tiny model: free, its planning answers are noise; under the
grammar, every one parses into six waypoints, on the eager and the compiled decoder alike.
"""

from dataclasses import replace
import logging

from conftest import random_frame
from drive_vlm_pruned.models.prompts import PLANNING
from drive_vlm_pruned.pipeline.decoding import CompileOptions
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
from drive_vlm_pruned.pipeline.trajectory import format_trajectory, parse_trajectory
from drive_vlm_pruned.pipeline.waypoint_grammar import (
    ACCEPT,
    accepts,
    FREE,
    is_planning_question,
    token_table,
    token_texts,
    WaypointConstraint,
)
import numpy as np
import pytest
import torch

logging.getLogger('torch.__trace').setLevel(logging.INFO)
PLAN = 'The ego vehicle moved 4.0 m forward in the last 0.5 s. ' + PLANNING


@pytest.fixture(scope='module')
def tiny(tiny_llava):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec

    return Pipeline(load_adapter(LoadSpec(str(tiny_llava))))


def test_every_formatted_trajectory_is_in_the_language_and_parses_back():
    rng = np.random.default_rng(0)
    for _ in range(200):
        points = tuple((float(x), float(y)) for x, y in rng.uniform(-150, 150, (6, 2)))
        text = format_trajectory(points)
        assert accepts(text), text
        parsed = parse_trajectory(text)
        assert parsed.ok and np.allclose(parsed.points, points, atol=0.051)


@pytest.mark.parametrize('text', [
    '[1.0,-.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0]',  # the keep-0.1 failure
    '[1.0,0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0]',  # five waypoints
    '[1.0,0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0],',  # a seventh begun
    '[1.0, 0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0]',  # a space
    '[1000.0,0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0]',  # four digits
    '[1,0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0]',  # no decimal
])
def test_the_language_rejects_what_the_prompt_does_not_ask_for(text):
    assert not accepts(text)


def test_only_the_planning_prompt_is_constrained():
    assert is_planning_question(PLAN)
    assert not is_planning_question('Is there a car in CAM_FRONT?')


def test_random_walks_through_the_token_table_end_in_a_parsed_trajectory(tiny):
    """Sample 64 answers from random logits under the constraint: each is a sentence."""
    tokenizer = tiny.adapter.tokenizer
    eos = tiny.adapter.eos_token_ids
    texts = token_texts(tokenizer)
    table = token_table(texts, eos, len(tokenizer))
    constraint = WaypointConstraint.start(table, [True] * 64)
    generator = torch.Generator().manual_seed(0)
    rows: list[list[int]] = [[] for _ in range(64)]
    for _ in range(200):
        logits = constraint.mask(torch.randn(64, len(tokenizer), generator=generator))
        token = torch.distributions.Categorical(logits=logits).sample()
        constraint.advance(token)
        for row, t in zip(rows, token.tolist()):
            if not row or row[-1] not in eos:
                row.append(t)
        if all(row[-1] in eos for row in rows):
            break
    for row in rows:
        assert row[-1] in eos
        text = tokenizer.decode(row[:-1])
        assert accepts(text) and parse_trajectory(text).ok, text
    assert bool((constraint.state == ACCEPT).all())


def test_a_well_formed_answer_is_never_changed():
    """Where the model's own token is in the language, masking leaves the argmax alone."""
    from drive_vlm_pruned.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    eos = [tokenizer.eos_token_id]
    table = token_table(token_texts(tokenizer), eos, len(tokenizer))
    answer = format_trajectory(((4.1, 0.0), (8.3, -0.2), (12.6, -0.5), (16.9, -1.1),
                                (21.2, -1.8), (125.4, -12.7)))
    ids = tokenizer.encode(answer) + eos
    constraint = WaypointConstraint.start(table, [True, False])
    for t in ids:
        logits = torch.full((2, len(tokenizer)), -5.0)
        logits[:, t] = 5.0
        chosen = constraint.mask(logits).argmax(-1)
        assert chosen.tolist() == [t, t]
        constraint.advance(chosen)
    assert constraint.state.tolist() == [ACCEPT, FREE]


def test_a_tokenizer_that_cannot_spell_the_format_gets_a_clear_error():
    texts = [None, '[', ']', ',', '.', '-'] + [None] * 4  # no digits
    with pytest.raises(ValueError, match='cannot spell the waypoint format.*waypoint_grammar'):
        token_table(texts, [0], len(texts))


def test_an_untrained_model_plans_parseable_trajectories_only_under_the_grammar(tiny):
    frames = [random_frame(seed) for seed in range(4)]
    free = RuntimeSettings(keep_ratio=0.1, question=PLAN, max_new_tokens=80,
                           waypoint_grammar=False)
    loose = [tiny.run(f, free) for f in frames]
    assert not any(r.trajectory.ok for r in loose)  # the baseline the grammar must beat
    held = [tiny.run(f, RuntimeSettings(keep_ratio=0.1, question=PLAN, max_new_tokens=80))
            for f in frames]
    assert all(r.waypoint_grammar and r.trajectory.ok and accepts(r.answer) for r in held)


def test_compiled_decode_under_the_grammar_equals_eager_in_a_mixed_batch(tiny):
    """One planning row (constrained), one other question (free), left-padded together."""
    compiled = Pipeline(tiny.adapter, compile_options=CompileOptions(backend='eager'))
    frame = random_frame(7)
    rows = [RuntimeSettings(keep_ratio=0.3, question=PLAN, max_new_tokens=70),
            RuntimeSettings(keep_ratio=0.3, question='Where?', max_new_tokens=70)]
    eager = tiny.run_batch([frame, frame], [_with(s, 'eager') for s in rows])
    fast = compiled.run_batch([frame, frame], [_with(s, 'compiled') for s in rows])
    assert [r.decode_backend for r in fast] == ['compiled', 'compiled']
    assert [r.answer for r in fast] == [r.answer for r in eager]
    assert [r.waypoint_grammar for r in eager] == [True, False]
    assert eager[0].trajectory.ok
    unconstrained = tiny.run_batch([frame, frame], [_with(s, 'eager', grammar=False)
                                                    for s in rows])
    assert unconstrained[1].answer == eager[1].answer  # the free row is not touched
    assert not unconstrained[0].trajectory.ok


def _with(settings: RuntimeSettings, backend: str, grammar: bool = True) -> RuntimeSettings:
    return replace(settings, decode_backend=backend, waypoint_grammar=grammar)


def test_a_budget_of_the_shortest_sentence_still_ends_in_six_waypoints(tiny):
    """max_new_tokens = the fewest tokens of a sentence: the budget rule still finishes it."""
    from drive_vlm_pruned.pipeline.waypoint_grammar import shortest_answer

    table = token_table(token_texts(tiny.adapter.tokenizer), tiny.adapter.eos_token_ids,
                        len(tiny.adapter.tokenizer))
    budget = shortest_answer(table)
    assert 6 <= budget <= 95  # at least a token a waypoint, at most a token a character
    for backend in ('eager', 'compiled'):
        short = RuntimeSettings(keep_ratio=0.1, question=PLAN, max_new_tokens=budget,
                                decode_backend=backend)
        result = Pipeline(tiny.adapter, compile_options=CompileOptions(backend='eager')).run(
            random_frame(3), short)
        assert result.trajectory.ok and accepts(result.answer), result.answer
        free = tiny.run(random_frame(3), replace(short, waypoint_grammar=False,
                                                 decode_backend='eager'))
        assert not free.trajectory.ok


def test_leading_whitespace_is_allowed_before_the_first_waypoint_only():
    text = '[1.0,0.6],[2.0,0.0],[3.0,0.0],[4.0,0.0],[5.0,0.0],[6.0,0.0]'
    assert accepts(' ' + text) and accepts('\n ' + text)
    assert not accepts(text.replace('],[2.0', '], [2.0'))


def test_word_start_pieces_spell_their_space_and_fit_only_before_the_first_waypoint():
    from tokenizers import models, Tokenizer
    from transformers import PreTrainedTokenizerFast

    pieces = ['<eos>', '[', ']', ',', '.', '-', '\u0120[', '\u01201'] + list('0123456789')
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)},
                                                    unk_token='<eos>')),
        eos_token='<eos>')
    texts = token_texts(tokenizer)
    assert texts[0] is None and texts[6] == ' [' and texts[7] == ' 1'
    table = token_table(texts, [0], len(pieces))
    assert table[0, 6] == 1  # ' [' opens the first waypoint
    assert bool((table[1:FREE, 6] < 0).all()) and bool((table[:FREE, 7] < 0).all())


def test_a_tokenizer_that_cannot_spell_the_format_decodes_freely_and_says_so_once():
    from drive_vlm_pruned.pipeline.waypoint_grammar import WaypointGrammar
    from tokenizers import models, Tokenizer
    from transformers import PreTrainedTokenizerFast

    pieces = ['<eos>', '[', ']', ',', '.', '-', 'x']  # no digits
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)},
                                                    unk_token='x')),
        eos_token='<eos>')
    messages: list[str] = []
    grammar = WaypointGrammar(tokenizer, [0], messages.append)
    for _ in range(2):
        assert grammar.constraint([True, False], len(pieces), torch.device('cpu')) is None
    assert len(messages) == 1 and 'decoded freely' in messages[0]
    assert 'cannot spell' in grammar.unavailable


def test_a_failing_compiler_falls_back_with_the_grammar_state_it_started_from(tiny):
    messages: list[str] = []
    broken = Pipeline(tiny.adapter, log=messages.append,
                      compile_options=CompileOptions(backend='no_such_backend'))
    settings = RuntimeSettings(keep_ratio=0.1, question=PLAN, max_new_tokens=80,
                               decode_backend='compiled')
    fell_back = broken.run(random_frame(5), settings)
    reference = tiny.run(random_frame(5), replace(settings, decode_backend='eager'))
    assert fell_back.decode_backend == 'eager' and 'compiled is unavailable' in messages[0]
    assert fell_back.answer == reference.answer and fell_back.trajectory.ok


def test_sampled_plans_with_top_p_parse_under_the_grammar(tiny):
    for seed in range(3):
        sampled = RuntimeSettings(keep_ratio=0.1, question=PLAN, max_new_tokens=80,
                                  temperature=1.0, top_p=0.9, seed=seed)
        result = tiny.run(random_frame(seed), sampled)
        assert result.trajectory.ok and accepts(result.answer), result.answer


def test_warm_up_builds_the_table_a_planning_node_will_use(tiny):
    fresh = Pipeline(tiny.adapter)
    width = tiny.adapter.model.get_output_embeddings().weight.shape[0]
    assert not fresh.grammar.built(width, tiny.adapter.device)
    fresh.warm_up(RuntimeSettings(question=PLAN, decode_backend='eager'))
    assert fresh.grammar.built(width, tiny.adapter.device)
    other = Pipeline(tiny.adapter)
    other.warm_up(RuntimeSettings(question='Where?', decode_backend='eager'))
    assert not other.grammar.built(width, tiny.adapter.device)
