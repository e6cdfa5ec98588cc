"""Grid-lines PINN runner: one config, routed to the configs that the code reads.

    python -m scripts.studies.grid_lines_torch_runner --output-dir runs/x --grad-clip 1.0

parse argv -> TorchRunnerConfig -> setup_torch_configs / setup_simulation_config -> RunPlan
-> ``ptycho_torch.workflow.run``. Every field of ``TorchRunnerConfig`` declares its route
(which config(s) receive it under the same name), its flag and help beside it; the parser
(``runner_cli``) and the routing are derived from that. No torch at import time: ``--help``
and ``--dry-run`` stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import (
    ACCELERATORS, ARCHITECTURES, CLIP_ALGORITHMS, GENERATOR_OUTPUT_MODES, LOGGER_BACKENDS,
    LOSS_MODES, NONFINITE_POLICIES, OPTIMIZERS, PRECISIONS, SCHEDULERS, STRATEGIES,
    TRAINING_PROCEDURES, ConfigError, ModelConfig, PyTorchExecutionConfig, RunSettings, SimulationConfig,
    TrainingConfig, Validated, inert_settings, shown_value, to_jsonable,
)
from ptycho_torch.workflow import RunPlan
from scripts.studies.runner_cli import (
    add_config_argument, add_grouped_settings, build_config, config_error_message, exit_with, new_parser,
    outcome_status, run_command, setting_flags, settings_given,
)
from scripts.studies.resume_cli import RESUME_FLAG, resumed_settings
from scripts.studies.runner_fields import SHARED, route_of, setting

M, T, E, S = ("model",), ("training",), ("execution",), ("simulation",)


@dataclass(frozen=True, kw_only=True)
class TorchRunnerConfig(Validated):
    # --- paths and run safety (runner-only) ---
    train_npz: Path | None = setting(None, to=(), why="the runner loads or simulates the data",
                                     help="training NPZ (data contract in README); none = simulate")
    test_npz: Path | None = setting(None, to=(), why="the runner loads or simulates the data",
                                    help="test NPZ with ground truth; none = simulate")
    output_dir: Path = setting(Path("runs/grid_lines_torch"), to=(), why="the runner writes the artifacts",
                               help="folder for config.json, metrics, history, pictures, checkpoints")
    overwrite: bool = setting(False, to=(), why="guards the runner's own output folder",
                              help="allow writing into a non-empty output folder")
    # --- model ---
    architecture: str = setting("cnn", to=M, choices=ARCHITECTURES, help="generator network")
    training_procedure: str = setting("pinn", to=M, choices=TRAINING_PROCEDURES,
                                      help="pinn: physics loss on diffraction; supervised: loss on ground truth")
    N: int = setting(32, to=M + S, help="patch side in pixels (power of two, 16..256)")
    generator_output_mode: str = setting("amp_phase", to=M, choices=GENERATOR_OUTPUT_MODES,
                                         help="generator heads: real/imag or amplitude/phase")
    cnn_channels: int = setting(16, to=M, help="base channel count of the cnn generator and hybrid decoder")
    fno_modes: int = setting(12, to=M, help="Fourier modes per axis in spectral convolutions (<= N/2)")
    fno_width: int = setting(32, to=M, help="channels in fno / hybrid spectral blocks")
    fno_blocks: int = setting(4, to=M, help="spectral blocks (fno) or spectral encoder stages (hybrid)")
    fno_cnn_blocks: int = setting(2, to=M, help="refiner 3x3 convolutions after the fno blocks")
    probe_mask: bool = setting(False, to=M, help="multiply the probe by a centred disk in the forward model")
    probe_mask_diameter: float | None = setting(None, to=M, help="probe mask diameter in pixels; none = N")
    gridsize: int = setting(1, to=M, help="1: each pattern alone; 2: groups of 2x2 neighbouring patterns are "
                                          "predicted together and merged on one canvas (overlap constraint)")
    # --- training ---
    seed: int = setting(0, to=T, help="seed for weights, data order and the validation split")
    epochs: int = setting(30, to=T, help="training epochs (>= 1)")
    batch_size: int = setting(16, to=T, help="patterns per optimizer step")
    learning_rate: float = setting(1e-3, to=SHARED, help="peak learning rate (> 0)")
    gradient_clip_val: float | None = setting(None, to=SHARED, flag="--grad-clip",
                                              help="gradient clip level; none or 0 = off; > 0 = max global "
                                                   "L2 norm (norm), max |element| (value) or lambda (agc)")
    gradient_clip_algorithm: str = setting("norm", to=T, choices=CLIP_ALGORITHMS, aliases=("--grad-clip-algorithm",),
                                           help="norm: global L2; value: element-wise; agc: unit-wise adaptive")
    torch_loss_mode: str = setting("mae", to=T, choices=LOSS_MODES,
                                   help="poisson NLL on photon counts or mae on amplitudes")
    optimizer: str = setting("adam", to=T, choices=OPTIMIZERS, help="optimizer")
    weight_decay: float = setting(0.0, to=T, help="weight decay (>= 0; decoupled under adamw)")
    momentum: float = setting(0.9, to=T, help="sgd momentum in [0, 1)")
    adam_beta1: float = setting(0.9, to=T, help="adam/adamw beta1 in [0, 1)")
    adam_beta2: float = setting(0.999, to=T, help="adam/adamw beta2 in [0, 1)")
    scheduler: str = setting("Default", to=T, choices=SCHEDULERS, help="learning-rate schedule (Default = constant)")
    lr_gamma: float = setting(0.95, to=T, help="Exponential: lr factor per epoch, in (0, 1]")
    lr_warmup_epochs: int = setting(0, to=T, help="WarmupCosine: epochs of linear warmup (< epochs)")
    lr_min_ratio: float = setting(0.0, to=T, help="WarmupCosine: final lr as a fraction of learning_rate")
    plateau_factor: float = setting(0.5, to=T, help="ReduceLROnPlateau: lr factor on a plateau, in (0, 1)")
    plateau_patience: int = setting(2, to=T, help="ReduceLROnPlateau: epochs without improvement")
    plateau_min_lr: float = setting(0.0, to=T, help="ReduceLROnPlateau: lowest lr")
    plateau_threshold: float = setting(1e-4, to=T, help="ReduceLROnPlateau: relative improvement that counts")
    val_fraction: float = setting(0.1, to=T, help="share of train patterns held out for validation (0..0.5)")
    log_grad_norm: bool = setting(True, to=T, help="record global gradient norms before and after clipping")
    grad_norm_log_freq: int = setting(1, to=T, help="record gradient norms every k optimizer steps")
    nonfinite_grad_policy: str = setting("skip", to=T, choices=NONFINITE_POLICIES,
                                         help="non-finite gradients: skip the step (counted) or raise")
    # --- simulated data (used when no NPZ is given) ---
    object_size: int = setting(128, to=S, help="simulated object side in pixels (>= N)")
    n_lines: int = setting(130, to=S, help="random lines drawn on the simulation canvas")
    nphotons: float = setting(1e9, to=S, help="mean photon count per diffraction pattern")
    n_train_images: int = setting(2, to=S, help="simulated objects in the train split")
    n_test_images: int = setting(1, to=S, help="simulated objects in the test split")
    train_stride: int = setting(4, to=S, help="train scan step in pixels (<= N)")
    test_stride: int = setting(8, to=S, help="test scan step in pixels (<= N); also the stitching crop")
    set_phi: bool = setting(True, to=S, help="give the object a phase derived from its amplitude")
    probe_npz: Path | None = setting(None, to=S, help="NPZ holding probeGuess (N, N) complex; none = ideal disk")
    probe_defocus: float = setting(1.0, to=S, help="ideal disk probe's phase curvature: pi*d rad at its edge; "
                                                   "0 = real disk, whose twin-image ambiguity blurs the PINN")
    data_seed: int = setting(0, to=S, help="seed for simulated objects and Poisson noise")
    # --- execution ---
    accelerator: str = setting("cpu", to=E, choices=ACCELERATORS, help="Lightning accelerator",
                               machine_bound="needs a GPU: on a CPU-only machine every choice resolves to the CPU")
    devices: int = setting(1, to=E, help="devices per node")
    strategy: str = setting("auto", to=E, choices=STRATEGIES, help="Lightning strategy (ddp for several devices)")
    num_nodes: int = setting(1, to=E, help="nodes for multi-node DDP")
    precision: str = setting("32-true", to=E, choices=PRECISIONS,
                             help="numeric precision of training and of predicting the test split")
    deterministic: bool = setting(True, to=E, help="use deterministic torch algorithms")
    num_workers: int = setting(0, to=E, help="DataLoader worker processes")
    num_threads: int = setting(0, to=E, help="torch threads per process; 0 = the cores other work leaves free, "
                                             "shared among DDP ranks, re-chosen during a one-process fit as "
                                             "other work starts or stops (give each of several runs started "
                                             "together its share)")
    infer_batch_size: int = setting(256, to=E, help="batch size when predicting the test split")
    enable_progress_bar: bool = setting(True, to=E, help="show Lightning's progress bar")
    enable_checkpointing: bool = setting(True, to=E, help="write checkpoints under output_dir")
    logger_backend: str = setting("csv", to=E, choices=LOGGER_BACKENDS, help="Lightning logger")


OUTPUT_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "training": TrainingConfig,
    "execution": PyTorchExecutionConfig,
    "simulation": SimulationConfig,
}
# Output fields filled by another resolved config rather than by a runner field.
NESTED_SOURCES: dict[tuple[str, str], str] = {("training", "model"): "model"}


def routed_values(cfg: TorchRunnerConfig, destination: str) -> dict[str, Any]:
    """The runner values declared to reach ``destination``, under their own names."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if destination in route_of(f).to
    }


