"""Region-adaptive overhead and storage size on 1080p RGB uint8 frames.

    python benchmarks/bench_adaptive.py [--threads 2] [--batch 16]

1. ms per frame: uniform DPPixelize at the finest level vs RegionAdaptiveDPPixelize (levels 8/16/32) with each
   partition source, single frame and batched, in one run (torch.utils.benchmark, median of blocked runs).
2. bytes per frame: raw frame, PNG and JPEG (quality 95, both by OpenCV) of the released image, NoisyGrid uint8 and
   float16.
The frame is a real photo (scikit-image's astronaut, resized to 1080p) with a region box on the face.
"""

from __future__ import annotations

import argparse

import skimage.data
import torch
from torch.utils.benchmark import Timer
import cv2
from torchvision.transforms.v2 import functional as TF

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.video import to_bgr

HEIGHT, WIDTH = 1080, 1920
FACE = (175, 70, 268, 163)  # x0, y0, x1, y1 of the astronaut's face in the 512×512 photo (an annotation)


def median_ms(stmt: str, threads: int, **env: object) -> float:
    return Timer(stmt, globals=env, num_threads=threads).blocked_autorange(min_run_time=1.0).median * 1e3


def photo_1080p() -> tuple[torch.Tensor, torch.Tensor]:
    """The astronaut photo stretched to 1080p, and the face box scaled with it."""
    x = TF.resize(torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1), [HEIGHT, WIDTH], antialias=True)
    sx, sy = WIDTH / 512, HEIGHT / 512
    return x.contiguous(), torch.tensor([[FACE[0] * sx, FACE[1] * sy, FACE[2] * sx, FACE[3] * sy]])


def layers(levels=(8, 16, 32)) -> dict[str, torch.nn.Module]:
    return {
        "uniform b=8 (finest)": DPPixelize(1.0, levels[0], seed=0),
        "adaptive, mask": RegionAdaptiveDPPixelize(1.0, levels=levels, seed=0),
        "adaptive, complexity": RegionAdaptiveDPPixelize(
            0.8, levels=levels, region="complexity", partition_epsilon=0.2, seed=0
        ),
        "adaptive, previous": RegionAdaptiveDPPixelize(1.0, levels=levels, region="previous", seed=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame, boxes = photo_1080p()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    print(f"1080p RGB uint8, {args.threads} CPU threads; levels 8/16/32; ms per frame (median)\n")
    print(
        f"| layer | device | 1 frame | batch of {args.batch}, per frame | vs uniform (1 frame) | vs uniform (batch) |"
    )
    print("|---|---|---|---|---|---|")
    for device in devices:
        one = frame[None].to(device)
        many = one.expand(args.batch, -1, -1, -1).contiguous()
        base = None
        for name, layer in layers().items():
            mask = {"m": boxes} if "mask" in name else {}
            stmt = "layer.release(x, boxes=m, storage='exact').restore()" if mask else "layer(x)"
            if "previous" in name:  # start each stream with one frame, so the timed calls derive their partition
                layer.reset(), layer(one)
            t1 = median_ms(stmt, args.threads, layer=layer, x=one, **mask)
            if "previous" in name:
                layer.reset(), layer(many)
            tb = median_ms(stmt, args.threads, layer=layer, x=many, **mask) / args.batch
            base = base or (t1, tb)
            print(
                f"| {name} | {device} | {t1:.2f} | {tb:.2f} | {t1 / base[0]:.2f}× | {tb / base[1]:.2f}× |", flush=True
            )

    print("\nStorage per 1080p frame (bytes; PNG/JPEG encode the released image)\n")
    print("| release | cells × channels | raw frame | PNG | JPEG q95 | NoisyGrid uint8 | NoisyGrid float16 |")
    print("|---|---|---|---|---|---|---|")
    x = frame[None]
    releases = {f"uniform b={b}": DPPixelize(1.0, b, seed=0) for b in (8, 16)}
    releases["adaptive 8/16/32, face mask"] = RegionAdaptiveDPPixelize(1.0, levels=(8, 16, 32), seed=0)
    for name, layer in releases.items():
        kwargs = {"boxes": boxes} if "mask" in name else {}
        grid = layer.release(x, **kwargs)
        light = layer.release(x.float() / 255, **kwargs)  # float images store float16 by default
        released = grid.restore()[0]
        cells = sum(int(v.numel()) for v in grid.values)  # adaptive records hold their released cells only
        bgr = to_bgr(released)
        png = len(cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1])  # the smallest PNG
        jpeg = len(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
        print(f"| {name} | {cells:,} | {x.numel():,} | {png:,} | {jpeg:,} | {grid.nbytes:,} | {light.nbytes:,} |")


if __name__ == "__main__":
    main()
