"""Seconds of ``FaceScan.crops`` (the motion regions of a frame grown and merged into the crops searched for faces) on
frames full of small moving regions, below the whole-frame fallback.

    python benchmarks/bench_face_crops.py [--cases 720p:512 1080p:2048 2160p:8192] [--repeat 3]

Each case ``SIZE:N`` is a motion mask of that frame size with 3×3 moving specks at ``N`` uniformly random places (a
seed per case; specks that touch are one region, so a few less regions than ``N``), searched with no face held. It
prints the regions, the crops they merge into, the crops' share of the frame, the pairs the merge rule was checked
on (when the library counts them: ``detectors._merges``) and the best of ``--repeat`` times in seconds. Issue 28: the
merge checked all pairs again after each merge (10-31 s for 512 regions in 720p). Nothing else should run on the
machine meanwhile.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dp_pixel_torch import detectors

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "2160p": (2160, 3840)}


def specks(height: int, width: int, count: int, seed: int) -> torch.Tensor:
    """Bool ``[height, width]``: 3×3 specks centred at ``count`` random pixels."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(1, height - 1, count), rng.integers(1, width - 1, count)
    mask = np.zeros((height, width), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mask[rows + dy, cols + dx] = True
    return torch.from_numpy(mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["720p:512", "1080p:2048", "2160p:8192"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    checks = [0]
    rule = getattr(detectors, "_merges", None)
    if rule is not None:

        def counting(rect, others):
            checks[0] += len(others)
            return rule(rect, others)

        detectors._merges = counting
    scan = detectors.FaceScan(("haar",), every=25)
    nothing = np.zeros((0, 4), np.float32)
    for seed, case in enumerate(args.cases):
        size, count = case.split(":")
        moving = specks(*SIZES[size], int(count), seed)
        regions = detectors.import_cv2().connectedComponents(moving.numpy().astype(np.uint8), connectivity=8)[0] - 1
        times = []
        for _ in range(args.repeat):
            checks[0], start = 0, time.perf_counter()
            crops = scan.crops(moving, nothing)
            times.append(time.perf_counter() - start)
        share = float((crops[:, 2:] - crops[:, :2]).prod(1).sum()) / moving.numel()
        counted = f"{checks[0]} pair checks" if rule is not None else "pair checks not counted"
        print(
            f"{size}: {regions} regions -> {len(crops)} crops, {share:.2f} of the frame, {counted}: {min(times):.3f} s"
        )


if __name__ == "__main__":
    main()
