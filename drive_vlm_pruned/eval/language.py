"""
Language metrics of DriveLM (tag 2): BLEU-1..4, ROUGE-L and CIDEr from the COCO caption code.

DriveLM's ``challenge/evaluation.py`` scores through ``language_evaluation.CocoEvaluator`` with
``coco_types=["BLEU", "ROUGE_L", "CIDEr"]``: every answer is tokenised by the Stanford PTB
tokenizer (Java, ``-lowerCase``, punctuation tokens dropped), then corpus BLEU (``closest``
reference length), the mean sentence ROUGE-L (beta 1.2) and CIDEr-D (idf over the scored
references) are computed. The scorers here are pycocoevalcap 1.2's own classes (Bleu, Rouge,
Cider), never re-implemented.

Tokenisation (``tokenizer``):

- ``'ptb'``: pycocoevalcap's PTBTokenizer, the official one; needs ``java`` on PATH.
- ``'simple'``: a pure-Python stand-in for machines without Java: lower-case; ``"`` dropped;
  brackets become PTB's ``-lrb-``/``-rrb-``, ``-lsb-``/``-rsb-``, ``-lcb-``/``-rcb-``; the clitics
  ``n't 's 're 've 'll 'd 'm`` split off; numbers (``-0.10``, ``1,000``, ``3.5``) and words with
  inner ``- / _ &`` and tags like ``<planning>`` kept whole; every other symbol its own token;
  then the same punctuation tokens as the PTB path are dropped. It equals PTB on plain
  sentences (test_eval_metrics checks DriveLM-style ones against Java when present); it differs
  on c-tags (PTB keeps ``,1088.3,497.5`` as one token) and on abbreviations and a letter before
  a final period (PTB keeps ``e.g.`` and ``m.`` whole).
- ``'auto'`` (default): ``'ptb'`` when ``java`` is found, else ``'simple'``. The metrics JSON
  records which one ran, so figures from different machines can be compared honestly.
"""

from __future__ import annotations

from collections.abc import Sequence
import re
import shutil

# pycocoevalcap's ptbtokenizer.PUNCTUATIONS, tokens dropped after tokenisation.
PUNCTUATIONS = frozenset(["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?',
                          '!', ',', ':', '-', '--', '...', ';'])
TOKENIZERS = ('auto', 'ptb', 'simple')
_PTB_CACHE: dict[str, str] = {}
_PTB_CACHE_SIZE = 200_000
LANGUAGE_KEYS = ('Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr')

_BRACKETS = {'(': '-lrb-', ')': '-rrb-', '[': '-lsb-', ']': '-rsb-', '{': '-lcb-', '}': '-rcb-'}
_TOKEN = re.compile(
    r"n't\b|'(?:s|re|ve|ll|d|m)\b"  # clitics, split off as PTB does
    r'|(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:-\d+(?:[.,]\d+)*)*'  # numbers, ranges (10-20)
    r"|\w+?(?=n't\b)"  # the word before n't: "don't" -> do + n't
    r'|\w+(?:[-/&]\w+)*'  # words
    r'|</?\w+>'  # markup such as <planning>, one token in PTB too
    r'|\.\.\.|--|\S'  # ellipsis, dash, any other symbol
)


def resolve_tokenizer(name: str = 'auto') -> str:
    """Return 'ptb' or 'simple' for a requested tokenizer name; ValueError if unusable."""
    if name not in TOKENIZERS:
        raise ValueError(f'tokenizer {name!r} is not one of {", ".join(TOKENIZERS)}')
    has_java = shutil.which('java') is not None
    if name == 'ptb' and not has_java:
        raise ValueError("tokenizer 'ptb' needs Java (the Stanford PTB tokenizer jar that "
                         'pycocoevalcap ships): install a JRE, or use --tokenizer simple')
    if name == 'auto':
        return 'ptb' if has_java else 'simple'
    return name


def simple_tokenize(text: str) -> str:
    """Tokenise one answer like PTB -lowerCase and drop punctuation (module doc, 'simple')."""
    tokens = []
    for token in _TOKEN.findall(text.lower().replace('"', ' ')):
        word = _BRACKETS.get(token, token)
        if word not in PUNCTUATIONS:
            tokens.append(word)
    return ' '.join(tokens)


def tokenize(texts: Sequence[str], tokenizer: str) -> list[str]:
    """Tokenise every text with ``tokenizer`` ('ptb' or 'simple'), one string each."""
    if tokenizer == 'simple':
        return [simple_tokenize(t) for t in texts]
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One JVM for all new texts (a JVM start costs ~0.3 s; scoring asks for the same texts per
    # family and per column). PTB lower-cases -LRB- to -lrb-, which its punctuation list then
    # misses, exactly as in the official evaluation.
    todo = [t for t in dict.fromkeys(texts) if t not in _PTB_CACHE]
    if todo:
        if len(_PTB_CACHE) > _PTB_CACHE_SIZE:
            _PTB_CACHE.clear()
        out = PTBTokenizer().tokenize({i: [{'caption': t}] for i, t in enumerate(todo)})
        _PTB_CACHE.update({t: out.get(i, [''])[0] for i, t in enumerate(todo)})
    return [_PTB_CACHE[t] for t in texts]


def language_scores(predictions: Sequence[str], references: Sequence[str],
                    tokenizer: str = 'simple') -> dict[str, float] | None:
    """
    Return BLEU-1..4, ROUGE-L and CIDEr over the pairs (DriveLM's ``eval_language``).

    None when there is nothing to score. ``tokenizer`` is 'ptb' or 'simple' (resolve first).
    """
    if len(predictions) != len(references):
        raise ValueError(f'{len(predictions)} predictions for {len(references)} references')
    if not predictions:
        return None
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    tokens = tokenize(list(predictions) + list(references), tokenizer)
    n = len(predictions)
    res = {i: [tokens[i]] for i in range(n)}
    gts = {i: [tokens[n + i]] for i in range(n)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    values = [*bleu, rouge, cider]
    return {key: float(v) for key, v in zip(LANGUAGE_KEYS, values)}


def language_score(scores: dict[str, float] | None) -> float | None:
    """
    Return DriveLM's language term: mean(BLEU-1..4) / 3 + ROUGE-L / 3 + CIDEr / 10 / 3.

    (evaluation.py adds each BLEU / 4 / 3, ROUGE-L / 3 and CIDEr / 10 / 3.)
    """
    if scores is None:
        return None
    bleu = sum(scores[f'Bleu_{n}'] for n in range(1, 5)) / 4
    return bleu / 3 + scores['ROUGE_L'] / 3 + scores['CIDEr'] / 10 / 3