def setup_torch_configs(cfg: TorchRunnerConfig) -> tuple[TrainingConfig, PyTorchExecutionConfig]:
    """Resolve the training config (with its model config) and the execution config."""
    model = ModelConfig(**routed_values(cfg, "model"))
    training = TrainingConfig(model=model, **routed_values(cfg, "training"))
    execution = PyTorchExecutionConfig(**routed_values(cfg, "execution"))
    return training, execution


def setup_simulation_config(cfg: TorchRunnerConfig) -> SimulationConfig:
    """Resolve the settings used to simulate data when no NPZ files are given."""
    return SimulationConfig(**routed_values(cfg, "simulation"))


def resolve_configs(cfg: TorchRunnerConfig, setup: Callable = setup_torch_configs) -> dict[str, Any]:
    """Every destination's resolved config, keyed as in DESTINATIONS (model is training.model)."""
    training, execution = setup(cfg)
    return {"model": training.model, "training": training, "execution": execution,
            "simulation": setup_simulation_config(cfg)}


def resolved_json(cfg: TorchRunnerConfig) -> dict[str, Any]:
    """The runner config and the configs resolved from it, JSON-ready (paths as strings)."""
    resolved = resolve_configs(cfg)
    return {"runner": to_jsonable(cfg)} | {
        name: to_jsonable(resolved[name]) for name in ("training", "execution", "simulation")}


