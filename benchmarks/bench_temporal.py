"""Issue 20, part 2: noise-aware crowd analytics and temporal restoration on PETS2009 S2L1 (``vtest.avi``).

    python benchmarks/bench_temporal.py [--video data/pets2009/vtest.avi] [--start 0] [--frames 300]

Prints one markdown table: per release (b = 8, m = 1) of frames ``start`` to ``start + frames``, the occupancy IoU of
32-px cells against MOG2 on the original frames, read by MOG2 on the released frames, by the noise-aware readers of
the releases (``metrics.noise_aware_occupancy``: MOG2 on the noise-reduced cells, and the χ² change test at 1% false
alarms per block and frame) and by MOG2 on the temporally restored frames, and the PSNR of the released and of the
temporally restored frames against the originals; then the frames/s of releasing (the layer) and of temporal
restoration on this CPU. The protected row hides every person HOG finds on the original frames (16-px cells, m_r =
all), its cells read from the public map; the line under the table bounds the readers of it: exact outside the
blocks that the map touches, and inside them the map's cells occupied, or nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.datasets import PETS2009
from dp_pixel_torch.detectors import PEOPLE_MARGIN, detect_people, dilate_boxes
from dp_pixel_torch.functional import pixelize
from dp_pixel_torch.metrics import foreground_masks, noise_aware_occupancy, occupancy, psnr
from dp_pixel_torch.temporal import TemporalRestorer

CHUNK = 16
EVERY = 10  # PSNR on every 10th frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def occupied(frames) -> np.ndarray:
    return np.stack([occupancy(m, 32, 0.1) for m in foreground_masks(frames)])


def mean_psnr(frames: torch.Tensor, out: torch.Tensor) -> float:
    return float(np.mean([psnr(frames[i], out[i]) for i in range(0, len(frames), EVERY)]))


def row(name, frames, reference, grids) -> dict:
    released = torch.cat([g.restore().reshape(-1, *g.shape[-3:]) for g in grids])
    start = time.perf_counter()
    restorer = TemporalRestorer()
    restored = torch.cat([restorer(g).reshape(-1, *g.shape[-3:]) for g in grids])
    restore_fps = len(frames) / (time.perf_counter() - start)
    return {
        "release": name,
        "IoU MOG2 on release": iou(reference, occupied(list(released))),
        "IoU noise-aware MOG2": iou(reference, noise_aware_occupancy(grids)),
        "IoU χ² change test (1%)": iou(reference, noise_aware_occupancy(grids, reader="change")),
        "IoU MOG2 on temporal": iou(reference, occupied(list(restored))),
        "PSNR release": mean_psnr(frames, released),
        "PSNR temporal": mean_psnr(frames, restored),
        "temporal frames/s": restore_fps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default="data/pets2009/vtest.avi")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=300)
    args = p.parse_args()
    clip = PETS2009(args.video)
    frames = torch.stack([clip[i] for i in range(args.start, min(len(clip), args.start + args.frames))])
    reference = occupied(list(frames))
    plain = pixelize(frames, 8)
    rows = [
        {
            "release": "plain b = 8 (NOT private)",
            "IoU MOG2 on release": iou(reference, occupied(list(plain))),
            "PSNR release": mean_psnr(frames, plain),
        }
    ]
    layer_fps = None
    for eps in (0.5, 1.0, 5.0):
        layer = DPPixelize(eps, 8, 1, seed=int(eps * 10))
        start = time.perf_counter()
        grids = [layer.release(chunk) for chunk in frames.split(CHUNK)]
        layer_fps = layer_fps or len(frames) / (time.perf_counter() - start)
        rows.append(row(f"uniform ε = {eps:g}", frames, reference, grids))
    boxes = [dilate_boxes(detect_people(f), PEOPLE_MARGIN, *f.shape[-2:]) for f in frames]
    protect = RegionAdaptiveDPPixelize(5.0, 1, levels=(8, 16), protect=True, region_from="detector", seed=7)
    grids = [protect.release(f, boxes=b) for f, b in zip(frames, boxes)]
    rows.append(row("protected ε = 5, m_r = all", frames, reference, grids))
    maps = [g.finest_partition.fill(g.finest_cells()[2]).numpy() for g in grids]
    touched = np.stack([occupancy(m, 32, 0.0) for m in maps])
    counted = iou(reference, (reference & ~touched) | np.stack([occupancy(m, 32, 0.1) for m in maps]))
    blind = iou(reference, reference & ~touched)
    columns = list(rows[1])
    print(f"PETS2009 S2L1, {len(frames)} frames of 768×576, b = 8, m = 1; release (layer): {layer_fps:.0f} frames/s")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    print(
        f"Protected row, a reader exact outside the blocks the public map touches: IoU {counted:.3f} if the map's cells"
        f" count as occupied, {blind:.3f} if the blocks it touches count as free"
    )


def _fmt(v) -> str:
    return (
        "—"
        if v is None
        else f"{v:.3f}"
        if isinstance(v, float) and v < 2
        else f"{v:.1f}"
        if isinstance(v, float)
        else v
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
