"""The cost of the deployment paths' guarantees, measured in one run on one machine.

1. Randomness: a layer with ``secure=True`` (a ChaCha20 stream keyed with fresh OS entropy per call) against a seeded
   layer (a ChaCha20 stream keyed by the seed) and an explicit ``torch.Generator`` (mt19937 on the CPU, Philox on CUDA,
   32-bit seeds on the CPU: the fast path that gives up the entropy rules), on 1080p RGB uint8 frames, b ∈ {4, 8, 16}.
2. The ledger: what one committed charge costs (SQLite, WAL, synchronous=FULL), and a 24-hour stream at 30 fps charged
   once a second: the size of its history and the time of ``epsilon_for(seconds=60)``, in memory and in a ledger.

    python benchmarks/bench_privacy_paths.py [--threads 2] [--batches 1 16]

Times are medians of torch.utils.benchmark blocked runs (CUDA included when a GPU is present).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from dp_pixel_torch import DPPixelize, PrivacyAccountant

HEIGHT, WIDTH = 1080, 1920


def median_ms(stmt: str, threads: int, **env: object) -> float:
    return Timer(stmt, globals=env, num_threads=threads).blocked_autorange(min_run_time=1.0).median * 1e3


def randomness(device: str, threads: int, batches: list[int], sizes: list[int]) -> None:
    print(f"\n### Randomness on {device} ({threads} threads): ms per call, 1080p RGB uint8, discrete noise\n")
    print("| b | frames | secure=True | seed= (ChaCha20) | torch.Generator | secure / seeded | secure / generator |")
    print("|---|---|---|---|---|---|---|")
    frame = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for b in sizes:
        for n in batches:
            x = frame.expand(n, -1, -1, -1).clone().to(device)
            layers = {
                "secure": DPPixelize(1.0, b, secure=True),
                "seeded": DPPixelize(1.0, b, seed=0),
                "generator": DPPixelize(1.0, b, generator=torch.Generator(device=device).manual_seed(0)),
            }
            t = {name: median_ms("layer(x)", threads, layer=layer, x=x) for name, layer in layers.items()}
            print(
                f"| {b} | {n} | {t['secure']:.2f} | {t['seeded']:.2f} | {t['generator']:.2f} | "
                f"{t['secure'] / t['seeded']:.2f}× | {t['secure'] / t['generator']:.2f}× |",
                flush=True,
            )


def ledger(folder: Path) -> None:
    print("\n### Ledger (SQLite, WAL, synchronous=FULL)\n")
    acc = PrivacyAccountant(ledger=folder / "rate.sqlite")
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        acc.charge(0.01)
    per_charge = (time.perf_counter() - start) / n * 1e3
    print(f"one committed charge: {per_charge:.3f} ms ({1e3 / per_charge:,.0f} charges/s)\n")
    print("24 h at 30 fps (2,592,000 frames), one charge per second (86,400 charges), ε = 0.01 per frame:\n")
    print("| history | charging the day | stored | runs | epsilon_for(seconds=60) | its value |")
    print("|---|---|---|---|---|---|")
    for kind in ("memory", "ledger"):
        path = folder / "day.sqlite"
        acc = PrivacyAccountant(fps=30, ledger=path if kind == "ledger" else None)
        start = time.perf_counter()
        for _ in range(24 * 3600):
            acc.charge(0.01, frames=30)
        charging = time.perf_counter() - start
        query = Timer("acc.epsilon_for(seconds=60)", globals={"acc": acc}).blocked_autorange(min_run_time=0.5)
        if kind == "ledger":
            stored = sum(p.stat().st_size for p in folder.glob("day.sqlite*"))
            size = f"{stored / 1024:.0f} KiB on disk (db + WAL + index)"
        else:
            size = f"{len(acc.to_json())} B of JSON"
        runs = len(acc._history.runs())
        print(
            f"| {kind} | {charging:.1f} s | {size} | {runs} | {query.median * 1e6:.0f} µs | "
            f"{acc.epsilon_for(seconds=60):g} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    randomness("cpu", args.threads, args.batches, args.sizes)
    if torch.cuda.is_available():
        randomness("cuda", args.threads, args.gpu_batches, args.sizes)
    with tempfile.TemporaryDirectory() as folder:
        ledger(Path(folder))


if __name__ == "__main__":
    main()
