"""The run pipeline, as a library: data -> train -> predict -> stitch -> score -> artifacts.

Commands (the runner, the compare wrapper, the data generator) resolve their settings into a
``RunPlan`` and call ``run``; nothing here knows about command lines. Every setting is read
from the resolved config that owns it (training, execution, simulation) under its own name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import PyTorchExecutionConfig, SimulationConfig, TrainingConfig


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """Everything one run needs: the resolved configs and the runner-only settings."""

    training: TrainingConfig
    execution: PyTorchExecutionConfig
    simulation: SimulationConfig
    train_npz: Path | None  # given together with test_npz, or both None = simulate
    test_npz: Path | None
    output_dir: Path
    overwrite: bool
    record: dict[str, Any]  # config.json: the runner config and the resolved configs, JSON-ready
    resume: bool = False  # continue the run in output_dir from its last epoch-end checkpoint


def load_or_simulate(plan: RunPlan, data_dir: Path | None):
    """(train, test) GridLinesData: the given NPZ files, validated, or a fresh simulation.

    A simulation is written to ``data_dir`` (validated on write) and used from memory; with
    ``data_dir=None`` (DDP ranks other than 0, or a first validation pass) it is not written.
    """
    from ptycho_torch.npz_data import load_npz
    from ptycho_torch.simulation import simulate_splits, write_dataset

    if plan.train_npz is not None:  # the runner config guarantees both paths or neither
        N = plan.training.model.N
        return load_npz(plan.train_npz, "train", expected_N=N), load_npz(plan.test_npz, "test", expected_N=N)
    progress = plan.execution.enable_progress_bar and data_dir is not None
    splits = simulate_splits(plan.simulation, progress=progress)
    if data_dir is not None:
        write_dataset(splits, data_dir)
    return splits["train"], splits["test"]


def prepare(plan: RunPlan, data=None, *, check_folder: bool = True):
    """Every check a run can make before writing anything; returns (train, test) when already loaded.

    Settings were validated when the configs were built; here the machine, the user's data or
    probe file, the pattern counts and the output folder are checked. Refusals raise ConfigError,
    DataError or OutputDirError (bad input) and leave the disk as it was.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from ptycho_torch import preflight
    from ptycho_torch.output_folder import RUN_LAYOUT, check_inputs_survive, check_no_other_output, check_output_dir

    preflight.check_machine(plan.execution)
    if rank_zero_only.rank == 0:  # every process of a DDP run prepares: one warning, not one per process
        preflight.warn_of_crowded_cores(plan.execution)
    if data is None and plan.train_npz is not None:
        data = load_or_simulate(plan, None)
    if data is not None:
        given = plan.train_npz is not None  # else the wrapper's shared simulation
        sources = (str(plan.train_npz), str(plan.test_npz)) if given else ("the train data", "the test data")
        preflight.check_data(plan.training, *data, sources)
    else:
        preflight.check_simulation(plan.training, plan.simulation)
    if check_folder:
        check_output_dir(plan.output_dir, plan.overwrite, resume=plan.resume)
        check_no_other_output(plan.output_dir, plan.overwrite, RUN_LAYOUT)
        check_inputs_survive(plan.output_dir, plan.overwrite, RUN_LAYOUT, input_files(plan))
    return data


def resume_from(plan: RunPlan, data=None):
    """Where a resumed run continues from (``resume.ResumePoint``; refused when there is none, or
    when its checkpoint was trained on another probe or train split than this run's ``data`` (or
    simulation) has); None for a new run."""
    from ptycho_torch.resume import resume_point
    from ptycho_torch.simulation import simulation_probe

    if not plan.resume:
        return None
    if data is None:
        return resume_point(plan.output_dir, plan.training, simulation_probe(plan.simulation))
    return resume_point(plan.output_dir, plan.training, data[0].probeGuess, data[0].digest())


def input_files(plan: RunPlan) -> dict[str, Path | None]:
    """The files a run reads, by setting name (an --overwrite must not remove them)."""
    return {"train_npz": plan.train_npz, "test_npz": plan.test_npz, "probe_npz": plan.simulation.probe_npz}


