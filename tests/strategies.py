"""Hypothesis strategies for every config in the project (the one home of strategies).

``runner_configs()`` draws every field of TorchRunnerConfig: nothing is left at its default,
floats are finite and inside each field's rule, paths are short relative or absolute paths,
and dependent fields are drawn inside the bounds their partner allows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import strategies as st

from ptycho_torch import config as C
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig


def finite(lo: float, hi: float, **kw) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8).filter(
    lambda s: s not in {".", ".."} and not s.startswith("-"))
paths = st.builds(
    lambda absolute, parts: Path("/" if absolute else "", *parts),
    st.booleans(), st.lists(_segment, min_size=1, max_size=3),
).filter(lambda p: str(p).lower() != "none")

clip_values = st.one_of(st.none(), st.just(0.0), finite(1e-6, 1e6))

# Fields whose rule does not depend on another field.
INDEPENDENT: dict[str, st.SearchStrategy] = {
    "train_npz": st.none() | paths,
    "test_npz": st.none() | paths,
    "output_dir": paths,
    "overwrite": st.booleans(),
    "architecture": st.sampled_from(C.ARCHITECTURES),
    "training_procedure": st.sampled_from(C.TRAINING_PROCEDURES),
    "generator_output_mode": st.sampled_from(C.GENERATOR_OUTPUT_MODES),
    "cnn_channels": st.integers(1, 512),
    "fno_width": st.integers(1, 512),
    "fno_blocks": st.integers(1, 32),
    "fno_cnn_blocks": st.integers(0, 32),
    "probe_mask": st.booleans(),
    "seed": st.integers(0, C.MAX_SEED),
    "epochs": st.integers(1, 10_000),
    "batch_size": st.integers(1, 4096),
    "learning_rate": finite(1e-9, 10.0).filter(lambda x: x > 0),
    "gradient_clip_val": clip_values,
    "gradient_clip_algorithm": st.sampled_from(C.CLIP_ALGORITHMS),
    "torch_loss_mode": st.sampled_from(C.LOSS_MODES),
    "optimizer": st.sampled_from(C.OPTIMIZERS),
    "weight_decay": finite(0.0, 1.0),
    "momentum": finite(0.0, 1.0, exclude_max=True),
    "adam_beta1": finite(0.0, 1.0, exclude_max=True),
    "adam_beta2": finite(0.0, 1.0, exclude_max=True),
    "scheduler": st.sampled_from(C.SCHEDULERS),
    "lr_gamma": finite(0.0, 1.0, exclude_min=True),
    "lr_min_ratio": finite(0.0, 1.0),
    "plateau_factor": finite(0.0, 1.0, exclude_min=True, exclude_max=True),
    "plateau_patience": st.integers(0, 100),
    "plateau_min_lr": finite(0.0, 1.0),
    "plateau_threshold": finite(0.0, 1.0),
    "log_grad_norm": st.booleans(),
    "grad_norm_log_freq": st.integers(1, 1000),
    "nonfinite_grad_policy": st.sampled_from(C.NONFINITE_POLICIES),
    "n_lines": st.integers(0, 100_000),
    "nphotons": finite(1.0, 1e15),
    "n_train_images": st.integers(1, 64),
    "n_test_images": st.integers(1, 64),
    "set_phi": st.booleans(),
    "probe_npz": st.none() | paths,
    "data_seed": st.integers(0, C.MAX_SEED),
    "accelerator": st.sampled_from(C.ACCELERATORS),
    "devices": st.integers(1, 1024),
    "strategy": st.sampled_from(C.STRATEGIES),
    "num_nodes": st.integers(1, 1024),
    "precision": st.sampled_from(C.PRECISIONS),
    "deterministic": st.booleans(),
    "num_workers": st.integers(0, 256),
    "infer_batch_size": st.integers(1, 4096),
    "enable_progress_bar": st.booleans(),
    "enable_checkpointing": st.booleans(),
    "logger_backend": st.sampled_from(C.LOGGER_BACKENDS),
}
# Fields drawn inside bounds set by others (see ``runner_values``).
DEPENDENT = ("N", "fno_modes", "probe_mask_diameter", "lr_warmup_epochs", "val_fraction",
             "object_size", "train_stride", "test_stride")


@st.composite
def runner_values(draw) -> dict:
    """Keyword arguments for a valid TorchRunnerConfig, every field drawn."""
    values = {name: draw(strategy) for name, strategy in INDEPENDENT.items()}
    n = values["N"] = draw(st.sampled_from([16, 32, 64, 128, 256]))
    values["fno_modes"] = draw(st.integers(1, n // 2))
    values["probe_mask_diameter"] = draw(st.none() | finite(0.0, float(n), exclude_min=True))
    values["lr_warmup_epochs"] = draw(st.integers(0, values["epochs"] - 1))
    min_val = 0.01 if values["scheduler"] == "ReduceLROnPlateau" else 0.0
    values["val_fraction"] = draw(finite(min_val, 0.5))
    values["object_size"] = draw(st.integers(n, 4096))
    values["train_stride"] = draw(st.integers(1, n))
    values["test_stride"] = draw(st.integers(1, n))
    return values


def runner_configs() -> st.SearchStrategy[TorchRunnerConfig]:
    return runner_values().map(lambda values: TorchRunnerConfig(**values))


def runner_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TorchRunnerConfig))
