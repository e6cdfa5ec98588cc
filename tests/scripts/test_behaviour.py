"""Every runner setting acts: changing it alone changes what it claims to (a dead flag fails here).

One behaviour case per (setting, place that reads it): the case builds two runner configs that
differ only in that setting and shows that an observable differs: the simulated arrays, the
initial weights, the validation split, the order of the training batches, the built Trainer and
DataLoaders, the prediction batches, the written artifacts, or a short fit. A setting read in
several places (the seed: weights, split, order) has a case per place, each observing that place
alone. Settings whose effect needs hardware this machine lacks (``machine_bound`` beside their
route) get a test that the value reaches the Lightning object that acts on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptycho_torch import trainer as trainer_module
from ptycho_torch import workflow
from ptycho_torch.output_folder import OutputDirError
from ptycho_torch.config import RunSettings, inert_settings
from ptycho_torch.datamodule import GridLinesDataModule
from ptycho_torch.generators import build_generator
from ptycho_torch.model import NonFiniteGradientError, PtychoPINN
from ptycho_torch.npz_data import write_npz
from ptycho_torch.probe import ideal_probe
from ptycho_torch.simulation import simulate_splits
from ptycho_torch.trainer import build_trainer
from ptycho_torch.training import build_module, parameter_digest, train
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, plan_of, resolve_configs, setup_torch_configs
from scripts.studies.runner_fields import SHARED, route_of

# A run of a few optimizer steps: N=16 patches of a 32 px object, a small cnn.
TINY = dict(N=16, object_size=32, n_lines=20, n_train_images=1, n_test_images=1, train_stride=4, test_stride=8,
            cnn_channels=2, fno_modes=4, fno_width=4, fno_blocks=1, fno_cnn_blocks=1, epochs=2, batch_size=4,
            enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)


@dataclasses.dataclass(frozen=True)
class File:
    """A case value that is a path made for the test (see ``Files``)."""

    name: str


class Files:
    """Real files and folders for path-valued cases: data pairs and a probe (once), output folders per test."""

    _data: dict[str, Path] = {}

    def __init__(self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory):
        self.tmp_path, self.factory = tmp_path, tmp_path_factory

    def __getitem__(self, name: str) -> Path:
        if name.startswith("out_"):
            return self.tmp_path / name
        if name == "occupied":
            folder = self.tmp_path / "occupied"
            folder.mkdir(exist_ok=True)
            (folder / "notes.txt").write_text("a file the user put there")
            return folder
        if not self._data:
            self._make_data()
        return self._data[name]

    def _make_data(self) -> None:
        root = self.factory.mktemp("behaviour_files")
        for label, seed in (("a", 1), ("b", 2)):
            splits = simulate_splits(sim_config(dict(data_seed=seed)))
            for split, data in splits.items():
                self._data[f"{split}_{label}"] = write_npz(root / f"{split}_{label}.npz", data)
        probe = ideal_probe(16, 0.5) * np.exp(0.3j)  # (16, 16) complex64, unlike the default probe
        np.savez(root / "probe.npz", probeGuess=probe.astype(np.complex64))
        self._data["probe"] = root / "probe.npz"


def runner_config(settings: dict[str, Any], files: Files | None = None) -> TorchRunnerConfig:
    values = {**TINY, **settings}
    values = {k: files[v.name] if isinstance(v, File) else v for k, v in values.items()}
    return TorchRunnerConfig(**values)


def sim_config(settings: dict[str, Any]):
    return resolve_configs(runner_config(settings))["simulation"]


# --- observers: each returns something comparable that one place of the code decides ---------------

def digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


_SIMULATED: dict[Any, Any] = {}


def splits_of(cfg: TorchRunnerConfig) -> dict:
    """The train and test splits a run of ``cfg`` would simulate (cached per simulation config)."""
    sim = resolve_configs(cfg)["simulation"]
    if sim not in _SIMULATED:
        _SIMULATED[sim] = simulate_splits(sim)
    return _SIMULATED[sim]


def simulated(cfg: TorchRunnerConfig, files: Files) -> str:
    """The simulated arrays (both splits), as a digest."""
    splits = splits_of(cfg)
    return digest(*(getattr(s, k) for s in splits.values()
                    for k in ("diffraction", "Y_I", "Y_phi", "coords", "image_index", "probeGuess", "objectGuess")))


def train_split(cfg: TorchRunnerConfig):
    return splits_of(cfg)["train"]


class NaNOnce(PtychoPINN):
    """Injects one non-finite gradient element at the second optimizer step."""

    def on_before_optimizer_step(self, optimizer):
        if self.optimizer_steps == 1:
            grad = next(self.parameters()).grad
            grad[(0,) * grad.ndim] = float("inf")
        super().on_before_optimizer_step(optimizer)


def short_fit(cfg: TorchRunnerConfig, files: Files) -> str:
    """Everything a short fit shows: final weights and per-step history, or the error it raised."""
    training, execution = setup_torch_configs(cfg)
    try:
        module = train(training, execution, train_split(cfg), files.tmp_path / "fit", module_class=NaNOnce).module
    except NonFiniteGradientError as err:
        return f"raised {err}"
    return parameter_digest(module) + digest(np.array(repr(module.history)))


def network(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """The generator's layers and parameter shapes (depth and spectral modes follow N)."""
    generator = build_generator(setup_torch_configs(cfg)[0].model)
    return repr(generator), tuple((name, tuple(p.shape)) for name, p in generator.named_parameters())


