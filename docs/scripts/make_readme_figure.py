"""Draw docs/_static/before_after.png, the picture on the README and the docs' front page.

Run from the repository root: ``python docs/scripts/make_readme_figure.py`` (needs the ``[docs]`` extra). The photo is
scikit-image's bundled ``coffee``, downscaled; the releases are seeded, so the picture is the same on every run.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402

from dp_pixel_torch import DPPixelize  # noqa: E402
from dp_pixel_torch.functional import pixelize  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_static" / "before_after.png"

photo = torch.from_numpy(skimage.data.coffee()[::2, ::2].copy()).permute(2, 0, 1)  # uint8 [3, 200, 300]
panels = [("original", photo), ("plain b = 8\n(not private)", pixelize(photo, 8))]
for eps in (0.5, 1.0, 5.0):
    panels.append((f"DP-Pix b = 8, m = 1\nε = {eps:g}", DPPixelize(eps, b=8, m=1, seed=0, backend="eager")(photo)))

fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.0), dpi=100)
for ax, (title, img) in zip(axes, panels):
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
fig.savefig(OUT, bbox_inches="tight", pad_inches=0.05, pil_kwargs={"optimize": True})
print(OUT, OUT.stat().st_size, "bytes")
