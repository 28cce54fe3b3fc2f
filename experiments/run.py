"""The experiment suite: utility vs ε, b and m for every mechanism, runtime and storage, with a report.

    python experiments/run.py [data=samples|pets2009|venice2|ppm100|celeba] [experiment=...] [key=value ...]

Config: conf/config.yaml (groups data/, mechanism/, experiment/). Writes into the Hydra run dir:
results.csv, report.md (a headline per source, the full table, the privacy report, runtime, storage),
privacy_utility.png, and examples.png.

People are the protected regions of video: the ground-truth boxes where the source has them (public), otherwise HOG
detections on the ORIGINAL frames grown by ``PEOPLE_MARGIN`` per side (``region_from="detector"``: the guarantee is
conditional on the disclosed boxes, and a person HOG misses gets only the m protection).
"""

from __future__ import annotations

import csv
import itertools
import math
import time
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
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dp_pixel_torch import DPPixelize, NoisyGrid, RegionAdaptiveDPPixelize  # noqa: E402
from dp_pixel_torch.datasets import PETS2009, PPM100, CelebA, MOTSequence  # noqa: E402
from dp_pixel_torch.detectors import PEOPLE_MARGIN, boxes_mask, dilate_boxes  # noqa: E402
from dp_pixel_torch.functional import pixelize  # noqa: E402
from dp_pixel_torch.metrics import (  # noqa: E402
    detect_people,
    masked_scores,
    match_detections,
    mse,
    occupancy_agreement,
    psnr,
    ssim,
)
from dp_pixel_torch.reference import dp_pixelize_sequential  # noqa: E402
from dp_pixel_torch.temporal import TemporalRestorer  # noqa: E402
from dp_pixel_torch.video import to_bgr  # noqa: E402

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # inside the scikit-image wheel
ASTRONAUT_FACE = torch.tensor([[175.0, 70.0, 268.0, 163.0]])  # XYXY: a known face box, public, for examples.png


# --- data ---------------------------------------------------------------------------------------------------------


def photo(name: str) -> torch.Tensor:
    if name not in PHOTOS:
        raise ValueError(f"data.photos: {name!r} is not bundled with scikit-image; choose from {PHOTOS}")
    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).contiguous()


def people(frames: list[torch.Tensor], gt: list[torch.Tensor] | None) -> dict:
    """The people of a video: their boxes (the reference of the detection metrics) and the regions to protect.

    Ground-truth boxes are public. Without them, HOG finds the people in the ORIGINAL frames; the regions are its
    boxes grown by ``PEOPLE_MARGIN`` of their width (height) per side, and they are labelled ``"detector"``."""
    if gt is not None:
        return {"reference": gt, "regions": [{"boxes": b} for b in gt], "region_from": "public"}
    found = [detect_people(f) for f in frames]
    grown = [dilate_boxes(b, PEOPLE_MARGIN, *f.shape[-2:]) for b, f in zip(found, frames)]
    return {"reference": found, "regions": [{"boxes": b} for b in grown], "region_from": "detector"}


