"""Hypothesis strategies for every config in the project (the one home of strategies).

Valid values and boundary examples are derived from the rule objects in
``ptycho_torch.config.FIELD_RULES`` (bounds with open/closed ends, choices, powers of two,
optional), so a changed rule changes what the tests draw. ``runner_configs()`` draws every field
of TorchRunnerConfig: nothing is left at its default, floats are finite, paths are short relative
or absolute paths, and dependent fields are drawn inside the bounds their partner allows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ptycho_torch import config as C
from ptycho_torch.config import (
    FIELD_RULES, Boolean, Choice, Instance, Interval, Optional, PathRule, PowerOfTwo, ZeroOr,
)
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig


def finite(lo: float, hi: float, **kw) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


# Path segments: a few spellings cover what matters (dots, dashes, digits); text drawing made the
# runner strategy twice as slow for no extra coverage.
_segment = st.sampled_from(["a", "runs", "data-1", "x.y", "_t", "v2", "out_dir", "0"])
paths = st.builds(
    lambda absolute, parts: Path("/" if absolute else "", *parts),
    st.booleans(), st.lists(_segment, min_size=1, max_size=3),
)


# --- derived from the rules -----------------------------------------------------------------------

def _powers(rule: PowerOfTwo) -> list[int]:
    return [2**k for k in range(rule.hi.bit_length()) if rule.lo <= 2**k <= rule.hi]


def valid_values(rule: Any) -> st.SearchStrategy:
    """Every value ``rule`` accepts (finite floats only; paths from ``paths``)."""
    if isinstance(rule, Interval):
        hi = None if rule.hi == math.inf else rule.hi
        if rule.kind is int:
            return st.integers(int(rule.lo) + rule.lo_open, None if hi is None else int(hi) - rule.hi_open)
        return st.floats(rule.lo, hi, exclude_min=rule.lo_open, exclude_max=rule.hi_open and hi is not None,
                         allow_nan=False, allow_infinity=False)
    if isinstance(rule, PowerOfTwo):
        return st.sampled_from(_powers(rule))
    if isinstance(rule, Choice):
        return st.sampled_from(rule.options)
    if isinstance(rule, Boolean):
        return st.booleans()
    if isinstance(rule, PathRule):
        return paths
    if isinstance(rule, Optional):
        return st.none() | valid_values(rule.inner)
    if isinstance(rule, ZeroOr):
        return st.just(0.0) | valid_values(rule.inner)
    raise TypeError(f"no strategy for rule {rule!r}")


def _step_outside(rule: Interval, bound: float, downward: bool) -> Any:
    if rule.kind is int:
        return int(bound) - 1 if downward else int(bound) + 1
    return math.nextafter(bound, -math.inf if downward else math.inf)


def boundary_examples(rule: Any) -> tuple[list, list]:
    """(valid, invalid) values at each edge of ``rule``: each bound, and one step outside it.

    An open bound is itself the invalid example and one step inside it the valid one. Type
    junk (strings, booleans for numbers, NaN, inf) is added to the invalid side.
    """
    if isinstance(rule, Optional):
        valid, invalid = boundary_examples(rule.inner)
        return [None, *valid], [v for v in invalid if v is not None]
    if isinstance(rule, ZeroOr):  # 0 and the inner rule's values; below its lower bound only 0
        valid, invalid = boundary_examples(rule.inner)
        return [0.0, 0, *valid], [v for v in invalid if v != 0 or isinstance(v, bool)] + [-1.0, -rule.inner.lo]
    if isinstance(rule, Interval):
        valid, invalid = [], ["1", True, None] + ([] if rule.kind is int else [math.nan, math.inf, -math.inf])
        for bound, downward, is_open in ((rule.lo, True, rule.lo_open), (rule.hi, False, rule.hi_open)):
            if bound == math.inf:
                continue
            inside = _step_outside(rule, bound, not downward)
            outside = _step_outside(rule, bound, downward)
            valid.append(inside if is_open else (int(bound) if rule.kind is int else float(bound)))
            invalid.append(bound if is_open else outside)
        if rule.kind is int:
            invalid.append(float(valid[0]) + 0.5)  # a fraction inside the bounds
        return valid, invalid
    if isinstance(rule, PowerOfTwo):
        powers = _powers(rule)
        return [powers[0], powers[-1]], [powers[0] // 2, powers[-1] * 2, powers[0] + 1, float(powers[0]), True]
    if isinstance(rule, Choice):
        return list(rule.options), [rule.options[0].upper() + "_", "", None, 1]
    if isinstance(rule, Boolean):
        return [True, False], [0, 1, "true", None]
    if isinstance(rule, PathRule):
        return ["a", Path("/tmp/x")], ["", "  ", None, 3, "a\0b", Path("/tmp/\0")]
    if isinstance(rule, Instance):
        return [rule.cls()], [None, {}]
    raise TypeError(f"no boundary examples for rule {rule!r}")


clip_values = valid_values(FIELD_RULES["gradient_clip_val"])
# Fields drawn inside bounds set by others (see ``runner_values``); every other field from its rule.
DEPENDENT = ("train_npz", "test_npz", "N", "fno_modes", "probe_mask_diameter", "lr_warmup_epochs", "val_fraction",
             "plateau_min_lr", "object_size", "train_stride", "test_stride")
INDEPENDENT: dict[str, st.SearchStrategy] = {
    f.name: valid_values(FIELD_RULES[f.name]) for f in dataclasses.fields(TorchRunnerConfig) if f.name not in DEPENDENT
}


def zero_or_below(lo: float, cap: float) -> st.SearchStrategy[float]:
    """0, or a float from ``lo`` up to (not including) ``cap``."""
    return st.just(0.0) if cap <= lo else st.just(0.0) | finite(lo, cap, exclude_max=True)


def _below(rule: Interval, cap: int) -> st.SearchStrategy[int]:
    """Integers of an integer rule, no larger than ``cap`` (a partner's value)."""
    return st.integers(int(rule.lo), min(cap, int(rule.hi)) if rule.hi != math.inf else cap)


@st.composite
def runner_values(draw) -> dict:
    """Keyword arguments for a valid TorchRunnerConfig, every field drawn."""
    values = {name: draw(strategy) for name, strategy in INDEPENDENT.items()}
    given = draw(st.booleans())  # NPZ paths come as a pair or not at all
    values["train_npz"], values["test_npz"] = (draw(paths), draw(paths)) if given else (None, None)
    n = values["N"] = draw(valid_values(FIELD_RULES["N"]))
    spectral = values["architecture"] in ("fno", "hybrid")
    values["fno_modes"] = draw(_below(FIELD_RULES["fno_modes"], n // 2) if spectral
                               else valid_values(FIELD_RULES["fno_modes"]))
    diameter = FIELD_RULES["probe_mask_diameter"].inner
    values["probe_mask_diameter"] = draw(st.none() | finite(diameter.lo, float(n), exclude_min=diameter.lo_open))
    values["lr_warmup_epochs"] = draw(_below(FIELD_RULES["lr_warmup_epochs"], values["epochs"] - 1))
    val = FIELD_RULES["val_fraction"]
    plateau = values["scheduler"] == "ReduceLROnPlateau"
    values["val_fraction"] = draw(finite(val.lo, val.hi, exclude_min=plateau))
    floor = FIELD_RULES["plateau_min_lr"]  # under the plateau scheduler, below the learning rate
    values["plateau_min_lr"] = draw(zero_or_below(floor.inner.lo, values["learning_rate"]) if plateau
                                    else valid_values(floor))
    size = FIELD_RULES["object_size"]
    values["object_size"] = draw(st.integers(max(n, int(size.lo)), int(size.hi)))
    values["train_stride"] = draw(_below(FIELD_RULES["train_stride"], n))
    values["test_stride"] = draw(_below(FIELD_RULES["test_stride"], n))
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


# --- configs small enough to train in a test (model, clipping, schedulers, whole runs) ------------

# Values a tiny fit can take without blowing up (a weight decay of 1e300 is valid, but it
# only tests the non-finite policy); every other training setting comes from its rule.
PRACTICAL = {
    "learning_rate": finite(1e-5, 1e-2),
    "weight_decay": zero_or_below(C.FLOAT32_TINY, 1.0),  # 0, or float32-normal (the rule, ``FLOAT32_TINY``)
    "plateau_min_lr": zero_or_below(C.FLOAT32_TINY, 1.0),
    "plateau_patience": st.integers(0, 100),
    "batch_size": st.integers(4, 16),
    "epochs": st.integers(1, 2),
    "grad_norm_log_freq": st.integers(1, 3),
    "val_fraction": finite(0.1, 0.5),
}


@st.composite
def tiny_model_values(draw) -> dict:
    """Every ModelConfig field, sized for N = 16."""
    return dict(
        architecture=draw(st.sampled_from(C.ARCHITECTURES)),
        training_procedure=draw(st.sampled_from(C.TRAINING_PROCEDURES)),
        N=16, generator_output_mode=draw(st.sampled_from(C.GENERATOR_OUTPUT_MODES)),
        probe_mask=draw(st.booleans()), probe_mask_diameter=draw(st.none() | finite(2.0, 16.0)),
        cnn_channels=draw(st.integers(1, 4)), fno_modes=draw(st.integers(1, 8)),
        fno_width=draw(st.integers(1, 8)), fno_blocks=draw(st.integers(1, 2)), fno_cnn_blocks=draw(st.integers(0, 2)))


@st.composite
def tiny_training_values(draw) -> dict:
    """Every TrainingConfig field except ``model``, practical for a fit of a few steps."""
    values = draw(runner_values())
    names = [f.name for f in dataclasses.fields(C.TrainingConfig) if f.name != "model"]
    training = {name: draw(PRACTICAL[name]) if name in PRACTICAL else values[name] for name in names}
    training["lr_warmup_epochs"] = draw(st.integers(0, training["epochs"] - 1))
    if training["scheduler"] == "ReduceLROnPlateau":  # its floor below the rate, or it could never act
        training["plateau_min_lr"] = draw(zero_or_below(C.FLOAT32_TINY, training["learning_rate"]))
    return training


@st.composite
def tiny_training_configs(draw) -> C.TrainingConfig:
    """A TrainingConfig with every training/model setting drawn, sized for the tiny test data (N=16)."""
    return C.TrainingConfig(model=C.ModelConfig(**draw(tiny_model_values())), **draw(tiny_training_values()))


# Execution values this machine can run (one CPU process); the others are machine-bound.
RUNNABLE_EXECUTION = {
    "accelerator": st.sampled_from(["cpu", "auto"]),
    "devices": st.just(1),
    "strategy": st.just("auto"),
    "num_nodes": st.just(1),
    "precision": st.sampled_from(C.PRECISIONS),
    "deterministic": st.booleans(),
    "num_workers": st.just(0),
    "num_threads": st.integers(0, 2),
    "infer_batch_size": st.integers(1, 64),
    "enable_progress_bar": st.just(False),
    "enable_checkpointing": st.booleans(),
    "logger_backend": st.sampled_from(["csv", "none"]),
}


@st.composite
def tiny_runner_configs(draw, output_dir: Path, train_npz: Path | None = None, test_npz: Path | None = None,
                        probe_npz: Path | None = None) -> TorchRunnerConfig:
    """A whole run of a few steps, every runner field drawn (paths given by the caller: real files).

    ``train_npz``/``test_npz`` are used or not (simulated data) by a draw, and so is ``probe_npz``.
    """
    values = {**draw(tiny_model_values()), **draw(tiny_training_values()),
              **{name: draw(strategy) for name, strategy in RUNNABLE_EXECUTION.items()}}
    given = train_npz is not None and draw(st.booleans())
    values.update(
        train_npz=train_npz if given else None, test_npz=test_npz if given else None,
        output_dir=output_dir, overwrite=draw(st.booleans()),
        object_size=draw(st.integers(16, 40)), n_lines=draw(st.integers(0, 60)), nphotons=draw(finite(1.0, 1e9)),
        n_train_images=draw(st.integers(1, 2)), n_test_images=draw(st.integers(1, 2)),
        train_stride=draw(st.integers(4, 16)), test_stride=draw(st.integers(4, 16)), set_phi=draw(st.booleans()),
        probe_npz=probe_npz if probe_npz is not None and draw(st.booleans()) else None,
        probe_defocus=draw(finite(0.0, 2.0)), data_seed=draw(st.integers(0, C.MAX_SEED)))
    return TorchRunnerConfig(**values)


# --- metrics, losses, the validation split and artifact files ---------------------------------------

phase_planes = st.tuples(  # (offset rad, row slope rad/px, column slope rad/px) of a + b*row + c*col;
    st.floats(-10.0, 10.0), st.floats(-0.09, 0.09), st.floats(-0.09, 0.09))  # |b| 32 + |c| 32 < 2 pi
amplitude_scales = st.floats(1e-3, 1e3)
image_sides = st.sampled_from([16, 32])
batch_shapes = st.tuples(st.integers(1, 3), st.sampled_from([4, 8]))  # (B, N): patterns of N x N pixels
pattern_counts = st.integers(1, 2000)
val_fractions = st.one_of(st.just(0.0), valid_values(FIELD_RULES["val_fraction"]).filter(lambda v: v > 0))
json_floats = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(  # nested JSON-like data whose floats may be NaN or +-inf
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | json_floats | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)
