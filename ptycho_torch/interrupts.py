"""SIGTERM and SIGINT as an exception, so that a run stops cleanly and says so in its exit status.

Schedulers (SLURM on time-out or cancel) send SIGTERM; a terminal sends SIGINT. Left to Python
and Lightning, SIGTERM ends a run with status 0 (Lightning's SIGTERMException is a SystemExit
with no code) and SIGINT with status 1. Inside ``signals_interrupt()`` either signal raises
``Interrupted`` where the program is, which unwinds through the atomic writers (their temporary
files are removed), Lightning's exception hooks (a checkpoint is written, see ``trainer``) and
the output-folder claim (released); the command then exits with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT), as a shell reports a process killed by that signal.
Within ``deferred()`` (an optimizer step) the exception waits for the end of the block, so a
checkpoint never holds half-updated weights. Further signals while unwinding are ignored.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A run stopped by a signal. BaseException, like KeyboardInterrupt: ``except Exception`` does not catch it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _State:
    active = False  # inside signals_interrupt()
    received: int | None = None  # the first signal
    raised = False
    defer_depth = 0
    forward: Callable[[int], None] | None = None  # passes the signal on to child processes (DDP ranks)


def _raise_once() -> None:
    if _State.received is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(_State.received)


def _handler(signum: int, frame) -> None:
    if _State.received is None:
        _State.received = signum
        if _State.forward is not None:
            _State.forward(signum)
    if _State.defer_depth == 0:
        _raise_once()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGINT raises ``Interrupted``; later ones are ignored."""
    previous = {signum: signal.signal(signum, _handler) for signum in HANDLED}
    _State.active, _State.received, _State.raised, _State.defer_depth = True, None, False, 0
    try:
        yield
    finally:
        _State.active, _State.forward = False, None
        for signum, old in previous.items():
            signal.signal(signum, old)


def reclaim(forward: Callable[[int], None] | None = None) -> None:
    """Put our handler back where a library replaced it, passing signals on through ``forward``.

    Lightning installs its own SIGTERM handler for the fit; under DDP it broadcasts from inside
    the handler, which deadlocks when the other rank sits in a different collective. Ours only
    records the signal (deferred) or raises, and ``forward`` stops the child ranks the same way.
    A no-op outside ``signals_interrupt``.
    """
    if _State.active:
        _State.forward = forward
        for signum in HANDLED:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an ``Interrupted`` until the block ends (a no-op outside ``signals_interrupt``).

    A block that fails after a signal arrived (a collective whose peer rank already stopped)
    ends as ``Interrupted`` too: the failure is a consequence of the stop, not a fault.
    """
    _State.defer_depth += 1
    try:
        yield
    except Exception as err:
        if _State.received is None or _State.raised:
            raise
        _State.raised = True
        raise Interrupted(_State.received) from err
    finally:
        _State.defer_depth -= 1
    if _State.defer_depth == 0:
        _raise_once()
