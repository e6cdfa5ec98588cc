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
from typing import Any, NamedTuple

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
# Not ddp_spawn: it trains in spawned processes whose records (history, counters) never come back to
# the process that writes the results (every run crashed after fitting, and --resume again)
STRATEGIES = ("auto", "ddp")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
LOGGER_BACKENDS = ("csv", "tensorboard", "none")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.field}={shown_value(self.value)}: {self.rule}"


def shown_value(value: Any) -> str:
    """A setting's value as messages show it: its repr, a path as its string's (not PosixPath(...))."""
    return repr(to_jsonable(value))


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


# --- field rules as data: each is inspectable (bounds, choices) and callable --------------------
# A rule called with a value returns (coerced value, None) or (value, the broken rule's text).
# Tests derive their valid-value strategies and boundary examples from these objects.

Checked = tuple[Any, str | None]


def plain_int(text: str, digits: int = 9) -> int | None:
    """``text`` as an integer when it is ASCII decimal digits (at most ``digits``), else None.

    ``str.isdigit`` alone admits '²' and strings of thousands of digits, which int() refuses."""
    word = text.strip()
    return int(word) if word.isascii() and word.isdigit() and len(word) <= digits else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Interval:
    """An integer or finite float in [lo, hi] (either end may be open; hi = inf means unbounded)."""

    kind: type  # int or float; a float field accepts ints and stores them as float
    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    message: str | None = None  # replaces the generated rule text

    @property
    def text(self) -> str:
        if self.message:
            return self.message
        if self.kind is int:
            return f"must be an integer >= {self.lo} (at most 2**63 - 1)" if self.hi == LARGEST_INT else \
                f"must be an integer in {self.lo}..{self.hi}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open or self.hi == math.inf else "]"
        return f"must be a finite number in {left}{self.lo:g}, {self.hi:g}{right}"

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below and math.isfinite(value)

    def __call__(self, value: Any) -> Checked:
        if self.kind is int:
            return value, None if _is_int(value) and self.contains(value) else self.text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, self.text
        value = float(value)
        return value, None if self.contains(value) else self.text


@dataclass(frozen=True)
class PowerOfTwo:
    lo: int
    hi: int

    @property
    def text(self) -> str:
        return f"must be a power of two in {self.lo}..{self.hi}"

    def __call__(self, value: Any) -> Checked:
        ok = _is_int(value) and self.lo <= value <= self.hi and value & (value - 1) == 0
        return value, None if ok else self.text


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"must be one of {', '.join(self.options)}"

    def __call__(self, value: Any) -> Checked:
        return value, None if isinstance(value, str) and value in self.options else self.text


@dataclass(frozen=True)
class Boolean:
    text: str = "must be true or false"

    def __call__(self, value: Any) -> Checked:
        return value, None if isinstance(value, bool) else self.text


@dataclass(frozen=True)
class PathRule:
    text: str = "must be a non-empty path"

    def __call__(self, value: Any) -> Checked:
        if not isinstance(value, (str, Path)) or not str(value).strip():  # blank: no file's name
            return value, self.text
        if "\0" in str(value):  # no file system takes one; os calls would raise ValueError deep in a run
            return value, "must not contain a NUL character"
        return Path(value), None


@dataclass(frozen=True)
class Optional:
    """None, or a value that satisfies ``inner``."""

    inner: Any

    @property
    def text(self) -> str:
        return self.inner.text

    def __call__(self, value: Any) -> Checked:
        return (None, None) if value is None else self.inner(value)


@dataclass(frozen=True)
class Instance:
    """A nested config of the given class (e.g. TrainingConfig.model)."""

    cls: type

    @property
    def text(self) -> str:
        return f"must be a {self.cls.__name__}"

    def __call__(self, value: Any) -> Checked:
        return value, None if isinstance(value, self.cls) else self.text


@dataclass(frozen=True)
class ZeroOr:
    """0 (the setting's "off" or "none"), or a value ``inner`` accepts; stored as float."""

    inner: Interval
    message: str

    @property
    def text(self) -> str:
        return self.message

    def __call__(self, value: Any) -> Checked:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return 0.0, None
        value, broken = self.inner(value)
        return value, None if broken is None else self.message


Rule = Interval | PowerOfTwo | Choice | Boolean | PathRule | Optional | Instance | ZeroOr


