"""Throughput of the Ray Data pipeline against the single-process command line, on one machine.

    python benchmarks/bench_ray.py [--images 2000] [--side 512]

Writes ``--images`` JPEG photos of ``--side``² (random crops of the scikit-image astronaut, so that decoding and
encoding cost what real photos cost) into a temporary folder, then times, in one run:
- the single-process CLI (``dp-pixel FOLDER -o OUT --epsilon 1 --b 8``, in process): decode, release, PNG out;
- Ray's fixed start-up cost (``connect()`` plus a one-item pipeline);
- the Ray pipeline with 1 and with 2 workers: decode, release, PNG and NoisyGrid record out per item.
Prints items/s and the ratios. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from dp_pixel_torch import DPPixelize
from dp_pixel_torch.cli import main as cli
from dp_pixel_torch.distributed import RunKey, connect, release_files


def write_photos(folder: Path, n: int, side: int) -> int:
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    big = cv2.resize(photo, (2 * side, 2 * side), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        y, x = rng.integers(0, side, 2)
        crop = big[y : y + side, x : x + side]
        path = folder / f"photo{i:05d}.jpg"
        cv2.imwrite(str(path), crop[:, ::-1] if i % 2 else crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        size = write_photos(tmp / "in", args.images, args.side)
        print(f"{args.images} JPEG photos of {args.side}×{args.side}, {size / 1e6:.0f} MB, on {os.cpu_count()} CPUs")

        start = time.perf_counter()
        assert cli([str(tmp / "in"), "-o", str(tmp / "cli"), "--epsilon", "1", "--b", "8", "--quiet"]) == 0
        single = args.images / (time.perf_counter() - start)

        (tmp / "one").mkdir()
        (tmp / "one" / "a.jpg").write_bytes((tmp / "in" / "photo00000.jpg").read_bytes())
        start = time.perf_counter()
        connect(num_cpus=os.cpu_count(), quiet=True)
        release_files(tmp / "one", DPPixelize(1.0, 8), tmp / "warm", RunKey.create())
        startup = time.perf_counter() - start

        rates = {}
        for workers in (1, 2):
            summary = release_files(
                tmp / "in", DPPixelize(1.0, 8), tmp / f"ray{workers}", RunKey.create(), workers=workers, batch_size=16
            )
            assert summary.items == args.images and not summary.errors
            rates[workers] = summary.items_per_second

    print(f"| run | items/s | vs single-process CLI |\n|---|---|---|\n| single-process CLI | {single:.1f} | 1.00× |")
    for workers, rate in rates.items():
        print(f"| Ray Data, {workers} worker{'s' if workers > 1 else ''} | {rate:.1f} | {rate / single:.2f}× |")
    print(f"Ray start-up (connect + a one-item pipeline): {startup:.1f} s")


if __name__ == "__main__":
    main()
