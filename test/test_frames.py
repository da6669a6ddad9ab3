"""Synchronizer semantics, image decoding and the kept-token mosaic (no ROS needed)."""

import io

from drive_vlm_pruned.frames.approximate_sync import (
    ApproximateTimeSynchronizer,
    SyncedSet,
    synchronize,
)
from drive_vlm_pruned.frames.assembly import assemble, FrameError
from drive_vlm_pruned.frames.image_decoding import (
    decode_compressed,
    decode_raw,
    encode_raw,
    ENCODINGS,
    ImageError,
)
from drive_vlm_pruned.frames.mosaic import keep_mask, render_mosaic, token_grid
from drive_vlm_pruned.node.latest_wins import LatestWinsWorker
import numpy as np
from PIL import Image
import pytest

PERIOD = 83_333_333
MS = 1_000_000


def nuscenes_stream(sets: int, seed: int = 0, drop: float = 0.0, jitter_ms: float = 2.0):
    """(stream, stamp, (sweep, stream)) in arrival order: 6 cameras, 12 Hz, ~40 ms spread."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(sets):
        for cam in range(6):
            if rng.random() < drop:
                continue
            stamp = k * PERIOD + cam * 8 * MS + int(rng.normal(0, jitter_ms * MS))
            out.append((stamp, cam, k))
    out.sort()  # arrival in stamp order, so cameras of neighbouring sweeps interleave
    return [(cam, stamp, (k, cam)) for stamp, cam, k in out]


def test_every_nuscenes_like_set_pairs_at_the_default_slop():
    sets = synchronize(nuscenes_stream(300), 6)
    assert len(sets) == 300
    for s in sets:
        sweeps = {m[0] for m in s.messages}
        assert len(sweeps) == 1
        assert s.spread_ns < 60 * MS


def test_default_slop_never_mixes_sweeps_when_messages_drop_but_a_wide_one_does():
    stream = nuscenes_stream(300, seed=1, drop=0.05)
    tight = synchronize(stream, 6, slop_s=0.06)
    assert tight and all(len({m[0] for m in s.messages}) == 1 for s in tight)
    wide = synchronize(stream, 6, slop_s=0.12)
    assert sum(len({m[0] for m in s.messages}) > 1 for s in wide) > 0


def test_spread_must_be_strictly_below_slop_and_candidates_within_it():
    sync = ApproximateTimeSynchronizer(2, slop_s=0.01)
    assert sync.add(0, 0, 'a') is None
    assert sync.add(1, 10 * MS, 'b') is None  # spread == slop: not a set
    done = sync.add(1, 9 * MS, 'c')
    assert done.messages == ('a', 'c') and done.stamps_ns == (0, 9 * MS)
    assert sync.pending() == 1  # 'b' waits; the emitted ones left their queues


def test_closest_candidate_wins_and_repeated_stamps_replace():
    sync = ApproximateTimeSynchronizer(2, slop_s=0.05)
    sync.add(1, 0, 'far')
    sync.add(1, 30 * MS, 'near-old')
    sync.add(1, 30 * MS, 'near')  # same stamp: replaces
    done = sync.add(0, 35 * MS, 'x')
    assert done.messages == ('x', 'near')


def test_a_message_older_than_a_full_queue_is_evicted_not_emitted():
    # stamps going back (a looped bag, a sim-time reset) must not crash the synchronizer
    sync = ApproximateTimeSynchronizer(2, queue_size=3)
    for k in range(3):
        sync.add(0, (10 + k) * PERIOD, k)
    sync.add(1, 0, 'old')
    assert sync.add(0, 0, 'older') is None
    assert sync.evicted == [1, 0] and 0 in sync.queues[1]


def test_full_queues_evict_the_oldest_and_count_it():
    sync = ApproximateTimeSynchronizer(2, queue_size=3)
    for k in range(5):
        sync.add(0, k * PERIOD, k)
    assert sync.evicted == [2, 0] and sorted(sync.queues[0]) == [2 * PERIOD, 3 * PERIOD,
                                                                 4 * PERIOD]


def test_inactive_streams_are_left_out_and_waiting_sets_complete_when_one_goes_silent():
    sync = ApproximateTimeSynchronizer(3)
    assert sync.add(0, 0, 'a') is None
    assert sync.add(1, MS, 'b') is None
    completed = sync.set_active([True, True, False])
    assert len(completed) == 1
    assert completed[0].messages == ('a', 'b', None)
    assert completed[0].stamps_ns == (0, MS, None)
    assert sync.add(2, 5 * MS, 'ignored') is None
    assert sync.add(1, PERIOD + MS, 'd') is None
    assert sync.add(0, PERIOD, 'c').messages == ('c', 'd', None)
    with pytest.raises(ValueError, match='at least one True'):
        sync.set_active([False, False, False])


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_raw_encodings_round_trip_to_rgb(encoding):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    h, w, step, data = encode_raw(rgb, encoding)
    out = decode_raw(encoding, h, w, step, data)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    if encoding == 'mono8':
        assert (out[..., 0] == out[..., 1]).all()
        np.testing.assert_array_equal(out[..., 0], rgb.mean(axis=2).astype(np.uint8))
    else:
        np.testing.assert_array_equal(out, rgb)


def test_bgr8_is_swapped_and_row_padding_is_skipped():
    h, w, step = 2, 3, 12  # 9 bytes of pixels + 3 padding bytes per row
    buf = np.zeros((h, step), np.uint8)
    buf[:, :9] = np.tile([10, 20, 30], 3)  # b, g, r
    out = decode_raw('bgr8', h, w, step, buf.tobytes())
    assert (out == [30, 20, 10]).all()


@pytest.mark.parametrize('args, kind', [
    (('16UC1', 2, 2, 4, bytes(8)), 'unsupported_encoding'),
    (('rgb8', 0, 0, 0, b''), 'empty_image'),
    (('rgb8', 2, 2, 6, bytes(7)), 'truncated_image'),
    (('rgb8', 2, 2, 5, bytes(12)), 'bad_step'),
])
def test_bad_raw_images_raise_named_faults(args, kind):
    with pytest.raises(ImageError) as err:
        decode_raw(*args)
    assert err.value.kind == kind
    assert str(err.value)


def test_jpeg_and_png_decode_and_corrupt_bytes_are_named():
    rgb = np.full((8, 12, 3), (200, 40, 10), np.uint8)
    for fmt in ('JPEG', 'PNG'):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        out = decode_compressed(fmt.lower(), buf.getvalue())
        assert out.shape == (8, 12, 3)
        assert np.abs(out.astype(int) - rgb).max() <= 8
    for junk, kind in ((b'\xff\xd8\xff\xe0garbage', 'corrupt_compressed'),
                       (b'', 'empty_image')):
        with pytest.raises(ImageError) as err:
            decode_compressed('jpeg', junk)
        assert err.value.kind == kind


def test_assembly_names_the_camera_and_catches_mixed_sizes():
    class Raw:

        def __init__(self, h, w, encoding='rgb8'):
            self.encoding, self.height, self.width, self.step = encoding, h, w, 3 * w
            self.data = bytes(3 * w * h)

    names = ('A', 'B', 'C')
    ok = assemble(SyncedSet((Raw(4, 6), None, Raw(4, 6)), (5, None, 7)), names, 'q?')
    assert ok.names == ('A', 'C') and ok.missing == ('B',) and ok.stamp_ns == 5
    ok.validate(3)
    with pytest.raises(FrameError) as err:
        assemble(SyncedSet((Raw(4, 6), Raw(4, 6, 'yuv422'), Raw(4, 6)), (1, 2, 3)), names)
    assert err.value.kind == 'unsupported_encoding' and err.value.camera == 'B'
    with pytest.raises(FrameError) as err:
        assemble(SyncedSet((Raw(4, 6), Raw(8, 6), Raw(4, 6)), (1, 2, 3)), names)
    assert err.value.kind == 'mismatched_sizes' and 'B 6x8' in str(err.value)


def test_token_grids_and_the_mosaic_dim_exactly_the_pruned_patches():
    assert token_grid(729, 16 / 9) == (27, 27)
    assert token_grid(6 * 10, 10 / 6) == (6, 10)
    mask = keep_mask(4, [0, 3], (10, 10), (4, 4))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    white = np.full((20, 20, 3), 250, np.uint8)
    out = render_mosaic([white], ['CAM_FRONT'], [[0, 3]], [4], tile_hw=(4, 4))
    assert out.shape == (8, 12, 3)
    front = out[0:4, 4:8, 0]
    assert (front[mask] == 250).all() and (front[~mask] == 75).all()
    assert (out[4:, :, :] == 40).all()  # cameras not in the set stay grey


def test_latest_wins_worker_runs_the_newest_and_counts_the_replaced():
    import threading

    gate, seen = threading.Event(), []

    def handle(item):
        gate.wait(5)
        seen.append(item)

    worker = LatestWinsWorker(handle)
    worker.submit(0)
    while not worker.busy:  # the worker holds item 0 at the gate
        pass
    replaced = [worker.submit(i) for i in (1, 2, 3)]
    assert replaced == [False, True, True] and worker.dropped == 2
    gate.set()
    while not worker.idle:
        pass
    worker.stop()
    assert seen == [0, 3] and not worker.alive


def test_one_namespace_rule_for_the_node_and_the_offline_runner():
    from drive_vlm_pruned.cameras import camera_topic, namespaced

    topic = camera_topic('CAM_FRONT')
    for ns in ('/car1', 'car1', 'car1/', '/car1/'):
        assert namespaced(topic, ns) == '/car1/cam_front/image_raw'
    assert namespaced(topic, '') == namespaced(topic, '/') == topic
    assert namespaced('cam_front/image_raw', 'car1') == '/car1/cam_front/image_raw'


def test_stamps_round_trip_through_sec_and_nanosec():
    from types import SimpleNamespace

    from drive_vlm_pruned.frames.stamps import header_stamp_ns, stamp_fields

    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_123_456_789):
        fields = stamp_fields(ns)
        assert 0 <= fields['nanosec'] < 1_000_000_000
        msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(**fields)))
        assert header_stamp_ns(msg) == ns
