"""Face re-identification attack: how well three attackers recognise faces in each kind of release.

    python experiments/reid_attack.py [faces=lfw_views|celeba] [attack=smoke|celeba_gpu] [key=value ...]

Config: conf/reid_attack.yaml (groups faces/, mechanism/, attack/). For every condition (original, plain
pixelization, Gaussian blur, DP-Pix over ε, b, m, region-adaptive DP-Pix with the face box as its public mask, and
protected faces: the face box in coarse cells hiding m_r pixels) the train and test faces are released independently,
then attacked by
  naive:    a classifier trained on clean train faces, tested on released test faces;
  adaptive: the same architecture trained on released train faces, tested on released test faces;
  linkage:  dlib's pretrained face embedding, linking released test faces to the clean gallery (rank-1, rank-5).
With the LFW faces the full astronaut photo is released too: its face is linked, and its MSE and PSNR are measured
inside and outside the face box (the LFW face box is the whole crop, so it has no outside).
``restore=[fill,denoise]`` attacks every DP-Pix and protected condition once per method: the attacker restores each
release it sees (train, test, astronaut) from the release and its public guarantee and face box alone
(:meth:`NoisyGrid.restore <dp_pixel_torch.storage.NoisyGrid.restore>`); the seeded layers draw the same noise for
every method, so the methods are compared on the same releases. The default, ``[fill]``, attacks the releases as
they are.
``faces=lfw_scenes mechanisms.dp_protect.regions=[annotation,detector]`` pastes the faces into real scenes and runs
the protected conditions twice on them: with the true face boxes, and with the boxes :func:`detect_faces` finds in
each original scene; the report counts the faces the detector missed and each attacker's top-1 on them.
Writes results.csv, report.md, attack_vs_privacy.png and examples.png into the Hydra run dir.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import sys
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from run import make_release, released_frames, settings, table  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dp_pixel_torch import (  # noqa: E402
    DPPixelize,
    MultiLevelGrid,
    NoisyGrid,
    PrivacyGuarantee,
    RegionAdaptiveDPPixelize,
    Restore,
)
from dp_pixel_torch.attacks import (  # noqa: E402
    ClassifierConfig,
    FaceEmbedder,
    above_chance,
    linkage_ranks,
    split_identities,
    top_k_accuracy,
    train_classifier,
)
from dp_pixel_torch.datasets import CelebA  # noqa: E402
from dp_pixel_torch.detectors import FACE_MARGIN, boxes_mask, detect_faces, dilate_boxes  # noqa: E402
from dp_pixel_torch.functional import public_split  # noqa: E402
from dp_pixel_torch.metrics import masked_scores, psnr, ssim  # noqa: E402
from dp_pixel_torch.restoration import METHODS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from face_detector_recall import IOU, paste  # noqa: E402

ATTACKERS = ("naive", "adaptive", "linkage")
REGIONS = ("annotation", "detector")
ASTRONAUT_FACE = (175, 70, 268, 163)  # XYXY in skimage.data.astronaut()


def by_detection(row: dict, attacker: str, top1, found: torch.Tensor | None) -> None:
    """Into ``row``: ``attacker``'s top-1 (``top1(subset)`` of a bool subset of the test faces) on the faces the
    detector missed and on those it found (NaN for none); nothing without detections (``found`` None)."""
    if found is not None:
        for what, subset in (("missed", ~found), ("found", found)):
            row[f"{attacker}_top1_{what}"] = top1(subset) if subset.any() else math.nan


def face_scores(original: torch.Tensor, releases: torch.Tensor, face: torch.Tensor) -> dict[str, float]:
    """Mean MSE and PSNR of ``releases`` of one image inside the ``face`` mask and outside it."""
    scores = [masked_scores(original, r, face) for r in releases]
    return {
        f"{where}_{metric}": float(np.mean([s[f"{side}_{metric}"] for s in scores]))
        for where, side in (("face", "inside"), ("outside", "outside"))
        for metric in ("psnr", "mse")
    }


# --- faces --------------------------------------------------------------------------------------------------------


def lfw_views(cfg: DictConfig) -> dict:
    """The real LFW crops inside scikit-image (no identity labels): each face is its own identity, and its train and
    test images are random views (crop, brightness, contrast) of the one photo, upscaled to ``size``."""
    f = cfg.faces
    photos = (skimage.data.lfw_subset()[: f.faces] * 255).round().astype(np.uint8)  # the first 100 are faces
    photos = torch.from_numpy(
        np.stack([cv2.resize(p, (f.size, f.size), interpolation=cv2.INTER_CUBIC) for p in photos])
    )[:, None]
    view = v2.Compose(
        [v2.RandomResizedCrop(f.size, scale=(0.8, 1.0), ratio=(0.9, 1.1)), v2.ColorJitter(brightness=0.3, contrast=0.3)]
    )
    torch.manual_seed(cfg.seed)

    def views(n):
        return torch.stack([view(p) for _ in range(n) for p in photos]), torch.arange(len(photos)).repeat(n)

    (train, train_labels), (test, test_labels) = views(f.train_views), views(f.test_views)
    whole = torch.tensor([0.0, 0.0, f.size - 1, f.size - 1])
    faces = {
        "train": train,
        "train_labels": train_labels,
        "train_boxes": whole.expand(len(train), 4),
        "test": test,
        "test_labels": test_labels,
        "test_boxes": whole.expand(len(test), 4),
        "gallery": photos,
        "gallery_labels": torch.arange(len(photos)),
        "gallery_boxes": whole.expand(len(photos), 4),
        "protocol": (
            f"{len(photos)} real LFW faces (scikit-image's lfw_subset, 25×25 upscaled to {f.size}×{f.size}, grey), "
            f"each its own identity: {f.train_views} train and {f.test_views} test views per face (random crop of "
            "80–100% area, brightness and contrast ±30%). This is image-level re-identification: the train and test "
            "views come from the same photo, so it is easier than recognising a person in a new photo, and the "
            f"adaptive attacker sees {f.train_views} fresh releases of each photo. The linkage gallery holds the "
            "clean photos; the face box is the whole crop."
        ),
    }
    if f.astronaut_releases:
        faces["astronaut"] = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).contiguous()
    return faces


def scene_backgrounds(cfg: DictConfig) -> list[np.ndarray]:
    """RGB scenes of one size: 10 PETS2009 frames 20 apart, or scikit-image's coffee photo."""
    if cfg.faces.background == "skimage":
        return [skimage.data.coffee()]
    path = Path(cfg.data_dir) / "pets2009" / "vtest.avi"
    capture, frames = cv2.VideoCapture(str(path)), []
    for index in range(200):
        ok, bgr = capture.read()
        if not ok:
            raise FileNotFoundError(f"{path}: fewer than 200 frames (faces.background=skimage needs no data)")
        if index % 20 == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def lfw_scenes(cfg: DictConfig) -> dict:
    """The views of :func:`lfw_views`, ``per_frame`` to a scene, each resized to one of ``sizes`` and turned by one of
    ``tilts`` (one size and tilt per scene, in turn). The attackers' faces are the true squares cut from the scenes
    and resized back to ``size``; ``scenes[split]`` holds the scenes (``frames``), the true boxes per scene
    (``truths``), the face boxes a perfect detector would give (``annotation``: the truths grown by FACE_MARGIN, as
    ProtectDetected grows a detection), and per face ``where`` (scene index, true box) and ``look`` (size, tilt)."""
    f = cfg.faces
    faces = lfw_views(cfg)
    faces.pop("astronaut", None)
    backgrounds = scene_backgrounds(cfg)
    height, width = backgrounds[0].shape[:2]
    looks = list(itertools.product(f.sizes, f.tilts))
    faces["scenes"] = {}
    for split in ("train", "test"):
        frames, truths, where, look = [], [], [], []
        for start in range(0, len(faces[split]), f.per_frame):
            size, tilt = looks[len(frames) % len(looks)]
            places = [(x, y) for y in range(size, height - size, 2 * size) for x in range(size, width - size, 2 * size)]
            views = faces[split][start : start + f.per_frame]
            if len(views) > len(places):
                raise ValueError(f"faces.per_frame={f.per_frame}: a {width}×{height} scene holds {len(places)} faces")
            scene = backgrounds[len(frames) % len(backgrounds)].copy()
            boxes = [
                paste(scene, np.ascontiguousarray(v.expand(3, -1, -1).permute(1, 2, 0).numpy()), size, tilt, place)
                for v, place in zip(views, places[:: len(places) // len(views)])
            ]
            truths.append(torch.tensor(boxes))
            where += [(len(frames), box) for box in boxes]
            look += [(size, tilt)] * len(boxes)
            frames.append(torch.from_numpy(scene).permute(2, 0, 1).contiguous())
        frames = torch.stack(frames)
        faces[split] = face_crops(frames, where, f.size)
        faces["scenes"][split] = {
            "frames": frames,
            "truths": truths,
            "annotation": [dilate_boxes(t, FACE_MARGIN, height, width) for t in truths],
            "where": where,
            "look": look,
        }
    faces["protocol"] += (
        f" Each view is pasted into a {'PETS2009 frame' if f.background == 'pets2009' else 'photo'} ({width}×{height}), "
        f"{f.per_frame} a scene, at {' or '.join(map(str, f.sizes))} px turned by {', '.join(f'{t}°' for t in f.tilts)}; "
        f"every condition releases the scene, and the attackers see the face square cut from the release, resized to "
        f"{f.size}×{f.size}."
    )
    return faces


def face_crops(frames: torch.Tensor, where: list, size: int) -> torch.Tensor:
    """The square of each ``(scene index, XYXY box)`` of ``where`` cut from ``frames`` and resized to ``size``."""
    crops = []
    for index, (x0, y0, x1, y1) in where:
        crop = frames[index][:, round(y0) : round(y1), round(x0) : round(x1)]
        crops.append(v2.functional.resize(crop, [size, size], antialias=True))
    return torch.stack(crops)


def detect(scenes: dict) -> None:
    """Run :func:`detect_faces` on every ORIGINAL scene: ``detector`` holds its boxes grown by FACE_MARGIN (what
    ProtectDetected protects), ``found`` whether each face was found (IoU >= 0.3 with a detected box, as in
    ``benchmarks/face_detector_recall.py``)."""
    height, width = scenes["frames"].shape[-2:]
    detected = [detect_faces(frame) for frame in tqdm(scenes["frames"], desc="detecting faces", leave=False)]
    scenes["detector"] = [dilate_boxes(d, FACE_MARGIN, height, width) for d in detected]
    scenes["found"] = torch.tensor(
        [
            len(detected[i]) > 0 and bool(box_iou(torch.tensor([box]), detected[i]).max() >= IOU)
            for i, box in scenes["where"]
        ]
    )


def celeba(cfg: DictConfig) -> dict:
    """CelebA aligned faces: identities with at least ``min_images`` images, split per identity; the fixed public
    ``crop`` of the aligned image is what gets released."""
    f = cfg.faces
    data = CelebA(f.root)
    split = split_identities(
        data.identities,
        min_images=f.min_images,
        test_fraction=f.test_fraction,
        max_identities=f.max_identities,
        seed=cfg.seed,
    )
    top, left, height, width = f.crop
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)

    def load(indices):
        items = [data[i] for i in tqdm(indices, desc="reading CelebA", unit="img", leave=False)]
        images = torch.stack([image[:, top : top + height, left : left + width] for image, _ in items])
        boxes = torch.cat([t["boxes"] for _, t in items]) - shift
        return images, boxes.clamp(min=0).minimum(torch.tensor([width - 1, height - 1] * 2, dtype=torch.float32))

    train, train_boxes = load(split.train)
    test, test_boxes = load(split.test)
    per_identity = f.gallery_per_identity or len(train)
    labels = split.train_labels  # grouped by identity, in increasing order
    in_gallery = torch.arange(len(labels)) - torch.searchsorted(labels, labels) < per_identity
    return {
        "train": train,
        "train_labels": split.train_labels,
        "train_boxes": train_boxes,
        "test": test,
        "test_labels": split.test_labels,
        "test_boxes": test_boxes,
        "gallery": train[in_gallery],
        "gallery_labels": split.train_labels[in_gallery],
        "gallery_boxes": train_boxes[in_gallery],
        "protocol": (
            f"CelebA aligned, the {len(split.identities)} first identities with at least {f.min_images} images; "
            f"{len(split.train)} train and {len(split.test)} test images (test fraction {f.test_fraction} per "
            f"identity), crop {height}×{width} at ({top}, {left}). Face boxes come from the aligned landmarks. The "
            f"linkage gallery holds {int(in_gallery.sum())} clean train images (up to {per_identity} per identity)."
        ),
    }


# --- conditions ---------------------------------------------------------------------------------------------------


def conditions(cfg: DictConfig):
    """(name, ε, b, m, m_r, restore, release, privacy report, regions) for every condition (m_r: the pixels hidden
    inside the protected face cells, an int or "all", None without protection; restore: the method the attacker
    restores the releases by, one per ``cfg.restore`` for uniform and protected DP-Pix, None for the others; regions:
    the boxes the release gets, "annotation" or, for protected faces, "detector" too, per ``regions``, named
    ``<name>[detector]``); ``release(images, boxes)`` releases each image independently (boxes: ``[4]`` or ``[K, 4]``
    per image)."""
    original = (lambda images, boxes: images.clone()), "the original images: NOT private"
    yield "original", None, None, None, None, None, *original, "annotation"
    for name, mech, regions in mechanism_regions(cfg):
        for eps, b, m, m_r in settings(mech, cfg.grid):
            guarantee = public_guarantee(mech, eps, b, m, m_r)
            for method in [None] if guarantee is None else cfg.restore:
                frames_release, report = make_release(mech, eps, b, m, cfg.seed, m_r)  # seeded: the same noise
                if guarantee is not None and str(guarantee) != report:
                    raise ValueError(f"{name}: the public guarantee {guarantee} is not the release's ({report})")
                restore = None if method in (None, "fill") else restorer(guarantee, method)

                def release(images, boxes, frames_release=frames_release, restore=restore):
                    regions = [{"boxes": box[None] if box.ndim == 1 else box} for box in boxes]
                    released = torch.stack(released_frames(frames_release(list(images), regions)))
                    return released if restore is None else restore(released, boxes)

                yield name, eps, b, m, m_r, method, release, report, regions


def mechanism_regions(cfg: DictConfig):
    """(name, mechanism, regions) for every mechanism: protected faces once per ``regions`` entry, the detector-driven
    one as ``<name>[detector]`` with ``region_from="detector"`` (its guarantee is conditional on the detections)."""
    for name, mech in cfg.mechanisms.items():
        if mech is None:
            continue
        regions = list(mech.get("regions") or ["annotation"])
        if set(regions) - set(REGIONS):
            raise ValueError(f"{name}.regions: unknown {sorted(set(regions) - set(REGIONS))}; choose from {REGIONS}")
        for source in regions:
            if source == "annotation":
                yield name, mech, source
            else:
                yield f"{name}[detector]", OmegaConf.merge(mech, {"region_from": "detector"}), source


def public_guarantee(mech: DictConfig, eps, b, m, m_r) -> PrivacyGuarantee | None:
    """The public guarantee of a uniform (``dp``) or protected (``protect``) DP-Pix condition, as the layer of
    :func:`run.make_release` states it; None for the other mechanisms, which are attacked unrestored."""
    if mech.kind == "dp":
        return DPPixelize(eps, b, m, noise=mech.noise, border=mech.border).guarantee
    if mech.kind == "protect":
        protect_m = None if m_r == "all" else m_r
        levels = (b, mech.coarse * b)
        return RegionAdaptiveDPPixelize(
            eps, m, levels=levels, protect=True, protect_m=protect_m, region_from=mech.region_from
        ).guarantee
    return None


def restorer(guarantee: PrivacyGuarantee, method: str):
    """``restore(released, boxes)``: the attacker's restoration of released uint8 images ``[N, C, H, W]`` by
    ``method``, from what is public alone: the images, ``guarantee`` and the face ``boxes`` (XYXY ``[N, 4]``), which
    give a protected release its cells. The cell values are read back from the images (each cell is filled with its
    value) into the release's :class:`NoisyGrid`, which is restored under its public noise law."""
    if guarantee.levels is None:
        return lambda released, boxes: Restore(guarantee, method)(released)

    def restore(released, boxes):
        grid = MultiLevelGrid(*released.shape[-2:], guarantee.levels)
        counts = [grid.partition(level).counts() for level in range(len(grid.levels))]
        out = []
        for image, box in zip(released, boxes):
            split = public_split("mask", grid, guarantee, (0.0, 255.0), (), image.device, boxes=box[None])
            values = [(s.double() / n).round_().to(torch.uint8) for s, n in zip(grid.cell_sums(image), counts)]
            release = NoisyGrid.from_release(tuple(image.shape), image.dtype, (0.0, 255.0), guarantee, values, split)
            if not torch.equal(release.restore(), image):
                raise ValueError("the image is not a release of these cells: some released cell is not constant")
            out.append(release.restore(method))
        return torch.stack(out)

    return restore


def restored(method: str | None) -> str:
    """The suffix that marks a restored condition: empty for unrestored releases (fill or None)."""
    return "" if method in (None, "fill") else f" restore={method}"


def condition_name(name: str, eps, b, m, m_r, restore=None) -> str:
    if b is None:
        return name
    if eps is None:
        return f"{name} b={b}"
    return f"{name} ε={eps:g} b={b} m={m}" + ("" if m_r is None else f" m_r={m_r}") + restored(restore)


def m_r_order(m_r) -> float:
    """Sort key of m_r: None (nothing protected) first, then the numbers, then "all" (every pixel of the protected
    cells)."""
    return 0 if m_r is None else math.inf if m_r == "all" else m_r


# --- report -------------------------------------------------------------------------------------------------------


def plot_attacks(rows: list[dict], chance: float, path: Path) -> None:
    """Top-1 (rank-1) accuracy of each attacker, and PSNR, against ε, one panel each: DP lines per (mechanism, b, m_r)
    with the line style giving m, non-private conditions as dash-dotted horizontal lines, chance as a dotted black
    line."""
    keys = [(f"{a}_top1", f"{a} attacker: top-1") for a in ATTACKERS if rows and f"{a}_top1" in rows[0]]
    keys.append(("psnr", "utility: PSNR of the released test faces (dB)"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), squeeze=False)
    private = [r for r in rows if r["epsilon"] is not None]
    epsilons = sorted({r["epsilon"] for r in private})
    curves = sorted(
        {(r["mechanism"], r["b"], r["m_r"], r["restore"]) for r in private},
        key=lambda c: (*c[:2], m_r_order(c[2]), restored(c[3])),
    )
    ms = sorted({r["m"] for r in private})
    baselines = [r for r in rows if r["epsilon"] is None and r["mechanism"] != "original"]
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, keys):
        for (mech, b, m_r, restore), m in itertools.product(curves, ms):
            group = sorted(
                (
                    r
                    for r in private
                    if (r["mechanism"], r["b"], r["m_r"], r["restore"], r["m"]) == (mech, b, m_r, restore, m)
                ),
                key=lambda r: r["epsilon"],
            )
            if group:
                ax.plot(
                    [r["epsilon"] for r in group],
                    [r[key] for r in group],
                    marker="o",
                    color=plt.cm.tab20(curves.index((mech, b, m_r, restore)) % 20),
                    ls=("-", "--", ":", (0, (3, 1, 1, 1)))[ms.index(m) % 4],
                    label=f"{mech} b={b} m={m}" + ("" if m_r is None else f" m_r={m_r}") + restored(restore),
                )
        for k, r in enumerate(baselines):
            color = plt.cm.Dark2(k % 8)
            ax.axhline(r[key], color=color, lw=1.2, ls="-.", label=f"{r['condition']} (not private)")
        if key != "psnr":
            original = next(r for r in rows if r["mechanism"] == "original")
            ax.axhline(original[key], color="grey", lw=2, alpha=0.5, label="original")
            ax.axhline(chance, color="black", ls=":", lw=1.5, label=f"chance ({chance:.3g})")
            ax.set_ylim(-0.02, 1.02)
        ax.set_xscale("log")
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
        ax.set_xlabel("ε per image")
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_examples(examples: list[tuple[str, torch.Tensor]], path: Path) -> None:
    cols = min(len(examples), 8)
    rows = math.ceil(len(examples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image) in zip(axes.flat, examples):
        ax.imshow(image.expand(3, -1, -1).permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def detection_summary(scenes: dict, rows: list[dict], attackers: list[str]) -> list[str]:
    """The faces :func:`detect_faces` missed (per split, and per size and tilt of the test faces), and per
    detector-driven condition how many missed and found test faces each attacker recognised."""
    lines = []
    for split, scene in scenes.items():
        missed = int((~scene["found"]).sum())
        lines.append(f"- {split}: the detector missed {missed} of {len(scene['found'])} faces (released at m only).")
    test = scenes["test"]
    looks = sorted(set(test["look"]))
    per_look = [
        f"{(~test['found'][[lk == look for lk in test['look']]]).sum()} of {test['look'].count(look)} at "
        f"{look[0]} px, {look[1]}°"
        for look in looks
    ]
    lines.append(f"- test faces missed: {'; '.join(per_look)}.")
    n_missed, n_found = int((~test["found"]).sum()), int(test["found"].sum())
    for r in rows:
        if r["mechanism"].endswith("[detector]"):
            hits = ", ".join(
                f"{a} {round(r[f'{a}_top1_missed'] * n_missed) if n_missed else 0} of {n_missed} missed / "
                f"{round(r[f'{a}_top1_found'] * n_found) if n_found else 0} of {n_found} found"
                for a in attackers
                if a != "linkage"
            )
            lines.append(f"- {r['condition']}: recognised {hits}.")
    return lines


def leaks(row: dict, attacker: str, tests: dict[str, tuple[int, float]]) -> bool:
    """Whether ``attacker``'s top-1 on ``row`` is significantly above chance (one-sided binomial, 5%).
    ``tests``: attacker -> (test faces it was scored on, its chance level)."""
    trials, chance = tests[attacker]
    return above_chance(round(row[f"{attacker}_top1"] * trials), trials, chance)


def stopped_summary(rows: list[dict], tests: dict[str, tuple[int, float]]) -> list[str]:
    """Which conditions stop each attacker: top-1 not significantly above chance (:func:`leaks`)."""
    lines = []
    for a, (trials, chance) in tests.items():
        stopped, leaky = [], []
        for r in rows:
            (leaky if leaks(r, a, tests) else stopped).append(r["condition"])
        lines.append(
            f"- **{a}** ({trials} faces, chance {chance:.4f}): stopped by {', '.join(stopped) or 'nothing'}; above "
            f"chance on {', '.join(leaky) or 'nothing'}."
        )
    return lines


def smallest_m_r(rows: list[dict], tests: dict[str, tuple[int, float]]) -> list[str]:
    """Per protected setting (mechanism, ε, b, m, restore): the smallest m_r whose release stops every attacker in
    ``tests``, or that none does."""
    lines = []

    def setting_of(r):
        return r["mechanism"], r["epsilon"], r["b"], r["m"], r.get("restore")

    settings_ = sorted({setting_of(r) for r in rows if r["m_r"] is not None}, key=lambda s: (*s[:4], restored(s[4])))
    for setting in settings_:
        mech, eps, b, m, restore = setting
        group = sorted(
            (r for r in rows if r["m_r"] is not None and setting_of(r) == setting),
            key=lambda r: m_r_order(r["m_r"]),
        )
        stopping = [r["m_r"] for r in group if not any(leaks(r, a, tests) for a in tests)]
        tried = ", ".join(str(r["m_r"]) for r in group)
        verdict = (
            f"the smallest m_r that stops all {len(tests)} attackers is **m_r = {stopping[0]}** (stopped by m_r = "
            f"{', '.join(map(str, stopping))})"
            if stopping
            else f"**no m_r stops all {len(tests)} attackers**"
        )
        lines.append(f"- {mech} ε={eps:g} b={b} m={m}{restored(restore)} (m_r ∈ {{{tried}}}): {verdict}.")
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="reid_attack")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    unknown = set(cfg.attackers) - set(ATTACKERS)
    if unknown:
        raise ValueError(f"attackers: unknown {sorted(unknown)}; choose from {ATTACKERS}")
    if set(cfg.restore) - set(METHODS):
        raise ValueError(f"restore: unknown {sorted(set(cfg.restore) - set(METHODS))}; choose from {METHODS}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    faces = {"lfw_views": lfw_views, "lfw_scenes": lfw_scenes, "celeba": celeba}[cfg.faces.name](cfg)
    scenes = faces.get("scenes")
    jobs = list(conditions(cfg))
    if any(job[8] == "detector" for job in jobs):
        if scenes is None or cfg.restore != ["fill"]:
            raise ValueError("regions=[detector] runs on faces in scenes (faces=lfw_scenes), with restore=[fill]")
        for split in scenes.values():
            detect(split)
    found = scenes["test"]["found"] if scenes is not None and "found" in scenes["test"] else None
    identities = int(faces["train_labels"].max()) + 1
    chance = 1 / identities
    classifier = ClassifierConfig(**cfg.classifier)
    attackers = list(cfg.attackers)

    def fit(images, what):
        bar = tqdm(total=classifier.epochs, desc=f"training on {what}", unit="epoch", leave=False)
        model = train_classifier(
            images,
            faces["train_labels"],
            identities,
            classifier,
            device=device,
            seed=cfg.seed,
            progress=lambda _: bar.update(),
        )
        bar.close()
        return model

    embedder = FaceEmbedder() if "linkage" in attackers else None
    clean_model = fit(faces["train"], "clean faces") if "naive" in attackers else None
    gallery = gallery_labels = None
    if "astronaut" in faces:
        astronaut_box = torch.tensor([ASTRONAUT_FACE], dtype=torch.float32)
        astronaut_face = boxes_mask(astronaut_box, *faces["astronaut"].shape[-2:])
    if embedder is not None:
        gallery = embedder(list(faces["gallery"]), faces["gallery_boxes"])
        gallery_labels = faces["gallery_labels"]
        if "astronaut" in faces:  # one more identity: the astronaut's face in the clean photo
            gallery = torch.cat([gallery, embedder([faces["astronaut"]], astronaut_box)])
            gallery_labels = torch.cat([gallery_labels, torch.tensor([identities])])

    probe_order = torch.randperm(len(faces["test"]), generator=torch.Generator().manual_seed(cfg.seed))
    rows, reports, examples = [], {}, [("original", faces["test"][0])]
    labels = faces["test_labels"]

    def released(release, split, regions):
        """The released faces of ``split``: each face, or with ``scenes`` its square cut from its released scene."""
        if scenes is None:
            return release(faces[split], faces[f"{split}_boxes"])
        scene = scenes[split]
        return face_crops(release(scene["frames"], scene[regions]), scene["where"], cfg.faces.size)

    for name, eps, b, m, m_r, restore, release, report, regions in tqdm(jobs, desc="conditions", unit="cond"):
        condition = condition_name(name, eps, b, m, m_r, restore)
        reports[condition] = report
        test = released(release, "test", regions)
        row = {
            "condition": condition,
            "mechanism": name,
            "epsilon": eps,
            "b": b,
            "m": m,
            "m_r": m_r,
            "restore": restore,
        }

        def top1(model, subset, test=test):
            return top_k_accuracy(model, test[subset], labels[subset], classifier.input_size, ks=(1,))[1]

        if "naive" in attackers:
            acc = top_k_accuracy(clean_model, test, labels, classifier.input_size)
            row["naive_top1"], row["naive_top5"] = acc[1], acc[5]
            by_detection(row, "naive", functools.partial(top1, clean_model), found)
        if "adaptive" in attackers:
            if name == "original" and clean_model is not None:
                model = clean_model  # released = clean: the adaptive attacker is the naive one
            else:
                model = fit(released(release, "train", regions), condition)
            acc = top_k_accuracy(model, test, labels, classifier.input_size)
            row["adaptive_top1"], row["adaptive_top5"] = acc[1], acc[5]
            by_detection(row, "adaptive", functools.partial(top1, model), found)
        if embedder is not None:
            probes = probe_order[: cfg.linkage_probes]  # all test faces when null
            embedded = embedder(list(test[probes]), faces["test_boxes"][probes])
            ranks = linkage_ranks(embedded, labels[probes], gallery, gallery_labels)
            row["linkage_top1"], row["linkage_top5"] = ranks[1], ranks[5]
            by_detection(
                row,
                "linkage",
                lambda subset, embedded=embedded, probes=probes: linkage_ranks(
                    embedded[subset], labels[probes][subset], gallery, gallery_labels
                )[1],
                None if found is None else found[probes],
            )
        if "astronaut" in faces:
            photos = release(
                faces["astronaut"][None].expand(cfg.faces.astronaut_releases, -1, -1, -1),
                astronaut_box.expand(cfg.faces.astronaut_releases, 4),
            )
            if embedder is not None:
                astronaut = embedder(list(photos), astronaut_box.expand(len(photos), 4))
                row["astronaut_rank1"] = linkage_ranks(
                    astronaut, torch.full((len(photos),), identities), gallery, gallery_labels, ks=(1,)
                )[1]
        row["psnr"] = float(np.mean([psnr(o, r) for o, r in zip(faces["test"], test)]))
        row["ssim"] = float(np.mean([ssim(o, r) for o, r in zip(faces["test"], test)]))
        if "astronaut" in faces:
            scores = face_scores(faces["astronaut"], photos, astronaut_face)
            row.update({f"astronaut_{k}": v for k, v in scores.items()})
        rows.append(row)
        if name != "original" and (m in (None, 1)):
            examples.append((condition.replace(" m=1", ""), test[0]))

    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    trials = len(faces["test"])
    tests = {a: (trials, chance) for a in ATTACKERS if a in attackers}
    if "linkage" in tests:  # the gallery may hold one more identity (the astronaut); probes may be a subset
        tests["linkage"] = (len(probe_order[: cfg.linkage_probes]), 1 / len(gallery_labels.unique()))
    columns = ["condition"] + [c for c in rows[0] if c.endswith(("top1", "top5", "rank1"))] + ["psnr", "ssim"]
    columns += [c for c in rows[0] if c.startswith(("astronaut_face", "astronaut_outside"))]
    columns += [c for c in rows[0] if c.endswith(("_missed", "_found"))]
    lines = [
        "# Face re-identification attack",
        "",
        f"Protocol: {faces['protocol']}",
        "",
        f"{identities} identities, {trials} test faces: **chance = {chance:.4f}** (top-1), {min(1, 5 * chance):.4f} "
        f"(top-5). Classifiers: {classifier.arch} from scratch at {classifier.input_size}×{classifier.input_size}, "
        f"{classifier.epochs} epochs, on {device}.",
        "",
    ]
    lines += table(rows, columns) + [""]
    if "astronaut" in faces:
        lines += [
            (
                f"astronaut_face_* and astronaut_outside_*: mean MSE and PSNR of {cfg.faces.astronaut_releases} "
                f"releases of the 512×512 astronaut photo inside its face box {ASTRONAUT_FACE} (XYXY) and outside it "
                "(the outside holds the rim of the protected cells that meet the box)."
            ),
            "",
        ]
    if found is not None:
        lines += ["## Detector-driven regions", ""] + detection_summary(scenes, rows, attackers) + [""]
    lines += ["## What stops each attacker (top-1 not above chance, one-sided binomial test at 5%)", ""]
    lines += stopped_summary(rows, tests) + [""]
    protected = smallest_m_r(rows, tests)
    if protected:
        lines += [
            "## Protected faces: the smallest m_r that stops all attackers",
            "",
            (
                "The face box is released in coarse cells whose noise hides changes of up to m_r pixels inside them; "
                "every other cell hides m pixels. The box positions are public."
            ),
            "",
        ]
        lines += protected + [""]
    lines += ["## Privacy report", ""] + [f"- {c}: {r}" for c, r in reports.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_attacks(rows, chance, out / "attack_vs_privacy.png")
    plot_examples(examples, out / "examples.png")
    print("\n".join(lines[: 8 + len(rows)]))
    print(f"\nwrote {out}/report.md, results.csv, attack_vs_privacy.png, examples.png")


if __name__ == "__main__":
    main()