def load_sources(cfg: DictConfig) -> tuple[dict[str, dict], list[str]]:
    """name -> {"kind": images|video|mattes, "items": ..., and for sources with regions "regions" (one dict of
    ``release`` keywords per item) with "region_from" (public|detector)}, and notes on what was skipped."""
    d, sources, notes = cfg.data, {}, []
    if d.get("photos"):
        sources["photos"] = {"kind": "images", "items": [photo(n) for n in d.photos]}
    if d.get("video"):
        path = Path(d.video)
        if path.exists() or d.name != "samples":
            clip = PETS2009(path)
            frames = [clip[i] for i in range(min(len(clip), cfg.max_frames))]
            sources["pets2009"] = {"kind": "video", "items": frames, **people(frames, None)}
        else:
            notes.append(f"PETS2009 clip {path} not found (run experiments/fetch_data.py): video metrics skipped")
    if d.get("mot_root"):
        seq = MOTSequence(d.mot_root, d.sequence)
        items = [seq[i] for i in range(min(len(seq), cfg.max_frames))]
        frames = [f for f, _ in items]
        gt = [t["boxes"] for _, t in items] if seq.has_ground_truth else None
        sources[d.sequence] = {"kind": "video", "items": frames, **people(frames, gt)}
    if d.get("matte_pairs"):
        try:
            pairs = PPM100(d.matte_pairs)
            items = [pairs[i] for i in range(min(len(pairs), cfg.max_frames))]
            sources["ppm100"] = {
                "kind": "mattes",
                "items": items,
                "regions": [{"mask": matte} for _, matte in items],
                "region_from": "public",
            }
        except FileNotFoundError:
            if d.name != "samples":
                raise
            notes.append(
                f"no PPM-100 pair under {d.matte_pairs} (run experiments/fetch_data.py): matte metrics skipped"
            )
    if d.get("celeba_root"):
        faces = CelebA(d.celeba_root, "test")
        sources["celeba"] = {"kind": "images", "items": [faces[i][0] for i in range(min(len(faces), cfg.max_frames))]}
    return sources, notes


# --- mechanisms ---------------------------------------------------------------------------------------------------


def settings(mech: DictConfig, grid: DictConfig):
    """(ε, b, m, m_r) tuples a mechanism is run at; non-private ones ignore ε and m, and only protected-region
    mechanisms have an m_r (an int, or "all": every pixel of the protected cells). A mechanism's own ``epsilons``,
    ``cell_sizes`` or ``ms`` replace the grid's."""
    epsilons, sizes, ms = (mech.get(k) or grid[k] for k in ("epsilons", "cell_sizes", "ms"))
    if mech.kind in ("plain", "blur"):
        return [(None, b, None, None) for b in sizes]
    if mech.kind == "protect":
        m_rs = ["all" if m_r is None else int(m_r) for m_r in mech.protect_ms]
        return list(itertools.product(epsilons, sizes, ms, m_rs))
    return [(eps, b, m, None) for eps, b, m in itertools.product(epsilons, sizes, ms)]


