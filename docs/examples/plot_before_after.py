"""
Before and after: plain pixelization against DP-Pix
===================================================

The bundled ``coffee`` photo, released by :class:`~dp_pixel_torch.DPPixelize` at three budgets ε with cells of
b = 8 pixels and m = 1, next to plain (non-private) pixelization of the same cells.
"""

import matplotlib.pyplot as plt
import skimage.data
import torch

from dp_pixel_torch import DPPixelize
from dp_pixel_torch.functional import pixelize

photo = torch.from_numpy(skimage.data.coffee()[::2, ::2].copy()).permute(2, 0, 1)  # uint8 [3, 200, 300]
panels = [("original", photo), ("plain b = 8 (not private)", pixelize(photo, 8))]
for eps in (0.5, 1.0, 5.0):
    layer = DPPixelize(eps, b=8, m=1, seed=0, backend="eager")
    panels.append((f"DP-Pix ε = {eps:g}", layer(photo)))

fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 2.4))
for ax, (title, img) in zip(axes, panels):
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %%
# Every release states its guarantee:
print(DPPixelize(1.0, b=8, m=1).guarantee)
