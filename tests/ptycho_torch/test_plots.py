"""Pictures: the training plot is drawn for any accepted clip value and any recorded norms, and
shows which steps were skipped."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from ptycho_torch.plots import plot_training, training_figure


def rows(norms, skipped=()):
    return [{"step": k, "loss": 1.0 / (k + 1), "lr": 1e-3, "grad_norm_preclip": n, "grad_norm_postclip": n,
             "skipped": k in skipped} for k, n in enumerate(norms)]


@pytest.mark.parametrize("clip_val", [None, 0.5, 1e5, 1e300, 1.0570093156577088e+308])
@pytest.mark.parametrize("norms", [[0.3, 0.2, 0.1], [None, None], [math.inf, 0.2], [1e-30, 2e-30]],
                         ids=["logged", "not logged", "with inf", "tiny"])
def test_training_plot_is_written_for_any_clip_value(tmp_path, clip_val, norms):
    path = plot_training(tmp_path / "training.png", rows(norms), clip_val, "norm" if clip_val else None)
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def skip_marks(fig):
    marks = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("skipped step")]
    plt.close(fig)
    return marks


def test_skipped_steps_are_marked_on_the_loss_panel():
    history = rows([0.3, math.inf, 0.2, math.nan, 0.1], skipped={1, 3})
    history[3]["loss"] = math.nan  # a skipped step's loss may be anything, even off the log scale
    marks = skip_marks(training_figure(history, 1.0, "norm"))
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [1, 3]
    assert marks[0].get_label() == "skipped step (2)"


def test_a_run_without_skipped_steps_has_no_skip_marks():
    assert skip_marks(training_figure(rows([0.3, 0.2]), None, None)) == []