def make_release(mech: DictConfig, eps, b, m, seed: int, m_r=None):
    """``(release, report)``: ``release(frames, regions)`` maps a list of same-size frames (and their public regions,
    or None) to their releases (images for non-private mechanisms, one NoisyGrid per frame for DP ones), or returns
    None when the mechanism needs regions the source does not have."""
    if mech.kind == "plain":
        return (lambda frames, regions: list(pixelize(torch.stack(frames), b).unbind(0))), "plain: NOT private"
    if mech.kind == "blur":
        k = 2 * math.ceil(1.5 * b) + 1
        return (
            lambda frames, regions: list(TF.gaussian_blur(torch.stack(frames), [k, k], [b / 2, b / 2]).unbind(0)),
            f"Gaussian blur σ = {b / 2:g}: NOT private",
        )
    if mech.kind == "dp":
        layer = DPPixelize(eps, b, m, noise=mech.noise, border=mech.border, seed=seed)
        return (lambda frames, regions: [layer.release(f) for f in frames]), str(layer.guarantee)
    if mech.kind == "protect":  # the regions (faces, people) are hidden: coarse cells with m_r, b elsewhere
        layer = RegionAdaptiveDPPixelize(
            eps,
            m,
            levels=(b, mech.coarse * b),
            protect=True,
            protect_m=None if m_r == "all" else m_r,
            region_from=mech.region_from,
            seed=seed,
        )
        return masked_release(layer), str(layer.guarantee)
    levels = (b // 2, b, 2 * b)
    if mech.region == "complexity":
        share = mech.partition_share * eps
        layer = RegionAdaptiveDPPixelize(
            eps - share, m, levels=levels, region="complexity", partition_epsilon=share, seed=seed
        )
        return (lambda frames, regions: [layer.release(f) for f in frames]), str(layer.guarantee)
    if mech.region == "mask":  # the source's own regions (mattes, gt boxes: public; HOG boxes: detector)
        layer = RegionAdaptiveDPPixelize(eps, m, levels=levels, region="mask", region_from=mech.region_from, seed=seed)
        return masked_release(layer), str(layer.guarantee)
    layer = RegionAdaptiveDPPixelize(eps, m, levels=levels, region="previous", seed=seed)

    def sequential(frames, regions):  # frame t's cells come from release t-1
        layer.reset()
        return [layer.release(f[None]) for f in frames]

    return sequential, str(layer.guarantee)


def released_frames(released: list) -> list[torch.Tensor]:
    """The images ``[C, H, W]`` of :func:`make_release`'s output: each NoisyGrid as its layer paints it, images as
    they are."""
    return [r.restore().reshape(r.shape[-3:]) if isinstance(r, NoisyGrid) else r for r in released]


def for_source(mech: DictConfig, source: dict) -> DictConfig:
    """The mechanism as run on one source: a mechanism of region maps takes the origin of the source's regions."""
    if "region_from" not in mech or "region_from" not in source:
        return mech
    return OmegaConf.merge(mech, {"region_from": source["region_from"]})


def stream_seed(seed: int, *key: int) -> int:
    """The 256-bit seed of one noise stream: (0, j, k) for condition j on source k, (1, i, b, c) for panel c of
    example image i at cell size b. No two releases share a stream: shared noise would leak the difference of their
    images, and correlated noise across conditions of one image would let them be averaged."""
    return int.from_bytes(np.random.SeedSequence([seed, *key]).generate_state(8).tobytes(), "little")


def masked_release(layer: RegionAdaptiveDPPixelize):
    """``release(frames, regions)`` of a layer that needs each frame's region (None without regions)."""

    def masked(frames, regions):
        if regions is None:
            return None
        return [layer.release(f, **r) for f, r in zip(frames, regions)]

    return masked


# --- metrics ------------------------------------------------------------------------------------------------------


def originals_of(source: dict) -> list[torch.Tensor]:
    return [i[0] for i in source["items"]] if source["kind"] == "mattes" else source["items"]


def region_mask(region: dict, height: int, width: int) -> torch.Tensor:
    """A source's region of one item (``{"boxes": XYXY}`` or ``{"mask": [H, W]}``) as a bool ``[H, W]`` mask."""
    return boxes_mask(region["boxes"], height, width) if "boxes" in region else region["mask"] > 0.5


def restored_twin(source: dict, grids: list[NoisyGrid]) -> tuple[str, list[torch.Tensor]]:
    """The same releases, restored (post-processing): temporally over the frames of a video, by ``denoise`` else."""
    if source["kind"] == "video":
        restorer = TemporalRestorer()
        return "temporal", [restorer(g).reshape(g.shape[-3:]) for g in grids]
    return "denoise", [g.restore("denoise").reshape(g.shape[-3:]) for g in grids]


def evaluate(
    source: dict,
    released: list[torch.Tensor],
    detections: list[torch.Tensor] | None,
    grids: list[NoisyGrid] | None = None,
) -> dict[str, float]:
    """Scores of released (or restored) frames against the originals. On video, ``occupancy_iou`` and
    ``density_error`` of a DP release come from the noise-aware reader of its ``grids``; ``mog2_iou`` is MOG2 on the
    frames themselves (the only crowd reading of non-private rows)."""
    originals = originals_of(source)
    scores = {
        "psnr": float(np.mean([psnr(o, r) for o, r in zip(originals, released)])),
        "mse": float(np.mean([mse(o, r) for o, r in zip(originals, released)])),
        "ssim": float(np.mean([ssim(o, r) for o, r in zip(originals, released)])),
    }
    if source.get("regions") is not None:  # inside and outside the regions (matte, people boxes)
        split = [
            masked_scores(o, r, region_mask(g, *o.shape[-2:]))
            for o, r, g in zip(originals, released, source["regions"])
        ]
        for key in ("inside_psnr", "outside_psnr"):
            values = [s[key] for s in split if not math.isnan(s[key])]
            scores[key] = float(np.mean(values)) if values else float("nan")
    if source["kind"] == "video":
        agreement = occupancy_agreement(originals, released, cell=32)
        scores["mog2_iou"] = agreement.iou
        if grids is not None:
            agreement = occupancy_agreement(originals, cell=32, grids=grids)
        scores["occupancy_iou"], scores["density_error"] = agreement.iou, agreement.density_error
        if detections is not None:
            matched = [match_detections(detect_people(r), ref) for r, ref in zip(released, detections)]
            tp, pred, ref = (sum(getattr(s, k) for s in matched) for k in ("true_positives", "predicted", "reference"))
            scores["det_precision"] = tp / pred if pred else float("nan")
            scores["det_recall"] = tp / ref if ref else float("nan")
    return scores


# --- runtime and storage ------------------------------------------------------------------------------------------


def runtime_rows(frame: torch.Tensor, cell_sizes, reps: int = 5) -> list[dict]:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for b in cell_sizes:
        start = time.perf_counter()
        dp_pixelize_sequential(frame.numpy(), 1.0, b, 1, np.random.default_rng(0))
        sequential = (time.perf_counter() - start) * 1e3
        row = {"b": b, "sequential_ms": round(sequential, 1)}
        for device in devices:
            layer, x = DPPixelize(1.0, b, seed=0), frame[None].to(device)
            layer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                layer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            row[f"{device}_ms"] = round((time.perf_counter() - start) / reps * 1e3, 2)
            row[f"{device}_speedup"] = round(sequential / row[f"{device}_ms"], 1)
        rows.append(row)
    return rows


def storage_rows(frame: torch.Tensor, cell_sizes) -> list[dict]:
    rows = []
    for b in cell_sizes:
        grid = DPPixelize(1.0, b, seed=0).release(frame[None])
        bgr = to_bgr(grid.restore()[0])
        rows.append(
            {
                "b": b,
                "raw": frame.numel(),
                "png": len(cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]),
                "jpeg_q95": len(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]),
                "noisygrid_uint8": grid.nbytes,
            }
        )
    return rows


