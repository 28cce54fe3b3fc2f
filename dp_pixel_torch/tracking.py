"""Temporal persistence of protected regions in video: a region found at frame t stays protected for frames t-k..t+k,
and a tracker carries each region through the frames between its detections.

Privacy meaning: a detector that blinks for a frame would release that frame's face with only the ``m`` protection;
persistence and tracking close such gaps, at the cost of protecting some cells that hold nobody. What they add is
still derived from detections in the ORIGINAL frames: it is part of the disclosed region map, and the guarantee stays
CONDITIONAL on it. Frame t needs the detections of frames up to t+k, so a stream is released k frames behind its
input (:class:`~dp_pixel_torch.detectors.ProtectDetected` holds those k frames, no more).

Boxes are float ``[K, 4]`` XYXY pixels; masks bool ``[H, W]``; frames are counted from 0 in stream order.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torchvision.ops import box_iou

from ._validation import box_pixels

#: Seconds a region stays protected before and after each detection (``dp-pixel --protect-persist``): at 25 fps, 13
#: frames each side, enough for the gaps of a Haar or HOG detector on a person who turns or is partly hidden.
PERSIST = 0.5
#: IoU a detection needs with a track's predicted box to continue that track.
MIN_IOU = 0.1
#: The largest persistence ``k`` in frames: a stream is released ``k`` frames behind its input and holds them (and
#: the masks of ``2k + 1`` frames), so 300 frames of 1080p hold about 3 GB. It allows :data:`PERSIST` up to 600 fps
#: and 10 s at 30 fps.
MAX_PERSIST_FRAMES = 300


def persist_frames(seconds: float, fps: float) -> int:
    """The persistence ``k`` in frames: ``ceil(seconds·fps)``, so that at least ``seconds`` are covered; at most
    :data:`MAX_PERSIST_FRAMES`."""
    for value, name in ((seconds, "persist"), (fps, "fps")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0 (fps: frames per second), got {value!r}")
    if fps == 0 and seconds > 0:
        raise ValueError("fps must be > 0 to turn persist seconds into frames")
    if seconds * fps > MAX_PERSIST_FRAMES:
        raise ValueError(
            f"persist × fps must be at most {MAX_PERSIST_FRAMES} frames (the frames a stream holds back; persist is "
            f"dp-pixel --protect-persist), got persist={seconds!r} s at fps={fps!r}"
        )
    return math.ceil(seconds * fps - 1e-9) if seconds else 0


def line_box(first: tuple[int, torch.Tensor], second: tuple[int, torch.Tensor], t: int) -> torch.Tensor:
    """The box at frame ``t`` on the line through two detections ``(frame, box [4])`` of one track: interpolated
    between them, extrapolated at constant velocity outside."""
    (t0, b0), (t1, b1) = first, second
    return b0 + (b1 - b0) * ((t - t0) / (t1 - t0))


def track_boxes(points: list[tuple[int, torch.Tensor]], t: int, k: int) -> list[torch.Tensor]:
    """The boxes ``[4]`` that protect frame ``t`` from one track's detections ``points`` (``(frame, box)``, in frame
    order): every detection within ``k`` frames (persistence), the interpolation between the detections on either side
    of ``t``, or, within ``k`` frames before the first or after the last detection, the extrapolation of the first
    (last) two. A box may leave the image; :func:`paint_boxes` clips it."""
    boxes = [box for s, box in points if abs(s - t) <= k]
    times = [s for s, _ in points]
    if len(points) < 2 or t in times:
        return boxes
    if times[0] < t < times[-1]:
        after = next(i for i, s in enumerate(times) if s > t)
        boxes.append(line_box(points[after - 1], points[after], t))
    elif 0 < t - times[-1] <= k:
        boxes.append(line_box(points[-2], points[-1], t))
    elif 0 < times[0] - t <= k:
        boxes.append(line_box(points[0], points[1], t))
    return boxes


def match(predicted: torch.Tensor, boxes: torch.Tensor, min_iou: float = MIN_IOU) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of ``predicted [N, 4]`` to ``boxes [M, 4]`` by IoU, highest first, each pair at
    least ``min_iou``: ``[(n, m), ...]``."""
    if not len(predicted) or not len(boxes):
        return []
    iou = box_iou(predicted.double(), boxes.double())
    pairs = []
    while True:
        best = int(iou.argmax())
        n, m = divmod(best, iou.shape[1])
        if iou[n, m] < min_iou:
            return pairs
        pairs.append((n, m))
        iou[n, :] = -1
        iou[:, m] = -1


def paint_boxes(boxes: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Bool ``[height, width]``: the pixels whose centre lies in one of ``boxes`` (each ``[4]``), clipped to the
    image; a box that holds no pixel centre paints nothing."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    if boxes:
        stacked = torch.stack([b.double() for b in boxes])
        for c0, r0, c1, r1 in box_pixels(stacked, height, width).tolist():
            mask[r0:r1, c0:c1] = True
    return mask


class Tracker:
    """The tracks of one box source: each frame's boxes continue the tracks whose constant-velocity prediction they
    overlap (IoU ≥ ``min_iou``, within ``2k`` frames of the track's last detection) or start new ones.
    :meth:`boxes_at` gives the boxes of :func:`track_boxes` for a frame at most ``k`` behind the last update; tracks
    and detections that can no longer reach such a frame are dropped, so memory stays bounded."""

    def __init__(self, k: int, min_iou: float = MIN_IOU) -> None:
        self.k, self.min_iou = k, min_iou
        self.tracks: list[list[tuple[int, torch.Tensor]]] = []

    def update(self, t: int, boxes: torch.Tensor) -> None:
        """Add frame ``t``'s detections ``boxes [K, 4]`` (frames in increasing order)."""
        k = self.k
        self.tracks = [track for track in self.tracks if track[-1][0] >= t - 2 * k]  # last detection still in reach
        for track in self.tracks:  # keep the last two and what interpolation for frames >= t - k may still need
            while len(track) > 2 and track[1][0] < t - 3 * k - 1:
                track.pop(0)
        predicted = [line_box(track[-2], track[-1], t) if len(track) > 1 else track[-1][1] for track in self.tracks]
        pairs = match(torch.stack(predicted) if predicted else torch.zeros(0, 4), boxes, self.min_iou)
        for n, m in pairs:
            self.tracks[n].append((t, boxes[m].double()))
        matched = {m for _, m in pairs}
        self.tracks += [[(t, box.double())] for m, box in enumerate(boxes) if m not in matched]

    def boxes_at(self, t: int) -> list[torch.Tensor]:
        """The boxes ``[4]`` that protect frame ``t``, from every track."""
        return [box for track in self.tracks for box in track_boxes(track, t, self.k)]


def persisted_mask(history: deque[tuple[int, torch.Tensor]], t: int, k: int) -> torch.Tensor | None:
    """The union of the masks ``(frame, bool [H, W])`` of ``history`` within ``k`` frames of ``t`` (None if none)."""
    near = [mask for s, mask in history if abs(s - t) <= k]
    return torch.stack(near).any(0) if near else None
