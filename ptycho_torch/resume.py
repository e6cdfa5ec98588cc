"""Continuing a run in its own folder from its last epoch-end checkpoint (``--resume``).

The checkpoint (see trainer.py) holds everything the remaining epochs depend on, and each
epoch's data order is a function of (seed, epoch) (``datamodule.EpochShuffle``), so a run killed
after epoch k and resumed ends bit for bit where the uninterrupted run ends, given the same
machine and thread count. A checkpoint written inside an epoch (``interrupted.ckpt``) is not
resumed from: the batches of its epoch already seen cannot be told apart from the rest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ptycho_torch.config import TrainingConfig, from_jsonable
from ptycho_torch.npz_data import DataError
from ptycho_torch.output_folder import RUN_LAYOUT, OutputDirError
from ptycho_torch.trainer import INTERRUPTED_CHECKPOINT, LAST_CHECKPOINT

CHECKPOINT_FOLDER = "checkpoints"


def last_checkpoint(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINT_FOLDER / LAST_CHECKPOINT


class ResumePoint(NamedTuple):
    checkpoint: Path  # the epoch-end checkpoint to continue from
    threads: int | None  # the intra-op thread count the run trained with (None: not recorded)


# What a fit resumes from: Lightning's entries, and the model's own hyperparameters (config and probe).
CHECKPOINT_ENTRIES = ("epoch", "state_dict", "optimizer_states", "pytorch-lightning_version", "hyper_parameters")


class _Saved(NamedTuple):
    done: int  # epochs completed
    threads: int | None
    training: TrainingConfig  # the config the weights were trained with
    shapes: dict[str, tuple[int, ...]]  # the weights' names and shapes
    probe: Any
    data_digest: str | None  # the train split it trained on (``GridLinesData.digest``; None: not recorded)


def _read(checkpoint: Path) -> _Saved:
    """What an epoch-end checkpoint records, in one load; KeyError / TypeError / ConfigError for a
    file that is not one of this project's run checkpoints."""
    import torch

    from ptycho_torch.model import RUN_STATE

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"it holds a {type(state).__name__}, not a checkpoint's mapping")
    missing = [key for key in CHECKPOINT_ENTRIES if key not in state]
    if missing:
        raise KeyError(f"no {', '.join(missing)}")
    run_state = state.get(RUN_STATE, {})
    hyper = state["hyper_parameters"]
    training, probe = from_jsonable(TrainingConfig, hyper["cfg"]), hyper["probe"]
    N = training.model.N
    if not (torch.is_tensor(probe) and probe.is_complex() and tuple(probe.shape) == (N, N)):
        raise TypeError(f"its probe is not an ({N}, {N}) complex tensor")
    return _Saved(int(state["epoch"]) + 1, run_state.get("threads"), training,
                  {name: tuple(value.shape) for name, value in state["state_dict"].items()}, probe,
                  run_state.get("data_digest"))


def differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """``name: saved against wanted`` for each field (nested configs field by field) that differs."""
    found = []
    for f in dataclasses.fields(wanted):
        a, b = getattr(saved, f.name), getattr(wanted, f.name)
        if dataclasses.is_dataclass(b) and dataclasses.is_dataclass(a):
            found += differences(a, b, f"{prefix}{f.name}.")
        elif a != b:
            found.append(f"{prefix}{f.name}={a!r} against {b!r}")
    return found


