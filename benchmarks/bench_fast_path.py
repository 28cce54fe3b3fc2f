"""The fast path against its baselines on 1080p RGB uint8 frames, every ratio measured in one run.

    python benchmarks/bench_fast_path.py [--threads 2 16] [--batch 16] [--gpu-batch 256]

CPU (always), per cell side b, a batch of ``--batch`` frames with the first thread count:
  the compiled layer, the eager layer, naive torch code (below), ``clone()``, and the sequential per-cell baseline of
  the paper (one frame); the first-call compile time; region-adaptive (levels b/2b/4b, a face box) vs uniform at b;
  and, for each further thread count the machine has cores for, the speed-up over the first.
CUDA (when present), a batch of ``--gpu-batch`` frames: the layer, naive GPU code and a device copy per b; one frame
  at b=8; adaptive vs uniform at batch 16 and on one frame; the extra memory of a batch of 64, relative to the input.

"Naive" is what a user writes in six lines: ``F.avg_pool2d`` on the float image, ``torch.distributions.Laplace``,
round and clamp, then ``repeat_interleave`` twice. Timings are medians of ``torch.utils.benchmark`` blocked runs (CUDA
events included). The layers draw seeded keystream noise (``seed=0``); the noise words are part of every timing.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.reference import dp_pixelize_sequential

HEIGHT, WIDTH = 1080, 1920
FACE = [[730.0, 150.0, 1120.0, 640.0]]  # a face-sized box (x0, y0, x1, y1) in a 1080p frame


def naive_dp_pix(x: torch.Tensor, epsilon: float, b: int) -> torch.Tensor:
    """Six-line DP-Pix (uniform, zero padding at the border): the baseline the fast path must beat."""
    means = F.avg_pool2d(x.float(), b, ceil_mode=True)
    scale = torch.tensor(x.shape[-3] * 255.0 / (epsilon * b * b), device=x.device)
    noise = torch.distributions.Laplace(torch.zeros_like(scale), scale).sample(means.shape)
    cells = (means + noise).round_().clamp_(0, 255).to(torch.uint8)
    return cells.repeat_interleave(b, -2).repeat_interleave(b, -1)[..., : x.shape[-2], : x.shape[-1]]


def median_ms(stmt: str, threads: int, min_run_time: float = 1.0, **env: object) -> float:
    timer = Timer(stmt, globals=env, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def first_call_s(layer, x: torch.Tensor, **kwargs) -> float:
    start = time.perf_counter()
    layer.released_image(x, **kwargs)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def frames(n: int, device: str = "cpu") -> torch.Tensor:
    frame = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return frame.expand(n, -1, -1, -1).contiguous().to(device)


def adaptive_vs_uniform(b: int, batches, threads: int) -> list[tuple[float, float]]:
    """(uniform ms, adaptive ms) per batch: the layer at b against levels (b, 2b, 4b) with the face box as its mask."""
    boxes = torch.tensor(FACE)
    uniform = DPPixelize(1.0, b, seed=0, backend="compiled")
    adaptive = RegionAdaptiveDPPixelize(1.0, levels=(b, 2 * b, 4 * b), seed=0, backend="compiled")
    times = []
    for data in batches:
        first_call_s(adaptive, data, boxes=boxes)
        first_call_s(uniform, data)
        t_u = median_ms("layer.released_image(x)", threads, layer=uniform, x=data)
        t_a = median_ms("layer.released_image(x, boxes=boxes)", threads, layer=adaptive, x=data, boxes=boxes)
        times.append((t_u, t_a))
    return times


def cpu_section(threads: list[int], batch: int, sizes: list[int]) -> None:
    first = threads[0]
    torch.set_num_threads(first)
    x, one = frames(batch), frames(1)
    image, rng = one[0].numpy(), np.random.default_rng(0)
    print(f"## CPU: {os.cpu_count()} cores, {first} threads, batch of {batch} 1080p RGB uint8 frames\n")
    print(
        "| b | compiled ms | eager ms | naive ms | clone ms | compiled / clone | compiled vs naive | "
        "compiled vs eager | sequential ms/frame | vs sequential (1 frame) | first call s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    clone = median_ms("x.clone()", first, x=x)
    for b in sizes:
        fast, eager = DPPixelize(1.0, b, seed=0, backend="compiled"), DPPixelize(1.0, b, seed=0, backend="eager")
        compile_s = first_call_s(fast, x)
        t_fast = median_ms("layer(x)", first, layer=fast, x=x)
        t_eager = median_ms("layer(x)", first, layer=eager, x=x)
        t_naive = median_ms("f(x, 1.0, b)", first, f=naive_dp_pix, x=x, b=b)
        first_call_s(fast, one)
        t_one = median_ms("layer(x)", first, layer=fast, x=one)
        t_seq = median_ms("f(image, 1.0, b, 1, rng)", first, 0.0, f=dp_pixelize_sequential, image=image, b=b, rng=rng)
        print(
            f"| {b} | {t_fast:.1f} | {t_eager:.1f} | {t_naive:.1f} | {clone:.1f} | {t_fast / clone:.2f}× | "
            f"{t_naive / t_fast:.2f}× | {t_eager / t_fast:.2f}× | {t_seq:.0f} | {t_seq / t_one:.0f}× | {compile_s:.1f} |",
            flush=True,
        )

    print(f"\nRegion-adaptive (levels b, 2b, 4b; one face box) vs uniform at b, compiled, {first} threads\n")
    print("| b | uniform, batch ms | adaptive, batch ms | ratio | uniform, 1 frame ms | adaptive, 1 frame ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for b in sizes:
        row = [f"{t_u:.1f} | {t_a:.1f} | {t_a / t_u:.2f}×" for t_u, t_a in adaptive_vs_uniform(b, (x, one), first)]
        print(f"| {b} | {' | '.join(row)} |", flush=True)

    more = [t for t in threads[1:] if t <= (os.cpu_count() or 1)]
    skipped = [t for t in threads[1:] if t not in more]
    if more:
        print(f"\nThread scaling, compiled, batch of {batch} (speed-up over {first} threads)\n")
        print("| b | " + " | ".join(f"{t} threads ms" for t in threads[:1] + more) + " | speed-up |")
        print("|---|" + "---|" * (len(more) + 2))
        for b in sizes:
            layer = DPPixelize(1.0, b, seed=0, backend="compiled")
            times = []
            for t in [first, *more]:
                torch.set_num_threads(t)
                first_call_s(layer, x)
                times.append(median_ms("layer(x)", t, layer=layer, x=x))
            print(f"| {b} | " + " | ".join(f"{v:.1f}" for v in times) + f" | {times[0] / times[-1]:.2f}× |")
        torch.set_num_threads(first)
    for t in skipped:
        print(f"\n{t} threads: not measured, this machine has {os.cpu_count()} cores.")


def gpu_section(batch: int, sizes: list[int], threads: int) -> None:
    gpu = torch.device("cuda")
    x, x16, one = frames(batch, "cuda"), frames(16, "cuda"), frames(1, "cuda")
    print(f"\n## {torch.cuda.get_device_name(gpu)}, torch {torch.__version__}, batch of {batch} frames\n")
    print("| b | layer ms | frames/s | naive ms | device copy ms | layer / copy | vs naive | first call s |")
    print("|---|---|---|---|---|---|---|---|")
    copy = median_ms("x.clone()", threads, x=x)
    for b in sizes:
        layer = DPPixelize(1.0, b, seed=0)
        compile_s = first_call_s(layer, x)
        t = median_ms("layer(x)", threads, layer=layer, x=x)
        naive = median_ms("f(x, 1.0, b)", threads, f=naive_dp_pix, x=x, b=b)
        print(
            f"| {b} | {t:.2f} | {batch / t * 1e3:,.0f} | {naive:.2f} | {copy:.2f} | {t / copy:.2f}× | "
            f"{naive / t:.2f}× | {compile_s:.1f} |",
            flush=True,
        )

    layer = DPPixelize(1.0, 8, seed=0)
    first_call_s(layer, one)
    t_one = median_ms("layer(x)", threads, layer=layer, x=one)
    naive_one = median_ms("f(x, 1.0, 8)", threads, f=naive_dp_pix, x=one)
    print(f"\nOne frame at b=8: {t_one * 1e3:.0f} µs (naive {naive_one * 1e3:.0f} µs)")

    print("\n| b | adaptive / uniform, batch of 16 | adaptive / uniform, 1 frame |\n|---|---|---|")
    for b in sizes:
        ratios = [f"{t_a / t_u:.2f}×" for t_u, t_a in adaptive_vs_uniform(b, (x16, one), threads)]
        print(f"| {b} | {' | '.join(ratios)} |", flush=True)

    x64 = frames(64, "cuda")
    print("\n| b | extra GPU memory, batch of 64 (peak above the input, / input bytes) |\n|---|---|")
    for b in sizes:
        layer = DPPixelize(1.0, b, seed=0)
        layer(x64)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = layer(x64)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        print(f"| {b} | {extra / x64.nbytes:.2f}× (output included: {out.nbytes / x64.nbytes:.2f}×) |")
        del out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA section")
    args = parser.parse_args()
    if not args.skip_cpu:
        cpu_section(args.threads, args.batch, args.sizes)
    if torch.cuda.is_available():
        gpu_section(args.gpu_batch, args.sizes, args.threads[0])
    else:
        print("\nNo CUDA device: the GPU rows were not measured.")


if __name__ == "__main__":
    main()