# --- report -------------------------------------------------------------------------------------------------------


def table(rows: list[dict], columns: list[str]) -> list[str]:
    def fmt(v):
        return (
            "—"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:.3f}" if isinstance(v, float) else str(v))
        )

    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows
    ]


COLUMNS = [
    "source",
    "mechanism",
    "epsilon",
    "b",
    "m",
    "m_r",
    "restore",
    "psnr",
    "mse",
    "ssim",
    "inside_psnr",
    "outside_psnr",
    "occupancy_iou",
    "mog2_iou",
    "density_error",
    "det_precision",
    "det_recall",
]
LABELS = {
    "psnr": "PSNR",
    "outside_psnr": "PSNR outside the regions",
    "occupancy_iou": "occupancy IoU",
    "density_error": "density error",
}
FAMILIES = {
    "plain": "plain pixelization",
    "blur": "blur",
    "dp": "uniform DP",
    "adaptive": "adaptive",
    "protect": "protected",
    "restored": "restored (temporal on video, denoise on images)",
}
SURVIVAL = 0.9  # the crowd task survives a release that keeps this share of plain pixelization's occupancy IoU
HEADLINE = (
    "Per source: plain pixelization and blur (NOT private) at their best b, then at each ε the best uniform DP, "
    "region-adaptive and protected (regions hidden) setting, and the best restored one (the same release restored: "
    "temporally on video, by denoise on images; post-processing, no ε). **Best** = the highest occupancy IoU with "
    "the original on video (the crowd task), the highest PSNR elsewhere; ties go to PSNR. On video, occupancy_iou of "
    "a DP release is read from the release by the noise-aware reader (MOG2 on its noise-reduced cells, protected "
    "cells occupied); mog2_iou is MOG2 on the frames of the row. inside/outside_psnr: PSNR inside and "
    "outside the source's regions (people boxes, mattes); MSE in grey levels²."
)


def task_metric(source: dict) -> str:
    return "occupancy_iou" if source["kind"] == "video" else "psnr"


