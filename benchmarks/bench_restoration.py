"""Restoration of releases under the public noise law (issue 20): PSNR of fill / smooth / denoise, and their cost.

    PYTHONPATH=. python benchmarks/bench_restoration.py [--releases 3] [--threads N]

On scikit-image's bundled photos (astronaut, coffee, chelsea, camera; camera is greyscale), b = 8, m = 1, discrete
noise: PSNR of the released image restored by fill (the layer's output), smooth and denoise, and of plain
(non-private) b = 8 pixelization, each the mean of ``--releases`` seeded releases; the mean over photos and the gain of
denoise over fill. Then the PSNR inside the astronaut's face box under a protected release (levels (8, 32),
protect_m=None: all pixels of the protected cells), and the CPU time of restore("denoise") against the release of a
batch of 16 1080p RGB frames. Everything restored is read from the release alone (post-processing, no ε).
"""

from __future__ import annotations

import argparse
import statistics
import time

import skimage.data
import torch

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.functional import pixelize
from dp_pixel_torch.metrics import masked_scores, psnr

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")
EPSILONS = (0.5, 1.0, 5.0, 20.0)
METHODS = ("fill", "smooth", "denoise")
ASTRONAUT_FACE = (175, 70, 268, 163)  # XYXY, as in experiments/reid_attack.py


def load(name: str) -> torch.Tensor:
    array = getattr(skimage.data, name)()
    x = torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)[None]
    return x.contiguous()


def utility(releases: int) -> None:
    photos = {name: load(name) for name in PHOTOS}
    print(f"PSNR (dB), b = 8, m = 1, discrete noise, mean of {releases} releases per photo and ε")
    print(f"{'ε':>5} {'photo':<10} {'plain':>6} {'fill':>6} {'smooth':>6} {'denoise':>7} {'gain':>6}")
    for eps in EPSILONS:
        rows = []
        for name, x in photos.items():
            scores = dict.fromkeys(METHODS, 0.0)
            for seed in range(releases):
                grid = DPPixelize(eps, 8, seed=seed).release(x)
                for method in METHODS:
                    scores[method] += psnr(x, grid.restore(method)) / releases
            scores["plain"] = psnr(x, pixelize(x, 8))
            rows.append(scores)
            print(_row(eps, name, scores))
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        worst = min(r["denoise"] - r["fill"] for r in rows)
        print(_row(eps, "MEAN", mean) + f"   (worst photo {worst:+.2f})")


def _row(eps: float, name: str, s: dict) -> str:
    gain = s["denoise"] - s["fill"]
    return (
        f"{eps:>5g} {name:<10} {s['plain']:>6.2f} {s['fill']:>6.2f} {s['smooth']:>6.2f} {s['denoise']:>7.2f} "
        f"{gain:>+6.2f}"
    )


def protected(releases: int) -> None:
    x = load("astronaut")
    face = torch.tensor([ASTRONAUT_FACE], dtype=torch.float32)
    inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
    inside[ASTRONAUT_FACE[1] : ASTRONAUT_FACE[3], ASTRONAUT_FACE[0] : ASTRONAUT_FACE[2]] = True
    print("\nPSNR (dB) inside the astronaut's face box, protected: levels (8, 32), protect_m=None (all)")
    print(f"{'ε':>5} {'fill':>6} {'smooth':>6} {'denoise':>7}  outside: {'fill':>6} {'denoise':>7}")
    for eps in (1.0, 5.0):
        scores = {}
        for seed in range(releases):
            grid = RegionAdaptiveDPPixelize(eps, levels=(8, 32), protect=True, seed=seed).release(x, boxes=face)
            for method in METHODS:
                for where, value in masked_scores(x, grid.restore(method), inside).items():
                    scores[method, where] = scores.get((method, where), 0.0) + value / releases
        print(
            f"{eps:>5g} {scores['fill', 'inside_psnr']:>6.2f} {scores['smooth', 'inside_psnr']:>6.2f} "
            f"{scores['denoise', 'inside_psnr']:>7.2f}           {scores['fill', 'outside_psnr']:>6.2f} "
            f"{scores['denoise', 'outside_psnr']:>7.2f}"
        )


def cost(repeats: int = 3) -> None:
    x = torch.randint(0, 256, (16, 3, 1080, 1920), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    layer = DPPixelize(1.0, 8, seed=0)
    timings: dict[str, list[float]] = {}

    def timed(name, function):
        start = time.perf_counter()
        result = function()
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return result

    layer(x[:1])  # warm-up
    for _ in range(repeats):
        timed("release image (layer(x))", lambda: layer(x))
        grid = timed("release grid (layer.release(x))", lambda: layer.release(x))
        for method in METHODS:
            timed(f"restore('{method}')", lambda method=method, grid=grid: grid.restore(method))
    base = statistics.median(timings["release image (layer(x))"])
    print(f"\nCPU time, 16 frames of 1080p RGB uint8, b = 8 ({torch.get_num_threads()} threads, median of {repeats})")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:<34} {median * 1000:>7.0f} ms   {median / base:>5.2f}x the release image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=3, help="seeded releases per photo and ε")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    utility(args.releases)
    protected(args.releases)
    cost()


if __name__ == "__main__":
    main()
