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
    "probe_defocus": finite(0.0, 100.0),
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
DEPENDENT = ("train_npz", "test_npz", "N", "fno_modes", "probe_mask_diameter", "lr_warmup_epochs", "val_fraction",
             "object_size", "train_stride", "test_stride")


@st.composite
def runner_values(draw) -> dict:
    """Keyword arguments for a valid TorchRunnerConfig, every field drawn."""
    values = {name: draw(strategy) for name, strategy in INDEPENDENT.items()}
    given = draw(st.booleans())  # NPZ paths come as a pair or not at all
    values["train_npz"], values["test_npz"] = (draw(paths), draw(paths)) if given else (None, None)
    n = values["N"] = draw(st.sampled_from([16, 32, 64, 128, 256]))
    values["fno_modes"] = draw(st.integers(1, n // 2 if values["architecture"] != "cnn" else 4096))
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


# --- gradient clipping and generators (tests/ptycho_torch/test_clipping.py, test_generators.py) ---

seeds = st.integers(0, 2**31 - 1)
grad_scales = st.integers(-4, 4).flatmap(lambda e: finite(10.0**e, 10.0 ** (e + 1)))  # log-spread, 1e-4..1e5
clip_bounds = finite(1e-3, 1e3)  # clip values that switch clipping on
headrooms = finite(1e-6, 10.0)  # relative margin of a clip value above the current gradient measure
circular_shifts = st.tuples(st.integers(-16, 16), st.integers(-16, 16))  # (rows, columns) for torch.roll


# =============================================================================================
# Simulation, scan and NPZ data (ptycho_torch.physics / objects / scan / simulation / npz_data)
# =============================================================================================

import io  # noqa: E402 -- this section keeps its own imports beside it
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from ptycho_torch.npz_data import CONTRACT  # noqa: E402

rng_seeds = st.integers(0, 2**32 - 1)  # numpy SeedSequence entropy


@st.composite
def scan_geometries(draw, max_size: int = 80) -> tuple[int, int, int]:
    """(object_size S, patch N, stride s) with 1 <= s <= N <= S; odd and even sides alike."""
    n = draw(st.integers(1, 24))
    return draw(st.integers(n, max_size)), n, draw(st.integers(1, n))


@st.composite
def complex_batches(draw, max_batch: int = 3, max_side: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(obj (B, N, N), probe (N, N)), both complex64 or both complex128, from a drawn seed."""
    batch, side = draw(st.integers(1, max_batch)), draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from([np.complex64, np.complex128]))
    rng = np.random.default_rng(draw(rng_seeds))
    scale = draw(finite(1e-3, 1e3))

    def field(*shape: int) -> np.ndarray:
        return (scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))).astype(dtype)

    return field(batch, side, side), field(side, side)


@st.composite
def tiny_simulation_configs(draw) -> C.SimulationConfig:
    """SimulationConfigs small enough to simulate in milliseconds (N = 16), every field drawn."""
    size = draw(st.integers(16, 40))
    return C.SimulationConfig(
        N=16, object_size=size, n_lines=draw(st.integers(0, 60)), nphotons=draw(finite(1.0, 1e9)),
        n_train_images=draw(st.integers(1, 2)), n_test_images=draw(st.integers(1, 2)),
        train_stride=draw(st.integers(4, 16)), test_stride=draw(st.integers(4, 16)),
        set_phi=draw(st.booleans()), probe_npz=None, data_seed=draw(st.integers(0, C.MAX_SEED)))


@dataclasses.dataclass(frozen=True)
class Corruption:
    """A way to spoil a valid split file: ``content(arrays)`` gives the bytes to write.

    ``words`` must all appear in the DataError message; ``may_load`` marks damage that can
    leave the file valid (a flipped timestamp byte), where loading may also succeed.
    """

    label: str
    content: Callable[[dict[str, np.ndarray]], bytes]
    words: tuple[str, ...] = ()
    may_load: bool = False


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _replaced(key: str, value) -> Callable[[dict[str, np.ndarray]], bytes]:
    return lambda arrays: npz_bytes({**arrays, key: value(arrays[key])})


_OTHER_DTYPE = {"f": np.float64, "i": np.int32, "c": np.complex128, "U": np.bytes_}
_BINDERS = {"diffraction", "objectGuess"}  # the first keys to fix M, N / I, S: their shrinking shows up elsewhere


def _other_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.float64:
        return array.astype(np.float32)
    return array.astype(_OTHER_DTYPE[array.dtype.kind])


@st.composite
def _shape_corruptions(draw, keys: list[str]) -> Corruption:
    key = draw(st.sampled_from(keys))
    shrinkable = key not in _BINDERS and CONTRACT[key].shape[:1] not in ((), ("2",))
    if shrinkable and draw(st.booleans()):
        return Corruption(f"{key} shrunk", _replaced(key, lambda a: a[:-1]), (key, "shape"))
    return Corruption(f"{key} extra axis", _replaced(key, lambda a: a[..., None]), (key, "shape"))


@st.composite
def _nonfinite_corruptions(draw, keys: list[str]) -> Corruption:
    key = draw(st.sampled_from([k for k in keys if CONTRACT[k].dtype.kind in "fc"]))
    bad, where = draw(st.sampled_from([np.nan, np.inf, -np.inf])), draw(st.integers(0, 10**6))

    def spoil(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array.reshape(-1)[where % array.size] = bad
        return array

    return Corruption(f"{key} has {bad}", _replaced(key, spoil), (key, "finite"))


@st.composite
def _byte_corruptions(draw) -> Corruption:
    kind = draw(st.sampled_from(["truncated", "random", "flipped"]))
    if kind == "random":
        junk = draw(st.binary(max_size=256))
        return Corruption("random bytes", lambda arrays: junk, ("NPZ",))
    fraction, flip = draw(finite(0.0, 1.0, exclude_max=True)), draw(st.integers(1, 255))
    def truncated(arrays: dict[str, np.ndarray]) -> bytes:
        raw = npz_bytes(arrays)
        return raw[: int(fraction * len(raw))]

    if kind == "truncated":
        return Corruption("truncated", truncated, ("NPZ",))

    def flipped(arrays: dict[str, np.ndarray]) -> bytes:
        raw = bytearray(npz_bytes(arrays))
        raw[int(fraction * len(raw))] ^= flip
        return bytes(raw)

    return Corruption("flipped byte", flipped, may_load=True)


def npz_corruptions(keys: list[str]) -> st.SearchStrategy[Corruption]:
    """Every kind of damage a split file holding ``keys`` can suffer, each with what its error must name."""
    pick = st.sampled_from(keys)
    return st.one_of(
        pick.map(lambda k: Corruption(f"{k} missing", lambda a: npz_bytes({n: v for n, v in a.items() if n != k}), (k, "missing"))),
        pick.map(lambda k: Corruption(f"{k} wrong dtype", _replaced(k, _other_dtype), (k, "dtype"))),
        pick.map(lambda k: Corruption(f"{k} pickled", _replaced(k, lambda a: np.array([a, None], dtype=object)), (k, "pickle"))),
        st.just(Corruption("extra key", lambda a: npz_bytes({**a, "surplus": np.zeros(1)}), ("surplus", "extra"))),
        _shape_corruptions(keys),
        _nonfinite_corruptions(keys),
        _byte_corruptions(),
    )


# --- training configs small enough to fit in a test (model, clipping, schedulers) -----------------

@st.composite
def tiny_training_configs(draw):
    """A TrainingConfig with every training/model setting drawn, sized for the tiny test data (N=16)."""
    from ptycho_torch.generators import tiny_model_config  # torch import kept out of the config tests

    values = draw(runner_values())
    model = tiny_model_config(
        values["architecture"], training_procedure=values["training_procedure"],
        generator_output_mode=values["generator_output_mode"], probe_mask=values["probe_mask"],
        probe_mask_diameter=draw(st.none() | finite(2.0, 16.0)),
        cnn_channels=draw(st.integers(1, 4)), fno_modes=draw(st.integers(1, 8)),
        fno_width=draw(st.integers(1, 8)), fno_blocks=draw(st.integers(1, 2)), fno_cnn_blocks=draw(st.integers(0, 2)))
    epochs = draw(st.integers(1, 2))
    scheduler = values["scheduler"]
    return C.TrainingConfig(
        model=model, seed=values["seed"], epochs=epochs, batch_size=draw(st.integers(4, 16)),
        learning_rate=draw(finite(1e-5, 1e-2)), gradient_clip_val=values["gradient_clip_val"],
        gradient_clip_algorithm=values["gradient_clip_algorithm"], torch_loss_mode=values["torch_loss_mode"],
        optimizer=values["optimizer"], weight_decay=values["weight_decay"], momentum=values["momentum"],
        adam_beta1=values["adam_beta1"], adam_beta2=values["adam_beta2"], scheduler=scheduler,
        lr_gamma=values["lr_gamma"], lr_warmup_epochs=draw(st.integers(0, epochs - 1)),
        lr_min_ratio=values["lr_min_ratio"], plateau_factor=values["plateau_factor"],
        plateau_patience=values["plateau_patience"], plateau_min_lr=values["plateau_min_lr"],
        plateau_threshold=values["plateau_threshold"], val_fraction=draw(finite(0.1, 0.5)),
        log_grad_norm=values["log_grad_norm"], grad_norm_log_freq=draw(st.integers(1, 3)),
        nonfinite_grad_policy=values["nonfinite_grad_policy"])
