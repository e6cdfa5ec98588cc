"""Pictures: the training plot is drawn for any accepted clip value and any recorded norms."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from ptycho_torch.plots import plot_training


def rows(norms):
    return [{"step": k, "loss": 1.0 / (k + 1), "lr": 1e-3, "grad_norm_preclip": n, "grad_norm_postclip": n}
            for k, n in enumerate(norms)]


@pytest.mark.parametrize("clip_val", [None, 0.5, 1e5, 1e300, 1.0570093156577088e+308])
@pytest.mark.parametrize("norms", [[0.3, 0.2, 0.1], [None, None], [math.inf, 0.2], [1e-30, 2e-30]],
                         ids=["logged", "not logged", "with inf", "tiny"])
def test_training_plot_is_written_for_any_clip_value(tmp_path, clip_val, norms):
    path = plot_training(tmp_path / "training.png", rows(norms), clip_val, "norm" if clip_val else None)
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100
