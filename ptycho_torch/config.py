"""Validated, frozen configuration for the grid-lines PINN (torch-free on purpose).

Three configs feed the code that acts on settings:
  ModelConfig            -> generators and the physics forward layer
  TrainingConfig         -> the LightningModule, optimizer, scheduler, clipping, data loading
  PyTorchExecutionConfig -> the Trainer factory (hardware, precision, logging)

A setting has one name in every layer (DESIGN.md rule 1), so each validation rule is
declared once per field name in ``FIELD_RULES`` and reused by every class that holds the
field, the runner config included. All problems are collected and raised once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Named choices: the single tables that also feed the CLI's ``choices=``.
ARCHITECTURES = ("cnn", "fno", "hybrid")
TRAINING_PROCEDURES = ("pinn", "supervised")
GENERATOR_OUTPUT_MODES = ("real_imag", "amp_phase")
CLIP_ALGORITHMS = ("norm", "value", "agc")
LOSS_MODES = ("poisson", "mae")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("Default", "Exponential", "WarmupCosine", "ReduceLROnPlateau")
NONFINITE_POLICIES = ("skip", "error")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
LOGGER_BACKENDS = ("csv", "tensorboard", "none")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.rule}"


class ConfigError(ValueError):
    """Every problem of one configuration, each as ``field=value: rule``."""

    def __init__(self, owner: str, problems: Iterable[Problem]):
        self.owner = owner
        self.problems = tuple(problems)
        listed = "; ".join(str(p) for p in self.problems)
        super().__init__(f"invalid {owner}: {listed}")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.problems)


# --- field rules: each returns (coerced value, None) or (value, broken rule) ----------------

Checked = tuple[Any, str | None]
Rule = Callable[[Any], Checked]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int, hi: int | None = None) -> Rule:
    text = f"must be an integer >= {lo}" if hi is None else f"must be an integer in {lo}..{hi}"

    def check(value: Any) -> Checked:
        ok = _is_int(value) and value >= lo and (hi is None or value <= hi)
        return value, None if ok else text

    return check


def power_of_two(lo: int, hi: int) -> Rule:
    def check(value: Any) -> Checked:
        ok = _is_int(value) and lo <= value <= hi and value & (value - 1) == 0
        return value, None if ok else f"must be a power of two in {lo}..{hi}"

    return check


def real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite float in an interval; ints are accepted and stored as float."""
    left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    text = f"must be a finite number in {left}{lo:g}, {hi:g}{right}"

    def check(value: Any) -> Checked:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, text
        value = float(value)
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        return value, None if math.isfinite(value) and inside else text

    return check


def choice(options: tuple[str, ...]) -> Rule:
    def check(value: Any) -> Checked:
        return value, None if value in options and isinstance(value, str) else f"must be one of {', '.join(options)}"

    return check


def boolean(value: Any) -> Checked:
    return value, None if isinstance(value, bool) else "must be true or false"


def path(value: Any) -> Checked:
    if isinstance(value, (str, Path)) and str(value) != "":
        return Path(value), None
    return value, "must be a non-empty path"


def optional(rule: Rule) -> Rule:
    def check(value: Any) -> Checked:
        return (None, None) if value is None else rule(value)

    return check


def _clip_value(value: Any) -> Checked:
    coerced, broken = real(0.0)(value)
    return coerced, broken and "must be None/0 (off) or a finite number > 0 (on)"


