"""Several questions about one CameraSet object are encoded once and answered as if alone."""

import dataclasses

from conftest import random_frame
from drive_vlm_pruned.pipeline.pipeline import RuntimeSettings


def test_items_sharing_a_frame_equal_items_with_copies_of_it(pipeline):
    frame = random_frame(21)
    other = random_frame(22)
    questions = ('What is ahead?', 'Is there a car?', 'Where is the bus?')
    settings = [RuntimeSettings(keep_ratio=r, question=q, max_new_tokens=4)
                for r, q in zip((0.1, 0.5, 0.25), questions)]
    calls = []
    encode = pipeline.adapter.encode

    def counting_encode(pixels, batch):
        calls.append(batch)
        return encode(pixels, batch)

    pipeline.adapter.encode = counting_encode
    try:
        shared = pipeline.run_batch([frame, other, frame], settings)
        assert calls == [2]  # the shared frame was encoded once
        copies = pipeline.run_batch([frame, other, dataclasses.replace(frame)], settings)
        assert calls == [2, 3]
    finally:
        del pipeline.adapter.encode
    for a, b in zip(shared, copies):
        assert a.answer == b.answer
        assert a.kept_indices == b.kept_indices
        assert a.prompt_tokens_kept == b.prompt_tokens_kept