def run(plan: RunPlan, *, data=None) -> dict[str, Any] | None:
    """Check -> claim the folder -> data -> train -> predict -> stitch -> score -> artifacts.

    Returns metrics.json's content. ``data`` = (train, test) GridLinesData already loaded (the
    compare wrapper shares one simulation). Under DDP every rank trains; rank 0 alone claims the
    folder and writes the artifacts (other ranks write only ``ranks/rank<r>.json`` and return None).
    """
    from lightning.pytorch.utilities import rank_zero_only

    from ptycho_torch.output_folder import RUN_LAYOUT, claimed

    if rank_zero_only.rank != 0:
        data = _simulated_for_resume(plan, prepare(plan, data, check_folder=False))
        return _train_and_write(plan, data, resume_from(plan, data), data_dir=None, main_rank=False)
    given = prepare(plan, data)
    data = _simulated_for_resume(plan, given)
    resumed = resume_from(plan, data)
    with claimed(plan.output_dir, plan.overwrite, RUN_LAYOUT, resume=plan.resume):
        if data is not given:  # as the run's first process wrote it (the same arrays: compared above)
            from ptycho_torch.simulation import write_dataset

            write_dataset(dict(zip(("train", "test"), data)), plan.output_dir / "data")
        return _train_and_write(plan, data, resumed, data_dir=plan.output_dir / "data", main_rank=True)


def _simulated_for_resume(plan: RunPlan, data):
    """``data``, or for a resumed run that simulates its data the simulation, made before anything is
    written so that the checkpoint's train split can be compared with it (``resume_from``)."""
    return load_or_simulate(plan, None) if data is None and plan.resume else data


def _train_and_write(plan: RunPlan, data, resumed, data_dir: Path | None, main_rank: bool) -> dict[str, Any] | None:
    """``resumed``: the ``resume.ResumePoint`` a resumed run continues from, else None."""
    from ptycho_torch import artifacts
    from ptycho_torch.cpu_settings import run_threads
    from ptycho_torch.training import train

    out = plan.output_dir
    if main_rank and resumed is not None:
        from ptycho_torch.resume import remove_results

        remove_results(out)
    if main_rank:
        artifacts.write_json(out / "config.json", plan.record)
    train_data, test_data = data if data is not None else load_or_simulate(plan, data_dir)
    # one automatic choice for the run, which the fit may re-choose and the prediction then uses; a
    # resumed run begins with the count its checkpoint was saved with (another count sums in another order)
    with run_threads(plan.execution, start=resumed.threads if resumed is not None else None) as threads:
        started = time.perf_counter()
        trained = train(plan.training, plan.execution, train_data, out, group_spacing=test_data.metadata["stride"],
                        resume_from=resumed.checkpoint if resumed is not None else None)
        fit_seconds = time.perf_counter() - started
        if trained.trainer.world_size > 1:
            write_rank_record(trained, out / "ranks")
        prior = trained.module.prior_fit_seconds  # what a resumed run's checkpoint had spent (None: not recorded)
        timing = {"fit_seconds": None if prior is None else prior + fit_seconds,
                  "fit_seconds_this_process": fit_seconds, "threads": threads,
                  "thread_changes": trained.thread_changes}
        return write_results(out, plan.execution, trained, test_data, timing) if main_rank else None


def scored_unlit_share(module, data) -> float:
    """``preflight.unlit_share`` of ``data``'s scan for the probe ``module`` trained with."""
    from ptycho_torch.preflight import unlit_share

    return unlit_share(module.cfg.model, module.hparams["probe"], data.coords, data.image_index,
                       data.metadata["object_size"], data.metadata["stride"])


def write_rank_record(trained, folder: Path) -> None:
    """This rank's per-step gradient norms and a digest of its parameters (DDP evidence)."""
    from ptycho_torch import artifacts
    from ptycho_torch.training import parameter_digest

    folder.mkdir(parents=True, exist_ok=True)
    rank = trained.trainer.global_rank
    artifacts.write_json(folder / f"rank{rank}.json", {
        "rank": rank, "world_size": trained.trainer.world_size,
        "parameters_sha256": parameter_digest(trained.module), "history": trained.module.history})


def collapse_of(module, test_data, execution: PyTorchExecutionConfig, recons) -> str | None:
    """Why the finite reconstruction of ``test_data`` (with ground truth) collapsed, or None: a constant
    amplitude or phase (``outcome.collapse_reason``), else one that does not depend on the patterns
    (``input_ignored``, which needs two patterns to exchange)."""
    import numpy as np

    from ptycho_torch.outcome import collapse_reason

    if not np.all(np.isfinite(recons)):
        return None
    collapse = collapse_reason(recons, test_data.YY_ground_truth)
    if collapse is None and len(test_data.diffraction) > 1:
        collapse = input_ignored(module, test_data, execution, recons)
    return collapse