def best(rows: list[dict], key: str) -> dict | None:
    return max(rows, key=lambda r: (r[key], r["psnr"]), default=None)


def value(key: str, v: float) -> str:
    return f"{v:.1f} dB" if key.endswith("psnr") else f"{v:.3f}"


def of_kind(rows: list[dict], kinds: dict[str, str], kind: str, eps=None) -> list[dict]:
    """The rows of one family at ``eps``: ``"restored"`` is every restored twin, the others are unrestored."""
    if kind == "restored":
        return [r for r in rows if r.get("restore") and r["epsilon"] == eps]
    return [r for r in rows if kinds[r["mechanism"]] == kind and not r.get("restore") and r["epsilon"] == eps]


def headline_rows(rows: list[dict], kinds: dict[str, str], key: str) -> list[dict]:
    """Plain and blur at their best b, then at each ε the best uniform, adaptive and protected setting."""
    picked = [best(of_kind(rows, kinds, k), key) for k in ("plain", "blur")]
    for eps in sorted({r["epsilon"] for r in rows if r["epsilon"] is not None}):
        picked += [best(of_kind(rows, kinds, k, eps), key) for k in ("dp", "adaptive", "protect", "restored")]
    return [r for r in picked if r is not None]


def findings(source: dict, rows: list[dict], kinds: dict[str, str]) -> list[str]:
    """The result in three or four sentences, from the numbers of one source."""
    key, video = task_metric(source), source["kind"] == "video"
    baselines = [(k, best(of_kind(rows, kinds, k), key)) for k in ("plain", "blur")]
    said = [
        "Not private: "
        + ", ".join(
            f"{FAMILIES[k]} reaches {LABELS[key]} {value(key, r[key])} (b = {r['b']})" for k, r in baselines if r
        )
        + "."
    ]
    epsilons = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None})
    per_kind = []
    for kind in ("dp", "adaptive", "protect", "restored"):
        chosen = [best(of_kind(rows, kinds, kind, e), key) for e in epsilons]
        if any(chosen):
            per_kind.append(f"{FAMILIES[kind]} " + " / ".join(value(key, r[key]) if r else "—" for r in chosen))
    if per_kind:
        said.append(f"Best {LABELS[key]} at ε = {' / '.join(f'{e:g}' for e in epsilons)}: " + "; ".join(per_kind) + ".")
    gains = []
    for e in epsilons:
        twin = best(of_kind(rows, kinds, "restored", e), key)
        setting = ("mechanism", "b", "m", "m_r")
        own = (
            next(
                (r for r in of_kind(rows, kinds, kinds[twin["mechanism"]], e) if all(r[k] == twin[k] for k in setting)),
                None,
            )
            if twin
            else None
        )
        if own:
            gains.append(
                f"ε = {e:g} ({twin['mechanism']}, b = {twin['b']}, {twin['restore']}): PSNR "
                f"{value('psnr', own['psnr'])} → {value('psnr', twin['psnr'])}"
                + (
                    f", MOG2 occupancy IoU {value('mog2_iou', own['mog2_iou'])} → {value('mog2_iou', twin['mog2_iou'])}"
                    if video
                    else ""
                )
            )
    if gains:
        said.append("Restoring the best release, as released → restored: " + "; ".join(gains) + ".")
    pairs = [
        (p, u)
        for p in rows
        if kinds[p["mechanism"]] == "protect" and p["m_r"] == "all" and not p.get("restore")
        for u in rows
        if kinds[u["mechanism"]] == "dp"
        and not u.get("restore")
        and (u["epsilon"], u["b"], u["m"]) == (p["epsilon"], p["b"], p["m"])
    ]
    if pairs:
        compared = (("occupancy_iou", "density_error") if video else ("psnr",)) + ("outside_psnr",)
        each = "; ".join(
            f"ε = {p['epsilon']:g}, b = {p['b']}: "
            + ", ".join(f"{LABELS[k]} {value(k, p[k])} vs {value(k, u[k])}" for k in compared if k in p)
            for p, u in pairs
        )
        said.append(f"Every region hidden (m_r = all) against uniform DP at the same ε, b and m: {each}.")
        plain = {r["b"]: r["occupancy_iou"] for r in of_kind(rows, kinds, "plain")} if video else {}
        judged = [(p, u) for p, u in pairs if p["b"] in plain]
        if judged:

            def where(chosen: list[dict]) -> str:
                return ", ".join(f"ε = {r['epsilon']:g} (b = {r['b']})" for r in chosen) or "no setting"

            def survives(r: dict) -> bool:
                return r["occupancy_iou"] >= SURVIVAL * plain[r["b"]]

            kept = [p for p, _ in judged if survives(p)]
            verdict = "No" if not kept else "Yes" if len(kept) == len(judged) else "Partly"
            said.append(
                f"Does the crowd task survive when every person is protected? {verdict}: the occupancy IoU keeps "
                f"{SURVIVAL:.0%} of plain pixelization's (same b) at {where(kept)}; uniform DP does at "
                f"{where([u for _, u in judged if survives(u)])}."
            )
    return said


