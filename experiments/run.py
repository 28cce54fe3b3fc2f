"""The experiment suite: utility vs ε, b and m for every mechanism, runtime and storage, with a report.

    python experiments/run.py [data=samples|pets2009|venice2|ppm100|celeba] [experiment=...] [key=value ...]

Config: conf/config.yaml (groups data/, mechanism/, experiment/). Writes into the Hydra run dir:
results.csv, report.md (tables, privacy reports, runtime, storage), privacy_utility.png, and examples.png.
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
from omegaconf import DictConfig  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize  # noqa: E402
from dp_pixel_torch.datasets import PETS2009, PPM100, CelebA, MOTSequence  # noqa: E402
from dp_pixel_torch.functional import pixelize  # noqa: E402
from dp_pixel_torch.metrics import (  # noqa: E402
    detect_people,
    masked_scores,
    match_detections,
    occupancy_agreement,
    psnr,
    ssim,
)
from dp_pixel_torch.reference import dp_pixelize_sequential  # noqa: E402
from dp_pixel_torch.video import to_bgr  # noqa: E402

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # inside the scikit-image wheel


# --- data ---------------------------------------------------------------------------------------------------------


def load_sources(cfg: DictConfig) -> tuple[dict[str, dict], list[str]]:
    """name -> {"kind": images|video|mattes, ...}, and notes on what was skipped."""
    d, sources, notes = cfg.data, {}, []
    if d.get("photos"):
        for name in d.photos:
            if name not in PHOTOS:
                raise ValueError(f"data.photos: {name!r} is not bundled with scikit-image; choose from {PHOTOS}")
        photos = [torch.from_numpy(getattr(skimage.data, n)()).permute(2, 0, 1).contiguous() for n in d.photos]
        sources["photos"] = {"kind": "images", "items": photos}
    if d.get("video"):
        path = Path(d.video)
        if path.exists() or d.name != "samples":
            clip = PETS2009(path)
            frames = [clip[i] for i in range(min(len(clip), cfg.max_frames))]
            sources["pets2009"] = {"kind": "video", "items": frames, "reference": None}
        else:
            notes.append(f"PETS2009 clip {path} not found (run experiments/fetch_data.py): video metrics skipped")
    if d.get("mot_root"):
        seq = MOTSequence(d.mot_root, d.sequence)
        items = [seq[i] for i in range(min(len(seq), cfg.max_frames))]
        reference = [t["boxes"] for _, t in items] if seq.has_ground_truth else None
        regions = [{"boxes": t["boxes"]} for _, t in items] if seq.has_ground_truth else None
        sources[d.sequence] = {
            "kind": "video",
            "items": [f for f, _ in items],
            "reference": reference,
            "regions": regions,
        }
    if d.get("matte_pairs"):
        try:
            pairs = PPM100(d.matte_pairs)
            items = [pairs[i] for i in range(min(len(pairs), cfg.max_frames))]
            sources["ppm100"] = {"kind": "mattes", "items": items, "regions": [{"mask": matte} for _, matte in items]}
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
    or None) to their releases, or returns None when the mechanism needs regions the source does not have."""
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
        return (lambda frames, regions: list(layer(torch.stack(frames)).unbind(0))), str(layer.guarantee)
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
        return (lambda frames, regions: list(layer(torch.stack(frames)).unbind(0))), str(layer.guarantee)
    if mech.region == "mask":  # the source's own annotations (mattes, gt boxes), treated as public
        layer = RegionAdaptiveDPPixelize(eps, m, levels=levels, region="mask", seed=seed)
        return masked_release(layer), str(layer.guarantee)
    layer = RegionAdaptiveDPPixelize(eps, m, levels=levels, region="previous", seed=seed)

    def sequential(frames, regions):  # frame t's cells come from release t-1
        layer.reset()
        return [layer(f[None])[0] for f in frames]

    return sequential, str(layer.guarantee)


def masked_release(layer: RegionAdaptiveDPPixelize):
    """``release(frames, regions)`` of a layer that needs each frame's region (None without regions)."""

    def masked(frames, regions):
        if regions is None:
            return None
        return [layer.release(f, **r).restore() for f, r in zip(frames, regions)]

    return masked


# --- metrics ------------------------------------------------------------------------------------------------------


def evaluate(source: dict, released: list[torch.Tensor], detections: list[torch.Tensor] | None) -> dict[str, float]:
    items = source["items"]
    originals = [i[0] for i in items] if source["kind"] == "mattes" else items
    scores = {
        "psnr": float(np.mean([psnr(o, r) for o, r in zip(originals, released)])),
        "ssim": float(np.mean([ssim(o, r) for o, r in zip(originals, released)])),
    }
    if source["kind"] == "mattes":
        regions = [masked_scores(o, r, matte) for (o, matte), r in zip(items, released)]
        scores["matte_psnr"] = float(np.mean([s["inside_psnr"] for s in regions]))
        scores["background_psnr"] = float(np.mean([s["outside_psnr"] for s in regions]))
    if source["kind"] == "video":
        agreement = occupancy_agreement(originals, released, cell=32)
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