LARGEST_INT = 2**63 - 1  # what torch, numpy and itertools take as a size or count (int64, sys.maxsize)


def integer(lo: int, hi: int | None = None) -> Interval:
    """Integers from ``lo``; without ``hi`` up to LARGEST_INT (a larger count fails deep inside a run)."""
    return Interval(int, lo, LARGEST_INT if hi is None else hi)


def real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False) -> Interval:
    return Interval(float, lo, hi, lo_open, hi_open)


# The optimizers hand these to torch as scalars for float32 parameters, and torch refuses a scalar
# its dtype cannot hold: past float32's largest finite value a run would crash mid-step. Below
# float32's smallest normal number a value is subnormal, and a fit flushes subnormals to zero (see
# cpu_settings.flushed_denormals): a learning rate of 1e-320 trained at 0, a clip level of 1e-320
# read as 0 (off) and one of 1e-39 zeroed every gradient.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
_SUBNORMAL = f"below {FLOAT32_TINY!r} (float32's smallest normal number) a value reads as 0 during a fit"
CLIP_RULE = Optional(ZeroOr(Interval(float, FLOAT32_TINY),
                            message=f"must be None/0 (off) or a finite number >= {FLOAT32_TINY!r} (on): {_SUBNORMAL}"))


def optimizer_scalar(*, positive: bool) -> Interval | ZeroOr:
    """A value the optimizer applies to float32 parameters: from float32's smallest normal number
    to its largest finite one, or (``positive=False``) 0."""
    lower = f">= {FLOAT32_TINY!r}" if positive else f"0 or >= {FLOAT32_TINY!r}"
    message = (f"must be a finite number {lower} and <= {FLOAT32_MAX!r} (float32's largest and smallest normal "
               f"numbers: the optimizer applies it to float32 parameters; {_SUBNORMAL})")
    normal = Interval(float, FLOAT32_TINY, FLOAT32_MAX, message=message)
    return normal if positive else ZeroOr(normal, message)


