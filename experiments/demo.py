"""Demo: DP-pixelize real photos shipped with scikit-image and write a before/after grid per photo.

    python experiments/demo.py [key=value ...]     (config: conf/demo.yaml; outputs in the Hydra run dir)

For each photo, one PNG: a row per cell size b, with the original, plain (non-private) pixelization, and DP-Pix at
every ε, each titled with its PSNR. The privacy report of every setting is printed and written to privacy_report.txt.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from dp_pixel_torch import DPPixelize  # noqa: E402
from dp_pixel_torch.functional import pixelize  # noqa: E402


#: Real photos inside the scikit-image wheel (other skimage.data entries would be downloaded: never at run time).
BUNDLED_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def load_photo(name: str, max_side: int) -> torch.Tensor:
    """A real photo from scikit-image's bundled data as uint8 [C, H, W], downscaled to at most ``max_side``."""
    if name not in BUNDLED_PHOTOS:
        raise ValueError(f"images: {name!r} is not a bundled photo; choose from {BUNDLED_PHOTOS}")
    array = getattr(skimage.data, name)()
    x = torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)[None]
    scale = max_side / max(x.shape[-2:])
    if scale < 1:
        x = TF.resize(x, [round(x.shape[-2] * scale), round(x.shape[-1] * scale)], antialias=True)
    return x[:3].contiguous()


def show(ax, x: torch.Tensor, title: str) -> None:
    ax.imshow(x.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if x.shape[0] == 1 else None, vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def psnr(original: torch.Tensor, released: torch.Tensor) -> float:
    return peak_signal_noise_ratio(original.numpy(), released.numpy(), data_range=255)


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    reports = {}
    for name in cfg.images:
        photo = load_photo(name, cfg.max_side)
        rows, cols = len(cfg.cell_sizes), 2 + len(cfg.epsilons)
        aspect = photo.shape[-2] / photo.shape[-1]
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, (2.6 * aspect + 0.6) * rows + 0.4), squeeze=False)
        for r, b in enumerate(cfg.cell_sizes):
            show(axes[r, 0], photo, "original")
            plain = pixelize(photo, b)
            show(axes[r, 1], plain, f"plain b={b} (not private)\nPSNR {psnr(photo, plain):.1f} dB")
            for c, eps in enumerate(cfg.epsilons):
                seed = None if cfg.secure else cfg.seed
                layer = DPPixelize(eps, b, cfg.m, noise=cfg.noise, border=cfg.border, secure=cfg.secure, seed=seed)
                released = layer(photo)
                reports[(eps, b)] = layer.guarantee
                show(axes[r, 2 + c], released, f"DP ε={eps:g} b={b} m={cfg.m}\nPSNR {psnr(photo, released):.1f} dB")
        fig.suptitle(f"{name}: DP pixelization, ε-DP per image for neighbours that differ in m = {cfg.m} pixels")
        fig.tight_layout()
        path = out_dir / f"grid_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    report = "\n".join(f"ε={eps:g}, b={b}: {g}" for (eps, b), g in sorted(reports.items()))
    (out_dir / "privacy_report.txt").write_text(report + "\n")
    print("\nPrivacy report (one release per photo and setting):\n" + report)


if __name__ == "__main__":
    main()
