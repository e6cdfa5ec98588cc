"""What a run needs, checked before anything is written to disk.

Settings are validated when the configs are built; this adds what only the data files, the probe
file and the machine can tell: a refusal here is bad input (exit 2) and leaves no folder behind.
    check_machine(execution)             the accelerator and the logger package exist here
    warn_of_crowded_cores(execution)     (a training run) more CPU processes than usable cores: warned of
    check_data(training, train, test)    groups, patterns for a batch, a validation split when needed
    check_simulation(training, sim)      the probe file, the memory and the pattern count of the simulation
Both refuse a probe mask that leaves nothing of the probe (``check_masked_probe``).
Both also warn (not refuse: a sparse scan may be the study) when the test scan leaves part of the
scored region unlit (``warn_of_unlit_region``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np

from ptycho_torch.config import (
    ConfigError, ModelConfig, Problem, PyTorchExecutionConfig, SimulationConfig, TrainingConfig,
    probe_mask_reaches_the_model,
)
from ptycho_torch.npz_data import DataError, GridLinesData


# Set by torchrun (WORLD_SIZE), SLURM (SLURM_NTASKS) or by hand for Lightning (MASTER_ADDR + NODE_RANK).
MULTI_NODE_LAUNCHERS = ("WORLD_SIZE", "SLURM_NTASKS", "MASTER_ADDR")


def check_machine(execution: PyTorchExecutionConfig) -> None:
    """Refuse an accelerator this machine lacks, or a logger whose package is not installed."""
    import torch

    problems = []
    accelerator = execution.accelerator
    if accelerator in ("gpu", "cuda"):
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            problems.append(Problem("accelerator", accelerator, "no CUDA GPU is visible on this machine; use cpu"))
        elif execution.devices > visible:
            problems.append(Problem("devices", execution.devices, f"only {visible} GPU(s) visible on this machine"))
    if accelerator == "mps" and not torch.backends.mps.is_available():
        problems.append(Problem("accelerator", accelerator, "MPS is not available on this machine; use cpu"))
    if execution.num_nodes > 1 and not any(name in os.environ for name in MULTI_NODE_LAUNCHERS):
        problems.append(Problem("num_nodes", execution.num_nodes,
                                "several nodes need a launcher that starts every node (torchrun, SLURM, or "
                                "MASTER_ADDR and NODE_RANK set on each); without one the run waits forever"))
    if execution.logger_backend == "tensorboard" and not _importable("tensorboard", "tensorboardX"):
        problems.append(Problem("logger_backend", "tensorboard",
                                "needs the tensorboard package (pip install tensorboard), or use csv"))
    if problems:
        raise ConfigError("execution settings on this machine", problems)


def warn_of_crowded_cores(execution: PyTorchExecutionConfig) -> None:
    """A warning when a CPU training run starts more processes on this machine than it has usable cores:
    each is a whole training process (model, data, optimizer), so they share cores and memory and the run
    is slower than with fewer of them."""
    from ptycho_torch.cpu_settings import usable_cores
    from ptycho_torch.inference import device_of

    cores = usable_cores()
    if device_of(execution.accelerator).type == "cpu" and execution.devices > cores:
        warnings.warn(f"devices={execution.devices} starts {execution.devices} training processes on the CPU of "
                      f"this machine, which has {cores} usable core(s): they will share them (and its memory), "
                      f"so the run is slower than with devices={cores} or fewer", stacklevel=2)


def _importable(*packages: str) -> bool:
    return any(importlib.util.find_spec(name) is not None for name in packages)


def check_pattern_count(training: TrainingConfig, count: int, source: str) -> None:
    """A train split of ``count`` patterns gives at least one batch and, when the scheduler needs
    one, a non-empty validation split.

    ReduceLROnPlateau already requires val_fraction > 0 (config rule); the split then holds out
    at least one pattern and keeps at least one for training (``split_indices``), which takes two.
    """
    from ptycho_torch.datamodule import validation_count

    if count < 1:
        raise DataError(source, "diffraction", "at least one pattern", "none")
    if training.scheduler == "ReduceLROnPlateau" and count < 2:
        raise ConfigError("training settings for this data", [Problem(
            "val_fraction", training.val_fraction,
            f"cannot hold out a validation pattern from the {count} pattern(s) of {source}, and "
            "scheduler=ReduceLROnPlateau needs a validation loss; use more patterns or another scheduler")])
    trained = count - validation_count(count, training.val_fraction)
    if training.batch_size > trained:  # legitimate (a full-batch fit), but never silent
        warnings.warn(f"batch_size={training.batch_size} is above the {trained} training items of {source} "
                      f"(after the validation split): every epoch is one batch of {trained}", stacklevel=2)


def check_data(training: TrainingConfig, train: GridLinesData, test: GridLinesData,
               sources: tuple[str, str] = ("the train data", "the test data")) -> None:
    """Given data: a train split that trains (see check_pattern_count), and both splits groupable at
    the gridsize. A test split always holds its objects' complete raster (the NPZ contract)."""
    spacing = test.metadata["stride"]  # training groups take the test groups' spacing
    items = training_items(training, train.coords, train.image_index, sources[0], spacing)
    training_items(training, test.coords, test.image_index, sources[1])
    check_pattern_count(training, items, sources[0])
    check_masked_probe(training.model, train.probeGuess, sources[0])
    warn_of_unlit_region(training.model, train.probeGuess, test.coords, test.image_index,
                         test.metadata["object_size"], spacing, sources[1])
    warn_of_another_probe(train.probeGuess, test, sources[1], f"the probe of {sources[0]}, which the model trains with")


