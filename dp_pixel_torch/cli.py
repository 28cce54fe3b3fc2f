"""``dp-pixel``: DP-pixelize an image, a folder of images or a video file from the command line.

    dp-pixel photo.jpg -o released.png --epsilon 1 --b 8
    dp-pixel frames/ -o released/ --epsilon 0.5 --b 16 --m 4
    dp-pixel clip.mp4 -o released.avi --epsilon 0.1 --levels 8 16 32 --region complexity --partition-epsilon 0.02 \\
        --cap 60 --ledger camera1.sqlite --grids clip.dpxg
    dp-pixel street.mp4 -o released.avi --epsilon 1 --b 8 --protect faces --protect-cell 32
    dp-pixel photo.jpg -o restored.png --epsilon 1 --b 8 --restore denoise
    dp-pixel camera.avi -o released.avi --epsilon 1 --b 8 --protect people,motion --protect-zone doorway.png
    dp-pixel archive/ -o released/ --epsilon 1 --b 8 --ray head:6379 --workers 8 --gpus 1 --key-file run.key
    dp-pixel archive/2024 -o released/ --epsilon 1 --b 8 --ray head:6379 --key-file run.key --resume

Noise comes from a ChaCha20 stream keyed with fresh OS entropy on every call (``secure=True``) unless ``--seed``
asks for a reproducible experiment; under ``--ray`` every item is keyed from the run key, so that retries repeat its
one release (see :mod:`dp_pixel_torch.distributed`). ``--ledger`` keeps the budget of ``--cap`` in a file, so that
successive runs on the same camera share it; a ledger deleted, replaced or rolled back behind its lock file's memory
is refused (exit 3), and ``PrivacyAccountant.reset_ledger`` starts one over on purpose.
``--protect faces`` (or ``people``) finds faces (people) in every ORIGINAL image or frame (faces: the union of the
detectors of ``--face-detectors``, by default ``detectors.FACE_STACK``), grows the boxes by
``--protect-margin`` and releases the cells of ``--protect-cell`` pixels that meet them whole, hiding ``--protect-m``
pixels (default: all of them); the rest gets cells of ``--b``. The boxes are disclosed: the guarantee holds
CONDITIONAL on them, and a face the detector misses gets only the ``--m`` protection. ``motion`` (videos of a fixed
camera) adds the moving foreground; a comma list (``faces,people,motion``) unites the sources. Every frame of a
video is searched whole for faces unless ``--face-every N`` > 1: then whole every N frames and in between only in
crops around what moves and the faces found, enlarged ``--face-scale`` times (``detectors.FaceScan``: sound for a
FIXED camera only). With ``motion``, people (HOG) are searched every ``--people-every`` frames (default 10; more often
while MOG2 is young) and held in between, where motion covers whoever moves (``detectors.PeopleScan``, a FIXED
camera). In a video each region
stays protected ``--protect-persist`` seconds before and after the frame it was found in, and a tracker carries it
through the frames between detections. ``--protect-zone`` adds a fixed mask image drawn once for the camera (non-zero
= protect): the detectors never see its cells, so its part of the guarantee is unconditional; alone, it is the only
region.
``--backend`` picks the kernels (see :mod:`dp_pixel_torch.kernels`): ``auto`` compiles only once a long run has
shown that compiling pays, and never changes the output. An option the input cannot use (``--grids`` on an image,
``--device`` under ``--ray``, ``--workers`` without it) is refused rather than ignored.
``--restore smooth|denoise`` turns the released cells into pixels by interpolation, or by an estimate under the public
noise law (see :mod:`dp_pixel_torch.restoration`); ``--restore temporal`` (videos only) filters every cell over the
frames (see :mod:`dp_pixel_torch.temporal`): post-processing of the release, no ε; ``--grids`` still holds the
released grids. The privacy report is printed at the end. Bad arguments, unreadable input and a budget cap that would be passed exit
with a non-zero status and a one-line message.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from ._validation import check_device, check_epsilon, check_positive_int
from .accounting import BudgetExceededError, LedgerIntegrityError, PrivacyAccountant
from .detectors import (
    FACE_DETECTORS,
    FACE_EVERY,
    FACE_MARGIN,
    FACE_SCALE,
    FACE_STACK,
    PEOPLE_EVERY,
    PEOPLE_MARGIN,
    SOURCES,
    FaceScan,
    PeopleScan,
    ProtectDetected,
    read_zone,
    region_source,
)
from .distributed import content_digest, file_digest
from .kernels import BACKENDS, compiler_available
from .mechanisms import DPPixelize, RegionAdaptiveDPPixelize
from .storage import NoisyGridFormatError
from .tracking import PERSIST
from .video import (
    IMAGE_SUFFIXES,
    STREAM_METHODS,
    VIDEO_SUFFIXES,
    decode_image,
    import_cv2,
    probe,
    read_image,
    sanitize_stream,
    to_bgr,
)

WRITABLE = (".png", ".jpg", ".jpeg")
CHUNK = 16


def sources(text: str) -> tuple[str, ...]:
    """``--protect``: a comma list of :data:`~dp_pixel_torch.detectors.SOURCES`, each once."""
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in SOURCES]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"give a comma list of {', '.join(SOURCES)}, each once (e.g. faces,people,motion), got {text!r}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dp-pixel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", type=Path, help="an image, a folder of images, or a video file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image, folder or video file")
    p.add_argument("--epsilon", type=float, required=True, help="ε per image or frame (cells)")
    p.add_argument("--b", type=int, help="cell side in pixels (uniform cells)")
    p.add_argument("--m", type=int, default=1, help="pixels that may differ between neighbours (default 1)")
    p.add_argument("--noise", choices=("discrete", "laplace"), default="discrete")
    p.add_argument("--levels", type=int, nargs="+", help="region-adaptive cell sizes, e.g. 8 16 32 (instead of --b)")
    p.add_argument("--region", choices=("complexity", "previous"), help="partition source for --levels")
    p.add_argument("--partition-epsilon", type=float, help="ε for the complexity scores (--region complexity)")
    p.add_argument(
        "--protect",
        type=sources,
        metavar="SOURCES",
        help="hide the faces (a stack of detectors), people (HOG) and/or motion (MOG2, videos) found in each image or "
        "frame, e.g. faces,people,motion; a missed one gets only --m",
    )
    p.add_argument(
        "--face-detectors",
        type=lambda text: tuple(name.strip() for name in text.split(",")),
        metavar="NAMES",
        help=f"--protect faces: the detectors united, a comma list of {', '.join(FACE_DETECTORS)} "
        f"(default {','.join(FACE_STACK)}; yunet alone is the fastest)",
    )
    p.add_argument(
        "--face-every",
        type=int,
        metavar="N",
        help=f"videos of a fixed camera, --protect faces: search each N-th frame whole and, in between, only crops "
        f"around what moves and the faces found before, e.g. {FACE_EVERY} (default 1: every frame whole)",
    )
    p.add_argument(
        "--face-scale",
        type=float,
        help=f"--face-every > 1: enlarge the crops this many times before the search, for small faces "
        f"(default {FACE_SCALE:g})",
    )
    p.add_argument(
        "--people-every",
        type=int,
        metavar="N",
        help=f"videos of a fixed camera, --protect people,motion: search people (HOG) in each N-th frame and hold the "
        f"boxes in between, where motion covers whoever moves (default {PEOPLE_EVERY} with motion, else 1)",
    )
    p.add_argument(
        "--protect-zone",
        type=Path,
        metavar="MASK",
        help="a mask image of the frames' size drawn once for the camera (non-zero = protect): always protected, "
        "unconditionally",
    )
    p.add_argument(
        "--protect-persist",
        type=float,
        metavar="SECONDS",
        help=f"videos: keep each detected region this long before and after its frame, tracked between detections "
        f"(default {PERSIST})",
    )
    p.add_argument(
        "--protect-cell", type=int, help="side in pixels of the protected cells, a multiple of --b (default 4·b)"
    )
    p.add_argument(
        "--protect-m", type=int, help="pixels hidden inside the protected cells, >= --m (default: all of them)"
    )
    p.add_argument(
        "--protect-margin",
        type=float,
        help=f"grow each box by this fraction of its size per side (default {FACE_MARGIN} faces, {PEOPLE_MARGIN} people)",
    )
    p.add_argument("--cap", type=float, help="refuse to spend more than this ε over the whole run (all frames)")
    p.add_argument(
        "--ledger", type=Path, help="keep the budget in this SQLite ledger, shared with other runs and processes"
    )
    p.add_argument("--fps", type=float, help="frame rate of the output video (default: the input's)")
    p.add_argument("--grids", type=Path, help="also write the NoisyGrid records of a video to this file")
    p.add_argument("--chunk", type=int, help=f"frames per release for videos (bounded memory; default {CHUNK})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: compile the kernels only once a long run has shown it pays (default); compiled; eager",
    )
    p.add_argument("--seed", type=int, help="reproducible noise for experiments (never in deployment)")
    p.add_argument(
        "--restore",
        choices=STREAM_METHODS,
        default="fill",
        help="how released cells become pixels: fill (flat cells, default), smooth, denoise under the public "
        "noise law, or temporal (videos: a Kalman filter per cell over the frames); post-processing, no ε",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="release a folder or list of files on Ray Data: a local instance, or the cluster at host:port",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        help="--ray: the run key file, created with the run's input root, output and guarantee if missing",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="--ray: continue the run of an existing --key-file (any folder or files inside its input root)",
    )
    p.add_argument("--workers", type=int, help="--ray: actors that hold the layer (default 1)")
    p.add_argument("--gpus", type=float, help="--ray: GPUs per actor (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def make_layer(args: argparse.Namespace, accountant: PrivacyAccountant | None, fps: float | None = None):
    """The layer of the arguments; ``fps``: the input video's frame rate (persistence), None for images."""
    if args.ray is not None:  # every item is keyed from the run key (distributed.RunKey), a CSPRNG
        randomness = {}
    else:
        randomness = {"seed": args.seed} if args.seed is not None else {"secure": True}
    if args.noise == "laplace" and args.seed is None:
        raise ValueError("--noise laplace is not hardened and needs --seed (an experiment); use the default discrete")
    common = dict(noise=args.noise, accountant=accountant, backend=args.backend, **randomness)
    for option, value, does in (
        ("--face-detectors", args.face_detectors, "picks the detectors of"),
        ("--face-every", args.face_every, "sets how often a video is searched whole for"),
        ("--people-every", args.people_every, "sets how often a video is searched for"),
    ):
        source = "people" if option == "--people-every" else "faces"
        if value is not None and source not in (args.protect or ()):
            raise ValueError(f"{option} {does} --protect {source}")
    if args.face_scale is not None and (args.face_every or 1 if fps is not None else 1) == 1:
        raise ValueError("--face-scale enlarges the crops searched between full searches: it needs --face-every > 1")
    if args.protect or args.protect_zone is not None:
        return protect_layer(args, common, fps)
    if args.protect_cell is not None or args.protect_m is not None or args.protect_margin is not None:
        raise ValueError("--protect-cell, --protect-m and --protect-margin apply to --protect or --protect-zone")
    if args.levels:
        if args.b is not None:
            raise ValueError("give --b or --levels, not both")
        if args.region is None:
            raise ValueError("--levels needs --region complexity or previous")
        return RegionAdaptiveDPPixelize(
            args.epsilon,
            args.m,
            levels=tuple(args.levels),
            region=args.region,
            partition_epsilon=args.partition_epsilon,
            **common,
        )
    if args.b is None:
        raise ValueError("give --b (cell side in pixels) or --levels")
    if args.region is not None or args.partition_epsilon is not None:
        raise ValueError("--region and --partition-epsilon apply to --levels")
    return DPPixelize(args.epsilon, args.b, args.m, **common)


