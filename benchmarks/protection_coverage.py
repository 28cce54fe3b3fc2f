"""How much of what moves in a fixed-camera video the protected cells of ``dp-pixel --protect`` cover.

Reference: a separate OpenCV MOG2 instance (default settings: history 500, variance threshold 16, shadows detected) on
the ORIGINAL frames; its foreground pixels (255, shadows left out) stand for the people who move. For each choice of
sources the regions come from :meth:`ProtectDetected.stream_regions` (the look-ahead of ``sanitize_stream``), and a
pixel counts as protected when it lies in a coarse cell (``--protect-cell``, 4·b = 32 for b = 8) that meets a region,
as the release protects it. ``covered``: the share of reference foreground pixels inside protected cells (first frame
left out: MOG2 has no background yet); ``area``: the share of all pixels inside protected cells (the utility cost).

Run: ``python benchmarks/protection_coverage.py [video] [frames]`` (default: the first 300 frames of PETS 2009
``data/pets2009/vtest.avi``, 768×576 at 10 fps).
"""

from __future__ import annotations

import sys
import time
from itertools import islice

import cv2
import numpy as np
import torch

from dp_pixel_torch import RegionAdaptiveDPPixelize
from dp_pixel_torch.detectors import PEOPLE_EVERY, ProtectDetected, cells_meeting, region_source
from dp_pixel_torch.tracking import PERSIST
from dp_pixel_torch.video import probe, read_frames, to_bgr

B, CELL = 8, 32
#: (sources, persist in seconds, HOG every N frames: detectors.PeopleScan, the dp-pixel default with motion)
CONFIGS = (
    ("people", 0.0, 1),
    ("people", PERSIST, 1),
    ("motion", 0.0, 1),
    ("people,motion", 0.0, 1),
    ("people,motion", PERSIST, 1),
    ("people,motion", PERSIST, PEOPLE_EVERY),
)


def reference(frames: list[torch.Tensor]) -> list[np.ndarray]:
    """MOG2 foreground (255) of each original frame, from a fresh instance."""
    model = cv2.createBackgroundSubtractorMOG2(500, 16, True)
    return [model.apply(to_bgr(frame)) == 255 for frame in frames]


def coverage(frames, foreground, sources: str, persist: float, every: int, fps: float):
    layer = RegionAdaptiveDPPixelize(1.0, levels=(B, CELL), protect=True, region_from="detector", seed=0)
    chosen = [region_source(name, people_every=every) for name in sources.split(",")]
    protect = ProtectDetected(layer, sources=chosen, persist=persist, fps=fps)
    start = time.perf_counter()
    chunks = (torch.stack(frames[i : i + 16]) for i in range(0, len(frames), 16))
    masks = [mask for _, regions in protect.stream_regions(chunks, 16) for mask in regions.mask]
    seconds = time.perf_counter() - start
    cells = [cells_meeting(mask, CELL).numpy() for mask in masks]
    moving = sum(int(f.sum()) for f in foreground[1:])
    inside = sum(int((f & c).sum()) for f, c in zip(foreground[1:], cells[1:]))
    area = float(np.mean([c.mean() for c in cells]))
    return inside / moving, area, len(frames) / seconds


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "data/pets2009/vtest.avi"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    fps = probe(path).fps
    frames = list(islice(read_frames(path), count))
    foreground = reference(frames)
    print(f"{path}: {len(frames)} frames of {frames[0].shape[2]}×{frames[0].shape[1]} at {fps:g} fps")
    print("| sources | persist (s) | HOG every | covered | area | regions frames/s |")
    print("|---|---|---|---|---|---|")
    for sources, persist, every in CONFIGS:
        covered, area, speed = coverage(frames, foreground, sources, persist, every, fps)
        print(f"| {sources} | {persist:g} | {every} | {100 * covered:.2f}% | {100 * area:.1f}% | {speed:.1f} |")


if __name__ == "__main__":
    main()
