"""From predicted patches to full objects: stitch each test object's raster scan."""

from __future__ import annotations

import numpy as np

from ptycho_torch.npz_data import GridLinesData
from ptycho_torch.scan import stitch_patches


def stitch_objects(patches: np.ndarray, data: GridLinesData) -> np.ndarray:
    """(I, H, W) objects from (M, N, N) patches predicted for ``data``'s patterns, in file order."""
    stride = data.metadata["stride"]
    objects = [stitch_patches(patches[data.image_index == i], data.coords[data.image_index == i], data.N, stride)
               for i in range(int(data.image_index.max()) + 1)]
    return np.stack(objects)  # (I, H, W)