def input_ignored(module, test_data, execution: PyTorchExecutionConfig, recons) -> str | None:
    """``outcome.ignores_input_reason`` for the test split: predicted again with its patterns exchanged
    among the scan positions."""
    import dataclasses

    from ptycho_torch.outcome import exchanged_patterns, ignores_input_reason

    order = exchanged_patterns(len(test_data.diffraction))
    exchanged = reconstruct(module, dataclasses.replace(test_data, diffraction=test_data.diffraction[order]), execution)
    return ignores_input_reason(recons, exchanged, test_data.YY_ground_truth)


def reconstruct(module, test_data, execution: PyTorchExecutionConfig):
    """Stitched test objects (I, H, W) complex64, predicted in batches of ``infer_batch_size`` at the
    run's ``precision``."""
    from ptycho_torch.cpu_settings import flushed_denormals, run_threads
    from ptycho_torch.reconstruction import stitch_objects
    from ptycho_torch.training import predict_patches

    with run_threads(execution), flushed_denormals():
        patches = predict_patches(module, test_data, execution.infer_batch_size, execution.precision)  # (M, N, N)
    return stitch_objects(patches.numpy(), test_data)  # (I, H, W) complex64


INFERENCE_REPEATS = 10


def warm_inference_seconds(module, test_data, execution: PyTorchExecutionConfig) -> float:
    """What reconstructing a new scan of this size costs a warm model: the median over
    INFERENCE_REPEATS more predictions and stitchings of the test split (the first, scored one
    pays one-off costs: lazy initialization, the allocator's growth)."""
    import statistics

    seconds = []
    for _ in range(INFERENCE_REPEATS):
        started = time.perf_counter()
        reconstruct(module, test_data, execution)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def write_results(out: Path, execution: PyTorchExecutionConfig, trained, test_data,
                  timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict the test split, stitch, score, and write metrics, history, reconstruction and pictures.

    Everything shown is read from the resolved configs and the module that trained, so the
    pictures describe what ran. Wall times go to timing.json, apart from metrics.json, which a
    rerun reproduces bit for bit.
    """
    import numpy as np

    from ptycho_torch import artifacts, plots
    from ptycho_torch.metrics import phase_seam_ratio, score_objects
    from ptycho_torch.model import HISTORY_COLUMNS
    from ptycho_torch.outcome import run_status
    from ptycho_torch.training import parameter_digest

    module = trained.module
    training = module.cfg
    architecture = training.model.architecture
    started = time.perf_counter()
    recons = reconstruct(module, test_data, execution)
    reconstruct_seconds = time.perf_counter() - started
    inference_seconds = warm_inference_seconds(module, test_data, execution)
    collapse = collapse_of(module, test_data, execution, recons)
    status, reason = run_status(recons, [row["loss"] for row in module.history], module.last_val_loss,
                                steps_applied=module.optimizer_steps - module.nonfinite_skips,
                                weights_changed=parameter_digest(module) != trained.initial_digest, collapse=collapse)
    metrics = {"status": status, "status_reason": reason, "architecture": architecture, "collapsed": collapse is not None,
               **score_objects(recons, test_data.YY_ground_truth),
               "phase_seam_ratio": phase_seam_ratio(recons, test_data.YY_ground_truth, test_data.metadata["stride"]),
               "unlit_fraction": scored_unlit_share(module, test_data),
               "nonfinite_skips": module.nonfinite_skips, "optimizer_steps": module.optimizer_steps,
               "final_train_loss": module.history[-1]["loss"], "final_val_loss": module.last_val_loss}
    artifacts.write_json(out / "timing.json", {"fit_seconds": None, **(timing or {}),
                                               "reconstruct_seconds": reconstruct_seconds,
                                               "inference_seconds": inference_seconds,
                                               "test_objects": int(len(recons)),
                                               "test_patterns": int(len(test_data.diffraction))})
    artifacts.write_csv(out / "history.csv", module.history, HISTORY_COLUMNS)
    artifacts.write_npz(out / "recon.npz", recon=recons, ground_truth=test_data.YY_ground_truth)
    plots.plot_reconstruction(out / "reconstruction.png", test_data.YY_ground_truth[0], recons[0],
                              f"{architecture}: test object 0")
    plots.plot_training(out / "training.png", module.history, training.gradient_clip_val,
                        training.gradient_clip_algorithm)
    # Last: a folder with metrics.json holds a whole run (a restarted study keeps such a run as finished).
    artifacts.write_json(out / "metrics.json", metrics)
    return metrics
