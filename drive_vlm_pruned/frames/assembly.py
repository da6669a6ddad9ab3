"""One synchronized set of camera messages -> the pipeline's CameraSet, or a named fault."""

from __future__ import annotations

from collections.abc import Sequence

from .approximate_sync import SyncedSet
from .image_decoding import decode_image, ImageError
from ..pipeline.camera_set import CameraSet


class FrameError(ValueError):
    """A set that cannot run: ``kind`` is the fault class, ``camera`` the view at fault."""

    def __init__(self, kind: str, camera: str | None, message: str) -> None:
        super().__init__(f'{camera}: {message}' if camera else message)
        self.kind = kind
        self.camera = camera


def assemble(synced: SyncedSet, names: Sequence[str], question: str = '') -> CameraSet:
    """
    Decode every present view of ``synced`` and build the CameraSet, stamped with CAM_FRONT.

    Views missing from the set (inactive, silent cameras) are listed in ``CameraSet.missing``;
    the set's stamp is the first present view's. All present views must share one size: six
    cameras of one rig do, and a different size means a wrong topic (FrameError says which).
    """
    images, present, missing = [], [], []
    for name, msg in zip(names, synced.messages):
        if msg is None:
            missing.append(name)
            continue
        try:
            images.append(decode_image(msg))
        except ImageError as err:
            raise FrameError(err.kind, name, str(err)) from None
        present.append(name)
    sizes = {img.shape[:2] for img in images}
    if len(sizes) > 1:
        listing = ', '.join(f'{n} {i.shape[1]}x{i.shape[0]}' for n, i in zip(present, images))
        raise FrameError('mismatched_sizes', None, (
            f'views differ in size ({listing}): every camera topic must carry the same rig '
            'resolution; check camera_topics points at the six cameras of one rig'))
    return CameraSet(synced.reference_stamp_ns, tuple(images), tuple(present), question,
                     tuple(missing))
