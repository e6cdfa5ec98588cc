"""The late-contention benchmark: its phases, its table, and a timeline with a real busy process."""

from __future__ import annotations

import pytest

from benchmarks.bench_late_contention import SETTLE, Step, Summary, summary, table


def steps(*phases: tuple[float, float, float, int]) -> list[Step]:
    """(from, to, step seconds, threads) -> a step every 0.1 s."""
    return [Step(round(at * 0.1, 1), seconds, threads)
            for start, end, seconds, threads in phases for at in range(round(start * 10), round(end * 10))]


def test_the_phases_are_split_at_the_busy_process_start_and_end_with_settling_time():
    timeline = steps((0, 3, 0.05, 2),  # idle, two threads
                     (3, 5, 0.20, 2),  # the busy process joined: the count still two for two windows
                     (5, 11, 0.08, 1),  # dropped
                     (11, 14, 0.08, 1),  # it left: still one thread for its window and two free ones
                     (14, 20, 0.04, 2))
    result = summary(timeline, idle=3, busy=8)
    assert result == Summary(0.04, 0.08, (1,), pytest.approx(2.0), (2,))  # idle: 30 steps of 50 ms, 55 of 40
    kept = summary(steps((0, 3, 0.05, 2), (3, 11, 0.2, 2), (11, 16, 0.05, 2)), idle=3, busy=8)
    assert kept.dropped_after is None and kept.joined == 0.2 and kept.joined_threads == (2,)
    assert SETTLE > 3.0  # the joined phase skips up to three of the adapter's windows


def test_a_phase_without_steps_is_refused_rather_than_summarised():
    with pytest.raises(ValueError, match="no step between"):
        summary(steps((0, 3, 0.05, 2)), idle=3, busy=8)


def test_the_table_gives_each_count_its_slowdown_against_the_idle_step():
    runs = {False: Summary(0.05, 0.2, (2,), None, (2,)), True: Summary(0.05, 0.08, (1,), 1.2, (2,))}
    row = table({"fno gs1": runs}).splitlines()[-1]
    assert row == "| fno gs1 | 50.0 | 200.0 | 4.00x | 2 | 80.0 | 1.60x | 1 | 2.50x | 1.2 | 2 |"


def test_a_timeline_starts_the_busy_process_once_and_leaves_none_running(monkeypatch):
    import time

    from benchmarks import bench_late_contention
    from benchmarks.bench_throughput import busy_process

    class Sleeper:  # a 10 ms step: the phases fill with steps however loaded the machine is
        def step(self):
            time.sleep(0.01)
            return 0.01, 0.0, 0.0

    started = []
    monkeypatch.setattr(bench_late_contention, "busy_process", lambda: started.append(busy_process()) or started[-1])
    timeline = bench_late_contention.timeline(Sleeper(), True, idle=0.3, busy=0.6, after=0.3)
    assert len(started) == 1 and started[0].poll() is not None  # killed and reaped
    assert timeline[0].at < 0.3 < timeline[-1].at and any(0.3 <= step.at < 0.9 for step in timeline)