def warn_of_another_probe(model_probe, data: GridLinesData, source: str, whose: str) -> None:
    """A warning when ``data``'s probe is not the one the model predicts with: its patterns were
    measured (or simulated) with another illumination than the model knows (legitimate as a test of
    how far a model carries; never silent)."""
    if not np.array_equal(np.asarray(model_probe, dtype=np.complex64), data.probeGuess):
        warnings.warn(f"the probe of {source} differs from {whose}: its patterns were made with another probe "
                      "than the model predicts with", stacklevel=2)


def model_probe(model: ModelConfig, probe):
    """The probe (N, N) complex64 tensor as the model weighs it: masked where ``probe_mask`` reaches
    the model (``config.probe_mask_reaches_the_model``)."""
    import torch

    from ptycho_torch.physics import apply_probe_mask

    probe = torch.as_tensor(np.asarray(probe)).to(torch.complex64)
    if model.probe_mask and probe_mask_reaches_the_model(model):
        probe = apply_probe_mask(probe, model.probe_mask_diameter)
    return probe


def check_masked_probe(model: ModelConfig, probe, source: str) -> None:
    """Refuse a probe mask that leaves nothing of the probe: the model would light nothing (every
    pattern it predicts 0, every gradient 0) and the run would end untrained."""
    if model_probe(model, probe).abs().max() > 0:
        return
    diameter = model.probe_mask_diameter
    raise ConfigError("model settings for this probe", [Problem(
        "probe_mask_diameter", diameter,
        f"the probe mask (a disk of diameter {model.N if diameter is None else diameter} px, the pixels whose "
        f"centres lie inside it) leaves nothing of the probe of {source}; use a larger diameter, or no mask")])


def unlit_share(model: ModelConfig, probe, coords, image_index, object_size: int, stride: int) -> float:
    """``overlap.unlit_fraction`` of a test scan's scored region (``scan.stitched_region``), for the
    probe (N, N) as the model weighs it (masked where ``probe_mask`` reaches the model)."""
    from ptycho_torch.overlap import unlit_fraction
    from ptycho_torch.scan import stitched_region

    probe = model_probe(model, probe)
    region = stitched_region(object_size, probe.shape[-1], stride)
    return unlit_fraction(probe.abs().square().numpy(), np.asarray(coords), np.asarray(image_index), region)


def warn_of_unlit_region(model: ModelConfig, probe, coords, image_index, object_size: int, stride: int,
                         source: str) -> None:
    """A warning when part of the region a test scan is scored on is lit by no scan position."""
    from ptycho_torch.overlap import WEIGHT_FLOOR

    share = unlit_share(model, probe, coords, image_index, object_size, stride)
    if share == 0:
        return
    answer = ("the gridsize-2 merge reconstructs it as 0" if model.gridsize > 1
              else "the network's output there is a guess")
    warnings.warn(f"{share:.1%} of the scored region of {source} is lit by no scan position (probe intensity "
                  f"below {WEIGHT_FLOOR:g} of its peak at every position, stride {stride}): no pattern measures it, "
                  f"so {answer}, and the scores count it; a denser test scan (a smaller stride) covers it",
                  stacklevel=2)


