"""Process-wide CPU settings for a run: torch's intra-op threads, and denormal numbers flushed to zero.

Threads. torch starts with one thread per core of the machine. That is right on an idle machine
and badly wrong on a shared one: every parallel region waits for its slowest thread, and a thread
that shares a core with another busy process is descheduled half the time (an fno step measured
7-15x slower beside one busy process on two cores). The automatic count is

    min(cores in this process's affinity mask - cores other processes keep busy, OMP_NUM_THREADS)
    // processes this run starts on the machine (DDP ranks),  at least 1

where "busy" is sampled from /proc/stat over a short interval when the run starts (this
process's own CPU time subtracted). Runs started together (a sweep's jobs) cannot see each
other yet and must be given their share explicitly (``num_threads``).

Denormals. Arithmetic on subnormal floats (below 1.2e-38 in float32) takes a slow path on x86;
repeated steps on one batch drove a hybrid gridsize-2 step from 26 ms to 50 ms through them.
Flushing them to zero changes only values that small, as TensorFlow does on CPUs by default.
Both settings are restored when the block ends.

Warm math kernels. With two or more threads, the first call in a process of torch's vectorized
math functions (tanh, exp, log, sqrt, sin, cos, erf, ...: the MKL VML family) sometimes returns
results that differ in the last bits from every later call (measured: 9 of 32 first calls of
tanh / exp / sqrt / erf; never with one thread, never after a call on a tensor large enough for
every thread to take part). A training run's first step then differed from one process to the
next, and with it the whole run (3 distinct histories in 6 identical runs). ``intra_op_threads``
therefore calls each of them once, on every thread, whenever it sets more threads than before.

Freed memory kept for reuse. glibc's malloc returns large freed blocks to the system (blocks
above its adaptive mmap threshold, and a heap top above twice that), so the next tensor of that
size is fresh memory whose every page faults on first touch: 8,000-20,000 page faults per fno
forward of 64 patterns, 2,000-2,800 per fno training step, 4,064 per cnn forward (or none: it
depends on where the address space puts the heap), measured here; they cost a quarter of a
reconstruction's time. ``retain_freed_memory`` fixes glibc's thresholds once per
process (blocks up to 32 MiB, glibc's largest, come from the heap; up to 512 MiB of free heap top
is kept), after which those counts are 0. Like the warm-up, it is a process-wide setting that
``intra_op_threads`` applies and does not undo; it is left alone where the user tuned malloc
(MALLOC_* variables or GLIBC_TUNABLES) and where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from ptycho_torch.config import PyTorchExecutionConfig, plain_int

SAMPLE_SECONDS = 0.1  # /proc/stat counts in 10 ms ticks: 10 ticks per core over the sample
_chosen: list[int] = []  # the counts chosen by the enclosing ``intra_op_threads`` contexts


def _affinity() -> set[int]:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    return len(_affinity())


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) ticks summed over ``cpus`` from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores of this process's affinity mask that other processes kept busy over ``seconds``."""
    cpus = _affinity()
    first, own_first, start = _cpu_ticks(cpus), time.process_time(), time.monotonic()
    time.sleep(seconds)
    last, own_last, elapsed = _cpu_ticks(cpus), time.process_time(), time.monotonic() - start
    if first is None or last is None or last[1] <= first[1]:
        return 0.0
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    others = (last[0] - first[0]) / ticks_per_second - (own_last - own_first)
    return max(0.0, others / elapsed)


def environment_limit() -> int | None:
    """OMP_NUM_THREADS when it is a positive integer: the user's own cap."""
    return plain_int(os.environ.get("OMP_NUM_THREADS", "")) or None  # not a positive integer: no cap


def auto_threads(processes: int = 1) -> int:
    """The automatic thread count for each of ``processes`` processes of one run (module docstring)."""
    free = usable_cores() - round(busy_cores())
    limit = environment_limit()
    if limit is not None:
        free = min(free, limit)
    return max(1, free // max(1, processes))


@contextmanager
def intra_op_threads(num_threads: int, processes: int = 1) -> Iterator[int]:
    """torch's intra-op threads set for the block (0 = automatic), restored after it.

    Inside another such block an automatic count reuses the enclosing block's choice (one
    sample of the machine); an explicit count always applies.
    """
    count = num_threads if num_threads > 0 else (_chosen[-1] if _chosen else auto_threads(processes))
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    warm_math_kernels()
    retain_freed_memory()
    _chosen.append(count)
    try:
        yield count
    finally:
        _chosen.pop()
        torch.set_num_threads(before)


# torch's elementwise float math functions; the first-call difference was measured for tanh, exp, log,
# sqrt, sin, cos and erf, and the rest of the family is warmed alike (11 ms in all, once per process)
WARMED_FUNCTIONS = ("acos", "asin", "atan", "cos", "cosh", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10",
                    "log1p", "log2", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "lgamma", "rsqrt", "reciprocal",
                    "ceil", "floor", "round", "neg", "abs", "atanh", "digamma")
_warmed_threads = 0


def warm_math_kernels() -> None:
    """One call of each WARMED_FUNCTIONS on every current thread, results discarded (module docstring)."""
    global _warmed_threads
    count = torch.get_num_threads()
    if count <= _warmed_threads:
        return
    for dtype in (torch.float32, torch.float64):
        # inside every function's domain; long enough that every thread gets chunks of torch's grain size
        values = torch.linspace(0.1, 0.9, max(1 << 17, count << 16), dtype=dtype)
        for name in WARMED_FUNCTIONS:
            getattr(torch, name)(values)
    _warmed_threads = count


# glibc's mallopt parameters (malloc.h) and the values set (module docstring)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc refuses more on 64-bit systems
TRIM_THRESHOLD_BYTES = 512 << 20
_memory_retained = False


def malloc_tuned_by_user() -> bool:
    """Whether the environment sets glibc malloc's own tunables."""
    return (any(name.startswith("MALLOC_") for name in os.environ)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name: not glibc
        return None
    return ctypes.CDLL(None)


def retain_freed_memory() -> bool:
    """glibc keeps freed blocks for reuse (module docstring); whether this process now does."""
    global _memory_retained
    if _memory_retained or malloc_tuned_by_user():
        return _memory_retained
    libc = _glibc()
    if libc is None:
        return False
    # mallopt answers 1 on success; the mmap threshold first: setting it ends glibc's adaptive choice
    _memory_retained = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    return _memory_retained


def run_threads(execution: PyTorchExecutionConfig) -> AbstractContextManager[int]:
    """``intra_op_threads`` for a run: its ``num_threads``, shared among the processes of its devices."""
    return intra_op_threads(execution.num_threads, processes=execution.devices)


def denormals_flushed() -> bool:
    """Whether float32 results below the normal range are flushed to zero in this thread now."""
    return float(torch.tensor([1e-30]) * 1e-9) == 0.0  # 1e-39 is subnormal in float32


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Subnormal float results are flushed to zero inside the block (where the CPU supports it)."""
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
