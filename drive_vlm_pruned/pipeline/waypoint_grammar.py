"""
Grammar-constrained decoding of the planning answer: six well-formed waypoints, then the end.

The language, which the PLANNING prompt asks for and ``format_trajectory`` writes, is
``[X,Y],[X,Y],[X,Y],[X,Y],[X,Y],[X,Y]`` followed by end-of-sequence, each number ``-?D{1,3}.D``
(metres, one decimal, no spaces), after optional leading whitespace (a tokenizer may start an
answer with a space-prefixed token). A planner downstream needs a trajectory on every frame, and a
small model at a low keep ratio sometimes writes one that does not parse (``-.6``, a number cut
in two). Decoding under the grammar is the logit masking of grammar-constrained generation
(Willard and Louf, 2023, "Efficient Guided Generation for LLMs"): before each token is chosen,
every token that would leave the language gets logit -inf. Greedy decoding therefore keeps the
model's own token wherever it is well formed and takes its best well-formed token where not, so
an answer already in the prompt's format is unchanged. (The parser, pipeline/trajectory.py,
reads more formats than this one; a checkpoint trained on another format, asked this prompt,
is steered into this one: set ``waypoint_grammar`` false for it, or ask it its own prompt.)

The rule is a finite automaton on characters, compiled once per tokenizer into one on token
ids: ``next_state[s, t]`` is the state after token ``t`` from state ``s``, or -1 where ``t``
leaves the language. Decoding then costs a few gathers and masked fills per token, on the
device, with no host sync. Rows whose question is not the PLANNING prompt sit in a free state
that allows every token, so one batch may mix planning and other questions.

The token budget is part of the rule: ``tokens_to_accept[s]`` is the fewest tokens that finish
a sentence from state ``s``, and a token is allowed only if the tokens left after it can still
finish. So whenever ``max_new_tokens`` covers the shortest sentence (``shortest_answer``: 49
tokens with the embedded model's tokenizer, which spells digits one by one), the answer is six
waypoints. A model that writes long numbers is steered to short ones as the budget runs out,
rather than cut off mid-list. The longest sentence is 95 characters (``[-123.4,-123.4]`` six
times), so the node's default budget of 96 tokens never bends a number, whatever the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import logging

import torch
from torch import Tensor

from .trajectory import WAYPOINTS
from ..models.prompts import PLANNING

_LOG = logging.getLogger(__name__)

# Per waypoint, the character positions of '[X,Y]' and the ',' after it.
_OPEN, _X, _Y, _CLOSED = 0, 1, 8, 15
_NUMBER = 7  # positions of one number: start, after '-', 1/2/3 integer digits, '.', decimal
_PHASES = 16
STATES = WAYPOINTS * _PHASES  # character states; the accept state is the last one
ACCEPT = STATES - 1
FREE = STATES  # rows that are not constrained: every token allowed, the state never changes
_DIGITS = frozenset('0123456789')
_LEADING = frozenset(' \n')  # allowed before the first '[' only
_ALPHABET = _DIGITS | frozenset('[]-,.') | _LEADING
# Word-start markers of token pieces: byte-level BPE's space and newline, SentencePiece's space.
_MARKERS = {'\u0120': ' ', '\u010a': '\n', '\u2581': ' '}


def is_planning_question(question: str) -> bool:
    """Say whether ``question`` asks for waypoints in the PLANNING prompt's format."""
    return PLANNING in question


def char_step(state: int, char: str) -> int:
    """Return the state after ``char`` from ``state``, or -1 when ``char`` leaves the language."""
    waypoint, phase = divmod(state, _PHASES)
    if state == 0 and char in _LEADING:
        return 0
    if phase == _OPEN:
        return state + 1 if char == '[' else -1
    if phase == _CLOSED:  # after ']': ',' then the next '[', or nothing after the sixth
        if waypoint < WAYPOINTS - 1 and char == ',':
            return (waypoint + 1) * _PHASES + _OPEN
        return -1
    base = _X if phase < _Y else _Y
    after = _number_step(phase - base, char)
    if after >= 0:
        return waypoint * _PHASES + base + after
    if phase - base == _NUMBER - 1:  # a complete number: ',' after X, ']' after Y
        end = ',' if base == _X else ']'
        if char == end:
            return waypoint * _PHASES + (_Y if base == _X else _CLOSED)
    return -1


def _number_step(position: int, char: str) -> int:
    """Positions in ``-?D{1,3}.D``: 0 start, 1 after '-', 2-4 after 1-3 digits, 5 '.', 6 done."""
    if position in (0, 1):
        if char == '-' and position == 0:
            return 1
        return 2 if char in _DIGITS else -1
    if position in (2, 3, 4):
        if char == '.':
            return 5
        return position + 1 if char in _DIGITS and position < 4 else -1
    if position == 5:
        return 6 if char in _DIGITS else -1
    return -1


def accepts(text: str) -> bool:
    """Say whether ``text`` is a whole sentence of the language (the tests' reference)."""
    state = 0
    for char in text:
        state = char_step(state, char)
        if state < 0:
            return False
    return state == ACCEPT


def token_table(texts: list[str | None], eos_ids: list[int], vocab: int) -> Tensor:
    """
    Compile the automaton to token ids: ``[STATES + 1, vocab]`` int32, the next state or -1.

    ``texts[t]`` is token t's text (None: a special or unusable token, never allowed in a
    constrained state); an end-of-sequence id is allowed in the accept state only.
    Raises ValueError when some state has no allowed token: the tokenizer cannot spell it.
    """
    table = torch.full((STATES + 1, vocab), -1, dtype=torch.int32)
    table[FREE] = FREE
    for token, text in enumerate(texts[:vocab]):
        if not text:  # char_step refuses any other character itself
            continue
        for state in range(STATES):
            end = state
            for char in text:
                end = char_step(end, char)
                if end < 0:
                    break
            table[state, token] = end
    for eos in eos_ids:
        if 0 <= eos < vocab:
            table[ACCEPT, eos] = ACCEPT
    stuck = [s for s in range(STATES) if not bool((table[s] >= 0).any())]
    if stuck:
        raise ValueError(f'the tokenizer cannot spell the waypoint format (no token continues '
                         f'{len(stuck)} of its {STATES} states); set waypoint_grammar to false')
    return table


