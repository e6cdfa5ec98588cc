"""Process-wide CPU settings for a run: torch's intra-op threads, and denormal numbers flushed to zero.

Threads. torch starts with one thread per core of the machine. That is right on an idle machine
and badly wrong on a shared one: every parallel region waits for its slowest thread, and a thread
that shares a core with another busy process is descheduled half the time (an fno step measured
7-15x slower beside one busy process on two cores). The automatic count is

    min(affinity cores - cores other processes keep busy, usable cores, OMP_NUM_THREADS)
    // processes this run starts on the machine (DDP ranks),  at least 1

where the affinity cores are those of this process's affinity mask, and the usable cores the same
at most its cgroups' CPU quota (a container's ``--cpus``, Kubernetes' CPU limit) rounded to whole
cores, half up. Other processes' load on the mask's cores does not shrink the quota; threads beyond
the quota are throttled, and a parallel region waits for its throttled threads (measured here in
a cgroup of 1 core on 2: fno step 90 ms with one thread, 127 ms with two; hybrid 33 / 56 ms; of
1.25 cores: fno 86 / 85, hybrid 34 / 55; of 1.5 cores two threads win: fno 89 / 75, hybrid 37 / 33).
"Busy" is sampled from /proc/stat over a short interval when the run starts (this process's own
CPU time subtracted). Runs started together (a sweep's jobs) cannot see each
other yet and must be given their share explicitly (``num_threads``).

A run's load changes after it starts: another run begins beside it, or ends. ``ThreadAdapter``
re-chooses the automatic count of a single-process fit between its steps (and of the iterative
baseline between its iterations), from the same rule
applied to each second's load (read from /proc/stat without waiting: the fit's own work fills
the second): fewer threads when other processes take cores (a step with two threads beside one
busy process measured 2-4x slower than with one; 3-57x on another host), more when they leave
them free, each only after two seconds in a row agree, so that a burst of other work does not
make it flap. On a machine nobody else uses, the count never changes, so such runs still sum in
one order and repeat bit for bit; a count given explicitly is never changed.

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
from typing import NamedTuple

import torch

from ptycho_torch import cgroups
from ptycho_torch.config import PyTorchExecutionConfig, plain_int

SAMPLE_SECONDS = 0.1  # /proc/stat counts in 10 ms ticks: 10 ticks per core over the sample


class _Block(NamedTuple):
    count: int
    automatic: bool
    ceiling: int | None = None  # an automatic block's: the count of the explicit block it sits in


_chosen: list[_Block] = []  # the enclosing ``intra_op_threads`` contexts, innermost last


def _affinity() -> set[int]:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """The affinity mask's cores, at most the cgroups' CPU quota rounded half up (module docstring)."""
    cores = len(_affinity())
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota + 0.5)))


V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")  # where cgroup v1 mounts the cpu controller


def cpu_quota() -> float | None:
    """Cores' worth of CPU time per second that this process's cgroups allow: the tightest CFS
    bandwidth limit on its cgroup's path and above (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``; see ``cgroups``); None where there is none or none can be read."""
    limits = [(_v2_limit if level.version == 2 else _v1_limit)(level.directory)
              for level in cgroups.levels("cpu", V1_CPU_MOUNTS)]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _ratio(quota: str, period: str) -> float | None:
    """quota / period (whole microseconds, as the kernel writes them) for a set limit; None for
    'max' / -1 (none) or what does not parse."""
    quota_us, period_us = cgroups.whole_number(quota), cgroups.whole_number(period)
    return quota_us / period_us if quota_us and period_us else None


def _v2_limit(directory: str) -> float | None:
    fields = cgroups.read_fields(directory, "cpu.max")  # "<quota> <period>" or "max <period>"
    return _ratio(*fields) if fields is not None and len(fields) == 2 else None


def _v1_limit(directory: str) -> float | None:
    quota = cgroups.read_fields(directory, "cpu.cfs_quota_us")  # -1: no limit
    period = cgroups.read_fields(directory, "cpu.cfs_period_us")
    if quota is None or period is None or len(quota) != 1 or len(period) != 1:
        return None
    return _ratio(quota[0], period[0])


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


class LoadWindow:
    """Cores of this process's affinity mask that other processes keep busy, over the time since
    the window opened: ``others()`` reads it without waiting; ``roll()`` also opens the next window
    where this one ends (one read of /proc/stat for both)."""

    def __init__(self) -> None:
        self._cpus = _affinity()
        self.open()

    def _read(self) -> tuple[tuple[int, int] | None, float, float]:
        return _cpu_ticks(self._cpus), time.process_time(), time.monotonic()

    def open(self) -> None:
        self._opened = self._read()

    def seconds(self) -> float:
        return time.monotonic() - self._opened[2]

    def others(self) -> float | None:
        """Busy cores less this process's own CPU time, per second since ``open``; None where
        /proc/stat cannot be read or no tick has passed."""
        return self._others(self._read())

    def roll(self) -> float | None:
        """``others()``, and the next window opened at the same reading."""
        now = self._read()
        others, self._opened = self._others(now), now
        return others

    def _others(self, now: tuple[tuple[int, int] | None, float, float]) -> float | None:
        (ticks, own, start), (last, own_last, end) = self._opened, now
        if ticks is None or last is None or last[1] <= ticks[1]:
            return None
        others = (last[0] - ticks[0]) / os.sysconf("SC_CLK_TCK") - (own_last - own)
        return max(0.0, others / (end - start))


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores of this process's affinity mask that other processes kept busy over ``seconds``."""
    window = LoadWindow()
    time.sleep(seconds)
    others = window.others()
    return 0.0 if others is None else others


