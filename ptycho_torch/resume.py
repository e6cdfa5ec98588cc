"""Continuing a run in its own folder from its last epoch-end checkpoint (``--resume``).

The checkpoint (see trainer.py) holds everything the remaining epochs depend on, and each
epoch's data order is a function of (seed, epoch) (``datamodule.EpochShuffle``), so a run killed
after epoch k and resumed ends bit for bit where the uninterrupted run ends, given the same
machine and thread count. A checkpoint written inside an epoch (``interrupted.ckpt``) is not
resumed from: the batches of its epoch already seen cannot be told apart from the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ptycho_torch.npz_data import DataError
from ptycho_torch.output_folder import RUN_LAYOUT, OutputDirError
from ptycho_torch.trainer import LAST_CHECKPOINT

CHECKPOINT_FOLDER = "checkpoints"


def last_checkpoint(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINT_FOLDER / LAST_CHECKPOINT


class ResumePoint(NamedTuple):
    checkpoint: Path  # the epoch-end checkpoint to continue from
    threads: int | None  # the intra-op thread count the run trained with (None: not recorded)


def _read(checkpoint: Path) -> tuple[int, int | None]:
    """(epochs completed, threads) as recorded in an epoch-end checkpoint: one load for both."""
    import torch

    from ptycho_torch.model import RUN_STATE

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return int(state["epoch"]) + 1, state.get(RUN_STATE, {}).get("threads")


# A run's result files: its layout's files but the record of its settings (metrics.json comes first).
RESULTS = tuple(name for name, sub in RUN_LAYOUT.items() if sub is None and name != "config.json")


def remove_results(output_dir: Path) -> None:
    """A finished run trained further: its results (metrics.json first) go before training resumes,
    so that a kill meanwhile never leaves the new config beside the old results."""
    for name in RESULTS:
        (Path(output_dir) / name).unlink(missing_ok=True)


def resume_point(output_dir: Path, epochs: int) -> ResumePoint:
    """The checkpoint to continue the run in ``output_dir`` from, up to ``epochs`` epochs, and the
    thread count it trained with (a resumed run with an automatic count takes it: same sums).

    OutputDirError when there is none or nothing is left to do; DataError when it cannot be read."""
    checkpoint = last_checkpoint(output_dir)
    where = f"output_dir={str(output_dir)!r}"
    if not checkpoint.is_file():
        raise OutputDirError(f"{where}: nothing to resume from: no {CHECKPOINT_FOLDER}/{LAST_CHECKPOINT} (the run "
                             "ended before its first epoch did, or ran without checkpoints); start it again "
                             "with --overwrite")
    try:
        done, threads = _read(checkpoint)
    except Exception as err:  # a damaged or foreign file: refused by name, the original error kept in the chain
        raise DataError.unreadable(checkpoint, "an epoch-end run checkpoint to resume from", err) from err
    if done > epochs:
        raise OutputDirError(f"{where}: its checkpoint has {done} epochs done, more than epochs={epochs}")
    if done == epochs and (Path(output_dir) / "metrics.json").is_file():
        raise OutputDirError(f"{where}: the run is complete ({done} of {done} epochs, metrics.json written); "
                             f"pass --epochs above {done} to train it further")
    return ResumePoint(checkpoint, threads)
