"""Runtime of uniform DP pixelization on 1080p RGB uint8 frames: the layer vs the sequential baseline vs clone().

    python benchmarks/bench_uniform.py [--threads 2] [--batch 16] [--gpu-batch 256]

All ratios are measured in one run, on the same machine, with torch.utils.benchmark (median of blocked runs).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.benchmark import Timer

from dp_pixel_torch import DPPixelize
from dp_pixel_torch.reference import dp_pixelize_sequential

HEIGHT, WIDTH = 1080, 1920


def median_ms(stmt: str, threads: int, min_run_time: float = 1.0, **env: object) -> float:
    timer = Timer(stmt, globals=env, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    frame = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = frame.expand(args.batch, -1, -1, -1).clone()
    image = frame.numpy()
    rng = np.random.default_rng(0)
    print(f"1080p RGB uint8, CPU, {args.threads} threads, discrete noise, border=area; batch = {args.batch} frames\n")
    print(
        "| b | sequential ms/frame | layer ms/frame | speed-up | clone ms/frame | "
        "layer ms/batch | clone ms/batch | layer / clone (batch) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for b in args.sizes:
        layer = DPPixelize(1.0, b, seed=0)
        seq = median_ms(
            "f(image, 1.0, b, 1, rng)", args.threads, 0.0, f=dp_pixelize_sequential, image=image, b=b, rng=rng
        )
        one = median_ms("layer(x)", args.threads, layer=layer, x=frame)
        clone_one = median_ms("x.clone()", args.threads, x=frame)
        many = median_ms("layer(x)", args.threads, layer=layer, x=batch)
        clone_many = median_ms("x.clone()", args.threads, x=batch)
        print(
            f"| {b} | {seq:.0f} | {one:.2f} | {seq / one:.0f}× | {clone_one:.2f} | "
            f"{many:.1f} | {clone_many:.1f} | {many / clone_many:.2f}× |",
            flush=True,
        )

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\n{torch.cuda.get_device_name(gpu)}, batch = {args.gpu_batch} frames, uint8\n")
        print("| b | layer ms/batch | frames/s | device copy ms/batch | layer / copy |")
        print("|---|---|---|---|---|")
        xs = batch[:1].expand(args.gpu_batch, -1, -1, -1).to(gpu).contiguous()
        for b in args.sizes:
            layer = DPPixelize(1.0, b, seed=0)
            ms = median_ms("layer(x)", args.threads, layer=layer, x=xs)
            copy = median_ms("x.clone()", args.threads, x=xs)
            print(f"| {b} | {ms:.2f} | {args.gpu_batch / ms * 1e3:,.0f} | {copy:.2f} | {ms / copy:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
