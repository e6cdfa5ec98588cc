"""Pictures: the training plot is drawn for any accepted clip value and any recorded norms, and
shows which steps were skipped."""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from ptycho_torch import plots
from ptycho_torch.metrics import align_amplitude, align_phase
from ptycho_torch.plots import (plot_comparison, plot_object, plot_reconstruction, plot_sweep, plot_training,
                                training_figure)


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


def drawn(monkeypatch):
    """The figures the plot functions draw, kept instead of saved."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_the_training_panels_show_the_loss_the_learning_rate_and_the_gradient_norms():
    history = rows([0.3, 0.2])
    history[1]["lr"] = 5e-4
    fig = training_figure(history, None, None)
    titles = [ax.get_title() for ax in fig.axes]
    (lr_line,) = fig.axes[1].get_lines()
    plt.close(fig)
    assert titles == ["training loss", "learning rate", "global gradient L2 norm (clip: off)"]
    assert list(lr_line.get_ydata()) == [1e-3, 5e-4]


def object_pair():
    rng = np.random.default_rng(5)
    truth = ((1 + rng.random((8, 8))) * np.exp(1j * rng.random((8, 8)))).astype(np.complex64)
    return truth, truth.T * 2  # a reconstruction unlike the truth, at another scale


@pytest.mark.parametrize("draw", [lambda path, truth, recon: plot_reconstruction(path, truth, recon, "run"),
                                  lambda path, truth, recon: plot_object(path, recon, "run")],
                         ids=["with_truth", "without_truth"])
def test_a_reconstruction_picture_is_written(tmp_path, draw):
    path = draw(tmp_path / "reconstruction.png", *object_pair())
    assert os.listdir(tmp_path) == ["reconstruction.png"]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_the_comparison_shows_the_truth_then_each_architectures_own_aligned_reconstruction(monkeypatch, tmp_path):
    truth, recon = object_pair()
    figures = drawn(monkeypatch)
    plot_comparison(tmp_path / "comparison.png", truth, {"cnn": recon, "fno": np.ones_like(truth)})
    (fig,) = figures
    top, bottom = fig.axes[:3], fig.axes[3:]  # (2, 3) panels, row by row
    shown = [[ax.get_images()[0].get_array() for ax in row] for row in (top, bottom)]
    phase_ranges = {ax.get_images()[0].get_clim() for ax in bottom}
    titles = [ax.get_title() for ax in top]
    plt.close(fig)
    assert phase_ranges == {(np.angle(truth).min(), np.angle(truth).max())}  # one scale: the truth's
    assert titles == ["ground truth: amplitude", "cnn: amplitude", "fno: amplitude"]
    np.testing.assert_array_equal(shown[0][0], np.abs(truth))
    np.testing.assert_allclose(shown[0][1], align_amplitude(np.abs(recon), np.abs(truth)))
    np.testing.assert_array_equal(shown[1][0], np.angle(truth))
    np.testing.assert_allclose(shown[1][1], align_phase(np.angle(recon), np.angle(truth)))


def test_the_sweep_plot_draws_one_panel_per_metric_with_its_mean_per_swept_value_and_gaps_where_none(
        monkeypatch, tmp_path):
    figures = drawn(monkeypatch)
    plot_sweep(tmp_path / "sweep.png", "learning rate", ["1e-3", "1e-2", "1e-1"],
               {"cnn": {"psnr": [(20.0, 1.0), (None, None), (25.0, 0.5)],
                        "ssim": [(0.5, None), (0.6, 0.1), (0.7, 0.0)]}})
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    means = [ax.containers[0].lines[0] for ax in fig.axes]  # each errorbar's line through the means
    plt.close(fig)
    assert titles == ["psnr", "ssim"]
    assert [list(line.get_xdata()) for line in means] == [[0, 1, 2], [0, 1, 2]]
    np.testing.assert_array_equal(means[0].get_ydata(), [20.0, np.nan, 25.0])
    np.testing.assert_array_equal(means[1].get_ydata(), [0.5, 0.6, 0.7])


def test_the_reconstruction_figure_has_truth_reconstruction_and_error_panels_for_amplitude_and_phase(
        monkeypatch, tmp_path):
    figures = drawn(monkeypatch)
    plot_reconstruction(tmp_path / "reconstruction.png", *object_pair(), "run")
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    plt.close(fig)
    assert titles == [f"{name}: {label}" for name in ("amplitude", "phase (rad)")
                      for label in ("ground truth", "reconstruction (aligned)", "error")]


@pytest.mark.parametrize("constant", [0.0, math.pi], ids=["zero", "pi, on both sides of the cut"])
def test_the_comparison_of_an_object_without_phase_shows_each_reconstructions_own_phase(monkeypatch, tmp_path,
                                                                                        constant):
    """Nothing to align it to: the phase is shown as reconstructed (as plot_reconstruction does), in a
    colour range that spans it. A constant phase of pi reads as pi and -pi alike."""
    truth, recon = object_pair()
    signs = np.where(np.indices(truth.shape).sum(axis=0) % 2 == 0, 1.0, -1.0)
    truth = np.abs(truth) * np.exp(1j * signs * constant)
    assert np.ptp(np.angle(truth)) == pytest.approx(2 * constant)
    figures = drawn(monkeypatch)
    plot_comparison(tmp_path / "comparison.png", truth, {"cnn": recon})
    (fig,) = figures
    (image,) = fig.axes[3].get_images()  # bottom row: ground truth, cnn
    plt.close(fig)
    np.testing.assert_array_equal(image.get_array(), np.angle(recon))
    low, high = image.get_clim()
    assert low <= np.angle(recon).min() and high >= np.angle(recon).max()
