"""Region detectors for protected releases: faces (OpenCV Haar cascade) and people (OpenCV HOG).

Both run on the ORIGINAL (private) image, so the boxes they return depend on it. A protected release that uses them
(:class:`ProtectDetected`, ``dp-pixel --protect faces``) discloses the region positions, and its guarantee holds
CONDITIONAL on them (``region_from="detector"``). A face or person the detector misses is NOT protected beyond the
``m`` pixels of the ordinary cells: the protection is only as good as the detector's recall (measured by
``benchmarks/face_detector_recall.py``). OpenCV is imported on first use (the ``[video]`` extra); nothing is
downloaded: the cascade ships inside the OpenCV wheel.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import numpy as np
import torch

from ._validation import check_boxes
from .accounting import PrivacyAccountant, PrivacyGuarantee
from .mechanisms import RegionAdaptiveDPPixelize
from .noise import Randomness
from .partitions import GridPartition, region_cells
from .storage import NoisyGrid
from .video import import_cv2, to_bgr

#: The Haar cascade of :func:`detect_faces`. Of the frontal cascades in the OpenCV wheel, alt2 found the most faces in
#: our offline measurement (LFW crops, the astronaut) and is trained on 20×20 windows, so it still sees faces of
#: 20–24 pixels, where the 24×24 ``default`` cascade finds none.
FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
#: Growth of a face box on each side, as a fraction of its width (height): a Haar box holds the inner face, brows to
#: mouth; 0.25 per side (a box 1.5× as wide and high) reaches the hair, ears and chin.
FACE_MARGIN = 0.25
#: Growth of a HOG person box on each side: its 64×128 window already holds the body with a border, 0.1 adds room
#: for arms and a misplaced window.
PEOPLE_MARGIN = 0.1


def _check_frame(frame: torch.Tensor) -> None:
    if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[0] != 3:
        found = f"{frame.dtype} {tuple(frame.shape)}" if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"detectors take one uint8 RGB frame [3, H, W], got {found}")


def _xyxy(rects) -> torch.Tensor:
    """OpenCV ``(x, y, w, h)`` rectangles as float32 ``[K, 4]`` XYXY boxes."""
    boxes = torch.tensor(np.asarray(rects, dtype=np.float32)).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


@functools.cache
def _cascade(name: str):
    cv2 = import_cv2()
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
    if cascade.empty():
        raise ValueError(f"no Haar cascade {name!r} in OpenCV's {cv2.data.haarcascades}")
    return cascade


def detect_faces(frame: torch.Tensor, *, cascade: str = FACE_CASCADE) -> torch.Tensor:
    """Frontal faces in one uint8 RGB frame ``[3, H, W]``: float32 ``[K, 4]`` XYXY pixel boxes (K may be 0).

    OpenCV's Haar ``cascade`` (a file name in ``cv2.data.haarcascades``) at scale step 1.1 with 3 neighbours, on the
    grey image. It finds upright, roughly frontal faces of 20 pixels or more; profiles, tilted or covered faces,
    and faces smaller than that are missed, and a missed face gets only the ``m`` protection.
    """
    _check_frame(frame)
    cv2 = import_cv2()
    grey = cv2.cvtColor(frame.permute(1, 2, 0).contiguous().cpu().numpy(), cv2.COLOR_RGB2GRAY)
    return _xyxy(_cascade(cascade).detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3))


def detect_people(frame: torch.Tensor) -> torch.Tensor:
    """OpenCV's HOG people detector on one uint8 RGB frame ``[3, H, W]``: float32 ``[K, 4]`` XYXY boxes.

    It finds upright, whole people of about 128 pixels tall or more; sitting, partly hidden or small people are missed.
    A frame smaller than the 64×128 detection window holds no detection (OpenCV would crash on it).
    """
    _check_frame(frame)
    if frame.shape[-2] < 128 or frame.shape[-1] < 64:
        return torch.zeros(0, 4)
    cv2 = import_cv2()
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    rects, _ = hog.detectMultiScale(to_bgr(frame), winStride=(8, 8))
    return _xyxy(rects)


def _check_margin(margin: float) -> None:
    if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")


def dilate_boxes(boxes: torch.Tensor, margin: float, height: int, width: int) -> torch.Tensor:
    """Grow XYXY ``boxes [K, 4]`` by ``margin`` × their width (height) on each side, clipped to a ``height×width``
    image: float32 ``[K, 4]``. The margin covers what a detector box leaves out (hair, ears, chin for a face). A box
    that covers no pixel of the image is refused (:func:`~dp_pixel_torch._validation.check_boxes`): it would protect
    nothing."""
    _check_margin(margin)
    boxes = check_boxes(boxes, height, width)
    grow = (boxes[:, 2:] - boxes[:, :2]) * margin
    limit = torch.tensor([width, height], dtype=boxes.dtype)
    low = (boxes[:, :2] - grow).clamp(min=0).minimum(limit)
    high = (boxes[:, 2:] + grow).clamp(min=0).minimum(limit)
    return torch.cat([low, high], dim=1).float()


def boxes_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool ``[height, width]``: the pixels whose centre lies inside one of the XYXY ``boxes [K, 4]``, the pixels
    ``boxes=`` marks in the layers (a box that covers none is refused)."""
    return region_cells(GridPartition.blocks(height, width, 1), None, boxes, ())