def composition(source: dict) -> str:
    n = len(source["items"])
    return f"ε per frame; a person visible in all {n} frames used is covered at {n}·ε."


def region_note(source: dict) -> str | None:
    if source.get("region_from") == "detector":
        found = np.mean([len(b) for b in source["reference"]])
        return (
            f"People: HOG detections on the original frames ({found:.1f} per frame on average), grown by "
            f"{PEOPLE_MARGIN:.0%} of their width and height on each side. Region-map releases (adaptive, protected) "
            "hold CONDITIONAL on these disclosed boxes, and a person HOG misses gets only the m protection."
        )
    if source["kind"] == "video" and source.get("regions") is not None:
        return "People: the ground-truth boxes, public."
    return None


def privacy_lines(privacy: dict) -> list[str]:
    """One line per mechanism and region origin: where it ran, its parameters, and its guarantee at one setting."""
    lines = []
    for (name, origin), entry in privacy.items():
        settings = entry["settings"]
        params, at = [], []
        for i, symbol in enumerate(("ε", "b", "m", "m_r")):
            values = list(dict.fromkeys(f"{s[i]:g}" if i == 0 else str(s[i]) for s in settings if s[i] is not None))
            if values:
                params.append(f"{symbol} ∈ {{{', '.join(values)}}}")
                at.append(f"{symbol} = {values[0]}")
        where = ", ".join(entry["sources"]) + (f"; {origin} regions" if origin else "")
        lines.append(f"- **{name}** ({where}): {'; '.join(params)}. At {', '.join(at)}: {entry['report']}")
    return lines


