"""
Our per-family exact-match rule for closed-form answers (shared docs/eval.md, "Exact-match").

Yes/no, counts, distance bands, option letters and fixed action phrases are compared after
normalising both answers: lower case, number words zero..twenty read as numbers, every number
taken out, punctuation dropped, whitespace collapsed. The remaining words must be equal, and the
numbers equal in count and each within ``|pred - truth| <= 0.01 + 0.01 |truth|`` (so ``3`` =
``3.0`` = ``three``, and 2-decimal rounding passes; ``10-20 m`` reads as the numbers 10 and 20).
So ``"Yes."`` = ``"yes"`` and ``"B"`` = ``"B."``, which DriveLM's strict accuracy does not allow.
"""

from __future__ import annotations

import re

ABS_TOLERANCE = 0.01
REL_TOLERANCE = 0.01
NUMBER_WORDS = {w: i for i, w in enumerate(
    'zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen '
    'fifteen sixteen seventeen eighteen nineteen twenty'.split())}
_NUMBER = re.compile(r'(?<![\w.])-?\d+(?:\.\d+)?|\d+(?:\.\d+)?')
_WORD = re.compile(r'[a-z_]+|#')


def normalise(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Return the words (numbers replaced by '#') and the numbers of an answer."""
    text = text.lower()
    text = re.sub(r'\b(' + '|'.join(NUMBER_WORDS) + r')\b',
                  lambda m: str(NUMBER_WORDS[m.group(1)]), text)
    numbers = tuple(float(n) for n in _NUMBER.findall(text))
    words = tuple(_WORD.findall(_NUMBER.sub(' # ', text)))
    return words, numbers


def answers_match(prediction: str, truth: str) -> bool:
    """Apply the module's rule: same words, numbers within tolerance."""
    pw, pn = normalise(prediction)
    tw, tn = normalise(truth)
    if pw != tw or len(pn) != len(tn):
        return False
    return all(abs(p - t) <= ABS_TOLERANCE + REL_TOLERANCE * abs(t) for p, t in zip(pn, tn))