class ProtectDetected:
    """A protected release whose regions a detector finds in each ORIGINAL image or frame.

    Every frame gets its own boxes (``detector``, grown by ``margin`` with :func:`dilate_boxes`); the coarsest cells
    of ``layer`` that meet them are released whole with the protected scale. ``layer`` must be a
    :class:`~dp_pixel_torch.RegionAdaptiveDPPixelize` with ``protect=True, region_from="detector"``, so that its
    guarantee says it holds CONDITIONAL on the disclosed boxes and that a missed region gets only ``m``. Its
    accountant is charged once per frame. Counts, of released frames only (a release the accountant refuses counts
    nothing): ``frames`` released, ``found`` boxes, ``frames_with`` frames with at least one box.

    Works with :func:`~dp_pixel_torch.video.sanitize_stream` as its ``layer``.
    """

    def __init__(
        self,
        layer: RegionAdaptiveDPPixelize,
        detector: Callable[[torch.Tensor], torch.Tensor] = detect_faces,
        margin: float = FACE_MARGIN,
    ) -> None:
        g = getattr(layer, "guarantee", None)
        if not isinstance(layer, RegionAdaptiveDPPixelize) or not g.protect or g.region_from != "detector":
            raise ValueError('ProtectDetected needs RegionAdaptiveDPPixelize(protect=True, region_from="detector")')
        _check_margin(margin)
        self.layer, self.detector, self.margin = layer, detector, margin
        self.frames = self.found = self.frames_with = 0

    @property
    def guarantee(self) -> PrivacyGuarantee:
        """The layer's guarantee per image or frame, conditional on the disclosed detections."""
        return self.layer.guarantee

    @property
    def accountant(self) -> PrivacyAccountant | None:
        return self.layer.accountant

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The grown detector regions of uint8 RGB frames ``x [..., 3, H, W]``: bool ``[..., H, W]`` on ``x``'s device."""
        return self._detect(x)[0]

    def _detect(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """:meth:`masks` and the number of boxes found in each frame."""
        height, width = x.shape[-2:]
        masks, found = [], []
        for frame in x.reshape(-1, *x.shape[-3:]):
            boxes = self.detector(frame)
            found.append(len(boxes))
            masks.append(boxes_mask(dilate_boxes(boxes, self.margin, height, width), height, width))
        return torch.stack(masks).reshape(*x.shape[:-3], height, width).to(x.device), found

    def _count(self, found: list[int]) -> None:
        self.frames += len(found)
        self.found += sum(found)
        self.frames_with += sum(n > 0 for n in found)

    def release(self, x: torch.Tensor, *, generator: Randomness = None) -> NoisyGrid:
        """Release uint8 RGB frames ``x [..., 3, H, W]``, each protected where its own detections lie (``generator``:
        as for the layer's ``release``)."""
        masks, found = self._detect(x)
        released = self.layer.release(x, mask=masks, generator=generator)
        self._count(found)
        return released

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The released uint8 image(s) of ``x [..., 3, H, W]``, same shape."""
        masks, found = self._detect(x)
        released = self.layer.released_image(x, mask=masks)
        self._count(found)
        return released