def protect_layer(args: argparse.Namespace, common: dict, fps: float | None) -> ProtectDetected:
    """``--protect``/``--protect-zone``: cells of ``--b`` and protected cells of ``--protect-cell``, regions from the
    sources (persisting ``--protect-persist`` seconds in a video of ``fps``) and the zone."""
    if args.levels or args.region is not None or args.partition_epsilon is not None:
        raise ValueError(
            "--protect sets the cells from --b and --protect-cell; drop --levels/--region/--partition-epsilon"
        )
    if args.b is None:
        raise ValueError("--protect needs --b (cell side in pixels outside the protected regions)")
    every = (args.face_every or 1) if fps is not None else 1
    scale = FACE_SCALE if args.face_scale is None else args.face_scale
    faces = args.face_detectors or FACE_STACK
    motion = "motion" in (args.protect or ()) and fps is not None
    people_every = args.people_every or (PEOPLE_EVERY if motion else 1)
    if people_every > 1 and not motion:
        raise ValueError(
            "--people-every > 1 needs --protect motion too (a video): the people who move between HOG searches are "
            "covered by motion only"
        )
    chosen = [
        region_source(name, faces=faces, every=every, scale=scale, people_every=people_every)
        for name in args.protect or ()
    ]
    if args.protect_margin is not None:
        if not any(source.margin for source in chosen):
            raise ValueError("--protect-margin grows the boxes of --protect faces or people")
        chosen = [replace(s, margin=args.protect_margin) if s.margin else s for s in chosen]
    zone = None if args.protect_zone is None else read_zone(args.protect_zone)
    cell = 4 * args.b if args.protect_cell is None else args.protect_cell
    if cell <= args.b or cell % args.b:
        raise ValueError(f"--protect-cell must be a multiple of --b = {args.b} larger than it, got {cell}")
    layer = RegionAdaptiveDPPixelize(
        args.epsilon,
        args.m,
        levels=(args.b, cell),
        protect=True,
        protect_m=args.protect_m,
        region_from="public+detector" if chosen and zone is not None else "detector" if chosen else "public",
        **common,
    )
    persist = (PERSIST if args.protect_persist is None else args.protect_persist) if fps is not None and chosen else 0
    return ProtectDetected(layer, sources=chosen, zone=zone, persist=persist, fps=fps)


