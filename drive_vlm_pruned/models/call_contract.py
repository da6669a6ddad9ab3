"""
The keywords we rely on when we call a transformers model and when its decoder layers call us.

transformers renames keywords between minor releases (5.24 renamed ``past_key_values`` to
``cache`` in every model forward and decoder-layer call). Nothing here depends on one spelling:
the model's own signature says which cache keyword it takes, and a hook reads whichever spelling
the layer was handed. When a layer call stops handing over something a hook reads, the error
names the transformers version and the keyword, instead of a ``NoneType`` error deep inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache as memoize
import inspect

import transformers

# Newest spelling first: where a model accepts ``cache``, we pass ``cache``.
CACHE_KEYWORDS = ('cache', 'past_key_values')


class LayerCallError(RuntimeError):
    """A decoder layer call no longer hands a forward hook what the hook reads."""


@memoize
def _cache_keyword_of(forward) -> str:
    params = inspect.signature(forward).parameters
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    raise LayerCallError(
        f'transformers {transformers.__version__}: {forward.__qualname__} takes none of the KV '
        f'cache keywords {CACHE_KEYWORDS}; drive_vlm_pruned supports the transformers versions '
        'in setup.py (install with constraints.txt)'
    )


def cache_keyword(model) -> str:
    """Return the name under which ``model.forward`` takes its KV cache."""
    return _cache_keyword_of(type(model).forward)


def cache_kwargs(model, cache) -> dict:
    """Return ``{<the model's cache keyword>: cache}`` for a call of ``model``."""
    return {cache_keyword(model): cache}


def layer_cache(kwargs: Mapping, layer: str):
    """Return the KV cache a decoder layer was called with, under either spelling."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    raise _missing(layer, ' or '.join(repr(n) for n in CACHE_KEYWORDS), kwargs)


def layer_argument(kwargs: Mapping, name: str, layer: str):
    """Return keyword ``name`` of a decoder-layer call; LayerCallError if it is not there."""
    if kwargs.get(name) is None:
        raise _missing(layer, repr(name), kwargs)
    return kwargs[name]


def require_keywords(kwargs: Mapping, names: tuple[str, ...], layer: str) -> None:
    """Check that a decoder-layer call passes ``names`` as keywords (a value may be None)."""
    absent = [n for n in names if n not in kwargs]
    if absent:
        raise _missing(layer, ' and '.join(repr(n) for n in absent), kwargs)


def _missing(layer: str, what: str, kwargs: Mapping) -> LayerCallError:
    return LayerCallError(
        f'transformers {transformers.__version__}: {layer} was called without {what} '
        f'(it got: {", ".join(sorted(k for k, v in kwargs.items() if v is not None))}), which '
        'in-LLM pruning reads; this transformers release changed the decoder-layer call. '
        'Install the tested versions (pip install -c constraints.txt -e .) or update '
        'models/layer_pruning.py for it'
    )