def inert_runner_settings(cfg: TorchRunnerConfig) -> dict[str, str]:
    """Runner fields that cannot change this run (every config they reach ignores them), with why."""
    resolved = resolve_configs(cfg)
    inert = inert_settings(RunSettings(resolved["training"], resolved["execution"], resolved["simulation"],
                                       simulated=cfg.train_npz is None))
    found = {}
    for f in dataclasses.fields(cfg):
        places = [f"{destination}.{f.name}" for destination in route_of(f).to if destination != "runner"]
        if places and all(place in inert for place in places):
            found[f.name] = inert[places[0]]
    return found


def ignored_given(cfg: TorchRunnerConfig, given: Iterable[str]) -> dict[str, str]:
    """The settings the user gave (flags or --config) that have no effect in this run, with why."""
    given = set(given)
    return {name: why for name, why in inert_runner_settings(cfg).items() if name in given}


def plan_of(cfg: TorchRunnerConfig, given: Iterable[str] = (), resume: bool = False) -> RunPlan:
    """The library's view of a run: resolved configs plus the runner-only settings. config.json
    records, under ``ignored_settings``, the ``given`` settings that cannot act in this run.
    ``resume``: continue the run in ``cfg.output_dir`` (see ptycho_torch.resume)."""
    resolved = resolve_configs(cfg)
    record = resolved_json(cfg) | {"ignored_settings": ignored_given(cfg, given)}
    return RunPlan(training=resolved["training"], execution=resolved["execution"],
                   simulation=resolved["simulation"], train_npz=cfg.train_npz, test_npz=cfg.test_npz,
                   output_dir=cfg.output_dir, overwrite=cfg.overwrite, record=record, resume=resume)


