"""The automatic thread count re-chosen during a fit as other processes start or stop beside it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ptycho_torch import cpu_settings
from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.generators import tiny_model_config
from ptycho_torch.trainer import adapts_threads
from tests.helpers import ScriptedWindow


def test_the_count_changes_once_two_windows_in_a_row_want_it(machine):
    machine(2, 0.0)
    adapter = cpu_settings.ThreadAdapter(ScriptedWindow([0.0]))
    assert adapter.decide(1.0, 2) is None  # another process took a core: one window is not enough
    assert adapter.decide(1.0, 2) == 1
    assert adapter.decide(0.0, 1) is None
    assert adapter.decide(0.0, 1) == 2
    assert adapter.decide(0.62, 2) is None  # 2 threads beside 1 busy one: each thread gets 2/3 of a core
    assert adapter.decide(0.0, 2) is None  # a burst of one window, over: forgotten
    assert adapter.decide(0.62, 2) is None
    assert adapter.decide(0.7, 2) == 1
    assert adapter.decide(0.0, 1) is None
    assert adapter.decide(1.0, 1) is None  # busy again: the free window before does not count
    assert adapter.decide(0.0, 1) is None
    assert adapter.decide(0.0, 1) == 2
    assert adapter.decide(0.3, 2) is None and adapter.decide(0.3, 2) is None  # background noise costs no core


def test_windows_that_want_changes_the_opposite_way_do_not_add_up(machine):
    machine(4, 0.0)
    adapter = cpu_settings.ThreadAdapter(ScriptedWindow([0.0]))
    assert adapter.decide(3.0, 2) is None  # wants 1
    assert adapter.decide(0.0, 2) is None  # wants 4: a new run of windows
    assert adapter.decide(0.0, 2) == 4
    assert adapter.decide(1.0, 4) is None and adapter.decide(2.0, 4) == 2  # the latest window's count


def test_the_count_keeps_omp_num_threads_and_one_thread_at_least(machine, monkeypatch):
    machine(8, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    adapter = cpu_settings.ThreadAdapter(ScriptedWindow([0.0]))
    assert adapter.decide(0.0, 1) is None and adapter.decide(0.0, 1) == 3
    assert adapter.decide(9.0, 3) is None and adapter.decide(9.0, 3) == 1
    assert adapter.decide(8.0, 1) is None and adapter.decide(8.0, 1) is None


def test_poll_waits_for_a_whole_window_then_sets_the_run_count(machine):
    machine(2, 0.0)
    before = torch.get_num_threads()
    window = ScriptedWindow([1.0, 1.0, 0.0], seconds=0.4)
    adapter = cpu_settings.ThreadAdapter(window)
    with cpu_settings.intra_op_threads(0) as start:
        assert start == 2
        assert adapter.poll() is None and window.loads == [1.0, 1.0, 0.0]  # under a second: not even read
        window.elapsed = 1.0
        assert adapter.poll() is None  # one busy window
        assert adapter.poll() == (1, 1.0)
        assert torch.get_num_threads() == 1
        assert adapter.poll() is None  # the machine is free again: one window is not enough
        assert adapter.poll() == (2, 0.0)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_a_new_count_reaches_the_enclosing_automatic_blocks_and_stops_at_an_explicit_one(machine):
    machine(2, 0.0)
    with cpu_settings.intra_op_threads(1):  # explicit
        with cpu_settings.intra_op_threads(0) as run:  # the run's automatic blocks reuse its count
            assert run == 1
            with cpu_settings.intra_op_threads(0):
                cpu_settings.rechoose_threads(2)
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 2  # the inner block handed the new count back
            with cpu_settings.intra_op_threads(0) as later:  # e.g. the prediction after the fit
                assert later == 2
            with pytest.raises(ValueError):
                with cpu_settings.intra_op_threads(0):
                    cpu_settings.rechoose_threads(1)
                    raise ValueError("the fit failed")
            assert torch.get_num_threads() == 1  # the re-chosen count survives the failed inner block
        assert torch.get_num_threads() == 1  # the explicit block's own count
        with pytest.raises(RuntimeError, match="automatic"):
            cpu_settings.rechoose_threads(2)


def test_an_automatic_count_inside_an_explicit_block_is_never_raised_above_it(machine):
    machine(4, 0.0)
    adapter = cpu_settings.ThreadAdapter(ScriptedWindow([0.0]))
    with cpu_settings.intra_op_threads(2):  # the caller's cap
        with cpu_settings.intra_op_threads(0) as run:
            with cpu_settings.intra_op_threads(0):  # nested: the same cap
                assert run == 2 and cpu_settings.thread_ceiling() == 2
                assert adapter.decide(0.0, 2) is None and adapter.decide(0.0, 2) is None  # 4 free, 2 allowed
                assert adapter.decide(3.0, 2) is None and adapter.decide(3.0, 2) == 1  # fewer is still allowed
    with cpu_settings.intra_op_threads(0):
        assert cpu_settings.thread_ceiling() is None
        assert adapter.decide(0.0, 1) is None and adapter.decide(0.0, 1) == 4


def test_a_resumed_run_starts_from_its_recorded_count_without_sampling(machine, monkeypatch):
    machine(2, 0.0)
    monkeypatch.setattr(cpu_settings, "busy_cores", lambda seconds=0: pytest.fail("sampled"))
    with cpu_settings.intra_op_threads(0, start=3) as start:
        assert start == 3 == torch.get_num_threads()
    with cpu_settings.intra_op_threads(1, start=3) as explicit:
        assert explicit == 1


@pytest.mark.parametrize("recorded", [0, -1])
def test_a_recorded_count_below_one_is_no_count_and_the_machine_is_sampled(machine, recorded):
    machine(2, 1.0)  # one core free
    with cpu_settings.intra_op_threads(0, start=recorded) as start:
        assert start == 1 == torch.get_num_threads()


def test_the_cap_of_an_automatic_block_is_the_nearest_explicit_count_around_it(machine):
    machine(4, 0.0)
    with cpu_settings.intra_op_threads(0):  # the run's automatic block, uncapped
        assert cpu_settings.thread_ceiling() is None
        with cpu_settings.intra_op_threads(1):  # an explicit count inside it
            with cpu_settings.intra_op_threads(0) as inner:
                assert inner == 1 and cpu_settings.thread_ceiling() == 1


@pytest.mark.parametrize(("settings", "adapts"), [
    (dict(), True),
    (dict(num_threads=2), False),  # a count given is kept
    (dict(devices=2, strategy="ddp"), False),  # ranks would count each other as load
    (dict(num_nodes=2, strategy="ddp"), False),
    (dict(num_workers=1), False),  # its worker processes would read as other load
])
def test_only_automatic_single_process_fits_adapt(settings, adapts, machine, tmp_path):
    """The gate, and the Trainer's callback following it: where it does not adapt it opens no
    adapter even inside an automatic block (it keeps the record only)."""
    from ptycho_torch.trainer import AdaptiveThreads, build_trainer

    execution = PyTorchExecutionConfig(**settings)
    assert adapts_threads(execution) is adapts
    training = TrainingConfig(model=tiny_model_config("cnn"))
    (callback,) = [c for c in build_trainer(training, execution, tmp_path).callbacks if isinstance(c, AdaptiveThreads)]
    machine(2, 0.0)
    with cpu_settings.intra_op_threads(0):
        callback.on_train_start(None, None)
    assert (callback.adapter is not None) is adapts


@pytest.mark.parametrize(("num_threads", "expected_counts", "expected_changes"), [
    (0, [2, 1], [{"threads": 1, "others_busy": 1.0}]),
    (2, [2], []),
])
def test_a_fit_lowers_its_automatic_count_when_another_process_takes_a_core(
        machine, monkeypatch, tmp_path, tiny_data, num_threads, expected_counts, expected_changes):
    from ptycho_torch.training import train

    machine(2, 0.0)
    window = ScriptedWindow([0.0, 1.0])  # from the second window on, a busy core
    monkeypatch.setattr(cpu_settings, "LoadWindow", lambda: window)
    seen: list[int] = []

    class Counts(Callback):
        def on_train_batch_start(self, *args):
            if not seen or seen[-1] != torch.get_num_threads():
                seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    training = TrainingConfig(model=tiny_model_config("cnn"), epochs=2, batch_size=4, val_fraction=0.0)
    execution = PyTorchExecutionConfig(num_threads=num_threads, enable_progress_bar=False, logger_backend="none",
                                       enable_checkpointing=False)
    trained = train(training, execution, tiny_data[0], tmp_path, callbacks=[Counts()])
    assert seen == expected_counts
    assert [{k: change[k] for k in ("threads", "others_busy")} for change in trained.thread_changes] == expected_changes
    if expected_changes:
        assert trained.thread_changes[0]["step"] == 3  # after the third step: the second busy window
    assert torch.get_num_threads() == before


def test_a_resumed_fit_carries_the_record_of_its_earlier_changes(machine, monkeypatch, tmp_path, tiny_data):
    """The change recorded before a checkpoint is still in the record after resumes, also through a
    resume that does not adapt (an explicit count), and later changes are added to it."""
    from ptycho_torch.resume import last_checkpoint
    from ptycho_torch.training import train

    machine(2, 0.0)
    training = TrainingConfig(model=tiny_model_config("cnn"), epochs=2, batch_size=4, val_fraction=0.0)

    def fit(epochs: int, loads: list[float], num_threads: int = 0, start: int | None = None):
        window = ScriptedWindow(loads)
        monkeypatch.setattr(cpu_settings, "LoadWindow", lambda: window)
        execution = PyTorchExecutionConfig(num_threads=num_threads, enable_progress_bar=False, logger_backend="none")
        with cpu_settings.intra_op_threads(num_threads, start=start):  # a resumed run starts at a given count
            return train(dataclasses.replace(training, epochs=epochs), execution, tiny_data[0], tmp_path,
                         resume_from=last_checkpoint(tmp_path) if epochs > 2 else None).thread_changes

    first = fit(2, [0.0, 1.0])
    assert [change["threads"] for change in first] == [1]
    assert fit(3, [1.0], start=1) == first  # one thread beside the busy core: nothing new
    assert fit(4, [0.0], num_threads=2) == first  # an explicit count: not adapted, the record carried on
    later = fit(5, [0.0], start=1)  # the machine free again: back to two threads
    assert later[:1] == first and [change["threads"] for change in later[1:]] == [2]
    assert later[1]["step"] > first[0]["step"]


def test_a_trainer_fitted_outside_an_automatic_block_keeps_the_callers_count(machine, monkeypatch, tmp_path, tiny_data):
    from ptycho_torch.datamodule import GridLinesDataModule
    from ptycho_torch.trainer import AdaptiveThreads, build_trainer
    from ptycho_torch.training import build_module

    machine(2, 0.0)
    window = ScriptedWindow([1.0])  # every window finds a busy core
    monkeypatch.setattr(cpu_settings, "LoadWindow", lambda: window)
    training = TrainingConfig(model=tiny_model_config("cnn"), epochs=1, batch_size=4, val_fraction=0.0)
    execution = PyTorchExecutionConfig(enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)
    trainer = build_trainer(training, execution, tmp_path)
    (adaptive,) = [callback for callback in trainer.callbacks if isinstance(callback, AdaptiveThreads)]
    with cpu_settings.intra_op_threads(2):  # the caller's own explicit count
        trainer.fit(build_module(training, tiny_data[0].probeGuess), datamodule=GridLinesDataModule(
            tiny_data[0], training, execution))
        assert torch.get_num_threads() == 2
    assert adaptive.adapter is None and adaptive.changes == []


def test_rolling_a_window_opens_the_next_one_at_the_same_reading(monkeypatch):
    """Three readings serve two back-to-back windows: in the first this process kept a core busy,
    in the next another process did (measured from the first reading, it would be half a core)."""
    ticks = iter([(0, 1000), (100, 1200), (200, 1400)])  # busy ticks at 100 Hz: a core-second in each
    own = iter([5.0, 6.0, 6.0])  # this process: a second of its own, then nothing
    clock = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(cpu_settings, "_cpu_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(cpu_settings.time, "process_time", lambda: next(own))
    monkeypatch.setattr(cpu_settings.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(cpu_settings.os, "sysconf", lambda name: 100)
    window = cpu_settings.LoadWindow()
    assert window.roll() == pytest.approx(0.0)
    assert window.others() == pytest.approx(1.0)  # a fourth reading would have raised StopIteration