def training_items(training: TrainingConfig, coords, image_index, source: str, spacing: int | None = None) -> int:
    """How many items the scan gives (patterns at gridsize 1, groups otherwise); refuses a scan whose
    objects cannot be grouped (too few positions: a raster group's spacing shrinks to fit)."""
    from ptycho_torch.overlap import group_members

    try:
        return len(group_members(coords, image_index, training.model.gridsize, spacing))
    except ValueError as err:
        raise ConfigError("model settings for this data", [
            Problem("gridsize", training.model.gridsize, f"{err} ({source})")]) from None


def check_probe_file(sim: SimulationConfig) -> None:
    """A given probe file is read and checked now (DataError), not when the simulation needs it."""
    from ptycho_torch.probe import load_probe

    if sim.probe_npz is not None:
        load_probe(sim.probe_npz, sim.N)


# What a simulated pattern occupies at the least (its amplitudes, Y_I and Y_phi in float32), per pixel;
# a run holds more (copies for training, the test split's ground truth): about 50 bytes measured here.
SIMULATED_BYTES_PER_PIXEL = 12


def available_memory() -> int | None:
    """Bytes this process can still take: the kernel's MemAvailable, at most what its cgroups'
    memory limits leave (``cgroups.memory_headroom``); None where neither can be read."""
    from ptycho_torch.cgroups import memory_headroom, read_text

    found = []
    for line in (read_text(MEMINFO) or "").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "MemAvailable:" and fields[1].isdigit() and fields[2] == "kB":
            found.append(int(fields[1]) * 1024)
    headroom = memory_headroom()
    return min([*found, *([] if headroom is None else [headroom])], default=None)


MEMINFO = "/proc/meminfo"


def check_simulation_memory(sim: SimulationConfig) -> None:
    """Refuse settings whose simulated patterns cannot fit in the memory left on this machine (the
    simulation would fail, or be killed, after the output folder was made)."""
    from ptycho_torch.simulation import scan_grid, split_plan

    patterns = sum(images * len(scan_grid(sim, stride)) for images, stride in split_plan(sim).values())
    needed = patterns * sim.N**2 * SIMULATED_BYTES_PER_PIXEL
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError("simulation on this machine", [Problem(
            "object_size", sim.object_size,
            f"with N={sim.N}, train_stride={sim.train_stride}, test_stride={sim.test_stride} and "
            f"{sim.n_train_images} + {sim.n_test_images} objects the simulation makes {patterns:,} patterns, "
            f"at least {needed / 2**30:.1f} GiB; this machine has {available / 2**30:.1f} GiB available "
            "(fewer or smaller objects, or larger strides)")])


def check_simulation(training: TrainingConfig, sim: SimulationConfig) -> None:
    """The probe file, the memory and the number of patterns the simulation will make."""
    from ptycho_torch.simulation import scan_grid, simulation_probe

    probe = simulation_probe(sim)  # read once: a given probe file is checked here (``check_probe_file``'s load)
    check_simulation_memory(sim)
    grids = {split: scan_grid(sim, stride) for split, stride in (("train", sim.train_stride),
                                                                  ("test", sim.test_stride))}
    one_object = {split: np.zeros(len(grid), dtype=np.int64) for split, grid in grids.items()}  # same scan for all
    # training groups take the test groups' spacing (overlap.group_members), which sets their number
    per_object = training_items(training, grids["train"], one_object["train"], "the simulated train split",
                                sim.test_stride)
    training_items(training, grids["test"], one_object["test"], "the simulated test split")
    check_masked_probe(training.model, probe, "the simulation")
    warn_of_unlit_region(training.model, probe, grids["test"], one_object["test"], sim.object_size,
                         sim.test_stride, "the simulated test split")
    check_pattern_count(training, sim.n_train_images * per_object, "the simulated train split")