def token_texts(tokenizer) -> list[str | None]:
    """
    Return each token's text where it can spell part of a sentence, else None.

    Read from the token's piece, not from a one-token decode: byte-level BPE and SentencePiece
    write printable ASCII as itself and a leading space or newline as a marker, which a
    one-token SentencePiece decode drops (a '_1' piece would then pass for '1' mid-number).
    Special tokens and pieces with any other character are None.
    """
    special = set(tokenizer.all_special_ids)
    texts: list[str | None] = []
    for token, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        text = ''.join(_MARKERS.get(c, c) for c in piece or '')
        usable = token not in special and text and set(text) <= _ALPHABET
        texts.append(text if usable else None)
    return texts


def tokens_to_accept(table: Tensor) -> Tensor:
    """Return ``[STATES + 1]``: the fewest tokens from each state to the accept state (0: free)."""
    far = 2 ** 30  # unreachable: more than any token budget
    dist = torch.full((STATES + 1,), far, dtype=torch.long)
    dist[ACCEPT] = dist[FREE] = 0
    # Only the few hundred tokens that move some state matter, not the whole vocabulary.
    table = table[:, (table[:STATES] >= 0).any(dim=0)]
    steps = table.long().clamp_min(0)
    for _ in range(STATES + 1):  # Bellman-Ford on unit edges
        through = torch.where(table >= 0, dist[steps] + 1, far).min(dim=1).values
        update = torch.minimum(dist, through)
        update[ACCEPT] = update[FREE] = 0
        if torch.equal(update, dist):
            break
        dist = update
    return dist


def shortest_answer(table: Tensor) -> int:
    """Return the fewest tokens in which this tokenizer spells a sentence of the language."""
    return int(tokens_to_accept(table.cpu())[0])


@dataclass
class WaypointConstraint:
    """The automaton's state per batch row, and the masking and step that decoding applies."""

    table: Tensor  # [STATES + 1, V] on the logits' device (token_table)
    state: Tensor  # [B] int64: 0 for a constrained row, FREE for a free one
    to_accept: Tensor  # [STATES + 1] fewest tokens to the accept state (tokens_to_accept)

    @classmethod
    def start(cls, table: Tensor, constrained: list[bool],
              to_accept: Tensor | None = None) -> WaypointConstraint:
        state = torch.tensor([0 if c else FREE for c in constrained], dtype=torch.long,
                             device=table.device)
        if to_accept is None:
            to_accept = tokens_to_accept(table.cpu())
        return cls(table, state, to_accept.to(table.device))

    def mask(self, logits: Tensor, tokens_left: int | None = None) -> Tensor:
        """
        Return ``logits`` with -inf on every token that leaves each row's language.

        ``tokens_left``: how many tokens may follow this one; a token is then allowed only if
        its state can still reach the accept state in them (unless no token of the row can:
        the budget is shorter than the shortest sentence, and the answer stays unfinished).
        """
        after = self.table[self.state]
        allowed = after >= 0
        if tokens_left is not None:
            fits = allowed & (self.to_accept[after.long().clamp_min(0)] <= tokens_left)
            allowed = torch.where(fits.any(dim=-1, keepdim=True), fits, allowed)
        return logits.masked_fill(~allowed, float('-inf'))

    def advance(self, tokens: Tensor) -> None:
        """Move each row past its chosen token (a padded finished row keeps its state)."""
        after = self.table[self.state, tokens].long()
        self.state = torch.where(after >= 0, after, self.state)


class WaypointGrammar:
    """The compiled token table of one tokenizer, built at first use and kept per device."""

    def __init__(self, tokenizer, eos_ids: list[int],
                 log: Callable[[str], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.log = log or _LOG.warning
        self.unavailable: str | None = None  # why this tokenizer decodes planning freely
        self._texts: list[str | None] | None = None
        self._tables: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def built(self, vocab: int, device: torch.device) -> bool:
        """Say whether the table for logits of width ``vocab`` on ``device`` is built."""
        return (vocab, str(device)) in self._tables

    def constraint(self, constrained: list[bool], vocab: int,
                   device: torch.device) -> WaypointConstraint | None:
        """
        Return the rows' constraint for logits of width ``vocab``.

        None if no row is constrained, or if the tokenizer cannot spell the format: that is
        logged once, and every planning answer is then decoded freely.
        """
        if not any(constrained) or not self.prepare(vocab, device):
            return None
        table, to_accept = self._tables[(vocab, str(device))]
        return WaypointConstraint.start(table, constrained, to_accept)

    def prepare(self, vocab: int, device: torch.device) -> bool:
        """Build the table for logits of width ``vocab`` on ``device``; False if unspellable."""
        key = (vocab, str(device))
        if key in self._tables or self.unavailable:
            return not self.unavailable
        if self._texts is None:
            self._texts = token_texts(self.tokenizer)
        try:
            table = token_table(self._texts, self.eos_ids, vocab)
        except ValueError as err:
            self.unavailable = str(err)
            self.log(f'waypoint_grammar is unavailable ({err}); planning answers are decoded '
                     'freely')
            return False
        self._tables[key] = (table.to(device), tokens_to_accept(table).to(device))
        return True
