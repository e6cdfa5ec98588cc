"""Checks made before a run writes anything: the machine, the data's pattern counts, the probe file;
and the outcome a finished run records (ok, diverged, untrained)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from ptycho_torch import cgroups, preflight
from ptycho_torch.config import ConfigError, ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.npz_data import DataError
from ptycho_torch.outcome import DIVERGED, OK, UNTRAINED, run_status
from ptycho_torch.simulation import scan_grid, simulate_splits, simulation_probe
from tests.helpers import TINY_SIMULATION

TRAINING = TrainingConfig(model=ModelConfig(N=16))
PLATEAU = dataclasses.replace(TRAINING, scheduler="ReduceLROnPlateau", val_fraction=0.25)


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_is_refused_on_a_machine_without_one(monkeypatch, accelerator):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError) as err:
        preflight.check_machine(PyTorchExecutionConfig(accelerator=accelerator))
    assert err.value.fields == ("accelerator",)


def test_more_gpu_devices_than_visible_are_refused(monkeypatch):
    fake_gpus(monkeypatch, 1)
    preflight.check_machine(PyTorchExecutionConfig(accelerator="gpu", devices=1))
    with pytest.raises(ConfigError) as err:
        preflight.check_machine(PyTorchExecutionConfig(accelerator="gpu", devices=3))
    assert err.value.fields == ("devices",) and err.value.problems[0].value == 3


def test_mps_is_refused_where_it_is_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        preflight.check_machine(PyTorchExecutionConfig(accelerator="mps"))
    assert err.value.fields == ("accelerator",)


def test_several_nodes_need_a_launcher(monkeypatch):
    for name in preflight.MULTI_NODE_LAUNCHERS:
        monkeypatch.delenv(name, raising=False)
    preflight.check_machine(PyTorchExecutionConfig(num_nodes=1))
    with pytest.raises(ConfigError) as err:
        preflight.check_machine(PyTorchExecutionConfig(strategy="ddp", num_nodes=2))
    assert err.value.fields == ("num_nodes",) and err.value.problems[0].value == 2
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    preflight.check_machine(PyTorchExecutionConfig(strategy="ddp", num_nodes=2))


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_more_cpu_processes_than_usable_cores_are_warned_of(monkeypatch, accelerator):
    from ptycho_torch import cpu_settings

    fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(cpu_settings, "usable_cores", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight.warn_of_crowded_cores(PyTorchExecutionConfig(accelerator=accelerator, devices=2, strategy="ddp"))
    with pytest.warns(UserWarning, match=r"devices=3 starts 3 training processes .* 2 usable core"):
        preflight.warn_of_crowded_cores(PyTorchExecutionConfig(accelerator=accelerator, devices=3, strategy="ddp"))


def test_gpu_devices_are_not_counted_against_the_cores(monkeypatch):
    from ptycho_torch import cpu_settings

    fake_gpus(monkeypatch, 4)
    monkeypatch.setattr(cpu_settings, "usable_cores", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight.warn_of_crowded_cores(PyTorchExecutionConfig(accelerator="gpu", devices=4, strategy="ddp"))
        preflight.warn_of_crowded_cores(PyTorchExecutionConfig(accelerator="auto", devices=4, strategy="ddp"))


def test_the_tensorboard_logger_needs_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    with pytest.raises(ConfigError) as err:
        preflight.check_machine(PyTorchExecutionConfig(logger_backend="tensorboard"))
    assert err.value.fields == ("logger_backend",)
    preflight.check_machine(PyTorchExecutionConfig(logger_backend="csv"))


def test_no_pattern_is_refused():
    with pytest.raises(DataError, match="at least one pattern"):
        preflight.check_pattern_count(TRAINING, 0, "train.npz")


@pytest.mark.parametrize("count, refused", [(1, True), (2, False), (50, False)])
def test_the_plateau_scheduler_needs_a_validation_pattern(count, refused):
    preflight.check_pattern_count(TRAINING, count, "train.npz")  # other schedulers train on one pattern
    if refused:
        with pytest.raises(ConfigError) as err:
            preflight.check_pattern_count(PLATEAU, count, "train.npz")
        assert err.value.problems[0].field == "val_fraction" and err.value.problems[0].value == 0.25
        assert "train.npz" in str(err.value)
    else:
        preflight.check_pattern_count(PLATEAU, count, "train.npz")


def test_the_simulation_is_counted_from_its_own_scan():
    one_pattern = dataclasses.replace(TINY_SIMULATION, object_size=24, train_stride=16, n_train_images=1)
    with pytest.raises(ConfigError):
        preflight.check_simulation(PLATEAU, one_pattern)
    preflight.check_simulation(PLATEAU, dataclasses.replace(one_pattern, train_stride=8))  # 2 x 2 patterns
    preflight.check_simulation(PLATEAU, dataclasses.replace(one_pattern, object_size=32))  # 2 x 2 patterns
    preflight.check_simulation(PLATEAU, dataclasses.replace(one_pattern, n_train_images=2))  # 2 objects


def test_given_data_with_one_training_pattern_cannot_feed_the_plateau_scheduler():
    """The same refusal as for a simulation, for the user's files: nothing to hold out for validation."""
    data = simulate_splits(dataclasses.replace(TINY_SIMULATION, object_size=24, train_stride=16, n_train_images=1))
    assert len(data["train"].coords) == 1
    preflight.check_data(TRAINING, data["train"], data["test"])  # other schedulers train on one pattern
    with pytest.raises(ConfigError) as err:
        preflight.check_data(PLATEAU, data["train"], data["test"], ("train.npz", "test.npz"))
    assert err.value.fields == ("val_fraction",) and "train.npz" in str(err.value)


