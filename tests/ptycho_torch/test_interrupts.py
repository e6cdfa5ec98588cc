"""SIGTERM / SIGINT as ``Interrupted``: raised where the program is, held to the end of a deferred
block (an optimizer step), raised once, and the previous handlers restored afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from ptycho_torch.interrupts import Interrupted, deferred, reclaim, signals_interrupt


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered to this (main) thread before os.kill returns to Python code


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_interrupted_with_128_plus_its_number(signum, status):
    with pytest.raises(Interrupted) as caught:
        with signals_interrupt():
            send(signum)
            raise AssertionError("the signal did not interrupt")
    assert caught.value.exit_status == status and caught.value.signum == signum


def test_a_deferred_block_finishes_before_the_signal_is_raised():
    steps = []
    with pytest.raises(Interrupted):
        with signals_interrupt():
            with deferred():
                send(signal.SIGTERM)
                steps.append("rest of the step")
            steps.append("after the step")
    assert steps == ["rest of the step"]


def test_a_failure_inside_a_deferred_block_after_a_signal_is_reported_as_the_interruption():
    with pytest.raises(Interrupted) as caught:
        with signals_interrupt():
            with deferred():
                send(signal.SIGTERM)
                raise RuntimeError("the peer rank already stopped")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_failure_without_a_signal_stays_what_it_is():
    with pytest.raises(RuntimeError):
        with signals_interrupt():
            with deferred():
                raise RuntimeError("a real fault")


def test_only_the_first_signal_raises_so_cleanup_can_finish():
    cleaned = []
    with pytest.raises(Interrupted):
        with signals_interrupt():
            try:
                send(signal.SIGTERM)
            finally:
                send(signal.SIGINT)  # a second signal during cleanup
                cleaned.append(True)
    assert cleaned == [True]


def test_the_previous_handlers_come_back_and_forwarding_is_dropped():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    forwarded = []
    with pytest.raises(Interrupted):
        with signals_interrupt():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a library replaces our handler ...
            reclaim(forwarded.append)  # ... and we take it back, passing signals on
            send(signal.SIGTERM)
    assert forwarded == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
    reclaim(forwarded.append)  # outside signals_interrupt: nothing changes
    assert {s: signal.getsignal(s) for s in before} == before


def test_deferred_outside_signals_interrupt_is_a_plain_block():
    with deferred():
        value = 1
    assert value == 1


def test_a_failure_reported_as_the_interruption_is_the_only_interruption():
    """The cleanup after it (another optimizer step's worth of work, say) runs to its end."""
    cleanup = []
    with pytest.raises(Interrupted):
        with signals_interrupt():
            try:
                with deferred():
                    send(signal.SIGTERM)
                    raise RuntimeError("the peer rank already stopped")
            finally:
                with deferred():
                    cleanup.append("saved")
                cleanup.append("after")
    assert cleanup == ["saved", "after"]