def plot_curves(rows: list[dict], path: Path) -> None:
    """PSNR (and, on video, occupancy IoU: noise-aware as released, MOG2 on the restored frames) against ε, one
    column per source as released and one as restored; one colour per mechanism, one line style per b, one marker per m_r; non-private baselines as horizontal lines; one
    legend, outside the panels."""
    sources = sorted({r["source"] for r in rows})
    metrics = [("psnr", "PSNR (dB)")]
    if any("occupancy_iou" in r for r in rows):
        metrics.append(("occupancy_iou", "occupancy IoU"))
    mechanisms = sorted({r["mechanism"] for r in rows})
    sizes = sorted({r["b"] for r in rows})
    m_rs = sorted({r["m_r"] for r in rows if r["m_r"] is not None}, key=lambda v: math.inf if v == "all" else v)
    panels = [(source, restored) for source in sources for restored in (False, True)]
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4 * len(panels), 3.4 * len(metrics)), squeeze=False)
    handles = {}
    for j, (source, restored) in enumerate(panels):
        for i, (key, label) in enumerate(metrics):
            ax = axes[i, j]
            if restored and key == "occupancy_iou":  # the noise-aware reading is the same release's: show MOG2's
                key, label = "mog2_iou", "occupancy IoU, MOG2 on restored"
            chosen = [
                r
                for r in rows
                if r["source"] == source
                and r.get("m") in (None, 1)
                and key in r
                and (r["epsilon"] is None or bool(r.get("restore")) == restored)
            ]
            if not any(r["epsilon"] is not None for r in chosen):
                ax.set_visible(False)
                continue
            curves = {}
            for r in chosen:
                curves.setdefault((r["mechanism"], r["b"], r["m_r"]), []).append(r)
            for (mech, b, m_r), group in curves.items():
                group = sorted(group, key=lambda r: r["epsilon"] or 0)
                style = {"color": f"C{mechanisms.index(mech) % 10}", "ls": ("-", "--", ":", "-.")[sizes.index(b) % 4]}
                if group[0]["epsilon"] is None:  # non-private: a horizontal line
                    line = ax.axhline(group[0][key], lw=1, **style)
                    name = f"{mech} b={b} (not private)"
                else:
                    marker = "o" if m_r is None else ("s", "^", "D", "v", "P")[m_rs.index(m_r) % 5]
                    name = f"{mech} b={b}" + ("" if m_r is None else f" m_r={m_r}")
                    (line,) = ax.plot([g["epsilon"] for g in group], [g[key] for g in group], marker=marker, **style)
                handles.setdefault(name, line)
            epsilons = sorted({r["epsilon"] for r in chosen if r["epsilon"] is not None})
            ax.set_xscale("log")
            ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
            ax.minorticks_off()
            ax.set_xlabel("ε per frame (m = 1)")
            ax.set_ylabel(label)
            ax.set_title(f"{source}, {'restored' if restored else 'as released'}", fontsize=9)
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def example_images(sources: dict[str, dict]) -> list[tuple[str, torch.Tensor, dict | None, str | None]]:
    """(name, image, region, region origin): the astronaut with its known face box, then the first item of every
    source but the photos, with its region (None without)."""
    examples = [("astronaut", photo("astronaut"), {"boxes": ASTRONAUT_FACE}, "public")]
    for name, source in sources.items():
        if name != "photos":
            regions = source.get("regions")
            region = regions[0] if regions else None
            examples.append((name, originals_of(source)[0], region, source.get("region_from")))
    return examples