def initial_weights(cfg: TorchRunnerConfig, files: Files) -> str:
    training, _ = setup_torch_configs(cfg)
    return parameter_digest(build_module(training, ideal_probe(cfg.N)))


def data_module(cfg: TorchRunnerConfig) -> GridLinesDataModule:
    training, execution = setup_torch_configs(cfg)
    return GridLinesDataModule(train_split(cfg), training, execution)


def validation_split(cfg: TorchRunnerConfig, files: Files) -> tuple:
    val = data_module(cfg).val_set
    return tuple(val.indices) if val is not None else ()


def data_order(cfg: TorchRunnerConfig, files: Files) -> str:
    """The first epoch's training batches, in order."""
    return digest(*(batch["diffraction"].numpy() for batch in data_module(cfg).train_dataloader()))


def ddp_data_order(cfg: TorchRunnerConfig, files: Files) -> str:
    """Rank 0's first-epoch training batches under a two-process DDP Trainer, after Lightning's own
    processing of the loader (where it puts its DistributedSampler in place of a shuffling one)."""
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    module = data_module(cfg)
    module.trainer = trainer
    loader = trainer._data_connector._prepare_dataloader(module.train_dataloader(), shuffle=True,
                                                         mode=RunningStage.TRAINING)
    return digest(*(batch["diffraction"].numpy() for batch in loader))


def loaders(cfg: TorchRunnerConfig, files: Files) -> tuple:
    module = data_module(cfg)
    train_loader, val_loader = module.train_dataloader(), module.val_dataloader()
    return (train_loader.batch_size, train_loader.num_workers, val_loader.batch_size, val_loader.num_workers)