def check_options(args: argparse.Namespace, kind: str) -> None:
    """Refuse an option that the input ``kind`` ("image", "folder", "video" or "ray") cannot use, or a value out of
    range, before anything is read or charged: an option silently ignored would release what the user did not ask."""
    given = {
        "--chunk": args.chunk is not None,
        "--device": args.device is not None,
        "--fps": args.fps is not None,
        "--grids": args.grids is not None,
        "--workers": args.workers is not None,
        "--gpus": args.gpus is not None,
        "--protect-persist": args.protect_persist is not None,
        "--face-every": args.face_every is not None,
        "--people-every": args.people_every is not None,
    }
    usable = {
        "image": ("--device",),
        "folder": ("--device",),
        "video": ("--chunk", "--device", "--fps", "--grids", "--protect-persist", "--face-every", "--people-every"),
        "ray": ("--chunk", "--workers", "--gpus"),
    }[kind]
    unusable = [name for name, present in given.items() if present and name not in usable]
    if unusable:
        what = {"image": "an image", "folder": "a folder of images", "video": "a video", "ray": "--ray"}[kind]
        raise ValueError(f"{', '.join(unusable)} cannot apply to {what}: it takes {', '.join(usable)}")
    if args.chunk is not None:
        check_positive_int(args.chunk, "--chunk")
    if args.face_every is not None:
        check_positive_int(args.face_every, "--face-every")
    if args.people_every is not None:
        check_positive_int(args.people_every, "--people-every")
    if args.face_scale is not None and not 1 <= args.face_scale < float("inf"):
        raise ValueError(
            f"--face-scale must be a finite number >= 1 (crops are enlarged, never shrunk), got {args.face_scale}"
        )
    if args.device is not None:
        check_device(args.device)
    if args.fps is not None:
        check_epsilon(args.fps, "--fps")  # a finite number > 0
    if args.workers is not None:
        check_positive_int(args.workers, "--workers")
    if args.gpus is not None and not 0 <= args.gpus < float("inf"):
        raise ValueError(f"--gpus must be a finite number >= 0, got {args.gpus}")
    if "motion" in (args.protect or ()) and kind != "video":
        raise ValueError("--protect motion finds what moves in a video from a fixed camera, not in images")
    if args.protect_persist is not None and not args.protect:
        raise ValueError("--protect-persist keeps the regions of --protect sources; a zone is always protected")


