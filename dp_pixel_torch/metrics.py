"""Utility metrics of released images and video: fidelity, crowd-monitoring tasks, and person detection.

Everything here is computed *after* a release (post-processing), from uint8 ``[C, H, W]`` tensors. Fidelity uses
scikit-image, background subtraction and person detection use OpenCV, box overlaps use torchvision (the
``[experiments]`` and ``[video]`` extras).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from .detectors import detect_people  # noqa: F401 - moved to detectors, still importable from here
from .storage import NoisyGrid
from .temporal import ChangeDetector, release_foreground
from .video import import_cv2, to_bgr


def _hwc(x: torch.Tensor) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected one image [C, H, W], got shape {tuple(x.shape)}")
    return x.permute(1, 2, 0).contiguous().cpu().numpy()


def _range(x: torch.Tensor) -> float:
    return 255.0 if x.dtype == torch.uint8 else 1.0


def mse(original: torch.Tensor, released: torch.Tensor) -> float:
    """Mean squared error, in the images' units (grey levels for uint8)."""
    return float(((original.double() - released.double()) ** 2).mean())


def psnr(original: torch.Tensor, released: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB (scikit-image), for one ``[C, H, W]`` image."""
    from skimage.metrics import peak_signal_noise_ratio

    if torch.equal(original, released):
        return float("inf")
    return float(peak_signal_noise_ratio(_hwc(original), _hwc(released), data_range=_range(original)))


def ssim(original: torch.Tensor, released: torch.Tensor) -> float:
    """Structural similarity (scikit-image, Gaussian-free default window), for one ``[C, H, W]`` image."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_hwc(original), _hwc(released), channel_axis=-1, data_range=_range(original)))


def masked_scores(original: torch.Tensor, released: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """MSE and PSNR inside a region (``mask`` ``[H, W]``, > 0.5 inside, e.g. a portrait matte) and outside it."""
    inside = (mask > 0.5).to(original.device)
    peak = _range(original) ** 2
    scores = {}
    for name, where in (("inside", inside), ("outside", ~inside)):
        if not where.any():
            scores[f"{name}_mse"] = scores[f"{name}_psnr"] = float("nan")
            continue
        err = float(((original.double() - released.double())[:, where] ** 2).mean())
        scores[f"{name}_mse"] = err
        scores[f"{name}_psnr"] = float("inf") if err == 0 else 10 * np.log10(peak / err)
    return scores


def foreground_masks(frames: Iterable[torch.Tensor], history: int = 50) -> list[np.ndarray]:
    """Moving foreground of a frame sequence by OpenCV's MOG2 background subtractor: bool ``[H, W]`` per frame."""
    cv2 = import_cv2()
    subtractor = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=False)
    return [subtractor.apply(to_bgr(f)) > 0 for f in frames]


def occupancy(mask: np.ndarray, cell: int, threshold: float = 0.1) -> np.ndarray:
    """Per-cell occupancy: cells of ``cell×cell`` pixels whose foreground fraction exceeds ``threshold``."""
    h, w = mask.shape
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=np.float64)
    padded[:h, :w] = mask
    return padded.reshape(rows, cell, cols, cell).mean(axis=(1, 3)) > threshold


#: The readers of :func:`noise_aware_occupancy`.
READERS = ("background", "change")