def plot_examples(examples: list, cfg: DictConfig, path: Path) -> None:
    """One row per example and b: the original (region boxes in red), plain pixelization, uniform DP at each ε and,
    when the suite has a protect mechanism, the example's region hidden (m = 1, m_r = all) at each ε."""
    eps_list, sizes = list(cfg.grid.epsilons), list(cfg.grid.cell_sizes)
    protect = next((m for m in cfg.mechanisms.values() if m is not None and m.kind == "protect"), None)
    columns = 2 + len(eps_list) * (1 if protect is None else 2)
    layout = list(itertools.product(enumerate(examples), sizes))
    fig, axes = plt.subplots(len(layout), columns, figsize=(2.6 * columns, 2.4 * len(layout)), squeeze=False)
    for row, ((k, (name, image, region, origin)), b) in zip(axes, layout):
        panels = [(name, image), (f"plain b={b}", pixelize(image, b))]
        panels += [
            (f"DP ε={e:g} b={b}", DPPixelize(e, b, seed=stream_seed(cfg.seed, 1, k, b, c))(image))
            for c, e in enumerate(eps_list)
        ]
        if protect is not None and region is not None:
            for c, e in enumerate(eps_list, start=len(eps_list)):
                seed = stream_seed(cfg.seed, 1, k, b, c)
                release, _ = make_release(for_source(protect, {"region_from": origin}), e, b, 1, seed, "all")
                panels.append((f"protected ε={e:g} b={b}", release([image], [region])[0].restore()))
        for ax in row:
            ax.axis("off")
        for ax, (title, img) in zip(row, panels):
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=8)
        for x0, y0, x1, y1 in region["boxes"].tolist() if region is not None and "boxes" in region else []:
            row[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    sources, notes = load_sources(cfg)
    if not sources:
        raise ValueError(f"data={cfg.data.name}: nothing to run on")
    mechanisms = {k: v for k, v in cfg.mechanisms.items() if v is not None}
    kinds = {name: mech.kind for name, mech in mechanisms.items()}
    jobs = [(n, mech, s) for n, mech in mechanisms.items() for s in settings(mech, cfg.grid)]
    references = {n: s["reference"] for n, s in sources.items() if s["kind"] == "video" and cfg.detection}
    rows, privacy = [], {}
    for j, (mech_name, mech, (eps, b, m, m_r)) in enumerate(tqdm(jobs, desc="conditions", unit="cond")):
        for k, (source_name, source) in enumerate(sources.items()):
            mech_here = for_source(mech, source)
            release, report = make_release(mech_here, eps, b, m, stream_seed(cfg.seed, 0, j, k), m_r)
            originals = originals_of(source)
            by_size = {}
            for i, frame in enumerate(originals):  # frames of one size are released together
                by_size.setdefault(tuple(frame.shape), []).append(i)
            regions = source.get("regions")
            released = [None] * len(originals)
            for indices in by_size.values():
                releases = release(
                    [originals[i] for i in indices], None if regions is None else [regions[i] for i in indices]
                )
                if releases is None:
                    break
                for i, r in zip(indices, releases):
                    released[i] = r
            if any(r is None for r in released):
                continue  # this mechanism needs regions the source does not have
            grids = released if isinstance(released[0], NoisyGrid) else None
            if grids is not None:
                released = released_frames(grids)
            scores = evaluate(source, released, references.get(source_name), grids)
            setting = {"source": source_name, "mechanism": mech_name, "epsilon": eps, "b": b, "m": m, "m_r": m_r}
            rows.append({**setting, **scores})
            if grids is not None:  # the restored twin: the same release, restored (no HOG: the slowest metric)
                method, restored = restored_twin(source, grids)
                rows.append({**setting, "restore": method, **evaluate(source, restored, None, grids)})
            entry = privacy.setdefault(
                (mech_name, mech_here.get("region_from")), {"sources": [], "settings": [], "report": report}
            )
            for key, item in (("sources", source_name), ("settings", (eps, b, m, m_r))):
                if item not in entry[key]:
                    entry[key].append(item)

    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# DP pixelization suite on `{cfg.data.name}`", ""] + [f"> {n}" for n in notes] + [""]
    lines += ["## Headline", "", HEADLINE, ""]
    for name, source in sources.items():
        chosen = [r for r in rows if r["source"] == name]
        shown = [c for c in columns[1:] if any(r.get(c) is not None for r in chosen)]
        lines += [f"### {name}", ""] + table(headline_rows(chosen, kinds, task_metric(source)), shown) + [""]
        lines += [" ".join(findings(source, chosen, kinds)), ""]
        said = [region_note(source)] + ([composition(source)] if source["kind"] == "video" else [])
        lines += [f"- {note}" for note in said if note] + ([""] if any(said) else [])
    headline_end = len(lines)
    lines += ["## Utility: every setting", ""] + table(rows, columns) + [""]
    if cfg.runtime:
        first = next(iter(sources.values()))
        video = next((s["items"][0] for s in sources.values() if s["kind"] == "video"), originals_of(first)[0])
        runtime = runtime_rows(video, list(cfg.grid.cell_sizes))
        lines += [f"## Runtime per {video.shape[-1]}×{video.shape[-2]} frame (ms, ε = 1)", ""]
        lines += table(runtime, list(runtime[0])) + [""]
        storage = storage_rows(video, list(cfg.grid.cell_sizes))
        lines += ["## Storage per frame (bytes)", ""] + table(storage, list(storage[0])) + [""]
    lines += ["## Privacy report", ""] + privacy_lines(privacy)
    lines += [f"- Video, {name}: {composition(s)}" for name, s in sources.items() if s["kind"] == "video"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, out / "privacy_utility.png")
    plot_examples(example_images(sources), cfg, out / "examples.png")
    print("\n".join(lines[:headline_end]))
    print(f"\nwrote {out}/report.md, results.csv, privacy_utility.png, examples.png")


if __name__ == "__main__":
    main()