def _names(path: Path) -> list[tuple]:
    """What identifies the file at ``path``: its resolved path, and (if it exists) its device and inode, which a
    symlink or a hard link shares."""
    names: list[tuple] = [("path", path.resolve())]
    try:
        info = path.stat()
    except OSError:
        return names
    return [*names, ("inode", info.st_dev, info.st_ino)]


def check_outputs(inputs: Iterable[Path], outputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse, before anything is read or charged, an output that is one of the ``inputs`` (writing it would destroy
    an original) or two ``(what, path)`` outputs that are one file by path, symlink or hard link (one would overwrite
    the other, while both were charged). Linear in the number of files."""
    owner: dict[tuple, str] = {}
    for source in inputs:
        for name in _names(source):
            owner.setdefault(name, f"the input {str(source)!r}")
    clashes = []
    for what, path in outputs:
        names = _names(path)
        taken = next((owner[name] for name in names if name in owner), None)
        if taken is not None and taken.startswith("the input"):
            raise ValueError(
                f"{what} {str(path)!r} is {taken}: writing it would destroy the original; choose another output"
            )
        if taken is not None:
            clashes.append(f"{taken} and {what} would both be written to {str(path)!r}")
        for name in names:
            owner.setdefault(name, what)
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise ValueError(f"{'; '.join(clashes[:3])}{more}: one would overwrite the other; nothing was released")


def write_image(image: torch.Tensor, path: Path) -> None:
    if path.suffix.lower() not in WRITABLE:
        raise ValueError(f"output image must end in one of {WRITABLE}, got {path.name!r}")
    cv2 = import_cv2()
    path.parent.mkdir(parents=True, exist_ok=True)
    quality = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), to_bgr(image), quality):
        raise ValueError(f"cannot write image {str(path)!r}")


def run_on_ray(args: argparse.Namespace) -> str:
    """``--ray``: every image and video of the input, each released exactly once under the run key."""
    from .distributed import RunKey, claim_output, connect, list_items, release_files

    if args.restore != "fill":
        raise ValueError("--restore applies to images, folders and videos released here, not under --ray")
    if args.seed is not None or args.cap is not None or args.ledger is not None or args.grids is not None:
        raise ValueError(
            "--ray keys every item from its run key and writes a record per item: drop --seed, --cap, "
            "--ledger and --grids (the summary reports ε per item and frame)"
        )
    check_options(args, "ray")
    layer = make_layer(args, None)
    if args.key_file is not None and args.key_file.exists():
        if not args.resume:
            run = RunKey.load(args.key_file).run or {}
            raise ValueError(
                f"{args.key_file} holds the key of the run of {run.get('root')!r} into {run.get('output')!r}: pass "
                "--resume to continue that run, or give a new --key-file for a new run"
            )
        key, where = RunKey.load(args.key_file), f"resumed the run in {args.key_file}"
        key.bind(args.input, args.output, layer, args.chunk or CHUNK)  # refuses another root, output or layer
    else:
        if args.resume:
            raise ValueError("--resume continues the run of an existing --key-file; give one")
        list_items(args.input)  # a source with nothing to release is refused before a key is saved for it
        key = RunKey.create()
        key.bind(args.input, args.output, layer, args.chunk or CHUNK)
        claim_output(args.output, key, claim=False)  # an output of another run is refused before a key is saved
        if args.key_file is not None:
            args.key_file.parent.mkdir(parents=True, exist_ok=True)
            key.save(args.key_file)
        where = f"key saved to {args.key_file} (keep it secret)" if args.key_file else "key not saved: no resume"
    connect(args.ray, quiet=args.quiet)
    summary = release_files(
        args.input,
        layer,
        args.output,
        key,
        workers=args.workers or 1,
        num_gpus=args.gpus or 0.0,
        chunk=args.chunk or CHUNK,
    )
    text = f"{summary}\nRun key {key.fingerprint}: {where}; outputs in {args.output}"
    if summary.errors:
        raise ValueError(text)
    return text


def released(layer, image: torch.Tensor, method: str) -> torch.Tensor:
    """The layer's released image, restored by ``method`` from its release (post-processing)."""
    return layer(image) if method == "fill" else layer.release(image).restore(method)


def run(args: argparse.Namespace) -> str:
    if args.ray is not None:
        return run_on_ray(args)
    if args.key_file is not None or args.resume:
        raise ValueError("--key-file and --resume apply to --ray (a run whose items are keyed from its run key)")
    source = args.input
    if not source.exists():
        raise ValueError(f"input {str(source)!r} does not exist")
    kind = "folder" if source.is_dir() else "video" if source.suffix.lower() in VIDEO_SUFFIXES else "image"
    check_options(args, kind)
    if args.restore == "temporal" and kind != "video":
        what = "an image" if kind == "image" else "a folder of images"
        raise ValueError(
            f"--restore temporal filters the frames of a video over time, not {what}: use --restore denoise"
        )
    if kind == "folder":
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"folder {str(source)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if args.output.exists() and args.output.samefile(source):
            raise ValueError(
                f"-o {str(args.output)!r} is the input folder: the releases would lie beside the originals, and a "
                "later run would take them as inputs; choose another folder"
            )
        targets = {path: args.output / (path.stem + ".png") for path in images}
        inputs, outputs = images, [(repr(path.name), target) for path, target in targets.items()]
    else:
        inputs, outputs = [source], [("-o", args.output)] + ([] if args.grids is None else [("--grids", args.grids)])
    if args.ledger is not None:  # the ledger, its lock file and SQLite's journals beside it
        outputs += [("--ledger", args.ledger)]
        outputs += [
            (f"the ledger's {end} file", Path(f"{args.ledger}{end}")) for end in (".lock", "-wal", "-shm", "-journal")
        ]
    check_outputs(inputs, outputs)
    if args.ledger is None and args.cap is None:
        accountant = None
    else:
        accountant = PrivacyAccountant(args.cap, ledger=args.ledger)
    layer = make_layer(args, accountant, probe(source).fps if kind == "video" else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend == "compiled" and not compiler_available(torch.device(device)):
        raise ValueError(
            f"--backend compiled needs torch.compile on {device} (a C++ compiler for the CPU, Triton for CUDA) and "
            "none works here; use --backend auto, which runs eagerly where compiling does not work or pay"
        )
    if kind == "folder":
        copies: dict[bytes, list[Path]] = {}  # one image, one release: byte-identical files share theirs
        for path in images:
            copies.setdefault(file_digest(path), []).append(path)
        changed, releases = [], 0
        for digest, paths in copies.items():
            data = paths[0].read_bytes()  # released from the very bytes its copies were matched by
            if content_digest(data) != digest:
                changed += paths
                continue
            image = released(layer, decode_image(data, str(paths[0])).to(device), args.restore)
            releases += 1
            for path in paths:
                write_image(image, targets[path])
        written = len(images) - len(changed)
        summary = f"{written} images written to {args.output}"
        if releases < written:
            summary += (
                f" ({written - releases} byte-identical copies got the release of the image they copy, under their "
                f"own names: {releases} releases, ε spent once per distinct image)"
            )
        if changed:
            summary += f"; {len(changed)} changed while the folder was read, skipped: " + ", ".join(
                repr(p.name) for p in changed
            )
    elif kind == "video":
        report = sanitize_stream(
            source,
            layer,
            args.output,
            grids=args.grids,
            fps=args.fps,
            chunk=args.chunk or CHUNK,
            device=device,
            progress=not args.quiet,
            restore=args.restore,
        )
        summary = f"{report}; video written to {args.output}" + (f", grids to {args.grids}" if args.grids else "")
    else:
        write_image(released(layer, read_image(source).to(device), args.restore), args.output)
        summary = f"image written to {args.output}"
    if isinstance(layer, ProtectDetected):
        summary += protect_summary(layer, args.face_detectors or FACE_STACK if "faces" in (args.protect or ()) else ())
    spent = "" if accountant is None else f"\nAccountant: {accountant}"
    text = f"{summary}\nPrivacy report: {layer.guarantee.report(3)}{spent}"  # images and frames are read as RGB
    if kind == "folder" and changed:
        raise ValueError(text)
    return text


def protect_summary(layer: ProtectDetected, faces: tuple[str, ...] = ()) -> str:
    """What the sources (the face detectors ``faces`` united) found and the zone covered, for the summary."""
    text = f"\nfaces: the union of the detectors {', '.join(faces)}" if faces else ""
    scans = [s.detect for s in layer.sources if isinstance(s.detect, FaceScan)]
    for scan in scans:
        text += (
            f"; searched whole every {scan.every} frames or where motion covered over {scan.fallback:g} of the frame "
            f"({scan.full_frames} frames), in between only in crops enlarged {scan.scale:g}× around motion and the "
            f"faces found ({scan.crop_frames} frames): a face that appears between full searches without moving is "
            "missed, so this holds for a FIXED camera only (--face-every 1 searches every frame whole)"
        )
    for scan in (s.detect for s in layer.sources if isinstance(s.detect, PeopleScan) and s.detect.every > 1):
        text += (
            f"\npeople: searched (HOG) every {scan.every} frames ({scan.searches} searches), boxes held in between, "
            "where motion covers whoever moved: for a FIXED camera only (--people-every 1 searches every frame)"
        )
    if layer.sources:
        kept = ""
        if layer.k:
            kept = (
                f"; persistence ({layer.persist:g} s = {layer.k} frames each side) and tracking protected "
                f"{layer.bridged} more"
            )
        each = ", ".join(f"{s.name} {n} in {k}" for s, n, k in zip(layer.sources, layer.found_by, layer.frames_with_by))
        text += (
            f"\n{','.join(s.name for s in layer.sources)}: {layer.found} found and protected in {layer.frames_with} "
            f"of {layer.frames} images/frames ({each}){kept}; any the detectors missed have only the --m protection"
        )
    if layer.zone is not None:
        text += (
            f"\nzone: {int(layer.zone.sum())} pixels, protected in every frame unconditionally (public, never seen by "
            "the detectors)"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(run(args))
    except BudgetExceededError as error:
        print(f"dp-pixel: budget cap reached, stopped: {error}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, OSError, ImportError, NoisyGridFormatError, sqlite3.Error) as error:
        print(f"dp-pixel: error: {error}", file=sys.stderr)
        return 2
    except LedgerIntegrityError as error:
        print(f"dp-pixel: ledger refused, stopped: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