@contextlib.contextmanager
def restored_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def built_trainer(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """What the Trainer factory built: strategy, devices, precision, logger, callbacks, determinism."""
    training, execution = setup_torch_configs(cfg)
    with restored_determinism():
        try:
            trainer = build_trainer(training, execution, files.tmp_path / "trainer")
        except RuntimeError as err:  # e.g. a logger whose package is not installed
            return (f"refused: {err}",)
        deterministic = torch.are_deterministic_algorithms_enabled()
    strategy = trainer.strategy
    return (type(strategy).__name__, getattr(strategy, "_start_method", None), trainer.num_devices,
            trainer.num_nodes, type(trainer.precision_plugin).__name__, trainer.precision,
            type(trainer.logger).__name__, sorted(type(c).__name__ for c in trainer.callbacks),
            trainer.progress_bar_callback is not None, deterministic, trainer.max_epochs)


def prediction_batches(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """The batch sizes the model sees while the test split is reconstructed."""
    training, execution = setup_torch_configs(cfg)
    test = splits_of(cfg)["test"]
    module = build_module(training, test.probeGuess)
    sizes: list[int] = []
    module.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    workflow.reconstruct(module, test, execution)
    return tuple(sizes)


def prediction_dtypes(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """The dtypes the generator's convolutions compute in while the test split is reconstructed."""
    training, execution = setup_torch_configs(cfg)
    test = splits_of(cfg)["test"]
    module = build_module(training, test.probeGuess)
    seen: set[str] = set()
    for layer in module.generator.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda _, __, out: seen.add(str(out.dtype)))
    workflow.reconstruct(module, test, execution)
    return tuple(sorted(seen))


def fit_threads(cfg: TorchRunnerConfig, files: Files) -> int:
    """torch's intra-op thread count while the model trains."""
    training, execution = setup_torch_configs(cfg)
    seen: list[int] = []
    module_class = type("ThreadsSeen", (PtychoPINN,), {"on_train_start": lambda self: seen.append(torch.get_num_threads())})
    with restored_determinism():
        train(training, execution, train_split(cfg), files.tmp_path / "fit", module_class=module_class)
    return seen[0]


def prediction_threads(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """torch's intra-op thread count while the test split is predicted."""
    training, execution = setup_torch_configs(cfg)
    test = splits_of(cfg)["test"]
    module = build_module(training, test.probeGuess)
    seen: set[int] = set()
    module.register_forward_pre_hook(lambda *_: seen.add(torch.get_num_threads()))
    workflow.reconstruct(module, test, execution)
    return tuple(sorted(seen))


def simulation_progress(cfg: TorchRunnerConfig, files: Files) -> bool:
    """Whether simulating the data for a run shows a progress bar."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        workflow.load_or_simulate(plan_of(cfg), files.tmp_path / "data")
    return "simulate" in stderr.getvalue()


def loaded_data(cfg: TorchRunnerConfig, files: Files) -> str:
    """The train and test arrays a run loads (given NPZ files) or simulates."""
    train, test = workflow.load_or_simulate(plan_of(cfg), None)
    return digest(train.diffraction, test.diffraction, test.YY_ground_truth)


def run_outcome(cfg: TorchRunnerConfig, files: Files) -> tuple:
    """Whether a whole run went ahead, and every file below the test's folder afterwards."""
    try:
        workflow.run(plan_of(cfg))
        outcome = "ran"
    except OutputDirError:
        outcome = "refused"
    return outcome, sorted(str(p.relative_to(files.tmp_path)) for p in files.tmp_path.rglob("*") if p.is_file())


# --- the cases ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    field: str
    observe: Callable[[TorchRunnerConfig, Files], Any]
    a: Any
    b: Any
    base: dict = dataclasses.field(default_factory=dict)  # other settings the case needs

    @property
    def id(self) -> str:
        return f"{self.field}-{self.observe.__name__}"


# Which destination each observer shows acting ("runner" = the runner's own use of a setting).
REACHES = {short_fit: ("model", "training"), network: ("model",), initial_weights: ("training",), validation_split: ("training",),
           data_order: ("training",), ddp_data_order: ("training",), simulated: ("simulation",), built_trainer: ("execution",),
           loaders: ("training", "execution"), prediction_batches: ("execution",), prediction_dtypes: ("execution",),
           simulation_progress: ("execution",), loaded_data: ("runner",), run_outcome: ("runner",),
           fit_threads: ("execution",), prediction_threads: ("execution",)}
PLATEAU = dict(scheduler="ReduceLROnPlateau", plateau_threshold=1.0, plateau_patience=0, epochs=3)
FNO = dict(architecture="fno")
N32 = dict(object_size=64, train_stride=8, test_stride=16)

CASES = [
    # runner-only
    Case("train_npz", loaded_data, File("train_a"), File("train_b"), dict(test_npz=File("test_a"))),
    Case("test_npz", loaded_data, File("test_a"), File("test_b"), dict(train_npz=File("train_a"))),
    Case("output_dir", run_outcome, File("out_a"), File("out_b"), dict(epochs=1)),
    Case("overwrite", run_outcome, False, True, dict(output_dir=File("occupied"), epochs=1)),
    # model
    Case("architecture", short_fit, "cnn", "fno"),
    Case("training_procedure", short_fit, "pinn", "supervised"),
    Case("N", short_fit, 16, 32, N32),
    Case("N", network, 16, 32),  # the cnn's depth
    Case("N", network, 16, 32, dict(architecture="hybrid", fno_blocks=2, fno_modes=2)),  # downsampling stages
    Case("generator_output_mode", short_fit, "amp_phase", "real_imag"),
    Case("cnn_channels", short_fit, 2, 4),
    Case("gridsize", short_fit, 1, 2),  # groups merged on a shared canvas in the loss
    Case("gridsize", network, 1, 2, dict(architecture="fno")),  # the group's patterns as channels
    Case("fno_modes", short_fit, 2, 4, FNO),
    Case("fno_width", short_fit, 4, 8, FNO),
    Case("fno_blocks", short_fit, 1, 2, FNO),
    Case("fno_cnn_blocks", short_fit, 0, 1, FNO),
    Case("probe_mask", short_fit, False, True, dict(probe_mask_diameter=6.0)),  # default N is wider than the probe
    Case("probe_mask_diameter", short_fit, 4.0, 7.0, dict(probe_mask=True)),
    # training
    Case("seed", initial_weights, 1, 2),
    Case("seed", validation_split, 1, 2),
    Case("seed", data_order, 1, 2, dict(val_fraction=0.0)),  # no split: only the order can differ
    Case("seed", ddp_data_order, 1, 2, dict(val_fraction=0.0)),
    Case("epochs", short_fit, 1, 2),
    Case("batch_size", loaders, 4, 8),
    Case("batch_size", short_fit, 4, 8),
    Case("learning_rate", short_fit, 1e-3, 1e-2),
    Case("learning_rate", short_fit, 1e-3, 1e-2, dict(optimizer="sgd")),  # each optimizer reads it
    Case("gradient_clip_val", short_fit, None, 1e-4),
    Case("gradient_clip_algorithm", short_fit, "norm", "value", dict(gradient_clip_val=1e-4)),
    Case("torch_loss_mode", short_fit, "poisson", "mae"),
    Case("optimizer", short_fit, "adam", "sgd"),
    Case("optimizer", short_fit, "adam", "adamw", dict(weight_decay=0.5)),  # they differ in how they decay
    Case("weight_decay", short_fit, 0.0, 0.5),
    Case("weight_decay", short_fit, 0.0, 0.5, dict(optimizer="sgd")),
    Case("momentum", short_fit, 0.0, 0.9, dict(optimizer="sgd")),
    Case("adam_beta1", short_fit, 0.9, 0.5),
    Case("adam_beta2", short_fit, 0.999, 0.9),
    Case("scheduler", short_fit, "Default", "Exponential", dict(epochs=3)),
    Case("lr_gamma", short_fit, 0.5, 0.9, dict(scheduler="Exponential")),
    Case("lr_warmup_epochs", short_fit, 0, 2, dict(scheduler="WarmupCosine", epochs=3)),
    Case("lr_min_ratio", short_fit, 0.0, 0.5, dict(scheduler="WarmupCosine", epochs=3)),
    Case("plateau_factor", short_fit, 0.5, 0.1, PLATEAU),
    Case("plateau_patience", short_fit, 0, 5, PLATEAU),
    Case("plateau_min_lr", short_fit, 0.0, 5e-4, PLATEAU | dict(plateau_factor=0.1)),
    Case("plateau_threshold", short_fit, 0.0, 1.0, PLATEAU),
    Case("val_fraction", validation_split, 0.1, 0.3),
    Case("val_fraction", short_fit, 0.1, 0.3),
    Case("log_grad_norm", short_fit, True, False),
    Case("grad_norm_log_freq", short_fit, 1, 2),
    Case("nonfinite_grad_policy", short_fit, "skip", "error"),
    # simulation
    Case("N", simulated, 16, 32, N32),
    Case("object_size", simulated, 32, 40),
    Case("n_lines", simulated, 20, 21),
    Case("nphotons", simulated, 1e9, 1e4),
    Case("n_train_images", simulated, 1, 2),
    Case("n_test_images", simulated, 1, 2),
    Case("train_stride", simulated, 4, 5),
    Case("test_stride", simulated, 8, 7),
    Case("set_phi", simulated, True, False),
    Case("probe_npz", simulated, None, File("probe")),
    Case("probe_defocus", simulated, 1.0, 0.5),
    Case("data_seed", simulated, 0, 1),
    # execution
    Case("devices", built_trainer, 1, 2, dict(strategy="ddp")),
    Case("strategy", built_trainer, "auto", "ddp"),
    Case("num_nodes", built_trainer, 1, 2, dict(strategy="ddp")),
    Case("precision", built_trainer, "32-true", "bf16-mixed"),
    Case("precision", prediction_dtypes, "32-true", "bf16-mixed"),
    Case("deterministic", built_trainer, True, False),
    Case("num_workers", loaders, 0, 1),
    Case("num_threads", fit_threads, 1, 2),
    Case("num_threads", prediction_threads, 1, 2),
    Case("infer_batch_size", loaders, 4, 8),
    Case("infer_batch_size", prediction_batches, 4, 8),
    Case("enable_progress_bar", built_trainer, True, False),
    Case("enable_progress_bar", simulation_progress, True, False),
    Case("enable_checkpointing", built_trainer, True, False),
    Case("logger_backend", built_trainer, "csv", "none"),
    Case("logger_backend", built_trainer, "none", "tensorboard"),  # a TensorBoard logger, or refused without it
]


def required_places(runner_cls: type) -> dict[str, set[str]]:
    """Field -> the destinations a behaviour case must show it acting in.

    A shared setting (training + execution) acts through its training copy; the execution copy
    exists to be checked against it (the agreement guard), so training is required.
    Machine-bound settings need their reach test instead (``MACHINE_BOUND_REACH``).
    """
    places = {}
    for f in dataclasses.fields(runner_cls):
        route = route_of(f)
        if route.machine_bound:
            continue
        to = set(route.to) - ({"execution"} if set(SHARED) <= set(route.to) else set())
        places[f.name] = to or {"runner"}
    return places


def missing_cases(runner_cls: type, cases: list[Case]) -> list[str]:
    """'field: destination' for every place a setting reaches without a case showing it act there."""
    shown: dict[str, set[str]] = {}
    for case in cases:
        shown.setdefault(case.field, set()).update(REACHES[case.observe])
    return [f"{name}: no behaviour case shows it acting in {place}"
            for name, places in required_places(runner_cls).items()
            for place in sorted(places - shown.get(name, set()))]


def test_every_setting_has_a_behaviour_case_for_every_place_it_reaches():
    assert missing_cases(TorchRunnerConfig, CASES) == []


def test_a_setting_without_a_case_is_named():
    broken = dataclasses.make_dataclass(
        "BrokenRunner", [("lr_cycle_length", int, dataclasses.field(
            default=5, metadata={"route": dataclasses.replace(route_of(dataclasses.fields(TorchRunnerConfig)[0]),
                                                              to=("training",), why_runner_only=None)}))],
        bases=(TorchRunnerConfig,), frozen=True, kw_only=True)
    assert missing_cases(broken, CASES) == ["lr_cycle_length: no behaviour case shows it acting in training"]
    without_order = [c for c in CASES if c.field != "data_seed"]
    assert missing_cases(TorchRunnerConfig, without_order) == ["data_seed: no behaviour case shows it acting in simulation"]


@pytest.fixture
def files(tmp_path, tmp_path_factory) -> Files:
    return Files(tmp_path, tmp_path_factory)


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_changing_one_setting_changes_what_it_acts_on(case, files):
    configs = [runner_config({**case.base, case.field: value}, files) for value in (case.a, case.b)]
    for cfg in configs:
        run = RunSettings(*setup_torch_configs(cfg), resolve_configs(cfg)["simulation"], cfg.train_npz is None)
        inert = {name for name in inert_settings(run) if name.endswith("." + case.field)}
        assert not inert, f"{case.field} is declared inert under this case: {inert}"
    observed = [case.observe(cfg, files) for cfg in configs]
    assert observed[0] != observed[1], f"{case.field}={case.a!r} and ={case.b!r}: {case.observe.__name__} is the same"


# --- machine-bound settings: the value reaches the Lightning object that acts on it --------------------

class TrainerArguments(Exception):
    """Raised by a stand-in Trainer to hand back the arguments it was built with."""

    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


def trainer_arguments(cfg: TorchRunnerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    def capture(**kwargs):
        raise TrainerArguments(kwargs)

    monkeypatch.setattr(trainer_module.L, "Trainer", capture)
    with pytest.raises(TrainerArguments) as captured:
        build_trainer(*setup_torch_configs(cfg), tmp_path)
    return captured.value.kwargs


MACHINE_BOUND_REACH = {"accelerator": ("gpu", "cuda", "mps", "auto", "cpu")}


def test_every_machine_bound_setting_has_a_reach_test():
    bound = {f.name for f in dataclasses.fields(TorchRunnerConfig) if route_of(f).machine_bound}
    assert bound == set(MACHINE_BOUND_REACH)


@pytest.mark.parametrize("name, value", [(n, v) for n, values in MACHINE_BOUND_REACH.items() for v in values])
def test_a_machine_bound_setting_reaches_the_trainer(name, value, tmp_path, monkeypatch):
    assert trainer_arguments(runner_config({name: value}), tmp_path, monkeypatch)[name] == value


# --- inert declarations are true --------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("name, values, inert_under", [
    ("momentum", (0.0, 0.9), dict(optimizer="adam")),
    ("lr_gamma", (0.5, 0.9), dict(scheduler="Default")),
    ("probe_defocus", (0.5, 1.0), dict(probe_npz=File("probe"))),
])
def test_a_setting_declared_inert_really_changes_nothing(name, values, inert_under, files):
    configs = [runner_config({**inert_under, name: v}, files) for v in values]
    run = RunSettings(*setup_torch_configs(configs[0]), resolve_configs(configs[0])["simulation"])
    assert any(key.endswith("." + name) for key in inert_settings(run))
    observe = simulated if name == "probe_defocus" else short_fit
    assert observe(configs[0], files) == observe(configs[1], files)