def test_a_missing_or_wrong_probe_file_is_refused_before_simulating(tmp_path):
    with pytest.raises(DataError, match="missing.npz"):
        preflight.check_simulation(TRAINING, dataclasses.replace(TINY_SIMULATION, probe_npz=tmp_path / "missing.npz"))
    np.savez(tmp_path / "small.npz", probeGuess=np.ones((8, 8), np.complex64))
    with pytest.raises(DataError, match="probeGuess"):
        preflight.check_probe_file(dataclasses.replace(TINY_SIMULATION, probe_npz=tmp_path / "small.npz"))
    np.savez(tmp_path / "right.npz", probeGuess=np.ones((16, 16), np.complex64))
    preflight.check_probe_file(dataclasses.replace(TINY_SIMULATION, probe_npz=tmp_path / "right.npz"))


def pretend_memory(monkeypatch, tmp_path, available_kib: int | None, headroom: int | None = None) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\n"
                       + ("" if available_kib is None else f"MemAvailable:   {available_kib} kB\n"))
    monkeypatch.setattr(preflight, "MEMINFO", str(meminfo))
    monkeypatch.setattr(cgroups, "memory_headroom", lambda: headroom)


def test_available_memory_reads_meminfo_in_kib_and_takes_the_tighter_of_it_and_the_cgroup(monkeypatch, tmp_path):
    pretend_memory(monkeypatch, tmp_path, 2**20)  # /proc/meminfo's "kB" are KiB
    assert preflight.available_memory() == 2**30
    pretend_memory(monkeypatch, tmp_path, 2**20, headroom=2**29)
    assert preflight.available_memory() == 2**29


def test_a_simulation_that_cannot_fit_in_the_memory_left_is_refused_naming_its_size(monkeypatch, tmp_path):
    # every size differs from its default, so that each one read is seen in the count and the message
    big = dataclasses.replace(TINY_SIMULATION, object_size=512, N=16, train_stride=2, test_stride=4, n_train_images=3,
                              n_test_images=2)
    patterns = 3 * 249**2 + 2 * 125**2  # 217,253 patterns of 16 x 16: at least 0.62 GiB
    pretend_memory(monkeypatch, tmp_path, 2**19)  # 0.5 GiB
    with pytest.raises(ConfigError, match=f"object_size=512: with N=16, train_stride=2, test_stride=4 and 3 \\+ 2 "
                                          f"objects the simulation makes {patterns:,} patterns, at least 0.6 GiB; "
                                          "this machine has 0.5 GiB available"):
        preflight.check_simulation(TRAINING, big)
    pretend_memory(monkeypatch, tmp_path, 2**20)  # 1 GiB: fits
    preflight.check_simulation_memory(big)
    pretend_memory(monkeypatch, tmp_path, 2**20, headroom=2**29)  # a cgroup leaves 0.5 GiB: the tighter holds
    with pytest.raises(ConfigError, match="0.5 GiB available"):
        preflight.check_simulation_memory(big)
    pretend_memory(monkeypatch, tmp_path, None)  # nothing known: nothing refused
    preflight.check_simulation_memory(big)