def run_grid_lines_torch(cfg: TorchRunnerConfig, *, data=None, given: Iterable[str] = (),
                         resume: bool = False) -> dict[str, Any] | None:
    """Run the pipeline (``ptycho_torch.workflow.run``) for one runner config."""
    from ptycho_torch import workflow

    return workflow.run(plan_of(cfg, given, resume), data=data)


# --- command line (derived from the declarations by runner_cli) ------------------------------

@functools.cache  # argparse parsers are reusable; building one is most of the cost of a parse
def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "python -m scripts.studies.grid_lines_torch_runner",
        "Simulate or load grid-lines data, train the PINN, reconstruct and score.",
        usage="%(prog)s [--dry-run] [--output-dir PATH] [--grad-clip FLOAT] [other settings; see below]")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved configs as JSON and exit without touching the disk")
    add_config_argument(parser)
    parser.add_argument(RESUME_FLAG, action="store_true",
                        help="continue the run in --output-dir from its last epoch-end checkpoint, with the settings "
                             "of its config.json (a setting given must equal the recorded one; --epochs may grow)")
    add_grouped_settings(parser, TorchRunnerConfig, dataclasses.fields(TorchRunnerConfig))
    return parser


def runner_flags(flag_prefix: str = "--") -> dict[str, str]:
    return setting_flags(TorchRunnerConfig, flag_prefix)


def parse_config(argv: Sequence[str] | None = None) -> tuple[TorchRunnerConfig, argparse.Namespace]:
    """Parse argv into a validated config; bad input exits 2 with the flag named."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    given = settings_given(parser, namespace, TorchRunnerConfig, command_only=("dry_run", "resume"))
    if namespace.resume:
        try:
            given, chosen = resumed_settings(TorchRunnerConfig, given, namespace.given)
        except ConfigError as err:
            parser.error(config_error_message(err, runner_flags()))
        namespace.given = tuple(sorted(chosen))
    return build_config(parser, TorchRunnerConfig, given, check=resolve_configs), namespace


def warn_ignored(ignored: dict[str, str], flags: dict[str, str], cfg: Any) -> None:
    """One line per given setting that cannot act in this run (its flag, value and why)."""
    for name, why in ignored.items():
        print(f"warning: {flags[name]}={shown_value(getattr(cfg, name))} has no effect in this run: {why}",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, namespace = parse_config(argv)
    warn_ignored(ignored_given(cfg, namespace.given), runner_flags(), cfg)
    if namespace.dry_run:
        print(json.dumps(resolved_json(cfg), indent=2))
        return 0
    return run_command(lambda: report(cfg, run_grid_lines_torch(cfg, given=namespace.given, resume=namespace.resume)),
                       runner_flags())


def report(cfg: TorchRunnerConfig, metrics: dict[str, Any] | None) -> int:
    """The summary line; the exit status says whether the run trained (see outcome_status)."""
    if metrics is None:  # a DDP rank other than 0; rank 0 reports
        return 0
    amplitude = metrics["mean"]["amplitude"]
    print(f"results in {cfg.output_dir}: status {metrics['status']}, amplitude SSIM "
          f"{_number(amplitude['ssim'], '.3f')}, PSNR {_number(amplitude['psnr'], '.2f')} dB")
    return outcome_status({f"run in {cfg.output_dir}": metrics})


def _number(value: float | None, spec: str) -> str:
    """A score for the summary line; null (not finite or undefined, see metrics.json) as "null"."""
    return "null" if value is None else format(value, spec)


if __name__ == "__main__":
    exit_with(main)
