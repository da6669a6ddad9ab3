"""
The text tokenizer of a model trained from scratch: byte-level BPE over the QA vocabulary.

Trained on the questions and answers of the TRAIN split plus the prompt template (system turn,
six-view preamble, planning and DriveLM questions), so that QA words are single tokens. Digits
are split one per token before BPE runs (as Qwen2's pre-tokenizer does), so every number is its
digits in order and waypoints can be learned digit by digit. Byte-level decoding gives back the
exact answer string. Special tokens are those of the tiny checkpoints (models/tiny.py): the chat
markers and the image placeholders, with ``<|im_end|>`` as end of turn and ``<|endoftext|>`` as
padding.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..cameras import NUSCENES_CAMERAS
from ..models.base import SYSTEM
from ..models.prompts import (
    DRIVELM_QA,
    IMAGE_MARK,
    PLANNING,
    PROMPT_FORMATS,
    six_view_text,
    user_text,
)
from ..models.tiny import SPECIAL_TOKENS

CHAT_TEXT = (SYSTEM, '<|im_start|>user\n', '<|im_end|>\n<|im_start|>assistant\n')


def template_texts(prompt_format: str = 'default') -> list[str]:
    """Return the fixed prompt text every sample carries (system turn, preamble, questions)."""
    if prompt_format == 'default':
        views = list(six_view_text(NUSCENES_CAMERAS))
    else:
        views = user_text(PROMPT_FORMATS[prompt_format], NUSCENES_CAMERAS, '').split(IMAGE_MARK)
    return [*CHAT_TEXT, *views, DRIVELM_QA, PLANNING]


def train_tokenizer(texts: Iterable[str], vocab_size: int, prompt_format: str = 'default'):
    """
    Train the BPE tokenizer on ``texts`` (QA of the train split) plus the template.

    ``prompt_format``: the model's view preamble (models/prompts.py), part of the template.

    ``vocab_size`` is an upper bound; merges stop when no pair occurs twice. The result is a
    ``PreTrainedTokenizerFast`` that ``save_pretrained`` writes and ``AutoTokenizer`` loads.
    """
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # The template is repeated so its words always earn merges, however small the split.
    corpus = [*template_texts(prompt_format) * 4, *texts]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>',
                                   pad_token='<|endoftext|>', model_max_length=1 << 16)


def check_round_trip(tokenizer, texts: Iterable[str]) -> None:
    """Raise ValueError if decoding the tokens of a text does not give the text back."""
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        back = tokenizer.decode(ids, skip_special_tokens=True)
        if back != text:
            raise ValueError(f'the tokenizer does not round-trip {text!r} (got {back!r}); '
                             'answers must decode to exactly their text')