# --- the outcome of a finished run -------------------------------------------------------------

FINE = np.ones((1, 4, 4), np.complex64)


@pytest.mark.parametrize("recons, losses, val, steps, changed, expected", [
    (FINE, [1.0, 0.5], 0.4, 2, True, OK),
    (FINE * np.nan, [1.0, 0.5], 0.4, 2, True, DIVERGED),
    (np.full((1, 4, 4), np.inf, np.complex64), [1.0, 0.5], 0.4, 2, True, DIVERGED),
    (FINE, [1.0, float("nan")], 0.4, 2, True, DIVERGED),
    (FINE, [1.0, 0.5], float("inf"), 2, True, DIVERGED),
    (FINE, [1.0, 0.5], None, 2, True, OK),
    (FINE, [1.0, 0.5], 0.4, 0, True, UNTRAINED),
    (FINE, [1.0, 0.5], 0.4, 2, False, UNTRAINED),
    (FINE, [0.7, 0.7, 0.7], 0.4, 3, True, UNTRAINED),
    (FINE, [0.7], 0.4, 1, True, OK),
], ids=["ok", "nan-recon", "inf-recon", "nan-loss", "inf-val-loss", "no-validation", "every-step-skipped",
        "weights-unchanged", "loss-never-moved", "one-step"])
def test_a_run_is_ok_only_when_it_trained_and_stayed_finite(recons, losses, val, steps, changed, expected):
    status, reason = run_status(recons, losses, val, steps_applied=steps, weights_changed=changed)
    assert status == expected and (reason is None) == (expected == OK)


# --- gridsize 2: every object must form groups, and the plateau split counts groups -------------------------

GRIDSIZE2 = dataclasses.replace(TRAINING, model=ModelConfig(N=16, gridsize=2))


@pytest.mark.parametrize("split, strides", [("train", (16, 8)), ("test", (8, 16))])
def test_gridsize_2_needs_groupable_scans_in_both_splits(split, strides):
    """A 24 px object scanned at stride 16 by N=16 has one position: nothing to group it with."""
    sim = dataclasses.replace(TINY_SIMULATION, object_size=24, train_stride=strides[0], test_stride=strides[1],
                              n_train_images=1, n_test_images=1)
    preflight.check_simulation(TRAINING, sim)  # one pattern alone is fine at gridsize 1
    with pytest.raises(ConfigError) as err:
        preflight.check_simulation(GRIDSIZE2, sim)
    assert err.value.problems[0].field == "gridsize" and err.value.problems[0].value == 2
    assert f"simulated {split}" in str(err.value)


def test_the_plateau_split_counts_groups_at_gridsize_2():
    two_by_two = dataclasses.replace(TINY_SIMULATION, object_size=24, train_stride=8, n_train_images=1)  # 4 patterns
    preflight.check_simulation(dataclasses.replace(PLATEAU), two_by_two)
    with pytest.raises(ConfigError):  # 4 patterns make one 2 x 2 group: nothing left to hold out
        preflight.check_simulation(dataclasses.replace(PLATEAU, model=ModelConfig(N=16, gridsize=2)), two_by_two)


def test_training_groups_take_the_test_splits_spacing():
    """Train raster 3 x 3 at stride 4: members 4 apart give 4 groups, 8 apart (test stride 8) one."""
    plateau2 = dataclasses.replace(PLATEAU, model=ModelConfig(N=16, gridsize=2))
    sim = dataclasses.replace(TINY_SIMULATION, object_size=24, train_stride=4, test_stride=4, n_train_images=1)
    preflight.check_simulation(plateau2, sim)
    with pytest.raises(ConfigError):
        preflight.check_simulation(plateau2, dataclasses.replace(sim, test_stride=8))


