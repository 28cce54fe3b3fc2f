"""
Store a release: the NoisyGrid round trip
=========================================

:meth:`~dp_pixel_torch.DPPixelize.release` keeps only the released cell values. A
:class:`~dp_pixel_torch.NoisyGrid` serialises them without pickle and restores exactly the image the layer returns.
"""

import skimage.data
import torch

from dp_pixel_torch import DPPixelize, NoisyGrid

photo = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)  # uint8 [3, 300, 451]
layer = DPPixelize(1.0, b=8, seed=0, backend="eager")

grid = layer.release(photo)
data = grid.to_bytes()
again = NoisyGrid.from_bytes(data).restore()

print(f"image: {photo.numel():,} bytes; NoisyGrid record: {len(data):,} bytes")
print("restored equals the layer's output:", torch.equal(again, DPPixelize(1.0, b=8, seed=0, backend="eager")(photo)))
print(NoisyGrid.from_bytes(data).guarantee)