def plot_curves(rows: list[dict], path: Path) -> None:
    """PSNR (and HOG recall on video) against ε, one panel per source; non-private baselines as dashed lines."""
    sources = sorted({r["source"] for r in rows})
    metrics = [("psnr", "PSNR (dB)")] + ([("det_recall", "HOG recall")] if any("det_recall" in r for r in rows) else [])
    fig, axes = plt.subplots(len(metrics), len(sources), figsize=(5 * len(sources), 3.6 * len(metrics)), squeeze=False)
    for j, source in enumerate(sources):
        for i, (key, label) in enumerate(metrics):
            ax = axes[i, j]
            chosen = [r for r in rows if r["source"] == source and r.get("m") in (None, 1) and key in r]
            if not chosen:
                ax.set_visible(False)
                continue
            ordered = sorted(chosen, key=lambda r: (r["mechanism"], r["b"], r["epsilon"] or 0))
            mechanisms = sorted({r["mechanism"] for r in chosen})
            sizes = sorted({r["b"] for r in chosen})
            for (mech, b), group in itertools.groupby(ordered, key=lambda r: (r["mechanism"], r["b"])):
                group = list(group)
                style = dict(color=f"C{mechanisms.index(mech)}", ls=("-", "--", ":", "-.")[sizes.index(b) % 4])
                if group[0]["epsilon"] is None:  # non-private: a horizontal line
                    ax.axhline(group[0][key], lw=1, label=f"{mech} b={b} (not private)", **style)
                else:
                    xs, ys = [g["epsilon"] for g in group], [g[key] for g in group]
                    ax.plot(xs, ys, marker="o", label=f"{mech} b={b}", **style)
            epsilons = sorted({r["epsilon"] for r in chosen if r["epsilon"] is not None})
            ax.set_xscale("log")
            ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
            ax.minorticks_off()
            ax.set_xlabel("ε per frame (m = 1)")
            ax.set_ylabel(label)
            ax.set_title(source)
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(image: torch.Tensor, cfg: DictConfig, path: Path) -> None:
    eps_list, sizes = list(cfg.grid.epsilons), list(cfg.grid.cell_sizes)
    fig, axes = plt.subplots(
        len(sizes), len(eps_list) + 2, figsize=(2.6 * (len(eps_list) + 2), 2.4 * len(sizes)), squeeze=False
    )
    for i, b in enumerate(sizes):
        panels = [("original", image), (f"plain b={b}", pixelize(image, b))]
        panels += [(f"DP ε={e:g} b={b}", DPPixelize(e, b, seed=cfg.seed)(image)) for e in eps_list]
        for ax, (title, img) in zip(axes[i], panels):
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=8)
            ax.axis("off")
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
    jobs = [(n, mech, s) for n, mech in mechanisms.items() for s in settings(mech, cfg.grid)]
    references = {}
    for name, source in sources.items():
        if source["kind"] == "video" and cfg.detection:
            references[name] = source["reference"] or [detect_people(f) for f in source["items"]]
    rows, reports = [], {}
    for mech_name, mech, (eps, b, m, m_r) in tqdm(jobs, desc="conditions", unit="cond"):
        release, report = make_release(mech, eps, b, m, cfg.seed, m_r)
        reports[(mech_name, eps, b, m, m_r)] = report
        for source_name, source in sources.items():
            originals = [i[0] for i in source["items"]] if source["kind"] == "mattes" else source["items"]
            by_size = {}
            for k, frame in enumerate(originals):  # frames of one size are released together
                by_size.setdefault(tuple(frame.shape), []).append(k)
            regions = source.get("regions")
            released = [None] * len(originals)
            for indices in by_size.values():
                releases = release(
                    [originals[k] for k in indices], None if regions is None else [regions[k] for k in indices]
                )
                if releases is None:
                    break
                for k, r in zip(indices, releases):
                    released[k] = r
            if any(r is None for r in released):
                continue  # this mechanism needs public regions the source does not have
            scores = evaluate(source, released, references.get(source_name))
            rows.append(
                {"source": source_name, "mechanism": mech_name, "epsilon": eps, "b": b, "m": m, "m_r": m_r, **scores}
            )

    columns = [
        "source",
        "mechanism",
        "epsilon",
        "b",
        "m",
        "m_r",
        "psnr",
        "ssim",
        "matte_psnr",
        "background_psnr",
        "occupancy_iou",
        "density_error",
        "det_precision",
        "det_recall",
    ]
    columns = [c for c in columns if any(c in r for r in rows)]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# DP pixelization suite on `{cfg.data.name}`", ""] + [f"> {n}" for n in notes] + [""]
    lines += ["## Utility", ""] + table(rows, columns) + [""]
    first = next(iter(sources.values()))
    frame = first["items"][0][0] if first["kind"] == "mattes" else first["items"][0]
    if cfg.runtime:
        video = next((s["items"][0] for s in sources.values() if s["kind"] == "video"), frame)
        runtime = runtime_rows(video, list(cfg.grid.cell_sizes))
        lines += [f"## Runtime per {video.shape[-1]}×{video.shape[-2]} frame (ms, ε = 1)", ""]
        lines += table(runtime, list(runtime[0])) + [""]
        storage = storage_rows(video, list(cfg.grid.cell_sizes))
        lines += ["## Storage per frame (bytes)", ""] + table(storage, list(storage[0])) + [""]
    lines += ["## Privacy report", ""] + [
        f"- {n}, ε={e}, b={b}, m={m}{'' if m_r is None else f', m_r={m_r}'}: {r}" for (n, e, b, m, m_r), r in reports.items()
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, out / "privacy_utility.png")
    plot_examples(frame, cfg, out / "examples.png")
    print("\n".join(lines[: 6 + len(rows) + 4]))
    print(f"\nwrote {out}/report.md, results.csv, privacy_utility.png, examples.png")


if __name__ == "__main__":
    main()