FIELD_RULES: dict[str, Rule] = {
    # model
    "architecture": Choice(ARCHITECTURES),
    "training_procedure": Choice(TRAINING_PROCEDURES),
    "N": PowerOfTwo(16, 256),
    "generator_output_mode": Choice(GENERATOR_OUTPUT_MODES),
    "cnn_channels": integer(1, 512),
    "fno_modes": integer(1),
    "fno_width": integer(1, 512),
    "fno_blocks": integer(1, 32),
    "fno_cnn_blocks": integer(0, 32),
    "probe_mask": Boolean(),
    "probe_mask_diameter": Optional(real(0.0, lo_open=True)),
    "gridsize": integer(1, 2),
    # training
    "seed": integer(0, MAX_SEED),
    "epochs": integer(1),
    "batch_size": integer(1),
    "learning_rate": optimizer_scalar(positive=True),
    "gradient_clip_val": CLIP_RULE,
    "gradient_clip_algorithm": Choice(CLIP_ALGORITHMS),
    "torch_loss_mode": Choice(LOSS_MODES),
    "optimizer": Choice(OPTIMIZERS),
    "weight_decay": optimizer_scalar(positive=False),
    "momentum": real(0.0, 1.0, hi_open=True),
    "adam_beta1": real(0.0, 1.0, hi_open=True),
    "adam_beta2": real(0.0, 1.0, hi_open=True),
    "scheduler": Choice(SCHEDULERS),
    "lr_gamma": real(0.0, 1.0, lo_open=True),
    "lr_warmup_epochs": integer(0),
    "lr_min_ratio": real(0.0, 1.0),
    "plateau_factor": real(0.0, 1.0, lo_open=True, hi_open=True),
    "plateau_patience": integer(0),
    "plateau_min_lr": optimizer_scalar(positive=False),  # a floor the learning rate is raised to
    "plateau_threshold": real(0.0),
    "val_fraction": real(0.0, 0.5),
    "log_grad_norm": Boolean(),
    "grad_norm_log_freq": integer(1),
    "nonfinite_grad_policy": Choice(NONFINITE_POLICIES),
    # simulation
    "object_size": integer(16, 4096),
    "n_lines": integer(0, 100_000),
    "nphotons": real(1.0, 1e15),
    "n_train_images": integer(1, 64),
    "n_test_images": integer(1, 64),
    "train_stride": integer(1, 256),
    "test_stride": integer(1, 256),
    "set_phi": Boolean(),
    "probe_npz": Optional(PathRule()),
    "probe_defocus": real(0.0, 100.0),
    "data_seed": integer(0, MAX_SEED),
    # execution
    "accelerator": Choice(ACCELERATORS),
    "devices": integer(1, 1024),
    "strategy": Choice(STRATEGIES),
    "num_nodes": integer(1, 1024),
    "precision": Choice(PRECISIONS),
    "deterministic": Boolean(),
    "num_workers": integer(0, 256),
    "num_threads": integer(0, 1024),
    "infer_batch_size": integer(1),
    "enable_progress_bar": Boolean(),
    "enable_checkpointing": Boolean(),
    "logger_backend": Choice(LOGGER_BACKENDS),
    # runner-only
    "train_npz": Optional(PathRule()),
    "test_npz": Optional(PathRule()),
    "output_dir": PathRule(),
    "overwrite": Boolean(),
    # reconstruction command only (scripts.grid_lines_reconstruct)
    "checkpoint": Optional(PathRule()),
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


def _plateau_floor_below_the_rate(v: Mapping[str, Any]) -> Problem | None:
    if v["scheduler"] == "ReduceLROnPlateau" and v["plateau_min_lr"] >= v["learning_rate"]:
        return Problem("plateau_min_lr", v["plateau_min_lr"],
                       f"must be < learning_rate={v['learning_rate']} under scheduler=ReduceLROnPlateau (a floor at "
                       "or above the rate never lets the scheduler lower it)")
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
    CrossRule(("scheduler", "plateau_min_lr", "learning_rate"), _plateau_floor_below_the_rate),
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
    """Mixin for frozen dataclasses: validate every field on construction with its FIELD_RULES entry.

    A field without a rule is refused (TypeError naming it): every setting is checked, or the
    class cannot be built at all.
    """

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        unruled = [n for n in names if n not in FIELD_RULES]
        if unruled:
            raise TypeError(f"{type(self).__name__} field(s) {', '.join(unruled)} have no rule in FIELD_RULES "
                            "(ptycho_torch/config.py): declare one")
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
    gridsize: int = 1  # groups of gridsize^2 neighbouring patterns predicted together and merged (1 or 2)


FIELD_RULES["model"] = Instance(ModelConfig)  # TrainingConfig.model: the nested model settings


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


@dataclass(frozen=True, kw_only=True)
class PyTorchExecutionConfig(Validated):
    accelerator: str = "cpu"  # auto | cpu | gpu | cuda | mps
    devices: int = 1  # devices per node
    strategy: str = "auto"  # auto | ddp
    num_nodes: int = 1
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed (fp16 AMP with a GradScaler)
    deterministic: bool = True  # torch deterministic algorithms
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int = 0  # torch intra-op threads per process; 0 = automatic (ptycho_torch.cpu_settings)
    infer_batch_size: int = 256  # batch size for predicting the test split and validating (demo: one forward)
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
        # Stored values, not attributes: writing a config down is not a use of its settings
        # (the read-recording tests count uses).
        return {f.name: to_jsonable(vars(value)[f.name]) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value


def from_jsonable(cls: type, data: Mapping[str, Any]) -> Any:
    """The config that ``to_jsonable`` wrote as ``data``, nested configs rebuilt and every value
    validated again; names ``cls`` does not hold are refused (ConfigError naming them)."""
    if not isinstance(data, Mapping):
        raise ConfigError(cls.__name__, [Problem(cls.__name__, data, "must be a mapping of field names")])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(cls.__name__, [Problem(name, data[name], "is not a field") for name in unknown])
    values = dict(data)
    for name, value in data.items():
        rule = FIELD_RULES.get(name)
        if isinstance(rule, Instance) and isinstance(value, Mapping):
            values[name] = from_jsonable(rule.cls, value)
    return cls(**values)


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


def probe_mask_reaches_the_model(model: ModelConfig) -> bool:
    """Whether the masked probe is used: by pinn's physics, and at gridsize > 1 by the overlap merge's
    weights whatever the procedure (supervised training at gridsize 1 never looks at the probe)."""
    return model.training_procedure == "pinn" or model.gridsize > 1


class RunSettings(NamedTuple):
    """The resolved configs of one run, and whether its data are simulated (no NPZ files given)."""

    training: TrainingConfig
    execution: PyTorchExecutionConfig
    simulation: SimulationConfig
    simulated: bool = True


def _simulated(r: RunSettings) -> bool:
    return r.simulated


# ("destination.field", is it active in this run?, why it is inert otherwise). Every field not
# listed is active in every run: the run pipeline must read it.
_ACTIVITY: tuple[tuple[str, Callable[[RunSettings], bool], str], ...] = (
    ("training.momentum", lambda r: r.training.optimizer == "sgd", "only sgd uses momentum"),
    ("training.adam_beta1", lambda r: r.training.optimizer in ("adam", "adamw"), "only adam/adamw use betas"),
    ("training.adam_beta2", lambda r: r.training.optimizer in ("adam", "adamw"), "only adam/adamw use betas"),
    ("training.lr_gamma", lambda r: r.training.scheduler == "Exponential", "only the Exponential scheduler"),
    ("training.lr_warmup_epochs", lambda r: r.training.scheduler == "WarmupCosine", "only the WarmupCosine scheduler"),
    ("training.lr_min_ratio", lambda r: r.training.scheduler == "WarmupCosine", "only the WarmupCosine scheduler"),
    ("training.plateau_factor", lambda r: r.training.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("training.plateau_patience", lambda r: r.training.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("training.plateau_min_lr", lambda r: r.training.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("training.plateau_threshold", lambda r: r.training.scheduler == "ReduceLROnPlateau", "only ReduceLROnPlateau"),
    ("training.gradient_clip_algorithm", lambda r: clipping_enabled(r.training.gradient_clip_val),
     "clipping is off"),
    ("training.grad_norm_log_freq", lambda r: r.training.log_grad_norm, "gradient norms are not logged"),
    ("training.torch_loss_mode", lambda r: r.training.model.training_procedure == "pinn",
     "supervised training has its own loss"),
    ("model.probe_mask", lambda r: probe_mask_reaches_the_model(r.training.model),
     "supervised training at gridsize 1 never uses the probe"),
    ("model.probe_mask_diameter",
     lambda r: probe_mask_reaches_the_model(r.training.model) and r.training.model.probe_mask,
     "the probe mask is off, or supervised training at gridsize 1 never uses the probe"),
    ("model.cnn_channels", lambda r: r.training.model.architecture in ("cnn", "hybrid"),
     "only cnn and hybrid have a conv decoder"),
    ("model.fno_modes", lambda r: r.training.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("model.fno_width", lambda r: r.training.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("model.fno_blocks", lambda r: r.training.model.architecture in ("fno", "hybrid"), "only fno and hybrid are spectral"),
    ("model.fno_cnn_blocks", lambda r: r.training.model.architecture == "fno", "only fno has refiner blocks"),
    *((f"simulation.{name}", _simulated, "the data come from the NPZ files")
      for name in ("N", "object_size", "n_lines", "nphotons", "n_train_images", "n_test_images", "train_stride",
                   "test_stride", "set_phi", "probe_npz", "data_seed")),
    ("simulation.probe_defocus", lambda r: r.simulated and r.simulation.probe_npz is None,
     "the probe comes from a file (or the data from NPZ files)"),
)
SETTING_OWNERS = {"model": ModelConfig, "training": TrainingConfig, "execution": PyTorchExecutionConfig,
                  "simulation": SimulationConfig}


def all_settings() -> set[str]:
    """Every setting of the four resolved configs, as "destination.field" (the nested model is its own)."""
    return {f"{dest}.{f.name}" for dest, cls in SETTING_OWNERS.items() for f in dataclasses.fields(cls)
            if not isinstance(FIELD_RULES[f.name], Instance)}


def inert_settings(run: RunSettings) -> dict[str, str]:
    """Settings ("destination.field") that cannot change this run, with the reason."""
    return {name: why for name, active, why in _ACTIVITY if not active(run)}


def active_settings(run: RunSettings) -> set[str]:
    """Settings ("destination.field") that the run pipeline must read in this run."""
    return all_settings() - set(inert_settings(run))
