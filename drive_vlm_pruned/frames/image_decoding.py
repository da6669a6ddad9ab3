"""
Camera messages to RGB numpy arrays, without cv_bridge.

Works on anything shaped like ``sensor_msgs/Image`` (encoding, height, width, step, data) or
``sensor_msgs/CompressedImage`` (format, data): rclpy messages and rosbags-deserialized ones
alike. Every failure is an ``ImageError`` whose ``kind`` is a short fault name the node counts
in its diagnostics, and whose message names the problem and the fix.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

# encoding -> (channels, channel order to take RGB from)
ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    'rgb8': (3, (0, 1, 2)),
    'bgr8': (3, (2, 1, 0)),
    'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)),
    'mono8': (1, (0, 0, 0)),
}


class ImageError(ValueError):
    """A camera message that cannot become an RGB image; ``kind`` names the fault class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_raw(encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """Return the ``H x W x 3`` uint8 RGB view of a ``sensor_msgs/Image``'s fields."""
    if encoding not in ENCODINGS:
        raise ImageError('unsupported_encoding', (
            f'image encoding {encoding!r} is not supported; publish one of '
            f'{", ".join(ENCODINGS)} (or CompressedImage JPEG/PNG with use_compressed)'))
    if height <= 0 or width <= 0:
        raise ImageError('empty_image', f'image is {width} x {height}: the camera sent no pixels')
    channels, order = ENCODINGS[encoding]
    row = width * channels
    if step < row:
        raise ImageError('bad_step', (
            f'{encoding} image of width {width} has step {step} < {row} bytes per row: '
            'the publisher filled the header wrongly'))
    buf = np.frombuffer(_as_bytes(data), np.uint8)
    if buf.size < step * (height - 1) + row:
        raise ImageError('truncated_image', (
            f'{encoding} {width} x {height} image needs {step * height} bytes, got {buf.size}: '
            'the message is truncated'))
    rows = np.lib.stride_tricks.as_strided(buf, (height, row), (step, 1))
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def decode_compressed(fmt: str, data) -> np.ndarray:
    """Return the RGB array of a ``sensor_msgs/CompressedImage`` (JPEG or PNG)."""
    raw = _as_bytes(data)
    if not raw:
        raise ImageError('empty_image', 'compressed image has no data')
    try:
        with PILImage.open(io.BytesIO(raw)) as img:
            if img.format not in ('JPEG', 'PNG'):
                raise ImageError('unsupported_format', (
                    f'compressed image is {img.format} (format field {fmt!r}); '
                    'publish JPEG or PNG'))
            rgb = np.array(img.convert('RGB'))  # writable: torch.from_numpy warns otherwise
    except ImageError:
        raise
    except PILImage.DecompressionBombError as err:
        raise ImageError('image_too_large', f'compressed image refused: {err}') from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError('corrupt_compressed', (
            f'compressed image (format {fmt!r}, {len(raw)} bytes) does not decode: {err}. '
            'Check the camera driver or the bag')) from None
    if rgb.size == 0:
        raise ImageError('empty_image', 'compressed image decodes to zero pixels')
    return rgb


def decode_image(msg) -> np.ndarray:
    """Decode a raw or compressed image message to RGB (dispatch on its fields)."""
    if hasattr(msg, 'format'):
        return decode_compressed(msg.format, msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)


def encode_raw(rgb: np.ndarray, encoding: str = 'rgb8') -> tuple[int, int, int, bytes]:
    """Return (height, width, step, data) of an RGB array in ``encoding`` (inverse of decode)."""
    channels, order = ENCODINGS[encoding]
    h, w = rgb.shape[:2]
    if encoding == 'mono8':
        out = rgb.mean(axis=2).astype(np.uint8)[:, :, None]
    else:
        out = rgb[:, :, list(order)]
        if channels == 4:
            out = np.concatenate([out, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return h, w, w * channels, np.ascontiguousarray(out).tobytes()


def _as_bytes(data) -> bytes | memoryview:
    # rclpy gives array.array('B') or bytes, rosbags numpy uint8: view them all without a copy.
    if isinstance(data, (bytes, bytearray)):
        return data
    return memoryview(data).cast('B')