def test_a_reconstruction_that_moves_less_than_a_hundredth_of_the_truths_spread_ignores_its_input():
    from ptycho_torch.outcome import exchanged_patterns, ignores_input_reason

    truth = np.exp(1j * np.linspace(0, 1, 64)).reshape(1, 8, 8) * np.linspace(0.2, 1.0, 64).reshape(1, 8, 8)
    spread = float(np.std(np.abs(truth)))
    recon = truth * 0.5  # half the truth's scale: its movements count double, as scoring aligns the scale
    assert "does not depend on the measured patterns" in ignores_input_reason(recon, recon + 0.0045 * spread, truth)
    assert ignores_input_reason(recon, recon + 0.0055 * spread, truth) is None
    assert ignores_input_reason(recon, recon, np.ones_like(truth)) is None  # a flat truth: nothing to judge by
    for units in (1e-6, 1e4):  # a truth in other units (a file's): the same verdicts
        assert "does not depend" in ignores_input_reason(recon, recon + 0.0045 * spread, truth * units)
        assert ignores_input_reason(recon, recon + 0.0055 * spread, truth * units) is None
    order = exchanged_patterns(5)
    assert sorted(order) == list(range(5)) and all(order != np.arange(5))


def test_an_all_zero_reconstruction_is_named_collapsed_not_a_division_by_zero():
    """Scoring's scale alignment divides by the reconstruction's mean amplitude: at 0 it is left as is."""
    from ptycho_torch.outcome import collapse_reason, ignores_input_reason

    truth = (np.linspace(0.2, 1.0, 64) * np.exp(1j * np.linspace(0, 1, 64))).reshape(1, 8, 8)
    zero = np.zeros_like(truth)
    assert "object 0: the reconstructed amplitude is constant" in collapse_reason(zero, truth)
    assert "does not depend on the measured patterns" in ignores_input_reason(zero, zero, truth)


def test_a_non_finite_loss_is_diverged_even_when_no_step_was_applied():
    # the outcome lists diverged before untrained: a loss that is not finite is the run's first problem
    status, reason = run_status(FINE, [float("nan")], None, steps_applied=0, weights_changed=False)
    assert (status, reason) == (DIVERGED, "the final train loss is not finite")


@pytest.mark.parametrize("gridsize, answer", [(1, "the network's output there is a guess"),
                                              (2, "the gridsize-2 merge reconstructs it as 0")])
def test_a_test_scan_that_leaves_part_of_the_scored_region_unlit_is_warned_of_before_anything_runs(gridsize, answer):
    """At stride N the disk probe leaves the corners between positions dark (N=16, 48 px object)."""
    training = dataclasses.replace(TRAINING, model=ModelConfig(N=16, gridsize=gridsize))
    sparse = dataclasses.replace(TINY_SIMULATION, object_size=48, test_stride=16)
    with pytest.warns(UserWarning, match=r"of the scored region of the simulated test split is lit by no scan "
                                         r"position .*stride 16\): no pattern measures it, so ") as caught:
        preflight.check_simulation(training, sparse)
    share = preflight.unlit_share(training.model, simulation_probe(sparse), scan_grid(sparse, 16), np.zeros(9, int),
                                  48, 16)
    assert share > 0.2 and f"{share:.1%} of the scored region" in str(caught[0].message)
    assert answer in str(caught[0].message)
    data = simulate_splits(sparse)
    with pytest.warns(UserWarning, match=r"of the scored region of the test file is lit by no scan position"):
        preflight.check_data(training, data["train"], data["test"], ("the train file", "the test file"))


def test_a_covered_test_scan_is_not_warned_of_unless_the_probe_mask_darkens_it(recwarn):
    covered = dataclasses.replace(TINY_SIMULATION, object_size=48, test_stride=8)
    preflight.check_simulation(TRAINING, covered)
    assert not [w for w in recwarn if "lit by no scan position" in str(w.message)]
    masked = dataclasses.replace(TRAINING, model=ModelConfig(N=16, probe_mask=True, probe_mask_diameter=3.0))
    with pytest.warns(UserWarning, match="lit by no scan position"):
        preflight.check_simulation(masked, covered)


