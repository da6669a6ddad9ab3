"""
What in-LLM pruning reads from transformers' decoder-layer calls, checked on each family.

transformers 5.24 renamed the layers' ``past_key_values`` keyword to ``cache`` and the hooks got
None. These tests fail with the transformers version and the missing keyword when a release
stops handing the hooks what they read, so whoever upgrades learns what broke.
"""

import warnings

from conftest import random_frame
from drive_vlm_pruned.models.call_contract import (
    cache_keyword,
    CACHE_KEYWORDS,
    LayerCallError,
)
from drive_vlm_pruned.pipeline.generate import prefill
from drive_vlm_pruned.pipeline.pipeline import PrunePlan, RuntimeSettings
from drive_vlm_pruned.pruning import ViewTokens
import pytest
import torch
import transformers
from transformers import DynamicCache


def _inputs(pipeline, settings):
    adapter, frame = pipeline.adapter, random_frame(3)
    plan = PrunePlan(settings, [settings.keep_ratio])
    feats = adapter.encode(adapter.preprocess(frame.images), 1)
    tokens = ViewTokens(feats.tokens.features, frame.names)
    inputs = adapter.build_inputs(feats, plan.before_llm(tokens),
                                  [adapter.prompt(settings.question, frame.names)])
    return inputs, plan.in_llm_hooks(adapter, inputs, frame.names)


@torch.inference_mode()
def test_decoder_layers_are_called_with_what_the_hooks_read(pipeline):
    seen = {}

    def record(module, args, kwargs):
        seen.update(kwargs)

    inputs, _ = _inputs(pipeline, RuntimeSettings(keep_ratio=1.0))
    handle = pipeline.adapter.decoder_layers[1].register_forward_pre_hook(record, with_kwargs=True)
    try:
        prefill(pipeline.adapter.model, inputs)
    finally:
        handle.remove()
    version = transformers.__version__
    cache = [n for n in CACHE_KEYWORDS if isinstance(seen.get(n), DynamicCache)]
    assert cache, (f'transformers {version}: decoder layers get no KV cache under any of '
                   f'{CACHE_KEYWORDS}; got keywords {sorted(seen)}')
    pos = seen.get('position_embeddings')
    assert isinstance(pos, tuple) and len(pos) == 2, (
        f'transformers {version}: decoder layers get no (cos, sin) position_embeddings keyword; '
        f'got keywords {sorted(seen)}')
    for name in ('attention_mask', 'position_ids'):
        assert name in seen, (f'transformers {version}: decoder layers no longer get the '
                              f'{name!r} keyword; got keywords {sorted(seen)}')


def _prefill_with_cache_as(model, inputs, keyword):
    """Prefill with a fresh cache passed as ``keyword``: (positions it holds, warnings raised)."""
    cache = DynamicCache(config=model.config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                  position_ids=inputs.position_ids, use_cache=True, logits_to_keep=1,
                  **{keyword: cache})
        except TypeError:  # a forward without **kwargs refuses an unknown keyword outright
            return 0, []
    deprecations = [str(w.message) for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning))
                    and keyword in str(w.message)]
    return cache.get_seq_length(), deprecations


@torch.inference_mode()
def test_the_cache_keyword_is_the_one_the_installed_model_fills(pipeline):
    import inspect

    model = pipeline.adapter.model
    keyword = cache_keyword(model)
    version = transformers.__version__
    assert keyword in inspect.signature(type(model).forward).parameters, (
        f'transformers {version}: {type(model).__name__}.forward has no {keyword!r} parameter')
    inputs, _ = _inputs(pipeline, RuntimeSettings(keep_ratio=1.0))
    length = inputs.inputs_embeds.shape[1]
    filled, deprecated = _prefill_with_cache_as(model, inputs, keyword)
    assert filled == length, (
        f'transformers {version}: the cache passed as {keyword!r} stayed empty')
    assert not deprecated, f'transformers {version}: {keyword!r} is deprecated: {deprecated}'
    # The forwards take **kwargs: a keyword the model does not know is swallowed silently, so
    # only the filled cache shows that the keyword was the right one.
    assert _prefill_with_cache_as(model, inputs, 'kv_cache')[0] == 0
    for other in set(CACHE_KEYWORDS) - {keyword}:
        # The other spelling is either gone (the cache stays empty) or kept as a deprecated
        # alias; a release that took both without a warning would need no cache_keyword.
        filled, deprecated = _prefill_with_cache_as(model, inputs, other)
        assert filled == 0 or deprecated, (
            f'transformers {version}: {other!r} fills the cache without a deprecation warning; '
            f'is {keyword!r} still the newest spelling?')


def test_cache_keyword_prefers_the_newest_spelling_and_names_a_forward_without_one():
    class Both:

        def forward(self, inputs_embeds=None, past_key_values=None, cache=None):
            pass

    class Old:

        def forward(self, inputs_embeds=None, past_key_values=None, **kwargs):
            pass

    class Neither:

        def forward(self, inputs_embeds=None, **kwargs):
            pass

    assert cache_keyword(Both()) == 'cache'
    assert cache_keyword(Old()) == 'past_key_values'
    with pytest.raises(LayerCallError, match=f'transformers {transformers.__version__}: '
                                             r'.*Neither\.forward takes none of'):
        cache_keyword(Neither())


@torch.inference_mode()
def test_a_layer_call_without_the_cache_names_version_and_keyword(tiny_llava):
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec
    from drive_vlm_pruned.pipeline.pipeline import Pipeline

    pipeline = Pipeline(load_adapter(LoadSpec(str(tiny_llava))))
    inputs, hooks = _inputs(pipeline, RuntimeSettings(keep_ratio=0.5, pruner='fastv',
                                                      prune_layer=2))
    lm = pipeline.adapter.model.get_decoder()
    hidden = inputs.inputs_embeds
    rope = lm.rotary_emb(hidden, inputs.position_ids)
    with hooks, pytest.raises(LayerCallError) as err:
        # A layer call as a future release might make it: no cache keyword at all.
        lm.layers[1](hidden, attention_mask=None, position_ids=inputs.position_ids,
                     position_embeddings=rope)
    message = str(err.value)
    assert transformers.__version__ in message and "'cache'" in message
    assert 'decoder layer 1' in message
