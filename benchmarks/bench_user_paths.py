"""The default backend against the eager one on the jobs users run, end to end, cold and warm compile cache.

    python benchmarks/bench_user_paths.py [--only loader-fork cli-video ...] [--video data/pets2009/vtest.avi]

Every job runs in a fresh Python process (compile state is per process), and is timed inside it from the first line
of the job to its end (imports excluded; DataLoader workers' start-up, Ray's start-up and the CLI's decoding and
encoding included). Each job runs:
- ``eager``: ``backend="eager"`` (``--backend eager`` for the CLI);
- ``default, cold``: no backend given, with an empty Inductor/Triton cache;
- ``compiled, cold``: ``backend="compiled"`` with an empty cache, which fills the warm cache of the next two;
- ``default, warm`` and ``compiled, warm``.
The jobs (720p images are random uint8, 3×720×1280; the layer is ``DPPixelize(1.0, 8)``):
- ``loader-{fork,spawn}[-persistent]``: a DataLoader with 2 workers, the layer as a per-sample transform, batches of 8,
  2 epochs of 100 images;
- ``loader-1000``: the same with fork, one epoch of 1,000 images;
- ``batched``: the same 200 images loaded by 2 workers, collated, and released a batch of 8 at a time in the main process;
- ``cli-video``: ``dp-pixel VIDEO -o out.avi --epsilon 1 --b 8`` (795 frames of 768×576 for vtest.avi);
- ``first-call``: one 1080p image, the first call in a fresh process;
- ``released-once``: ``ReleasedOnce`` over the 200 images, 2 workers (fork), 2 epochs (the second serves the first's
  releases);
- ``ray``: ``release_files`` on 200 JPEG photos of 512² with 2 Ray workers (start-up included).
The eager and default configurations run ``--repeat`` times each (3 by default), alternating, each cold one with a new
empty cache, and the table shows the median: a job of a few seconds that starts worker processes or Ray moves by
10-30% from run to run on a shared 2-core machine, more than the difference being measured. Prints seconds per job and
configuration, and default / eager. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VIDEO = HERE.parent / "data" / "pets2009" / "vtest.avi"
CONFIGS = [  # (label, backend or None for the default, cache)
    ("eager", "eager", "cold"),
    ("default, cold", None, "cold"),
    ("compiled, cold", "compiled", "warm"),  # fills the warm cache
    ("default, warm", None, "warm"),
    ("compiled, warm", "compiled", "warm"),
]


def backend_kwargs(backend: str | None) -> dict:
    return {} if backend is None else {"backend": backend}


class RandomImages:
    """``n`` random uint8 720p images, the same ones on every call (a map-style dataset)."""

    def __init__(self, n: int, transform=None) -> None:
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        x = torch.randint(0, 256, (3, 720, 1280), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        return x if self.transform is None else self.transform(x)


def loader_job(backend, context: str, persistent: bool, images: int, epochs: int) -> None:
    from torch.utils.data import DataLoader

    from dp_pixel_torch import DPPixelize

    data = RandomImages(images, DPPixelize(1.0, 8, **backend_kwargs(backend)))
    loader = DataLoader(
        data, batch_size=8, num_workers=2, multiprocessing_context=context, persistent_workers=persistent
    )
    for _ in range(epochs):
        for _batch in loader:
            pass


def batched_job(backend) -> None:
    from torch.utils.data import DataLoader

    from dp_pixel_torch import DPPixelize

    layer = DPPixelize(1.0, 8, **backend_kwargs(backend))
    for batch in DataLoader(RandomImages(200), batch_size=8, num_workers=2, multiprocessing_context="fork"):
        layer(batch)


def released_once_job(backend) -> None:
    from torch.utils.data import DataLoader

    from dp_pixel_torch import DPPixelize, ReleasedOnce

    data = ReleasedOnce(RandomImages(200), DPPixelize(1.0, 8, **backend_kwargs(backend)))
    loader = DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork", persistent_workers=True)
    for _ in range(2):
        for _batch in loader:
            pass


def first_call_job(backend) -> None:
    import torch

    from dp_pixel_torch import DPPixelize

    x = torch.randint(0, 256, (3, 1080, 1920), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    DPPixelize(1.0, 8, **backend_kwargs(backend))(x)


def cli_video_job(backend, video: Path, tmp: Path) -> None:
    from dp_pixel_torch.cli import main as cli

    args = [str(video), "-o", str(tmp / "out.avi"), "--epsilon", "1", "--b", "8", "--quiet"]
    assert cli(args + ([] if backend is None else ["--backend", backend])) == 0


def ray_job(backend, tmp: Path) -> None:
    from dp_pixel_torch import DPPixelize
    from dp_pixel_torch.distributed import RunKey, connect, release_files

    connect(quiet=True)
    summary = release_files(
        tmp / "photos", DPPixelize(1.0, 8, **backend_kwargs(backend)), tmp / "out", RunKey.create(), workers=2
    )
    assert summary.items == 200 and not summary.errors, summary


def run_job(name: str, backend: str | None, video: Path) -> float:
    """Time one job in this process: everything it needs on disk is made first, untimed."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if name == "ray":
            sys.path.insert(0, str(HERE))
            from bench_ray import write_photos

            (tmp / "photos").mkdir()
            write_photos(tmp / "photos", 200, 512)
        jobs = {
            "loader-fork": lambda: loader_job(backend, "fork", False, 100, 2),
            "loader-fork-persistent": lambda: loader_job(backend, "fork", True, 100, 2),
            "loader-spawn": lambda: loader_job(backend, "spawn", False, 100, 2),
            "loader-spawn-persistent": lambda: loader_job(backend, "spawn", True, 100, 2),
            "loader-1000": lambda: loader_job(backend, "fork", False, 1000, 1),
            "batched": lambda: batched_job(backend),
            "cli-video": lambda: cli_video_job(backend, video, tmp),
            "first-call": lambda: first_call_job(backend),
            "released-once": lambda: released_once_job(backend),
            "ray": lambda: ray_job(backend, tmp),
        }
        import torch  # noqa: F401 - imported before the clock starts, as every job's process has it

        import dp_pixel_torch  # noqa: F401

        start = time.perf_counter()
        jobs[name]()
        return time.perf_counter() - start