def test_supervised_training_at_gridsize_1_weighs_the_unmasked_probe_so_a_small_mask_darkens_nothing(recwarn):
    """The probe never reaches such a model (config.probe_mask_reaches_the_model): its mask is inert."""
    covered = dataclasses.replace(TINY_SIMULATION, object_size=48, test_stride=8)
    supervised = dataclasses.replace(TRAINING, model=ModelConfig(N=16, training_procedure="supervised",
                                                                 probe_mask=True, probe_mask_diameter=3.0))
    preflight.check_simulation(supervised, covered)
    assert not [w for w in recwarn if "lit by no scan position" in str(w.message)]


@pytest.mark.parametrize("diameter", [1.0, 1e-320])
def test_a_probe_mask_that_leaves_nothing_of_the_probe_is_refused_naming_the_diameter(diameter):
    """N=16: the centre lies between pixels, 0.71 px from the nearest pixel centres; a smaller disk
    holds none of them, and the masked probe is dark."""
    covered = dataclasses.replace(TINY_SIMULATION, object_size=48, test_stride=8)
    dark = dataclasses.replace(TRAINING, model=ModelConfig(N=16, probe_mask=True, probe_mask_diameter=diameter))
    with pytest.raises(ConfigError, match="leaves nothing of the probe of the simulation") as err:
        preflight.check_simulation(dark, covered)
    assert err.value.fields == ("probe_mask_diameter",) and f"a disk of diameter {diameter} px" in str(err.value)
    data = simulate_splits(covered)
    with pytest.raises(ConfigError, match="leaves nothing of the probe of the train file"):
        preflight.check_data(dark, data["train"], data["test"], ("the train file", "the test file"))
    lit = dataclasses.replace(TRAINING, model=ModelConfig(N=16, probe_mask=True, probe_mask_diameter=1.5))
    preflight.check_simulation(lit, covered)  # four pixels inside: refused no more
    off = dataclasses.replace(TRAINING, model=ModelConfig(N=16, probe_mask=False, probe_mask_diameter=diameter))
    preflight.check_simulation(off, covered)  # the mask is off: its diameter is not used


def test_a_probe_lit_only_outside_the_default_mask_is_refused_naming_the_disk_of_diameter_N():
    corners = np.zeros((16, 16), np.complex64)
    corners[0, 0] = corners[-1, -1] = 1.0  # outside the inscribed disk
    masked = ModelConfig(N=16, probe_mask=True)
    with pytest.raises(ConfigError, match=r"a disk of diameter 16 px.*leaves nothing of the probe of the file"):
        preflight.check_masked_probe(masked, corners, "the file")
    preflight.check_masked_probe(ModelConfig(N=16), corners, "the file")  # no mask: the corners are the probe


def test_a_test_file_made_with_another_probe_than_the_model_trains_with_is_warned_of(recwarn):
    """The model trains (and predicts) with the train file's probe; the test file's was never read."""
    data = simulate_splits(dataclasses.replace(TINY_SIMULATION, object_size=48))
    preflight.check_data(TRAINING, data["train"], data["test"], ("the train file", "the test file"))
    assert not [w for w in recwarn if "probe" in str(w.message)]
    other = dataclasses.replace(data["test"], probeGuess=data["test"].probeGuess * np.complex64(1j))
    with pytest.warns(UserWarning, match="the probe of the test file differs from the probe of the train file, which "
                                         "the model trains with: its patterns were made with another probe"):
        preflight.check_data(TRAINING, data["train"], other, ("the train file", "the test file"))


def test_a_batch_above_the_training_items_is_warned_of_naming_the_count(recwarn):
    preflight.check_pattern_count(dataclasses.replace(TRAINING, batch_size=20, val_fraction=0.0), 20, "the train file")
    assert not [w for w in recwarn if "batch_size" in str(w.message)]
    held_out = dataclasses.replace(TRAINING, batch_size=20, val_fraction=0.1)  # 2 of the 20 validate
    with pytest.warns(UserWarning, match="batch_size=20 is above the 18 training items of the train file"):
        preflight.check_pattern_count(held_out, 20, "the train file")
