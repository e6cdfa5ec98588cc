"""Pictures a person can check a run by: reconstruction vs truth, training curves, architecture comparison."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ptycho_torch.artifacts import atomic_file  # noqa: E402
from ptycho_torch.metrics import align_amplitude, align_phase, constant_phase  # noqa: E402

CLIP_LINE_RANGE = 1e6  # the clip is drawn as a line when at most this many times the largest norm shown


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _shown_phase(recon: np.ndarray, truth_phase: np.ndarray) -> np.ndarray:
    """The reconstruction's phase aligned to the truth's as the scores align it, or as reconstructed
    where the truth's phase is constant (nothing to align it to; the scores leave phase unscored)."""
    return np.angle(recon) if constant_phase(truth_phase) else align_phase(np.angle(recon), truth_phase)


def plot_reconstruction(path: Path, truth: np.ndarray, recon: np.ndarray, title: str) -> Path:
    """Ground truth, aligned reconstruction and error, for amplitude (top) and phase (bottom)."""
    amp_t, phase_t = np.abs(truth), np.angle(truth)
    amp_r = align_amplitude(np.abs(recon), amp_t)
    phase_r = _shown_phase(recon, phase_t)
    rows = [("amplitude", amp_t, amp_r, amp_r - amp_t), ("phase (rad)", phase_t, phase_r, phase_r - phase_t)]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for (name, t, r, err), row in zip(rows, axes):
        lo, hi = float(min(t.min(), r.min())), float(max(t.max(), r.max()))
        for ax, image, label, kw in ((row[0], t, "ground truth", dict(vmin=lo, vmax=hi)),
                                     (row[1], r, "reconstruction (aligned)", dict(vmin=lo, vmax=hi)),
                                     (row[2], err, "error", dict(cmap="RdBu_r", vmin=-np.abs(err).max(),
                                                                 vmax=np.abs(err).max()))):
            shown = ax.imshow(image, **kw)
            ax.set_title(f"{name}: {label}")
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(title)
    return _save(fig, path)


def plot_object(path: Path, recon: np.ndarray, title: str) -> Path:
    """A reconstruction without ground truth: its amplitude and phase."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, image, label in ((axes[0], np.abs(recon), "amplitude"), (axes[1], np.angle(recon), "phase (rad)")):
        fig.colorbar(ax.imshow(image), ax=ax, fraction=0.046)
        ax.set_title(f"reconstruction: {label}")
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_training(path: Path, history: Sequence[Mapping], clip_val: float | None, algorithm: str | None) -> Path:
    """Loss, learning rate and global gradient norms (pre/post clip) per optimizer step."""
    return _save(training_figure(history, clip_val, algorithm), path)


def training_figure(history: Sequence[Mapping], clip_val: float | None, algorithm: str | None) -> plt.Figure:
    """``plot_training``'s figure. Steps skipped for a non-finite gradient are marked on the loss panel
    (their loss may be finite: the weights did not move there)."""
    steps = np.array([r["step"] for r in history])
    fig, (ax_loss, ax_lr, ax_norm) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.semilogy(steps, [r["loss"] for r in history])
    skipped = [r["step"] for r in history if r["skipped"]]
    if skipped:  # at the panel's foot, in axes units: the loss there may be NaN, inf or off the scale
        ax_loss.plot(skipped, [0.02] * len(skipped), "|", color="tab:red", markersize=12,
                     transform=ax_loss.get_xaxis_transform(), label=f"skipped step ({len(skipped)})")
        ax_loss.legend()
    ax_loss.set(title="training loss", xlabel="optimizer step")
    ax_lr.plot(steps, [r["lr"] for r in history])
    ax_lr.set(title="learning rate", xlabel="optimizer step")
    logged = [r for r in history if r["grad_norm_preclip"] is not None]
    if logged:
        ax_norm.semilogy([r["step"] for r in logged], [r["grad_norm_preclip"] for r in logged], ".", label="pre-clip")
        ax_norm.semilogy([r["step"] for r in logged], [r["grad_norm_postclip"] for r in logged], ".", label="post-clip")
    if clip_val:
        note = "" if algorithm == "norm" else f" ({algorithm} bounds elements/units, not this norm)"
        label = f"clip = {clip_val:g}{note}"
        largest = max((r["grad_norm_preclip"] for r in logged if math.isfinite(r["grad_norm_preclip"])), default=1.0)
        if clip_val <= CLIP_LINE_RANGE * largest:
            ax_norm.axhline(clip_val, color="k", linestyle="--", label=label)
        else:  # a line at, say, 1e308 would stretch the axis past what its ticks can be computed for
            ax_norm.text(0.5, 0.95, f"{label}: above every norm shown", transform=ax_norm.transAxes, ha="center")
    ax_norm.set(title=f"global gradient L2 norm (clip: {algorithm if clip_val else 'off'})", xlabel="optimizer step")
    if ax_norm.get_legend_handles_labels()[0]:
        ax_norm.legend()
    else:  # norms not logged and clipping off
        ax_norm.text(0.5, 0.5, "not logged", transform=ax_norm.transAxes, ha="center")
    return fig


def plot_sweep(path: Path, x_title: str, x_labels: Sequence[str],
               lines: Mapping[str, Mapping[str, Sequence[tuple[float | None, float | None]]]]) -> Path:
    """Each metric against the swept value: one line per other swept setting, mean +- std over seeds."""
    metrics = list(next(iter(lines.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    positions = np.arange(len(x_labels))
    for ax, metric in zip(axes[0], metrics):
        for offset, (label, series) in enumerate(lines.items()):
            points = series[metric]
            mean = np.array([np.nan if m is None else m for m, _ in points], dtype=float)
            spread = np.array([0.0 if s is None else s for _, s in points], dtype=float)
            shift = 0.04 * (offset - (len(lines) - 1) / 2)  # side by side, so error bars stay readable
            ax.errorbar(positions + shift, mean, yerr=spread, marker="o", capsize=3, label=label)
        ax.set_xticks(positions, x_labels)
        ax.set(title=metric.replace("_", " "), xlabel=x_title)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(path: Path, truth: np.ndarray, recons: Mapping[str, np.ndarray]) -> Path:
    """Amplitude and phase of the ground truth beside each architecture's aligned reconstruction."""
    columns = [("ground truth", truth)] + list(recons.items())
    amp_t, phase_t = np.abs(truth), np.angle(truth)
    # the truth's colour range for every phase panel, or each panel its own when the truth's is constant
    phase_range = {} if constant_phase(phase_t) else dict(vmin=phase_t.min(), vmax=phase_t.max())
    fig, axes = plt.subplots(2, len(columns), figsize=(3.5 * len(columns), 7), squeeze=False)
    for col, (name, obj) in enumerate(columns):
        amp = amp_t if col == 0 else align_amplitude(np.abs(obj), amp_t)
        phase = phase_t if col == 0 else _shown_phase(obj, phase_t)
        axes[0, col].imshow(amp, vmin=amp_t.min(), vmax=amp_t.max())
        axes[1, col].imshow(phase, **phase_range)
        axes[0, col].set_title(f"{name}: amplitude")
        axes[1, col].set_title(f"{name}: phase")
        for ax in axes[:, col]:
            ax.axis("off")
    return _save(fig, path)