JOBS = [
    "first-call",
    "loader-fork",
    "loader-fork-persistent",
    "loader-spawn",
    "loader-spawn-persistent",
    "loader-1000",
    "batched",
    "released-once",
    "cli-video",
    "ray",
]


def timed(name: str, backend: str | None, cache: Path, video: Path) -> float:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    env.pop("TORCH_COMPILE_DISABLE", None)
    command = [sys.executable, __file__, "--run", name, "--backend", backend or "default", "--video", str(video)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} ({backend or 'default'}) failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=JOBS, default=JOBS)
    parser.add_argument("--video", type=Path, default=VIDEO, help="the video of cli-video (vtest.avi)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the eager and default configurations (median)")
    parser.add_argument("--run", choices=JOBS, help=argparse.SUPPRESS)  # one timed job, in this process
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(run_job(args.run, None if args.backend == "default" else args.backend, args.video))
        return
    jobs = [job for job in args.only if job != "cli-video" or args.video.exists()]
    if "cli-video" in args.only and "cli-video" not in jobs:
        print(f"cli-video skipped: no {args.video} (python experiments/fetch_data.py fetches it)")
    print(f"{os.cpu_count()} CPUs, seconds per job (eager and default: median of {args.repeat} runs)\n")
    header = " | ".join(label for label, _, _ in CONFIGS)
    print(f"| job | {header} | default / eager, cold | default / eager, warm |")
    print("|---" * (len(CONFIGS) + 3) + "|")
    for job in jobs:
        with tempfile.TemporaryDirectory() as warm:
            runs = {label: [] for label, _, _ in CONFIGS}
            for label, backend, cache in CONFIGS + [c for c in CONFIGS if c[1] != "compiled"] * (args.repeat - 1):
                if cache == "cold":
                    with tempfile.TemporaryDirectory() as cold:
                        runs[label].append(timed(job, backend, Path(cold), args.video))
                else:
                    runs[label].append(timed(job, backend, Path(warm), args.video))
            seconds = {label: statistics.median(times) for label, times in runs.items()}
        cells = " | ".join(f"{seconds[label]:.2f}" for label, _, _ in CONFIGS)
        cold = seconds["default, cold"] / seconds["eager"]
        warm = seconds["default, warm"] / seconds["eager"]
        print(f"| {job} | {cells} | {cold:.2f}× | {warm:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