def _model_shapes(training: TrainingConfig, probe: Any) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the weights a model of ``training`` has (its initialization draws
    leave the random generators as they were)."""
    import torch

    from ptycho_torch.model import PtychoPINN

    with torch.random.fork_rng(devices=[]):
        module = PtychoPINN(training, probe)
    return {name: tuple(value.shape) for name, value in module.state_dict().items()}


def _check_same_run(saved: _Saved, training: TrainingConfig, probe: Any, data_digest: str | None,
                    where: str) -> None:
    """Refuse a checkpoint that another run wrote (another architecture, seed, learning rate, probe,
    train data, ...): resuming from it would continue that run under this one's record. Epochs may
    differ (grown)."""
    changed = differences(saved.training, dataclasses.replace(training, epochs=saved.training.epochs))
    if changed:
        raise OutputDirError(f"{where}: its {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} was written by another run than "
                             f"its config.json records (checkpoint against config.json: {'; '.join(changed)}); "
                             "start the run again with --overwrite")
    if not np.array_equal(saved.probe.numpy(), np.asarray(probe, dtype=np.complex64)):
        raise OutputDirError(f"{where}: its {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} was trained with another probe than "
                             "this run's data has (the probe settings in config.json, or the data files, changed "
                             "since); start the run again with --overwrite")
    if saved.data_digest is not None and data_digest is not None and saved.data_digest != data_digest:
        raise OutputDirError(f"{where}: its {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} was trained on other data than "
                             "this run's train split (the simulation settings in config.json, or the data files, "
                             "changed since); start the run again with --overwrite")
    expected = _model_shapes(saved.training, saved.probe)
    if saved.shapes != expected:
        odd = sorted(set(saved.shapes) ^ set(expected)) or sorted(k for k in expected if saved.shapes[k] != expected[k])
        raise OutputDirError(f"{where}: the weights in {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} do not fit the model "
                             f"its own config describes ({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''}); "
                             "start the run again with --overwrite")


# A run's result files: its layout's files but the record of its settings (metrics.json comes first).
RESULTS = tuple(name for name, sub in RUN_LAYOUT.items() if sub is None and name != "config.json")


def remove_results(output_dir: Path) -> None:
    """Before a resumed run trains: a finished run's results (metrics.json first), so that a kill
    meanwhile never leaves the new config beside the old results, and the ``interrupted.ckpt`` a
    signal left (weights from inside an epoch the run now trains again: ``--checkpoint`` on it would
    give a state the finished run never had)."""
    for name in RESULTS:
        (Path(output_dir) / name).unlink(missing_ok=True)
    (Path(output_dir) / CHECKPOINT_FOLDER / INTERRUPTED_CHECKPOINT).unlink(missing_ok=True)


def resume_point(output_dir: Path, training: TrainingConfig, probe: Any,
                 data_digest: str | None = None) -> ResumePoint:
    """The checkpoint to continue the run in ``output_dir`` from, up to ``training.epochs`` epochs, and
    the thread count it trained with (a resumed run with an automatic count takes it: same sums).

    OutputDirError when there is none, nothing is left to do, or it holds another run (``training``
    but the epochs differs from the checkpoint's config, ``probe``, the run's data's, from its
    probe, or ``data_digest``, the run's train split's, from the one it trained on, where both are
    known); DataError when it cannot be read."""
    epochs = training.epochs
    checkpoint = last_checkpoint(output_dir)
    where = f"output_dir={str(output_dir)!r}"
    if not checkpoint.is_file():
        raise OutputDirError(f"{where}: nothing to resume from: no {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} (the run "
                             "ended before its first epoch did, or ran without checkpoints); start it again "
                             "with --overwrite")
    try:
        saved = _read(checkpoint)
    except Exception as err:  # a damaged or foreign file: refused by name, the original error kept in the chain
        raise DataError.unreadable(checkpoint, "an epoch-end run checkpoint to resume from", err) from err
    _check_same_run(saved, training, probe, data_digest, where)
    done, threads = saved.done, saved.threads
    if done > epochs:
        raise OutputDirError(f"{where}: its checkpoint has {done} epochs done, more than epochs={epochs}")
    if done == epochs and (Path(output_dir) / "metrics.json").is_file():
        raise OutputDirError(f"{where}: the run is complete ({done} of {done} epochs, metrics.json written); "
                             f"pass --epochs above {done} to train it further")
    return ResumePoint(checkpoint, threads)