def noise_aware_occupancy(
    grids: Iterable[NoisyGrid],
    cell: int = 32,
    threshold: float = 0.1,
    *,
    reader: str = "background",
    false_alarm: float = 0.01,
    **options,
) -> np.ndarray:
    """Per-cell occupancy of a video release, read from its releases: bool ``[T, ceil(H/cell), ceil(W/cell)]``.

    ``grids``: the releases in stream order, each of ``[C, H, W]`` or ``[T_i, C, H, W]`` frames. ``reader``:
    ``"background"`` (default): :func:`~dp_pixel_torch.temporal.release_foreground` (MOG2 on the noise-reduced
    cells, ``options``: its keywords), and a block is occupied when more than ``threshold`` of its pixels lie in
    foreground cells, the rule :func:`occupancy` applies to the originals; ``"change"``: a
    :class:`~dp_pixel_torch.temporal.ChangeDetector` (``options``: its other keywords), which declares a block of a
    static scene occupied with probability ``false_alarm`` per frame (it ignores ``threshold``). Protected cells,
    whose positions the release discloses, count as occupied. Reads releases and public parameters only
    (post-processing, no ε)."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    grids = list(grids)
    if not grids:
        raise ValueError("noise_aware_occupancy needs at least one release")
    partition = grids[0].finest_partition
    if reader == "background":
        cells = release_foreground(grids, **options)
        return np.stack([occupancy(partition.fill(c).numpy(), cell, threshold) for c in cells])
    changes = ChangeDetector(cell, false_alarm, **options)
    maps = []
    for grid in grids:
        values, variances, protected = grid.finest_cells()
        frames = zip(values.reshape(-1, *values.shape[-3:]), variances.reshape(-1, *variances.shape[-3:]))
        for (y, r), shown in zip(frames, protected.reshape(-1, *protected.shape[-2:])):
            maps.append(changes.update(y, r, shown, partition, grid.value_range).cpu().numpy())
    return np.stack(maps)


@dataclass(frozen=True)
class OccupancyAgreement:
    """Agreement of per-cell occupancy maps between original and released frames (crowd monitoring)."""

    iou: float  # occupied cells: intersection over union, pooled over frames
    accuracy: float  # fraction of cells with the same occupancy
    density_error: float  # mean absolute error of the occupied fraction of the frame


def occupancy_agreement(
    original: Sequence[torch.Tensor],
    released: Sequence[torch.Tensor] | None = None,
    cell: int = 32,
    threshold: float = 0.1,
    *,
    grids: Sequence[NoisyGrid] | None = None,
    **reader,
) -> OccupancyAgreement:
    """Per-cell occupancy of the original frames (MOG2 background subtraction) against that of a release, frame by
    frame: MOG2 on the ``released`` frames, or (noise-aware) :func:`noise_aware_occupancy` of the release's
    ``grids`` (``reader``: its keywords)."""
    if (released is None) == (grids is None):
        raise ValueError("give the released frames or the release's grids (noise-aware), not both")
    a = np.stack([occupancy(m, cell, threshold) for m in foreground_masks(original)]) if original else None
    if grids is not None:
        b = noise_aware_occupancy(grids, cell, threshold, **reader)
    else:
        b = np.stack([occupancy(m, cell, threshold) for m in foreground_masks(released)]) if released else None
    if a is None or b is None or a.shape != b.shape:
        raise ValueError("need two non-empty sequences of the same length")
    union = np.logical_or(a, b).sum()
    return OccupancyAgreement(
        iou=float(np.logical_and(a, b).sum() / union) if union else 1.0,
        accuracy=float((a == b).mean()),
        density_error=float(np.abs(a.mean(axis=(1, 2)) - b.mean(axis=(1, 2))).mean()),
    )


@dataclass(frozen=True)
class DetectionScore:
    true_positives: int
    predicted: int
    reference: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.reference if self.reference else float("nan")


def match_detections(predicted: torch.Tensor, reference: torch.Tensor, iou: float = 0.5) -> DetectionScore:
    """Greedy one-to-one matching of XYXY boxes at IoU ≥ ``iou`` (highest overlaps first)."""
    if len(predicted) == 0 or len(reference) == 0:
        return DetectionScore(0, len(predicted), len(reference))
    overlaps = box_iou(predicted.float(), reference.float())
    matched = 0
    while True:
        best = overlaps.max()
        if best < iou:
            break
        i, j = divmod(int(overlaps.argmax()), overlaps.shape[1])
        overlaps[i, :] = -1
        overlaps[:, j] = -1
        matched += 1
    return DetectionScore(matched, len(predicted), len(reference))
