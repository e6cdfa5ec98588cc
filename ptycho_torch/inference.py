"""A trained model applied to a data file: checkpoint -> model -> predict -> stitch -> score -> artifacts.

A checkpoint carries the resolved training config and the probe the model was trained with
(``PtychoPINN``), so nothing of the training command is needed. The data file may be either
split of the NPZ contract; when it holds ground truth the reconstruction is scored exactly as a
run scores its test split. The library side of ``scripts.grid_lines_reconstruct``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import PyTorchExecutionConfig


@dataclass(frozen=True, kw_only=True)
class ReconstructionPlan:
    checkpoint: Path
    test_npz: Path
    execution: PyTorchExecutionConfig  # accelerator, infer_batch_size, num_threads, precision are used
    output_dir: Path
    overwrite: bool
    record: dict[str, Any]  # config.json: the command's settings, JSON-ready


def _threads_as_trained(plan: ReconstructionPlan, module) -> PyTorchExecutionConfig:
    """With automatic threads, as many as the checkpoint's run used: the same sums in the same order."""
    if plan.execution.num_threads != 0:
        return plan.execution
    return dataclasses.replace(plan.execution, num_threads=module.trained_threads or 0)


def device_of(accelerator: str):
    """The torch device prediction runs on (check_machine has refused what this machine lacks)."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    if accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "auto" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(checkpoint: Path, device=None):
    """The trained PtychoPINN in ``checkpoint`` (weights-only loading: no code runs from the file).

    DataError names the file when it is missing or is not a checkpoint written by this tool."""
    from ptycho_torch.model import PtychoPINN
    from ptycho_torch.npz_data import DataError
    from ptycho_torch.special_files import is_special_file

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        found = "a folder" if checkpoint.is_dir() else "a pipe, socket or device" if is_special_file(
            checkpoint) else "no such file"
        raise DataError(checkpoint, None, "a checkpoint file", found)
    try:
        return PtychoPINN.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    except Exception as err:  # unreadable, not a checkpoint, or one without our config: refused by name, cause chained
        raise DataError.unreadable(checkpoint, "a checkpoint written by this tool's training (it holds the "
                                               "training config and probe)", err) from err


def prepare(plan: ReconstructionPlan):
    """Every check before anything is written: machine, checkpoint, data file, inputs an
    ``--overwrite`` would remove (the folder itself is checked by ``claimed``, before it creates
    anything). Returns (module, data)."""
    from ptycho_torch.npz_data import load_any_split
    from ptycho_torch.output_folder import RECONSTRUCTION_LAYOUT, check_inputs_survive, check_no_other_output
    from ptycho_torch.preflight import check_machine, training_items, warn_of_another_probe, warn_of_unlit_region
    from ptycho_torch.trainer import fp16_runs_as_bf16

    check_machine(plan.execution)
    device = device_of(plan.execution.accelerator)
    if fp16_runs_as_bf16(plan.execution.precision, device.type):
        warnings.warn("precision=16-mixed on the CPU: predicting under bf16 autocast (a CPU has no fp16 autocast; "
                      "training runs it as bf16-mixed too)", stacklevel=2)
    module = load_model(plan.checkpoint, device)
    _warn_of_another_precision(plan.execution.precision, module.trained_precision, device.type)
    data = load_any_split(plan.test_npz, expected_N=module.cfg.model.N)
    training_items(module.cfg, data.coords, data.image_index, str(plan.test_npz))  # groupable at its gridsize
    warn_of_unlit_region(module.cfg.model, module.hparams["probe"], data.coords, data.image_index,
                         data.metadata["object_size"], data.metadata["stride"], str(plan.test_npz))
    warn_of_another_probe(module.hparams["probe"], data, str(plan.test_npz), "the probe the checkpoint trained with")
    check_no_other_output(plan.output_dir, plan.overwrite, RECONSTRUCTION_LAYOUT)
    check_inputs_survive(plan.output_dir, plan.overwrite, RECONSTRUCTION_LAYOUT,
                         {"checkpoint": plan.checkpoint, "test_npz": plan.test_npz})
    return module, data


def _warn_of_another_precision(precision: str, trained: str | None, device_type: str) -> None:
    """Predicting at another precision than the checkpoint trained at is allowed (float32 is the
    more exact), but its recon.npz then differs from the run's own: say so, and how to match it."""
    from ptycho_torch.trainer import precision_run

    if trained is None or precision == trained:
        return
    predicted = precision_run(precision, device_type)
    if predicted != trained:  # 16-mixed asked on a CPU predicts as a CPU trained it: bf16-mixed
        warnings.warn(f"the checkpoint trained at precision={trained}; predicting at precision={predicted}: "
                      f"pass --precision {trained} to reproduce the run's own reconstruction", stacklevel=3)


def run(plan: ReconstructionPlan) -> dict[str, Any]:
    """Check -> claim the folder -> predict -> stitch -> score -> artifacts; returns the summary
    (metrics.json's content when the file has ground truth)."""
    from ptycho_torch import artifacts, plots
    from ptycho_torch.metrics import phase_seam_ratio, score_objects
    from ptycho_torch.outcome import reconstruction_status
    from ptycho_torch.output_folder import RECONSTRUCTION_LAYOUT, claimed
    from ptycho_torch.workflow import collapse_of, reconstruct, scored_unlit_share

    module, data = prepare(plan)
    out = plan.output_dir
    with claimed(out, plan.overwrite, RECONSTRUCTION_LAYOUT):
        artifacts.write_json(out / "config.json", plan.record | {"training": module.hparams["cfg"]})
        execution = _threads_as_trained(plan, module)
        recons = reconstruct(module, data, execution)  # (I, H, W) complex64
        architecture = module.cfg.model.architecture
        truth = data.YY_ground_truth
        status, reason = reconstruction_status(recons, None if truth is None else
                                               collapse_of(module, data, execution, recons))
        summary = {"status": status, "status_reason": reason, "checkpoint": str(plan.checkpoint),
                   "data": str(plan.test_npz), "architecture": architecture, "objects": int(recons.shape[0])}
        title = f"{architecture} ({plan.checkpoint.name}): {plan.test_npz.name} object 0"
        if truth is None:
            artifacts.write_npz(out / "recon.npz", recon=recons)
            plots.plot_object(out / "reconstruction.png", recons[0], title)
            return summary
        summary |= {**score_objects(recons, truth),
                    "phase_seam_ratio": phase_seam_ratio(recons, truth, data.metadata["stride"]),
                    "unlit_fraction": scored_unlit_share(module, data)}
        artifacts.write_npz(out / "recon.npz", recon=recons, ground_truth=truth)
        plots.plot_reconstruction(out / "reconstruction.png", truth[0], recons[0], title)
        artifacts.write_json(out / "metrics.json", summary)  # last, as a run's: its presence means complete
        return summary