FIELD_RULES: dict[str, Rule] = {
    # model
    "architecture": choice(ARCHITECTURES),
    "training_procedure": choice(TRAINING_PROCEDURES),
    "N": power_of_two(16, 256),
    "generator_output_mode": choice(GENERATOR_OUTPUT_MODES),
    "cnn_channels": integer(1, 512),
    "fno_modes": integer(1),
    "fno_width": integer(1, 512),
    "fno_blocks": integer(1, 32),
    "fno_cnn_blocks": integer(0, 32),
    "probe_mask": boolean,
    "probe_mask_diameter": optional(real(0.0, lo_open=True)),
    # training
    "seed": integer(0, MAX_SEED),
    "epochs": integer(1),
    "batch_size": integer(1),
    "learning_rate": real(0.0, lo_open=True),
    "gradient_clip_val": optional(_clip_value),
    "gradient_clip_algorithm": choice(CLIP_ALGORITHMS),
    "torch_loss_mode": choice(LOSS_MODES),
    "optimizer": choice(OPTIMIZERS),
    "weight_decay": real(0.0),
    "momentum": real(0.0, 1.0, hi_open=True),
    "adam_beta1": real(0.0, 1.0, hi_open=True),
    "adam_beta2": real(0.0, 1.0, hi_open=True),
    "scheduler": choice(SCHEDULERS),
    "lr_gamma": real(0.0, 1.0, lo_open=True),
    "lr_warmup_epochs": integer(0),
    "lr_min_ratio": real(0.0, 1.0),
    "plateau_factor": real(0.0, 1.0, lo_open=True, hi_open=True),
    "plateau_patience": integer(0),
    "plateau_min_lr": real(0.0),
    "plateau_threshold": real(0.0),
    "val_fraction": real(0.0, 0.5),
    "log_grad_norm": boolean,
    "grad_norm_log_freq": integer(1),
    "nonfinite_grad_policy": choice(NONFINITE_POLICIES),
    # simulation
    "object_size": integer(16, 4096),
    "n_lines": integer(0, 100_000),
    "nphotons": real(1.0, 1e15),
    "n_train_images": integer(1, 64),
    "n_test_images": integer(1, 64),
    "train_stride": integer(1, 256),
    "test_stride": integer(1, 256),
    "set_phi": boolean,
    "probe_npz": optional(path),
    "probe_defocus": real(0.0, 100.0),
    "data_seed": integer(0, MAX_SEED),
    # execution
    "accelerator": choice(ACCELERATORS),
    "devices": integer(1, 1024),
    "strategy": choice(STRATEGIES),
    "num_nodes": integer(1, 1024),
    "precision": choice(PRECISIONS),
    "deterministic": boolean,
    "num_workers": integer(0, 256),
    "infer_batch_size": integer(1),
    "enable_progress_bar": boolean,
    "enable_checkpointing": boolean,
    "logger_backend": choice(LOGGER_BACKENDS),
    # runner-only
    "train_npz": optional(path),
    "test_npz": optional(path),
    "output_dir": path,
    "overwrite": boolean,
}


# --- cross-field rules: applied by every class that holds all the fields they read ---------

@dataclass(frozen=True)
class CrossRule:
    reads: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], Problem | None]


def _fno_modes_fit(v: Mapping[str, Any]) -> Problem | None:
    spectral = v["architecture"] in ("fno", "hybrid")  # the cnn ignores fno_modes
    if spectral and v["fno_modes"] > v["N"] // 2:
        return Problem("fno_modes", v["fno_modes"],
                       f"must be <= N/2 = {v['N'] // 2} (N={v['N']}, architecture={v['architecture']})")
    return None


def _mask_fits(v: Mapping[str, Any]) -> Problem | None:
    d = v["probe_mask_diameter"]
    if d is not None and d > v["N"]:
        return Problem("probe_mask_diameter", d, f"must be <= N={v['N']} pixels")
    return None


def _warmup_fits(v: Mapping[str, Any]) -> Problem | None:
    if v["scheduler"] == "WarmupCosine" and v["lr_warmup_epochs"] >= v["epochs"]:
        return Problem(
            "lr_warmup_epochs", v["lr_warmup_epochs"],
            f"must be < epochs={v['epochs']} under scheduler=WarmupCosine (lower it or raise epochs)",
        )
    return None


def _plateau_needs_validation(v: Mapping[str, Any]) -> Problem | None:
    if v["scheduler"] == "ReduceLROnPlateau" and v["val_fraction"] == 0:
        return Problem("val_fraction", 0.0, "must be > 0 under scheduler=ReduceLROnPlateau (it monitors the validation loss)")
    return None


def _object_holds_patch(v: Mapping[str, Any]) -> Problem | None:
    if v["object_size"] < v["N"]:
        return Problem("object_size", v["object_size"], f"must be >= N={v['N']} so that one patch fits")
    return None


def _stride_fits(name: str) -> Callable[[Mapping[str, Any]], Problem | None]:
    def check(v: Mapping[str, Any]) -> Problem | None:
        if v[name] > v["N"]:
            return Problem(name, v[name], f"must be <= N={v['N']} so that neighbouring patches overlap or touch")
        return None

    return check


def _npz_pair(v: Mapping[str, Any]) -> Problem | None:
    if (v["train_npz"] is None) != (v["test_npz"] is None):
        missing, given = ("test_npz", "train_npz") if v["test_npz"] is None else ("train_npz", "test_npz")
        return Problem(missing, None, f"must be given when {given} is (or leave both out to simulate the data)")
    return None


CROSS_RULES = (
    CrossRule(("train_npz", "test_npz"), _npz_pair),
    CrossRule(("object_size", "N"), _object_holds_patch),
    CrossRule(("train_stride", "N"), _stride_fits("train_stride")),
    CrossRule(("test_stride", "N"), _stride_fits("test_stride")),
    CrossRule(("fno_modes", "N", "architecture"), _fno_modes_fit),
    CrossRule(("probe_mask_diameter", "N"), _mask_fits),
    CrossRule(("scheduler", "lr_warmup_epochs", "epochs"), _warmup_fits),
    CrossRule(("scheduler", "val_fraction"), _plateau_needs_validation),
)