def environment_limit() -> int | None:
    """OMP_NUM_THREADS when it is a positive integer: the user's own cap."""
    return plain_int(os.environ.get("OMP_NUM_THREADS", "")) or None  # not a positive integer: no cap


def free_threads(others: float, processes: int = 1) -> int:
    """The automatic count for each of ``processes`` processes of one run when other processes keep
    ``others`` cores busy (module docstring)."""
    # the others' load is on the affinity mask's cores; a CPU quota caps this run whatever they do
    free = min(usable_cores(), len(_affinity()) - round(others))
    limit = environment_limit()
    if limit is not None:
        free = min(free, limit)
    return max(1, free // max(1, processes))


def auto_threads(processes: int = 1) -> int:
    """The automatic thread count for each of ``processes`` processes of one run, sampled now."""
    return free_threads(busy_cores(), processes)


@contextmanager
def intra_op_threads(num_threads: int, processes: int = 1, start: int | None = None) -> Iterator[int]:
    """torch's intra-op threads set for the block (0 = automatic), restored after it.

    Inside another such block an automatic count reuses the enclosing block's choice (one
    sample of the machine); ``start`` gives an automatic block its first count instead (a resumed
    run's); an explicit count always applies. ``rechoose_threads`` changes the count of the
    innermost automatic blocks; an automatic block inside one of them hands the new count back.
    The count of an explicit block is the most an automatic block inside it is re-chosen to
    (``thread_ceiling``): the caller's cap.
    """
    automatic = num_threads <= 0
    if not automatic:
        count = num_threads
    elif start is not None and start > 0:
        count = start
    else:
        count = _chosen[-1].count if _chosen else auto_threads(processes)
    before = torch.get_num_threads()
    parent = _chosen[-1] if _chosen else None
    ceiling = None if not automatic or parent is None else parent.ceiling if parent.automatic else parent.count
    _chosen.append(_Block(count, automatic, ceiling))
    try:
        _set_threads(count)
        yield count
    finally:
        _chosen.pop()
        inherited = automatic and _chosen and _chosen[-1].automatic
        torch.set_num_threads(_chosen[-1].count if inherited else before)


def _set_threads(count: int) -> None:
    torch.set_num_threads(count)
    warm_math_kernels()
    retain_freed_memory()


def in_automatic_block() -> bool:
    """Whether the innermost ``intra_op_threads`` block has an automatic count (one to re-choose)."""
    return bool(_chosen) and _chosen[-1].automatic


def thread_ceiling() -> int | None:
    """The most threads the innermost automatic block may be re-chosen to (None: no cap but the machine's)."""
    return _chosen[-1].ceiling if in_automatic_block() else None


def rechoose_threads(count: int) -> None:
    """A new count for the innermost automatic ``intra_op_threads`` blocks, from now on."""
    if not in_automatic_block():
        raise RuntimeError("rechoose_threads outside an automatic intra_op_threads block")
    _set_threads(count)
    for level in range(len(_chosen) - 1, -1, -1):
        if not _chosen[level].automatic:
            break
        _chosen[level] = _chosen[level]._replace(count=count)


class ThreadAdapter:
    """Re-chooses a single-process run's automatic count between its steps (module docstring).

    ``poll`` costs a clock read, and a read of /proc/stat once a window has lasted WINDOW_SECONDS."""

    WINDOW_SECONDS = 1.0
    CHANGE_AFTER = 2  # windows in a row that want another count (all fewer, or all more) before it changes

    def __init__(self, window: LoadWindow | None = None) -> None:
        self._window = window if window is not None else LoadWindow()
        self._wanted: list[int] = []  # the counts wanted by the windows in a row that wanted a change

    def poll(self) -> tuple[int, float] | None:
        """(new count, others' busy cores) where the count changed now, else None."""
        if self._window.seconds() < self.WINDOW_SECONDS:
            return None
        others = self._window.roll()
        if others is None:
            return None
        count = self.decide(others, torch.get_num_threads())
        if count is None:
            return None
        rechoose_threads(count)
        self._window.open()  # the next window measures the new count
        return count, others

    def decide(self, others: float, current: int) -> int | None:
        """The new count after a window in which others kept ``others`` cores busy, else None: once
        CHANGE_AFTER windows in a row want fewer threads than ``current`` (or all more), the count
        the latest of them wants."""
        wanted = free_threads(others)
        ceiling = thread_ceiling()
        if ceiling is not None:
            wanted = min(wanted, ceiling)
        same_way = self._wanted and (self._wanted[-1] < current) == (wanted < current)
        self._wanted = [] if wanted == current else [*self._wanted, wanted] if same_way else [wanted]
        if len(self._wanted) < self.CHANGE_AFTER:
            return None
        self._wanted = []
        return wanted


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


def run_threads(execution: PyTorchExecutionConfig, start: int | None = None) -> AbstractContextManager[int]:
    """``intra_op_threads`` for a run: its ``num_threads``, shared among the processes of its devices;
    ``start``: an automatic run's first count where it is known (a resumed run's)."""
    return intra_op_threads(execution.num_threads, processes=execution.devices, start=start)


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
