"""
What in-LLM pruning reads from transformers' decoder-layer calls, checked on each family.

transformers 5.24 renamed the layers' ``past_key_values`` keyword to ``cache`` and the hooks got
None. These tests fail with the transformers version and the missing keyword when a release
stops handing the hooks what they read, so whoever upgrades learns what broke.
"""

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


def test_the_model_takes_its_cache_under_the_newest_spelling_it_knows(pipeline):
    import inspect

    params = inspect.signature(pipeline.adapter.model.forward).parameters
    want = 'cache' if 'cache' in params else 'past_key_values'
    assert cache_keyword(pipeline.adapter.model) == want


@torch.inference_mode()
def test_a_layer_call_without_the_cache_names_version_and_keyword(tiny_llava):
    from drive_vlm_pruned.models.load import load_adapter
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