def check_values(owner: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate named values with the shared rules; return them coerced or raise one ConfigError."""
    coerced: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in values.items():
        coerced[name], broken = FIELD_RULES[name](value)
        if broken:
            problems.append(Problem(name, value, broken))
    bad = {p.field for p in problems}
    for rule in CROSS_RULES:
        if set(rule.reads) <= coerced.keys() and not bad & set(rule.reads):
            found = rule.check(coerced)
            if found:
                problems.append(found)
    if problems:
        raise ConfigError(owner, problems)
    return coerced


class Validated:
    """Mixin for frozen dataclasses: validate every rule-bearing field on construction."""

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(self) if f.name in FIELD_RULES]
        clean = check_values(type(self).__name__, {n: getattr(self, n) for n in names})
        for name in names:  # coercion only (int -> float, str -> Path), still inside construction
            object.__setattr__(self, name, clean[name])


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Validated):
    architecture: str = "cnn"  # generator: cnn | fno | hybrid
    training_procedure: str = "pinn"  # pinn (physics loss) | supervised (ground-truth loss)
    N: int = 32  # patch side in pixels; power of two, 16..256
    generator_output_mode: str = "amp_phase"  # real_imag | amp_phase heads
    cnn_channels: int = 16  # base channel count of the cnn generator and the hybrid decoder
    fno_modes: int = 12  # Fourier modes kept per axis by a spectral convolution; <= N/2
    fno_width: int = 32  # channels inside fno / hybrid spectral blocks
    fno_blocks: int = 4  # spectral blocks (fno) or spectral encoder stages (hybrid)
    fno_cnn_blocks: int = 2  # refiner convolutions after the spectral blocks (fno)
    probe_mask: bool = False  # multiply the probe by a centred disk before illumination
    probe_mask_diameter: float | None = None  # disk diameter in pixels; None = N


@dataclass(frozen=True, kw_only=True)
class TrainingConfig(Validated):
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0  # seeds weights, data order and the validation split
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3  # peak learning rate
    gradient_clip_val: float | None = None  # None or 0 = off; > 0 = max norm / value / AGC lambda
    gradient_clip_algorithm: str = "norm"  # norm (global L2) | value (element-wise) | agc (unit-wise)
    torch_loss_mode: str = "mae"  # mae on amplitudes | poisson NLL on counts
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    adam_beta1: float = 0.9  # adam / adamw only
    adam_beta2: float = 0.999  # adam / adamw only
    scheduler: str = "Default"  # Default (constant) | Exponential | WarmupCosine | ReduceLROnPlateau
    lr_gamma: float = 0.95  # Exponential: lr multiplied by this each epoch
    lr_warmup_epochs: int = 0  # WarmupCosine: epochs of linear warmup
    lr_min_ratio: float = 0.0  # WarmupCosine: final lr = learning_rate * lr_min_ratio
    plateau_factor: float = 0.5  # ReduceLROnPlateau: lr multiplier on a plateau
    plateau_patience: int = 2  # ReduceLROnPlateau: epochs without improvement before reducing
    plateau_min_lr: float = 0.0  # ReduceLROnPlateau: lower bound on lr
    plateau_threshold: float = 1e-4  # ReduceLROnPlateau: relative improvement that counts
    val_fraction: float = 0.1  # share of training patterns held out for validation; 0 = none
    log_grad_norm: bool = True  # record pre/post-clip global gradient norms
    grad_norm_log_freq: int = 1  # record norms every k optimizer steps
    nonfinite_grad_policy: str = "skip"  # skip (no step, counted) | error (raise)

    def __post_init__(self) -> None:
        problems = [] if isinstance(self.model, ModelConfig) else [Problem("model", self.model, "must be a ModelConfig")]
        try:
            super().__post_init__()
        except ConfigError as err:
            problems.extend(err.problems)
        if problems:
            raise ConfigError(type(self).__name__, problems)


@dataclass(frozen=True, kw_only=True)
class PyTorchExecutionConfig(Validated):
    accelerator: str = "cpu"  # auto | cpu | gpu | cuda | mps
    devices: int = 1  # devices per node
    strategy: str = "auto"  # auto | ddp | ddp_spawn
    num_nodes: int = 1
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed (fp16 AMP with a GradScaler)
    deterministic: bool = True  # torch deterministic algorithms
    num_workers: int = 0  # DataLoader worker processes
    infer_batch_size: int = 64  # batch size for predicting the test split
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    logger_backend: str = "csv"  # csv | tensorboard | none
    # Shared with TrainingConfig; must agree (checked before training starts). Never given to the Trainer.
    gradient_clip_val: float | None = None
    learning_rate: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class SimulationConfig(Validated):
    N: int = 32  # patch side in pixels (the model's N)
    object_size: int = 128  # side of the square object in pixels (upstream: 392)
    n_lines: int = 130  # random one-pixel lines on the 2x canvas (upstream: 400 on 784 px)
    nphotons: float = 1e9  # mean photon count per diffraction pattern
    n_train_images: int = 2  # independent objects in the train split
    n_test_images: int = 1  # independent objects in the test split
    train_stride: int = 4  # scan step in pixels for the train split
    test_stride: int = 8  # scan step in pixels for the test split (also the stitching crop)
    set_phi: bool = True  # derive a phase from the amplitude (False = zero phase, phase metrics null)
    probe_npz: Path | None = None  # NPZ with key probeGuess (N, N) complex; None = ideal disk
    probe_defocus: float = 1.0  # ideal disk's phase curvature d: pi*d rad at its edge; 0 = real (twin-ambiguous)
    data_seed: int = 0  # seeds objects and Poisson noise


def to_jsonable(value: Any) -> Any:
    """A config (or a value inside one) as JSON-ready data; paths become strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value


def shared_field_names(a: type, b: type) -> tuple[str, ...]:
    """Names that two config classes both hold (the fields that must agree)."""
    names_b = {f.name for f in dataclasses.fields(b)}
    return tuple(f.name for f in dataclasses.fields(a) if f.name in names_b)


def check_shared_fields(training: TrainingConfig, execution: PyTorchExecutionConfig) -> None:
    """Refuse to train when a setting held by both configs disagrees between them."""
    problems = [
        Problem(name, getattr(execution, name), f"execution value differs from training value {getattr(training, name)!r}")
        for name in shared_field_names(TrainingConfig, PyTorchExecutionConfig)
        if getattr(training, name) != getattr(execution, name)
    ]
    if problems:
        raise ConfigError("shared settings (TrainingConfig vs PyTorchExecutionConfig)", problems)


def clipping_enabled(clip_val: float | None) -> bool:
    """None and 0 both mean off."""
    return clip_val is not None and clip_val > 0


# (field, is it active under this training config?, why it is inert otherwise)
_ACTIVITY: tuple[tuple[str, Callable[[TrainingConfig], bool], str], ...] = (
    ("momentum", lambda t: t.optimizer == "sgd", "only sgd uses momentum"),
    ("adam_beta1", lambda t: t.optimizer in ("adam", "adamw"), "only adam/adamw use betas"),
    ("adam_beta2", lambda t: t.optimizer in ("adam", "adamw"), "only adam/adamw use betas"),
    ("lr_gamma", lambda t: t.scheduler == "Exponential", "only the Exponential scheduler"),
    ("lr_warmup_epochs", lambda t: t.scheduler == "WarmupCosine", "only the WarmupCosine scheduler"),
    ("lr_min_ratio", lambda t: t.scheduler == "WarmupCosine", "only the WarmupCosine scheduler"),
    ("plateau_factor", lambda t: t.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("plateau_patience", lambda t: t.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("plateau_min_lr", lambda t: t.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("plateau_threshold", lambda t: t.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("gradient_clip_algorithm", lambda t: clipping_enabled(t.gradient_clip_val), "clipping is off"),
    ("grad_norm_log_freq", lambda t: t.log_grad_norm, "gradient norms are not logged"),
    ("torch_loss_mode", lambda t: t.model.training_procedure == "pinn", "supervised training has its own loss"),
    ("probe_mask", lambda t: t.model.training_procedure == "pinn", "supervised training skips the physics"),
    ("probe_mask_diameter", lambda t: t.model.training_procedure == "pinn" and t.model.probe_mask,
     "the probe mask is off"),
    ("cnn_channels", lambda t: t.model.architecture in ("cnn", "hybrid"), "only cnn and hybrid have a conv decoder"),
    ("fno_modes", lambda t: t.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("fno_width", lambda t: t.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("fno_blocks", lambda t: t.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("fno_cnn_blocks", lambda t: t.model.architecture == "fno", "only fno has refiner blocks"),
)


def inert_settings(cfg: TrainingConfig) -> dict[str, str]:
    """Training and model settings that cannot change a run under ``cfg``, with the reason."""
    return {name: why for name, active, why in _ACTIVITY if not active(cfg)}


def active_settings(cfg: TrainingConfig) -> set[str]:
    """Training and model settings that the training path must read under ``cfg``."""
    names = {f.name for f in dataclasses.fields(TrainingConfig) if f.name != "model"}
    names |= {f.name for f in dataclasses.fields(ModelConfig)}
    return names - set(inert_settings(cfg))
