"""The intra-op thread count: automatic choice from free cores, explicit counts, restored afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptycho_torch import cgroups, cpu_settings


@pytest.mark.parametrize(("cores", "busy", "processes", "expected"), [
    (2, 0.0, 1, 2),  # idle machine: every core
    (2, 0.9, 1, 1),  # one core kept busy by another process: the other one
    (2, 0.3, 1, 2),  # a little background noise does not cost a core
    (8, 3.4, 1, 5),
    (8, 0.0, 2, 4),  # two DDP ranks share the free cores
    (8, 3.0, 2, 2),
    (2, 2.0, 1, 1),  # nothing free: still one thread
    (2, 0.0, 4, 1),  # more ranks than cores: one each
    (2, 0.0, 0, 2),  # no process count: counted as one, never a division by zero
])
def test_auto_threads_are_the_free_cores_shared_among_the_run_processes(machine, cores, busy, processes, expected):
    machine(cores, busy)
    assert cpu_settings.auto_threads(processes) == expected


def test_auto_threads_respect_omp_num_threads(machine, monkeypatch):
    machine(8, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_settings.auto_threads() == 3
    for not_a_cap in ("not a number", "\u00b2", "9" * 5000, "0"):  # '²' passes isdigit, int() refuses it
        monkeypatch.setenv("OMP_NUM_THREADS", not_a_cap)
        assert cpu_settings.auto_threads() == 8, not_a_cap


def pretend_cgroups(monkeypatch, tmp_path, membership: str | bytes, files: dict[str, str | bytes]) -> None:
    """/proc/self/cgroup reads ``membership``; the cgroup filesystem holds ``files`` (paths under its
    root), with the unified hierarchy at the root unless a file lies under 'unified' (v1 beside it)."""
    def write(path: Path, content: str | bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    write(tmp_path / "proc_cgroup", membership)
    root = tmp_path / "cgroup"
    root.mkdir()
    if not any(name.startswith("unified/") for name in files):
        write(root / "cgroup.controllers", "cpu memory\n")
    for name, content in files.items():
        write(root / name, content)
    monkeypatch.setattr(cgroups, "PROC_CGROUP", str(tmp_path / "proc_cgroup"))
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(root))


@pytest.mark.parametrize(("membership", "files", "quota"), [
    # cgroup v2: the process's own cgroup, and a tighter limit above it
    ("0::/jobs/run\n", {"jobs/run/cpu.max": "150000 100000\n", "jobs/cpu.max": "max 100000\n"}, 1.5),
    ("0::/jobs/run\n", {"jobs/run/cpu.max": "max 100000\n", "jobs/cpu.max": "50000 100000\n"}, 0.5),
    ("0::/jobs/run\n", {"jobs/run/cpu.max": "150000 100000\n", "jobs/cpu.max": "50000 100000\n"}, 0.5),
    # a container's view: its path is not under the mount, whose root is the container's cgroup
    ("0::/kubepods/pod1/abc\n", {"cpu.max": "250000 100000\n"}, 2.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # no limit
    # cgroup v1, in either mount name, -1 for no limit at a level
    ("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
     {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
      "cpu,cpuacct/docker/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"}, 1.0),
    ("1:cpu:/q\n", {"cpu/q/cpu.cfs_quota_us": "150000\n", "cpu/q/cpu.cfs_period_us": "100000\n"}, 1.5),
    ("1:cpu:/q\n", {"cpu/q/cpu.cfs_quota_us": "-1\n", "cpu/q/cpu.cfs_period_us": "100000\n"}, None),
    # what cannot be read or does not parse is no limit
    ("0::/a\n", {"a/cpu.max": "lots 100000\n"}, None),
    ("0::/a\n", {"a/cpu.max": "150000\n"}, None),
    ("0::/a\n", {"a/cpu.max": "150000 0\n"}, None),
    ("0::/a\n", {"a/cpu.max": "inf 100000\n"}, None),
    ("0::/a\n", {"a/cpu.max": "1e5 100000\n"}, None),  # the kernel writes whole microseconds
    ("not a cgroup line\n", {}, None),
    ("", {}, None),
    # v1 with the unified hierarchy beside it (a hybrid system): the v2 line is read there
    ("4:cpu:/\n0::/a\n", {"unified/cgroup.controllers": "\n", "unified/a/cpu.max": "50000 100000\n"}, 0.5),
    # the cpu controller mounted with others under their joint name
    ("3:cpuset,cpu:/a\n", {"cpuset,cpu/a/cpu.cfs_quota_us": "50000\n", "cpuset,cpu/a/cpu.cfs_period_us": "100000\n"},
     0.5),
    # a cgroup outside its namespace's root: its levels are not in this view (the root is another's)
    ("0::/../sib\n", {"cpu.max": "50000 100000\n"}, None),
    # a cgroup name (or file) that is not UTF-8: no crash, no limit read from it
    (b"4:cpu:/r\xff\n", {}, None),
    ("0::/a\n", {"a/cpu.max": b"\xff 1\n"}, None),
    (b"4:cpu:/r\xff\n0::/a\n", {"a/cpu.max": "150000 100000\n"}, 1.5),
])
def test_the_cpu_quota_is_the_tightest_cgroup_limit_on_the_process_path(monkeypatch, tmp_path, membership, files, quota):
    pretend_cgroups(monkeypatch, tmp_path, membership, files)
    assert cpu_settings.cpu_quota() == (None if quota is None else pytest.approx(quota))


@pytest.mark.parametrize(("cores", "quota", "busy", "expected"), [
    (64, 4.0, 40.0, 4),  # a container of 4 cores on a host whose other tenants keep 40 busy: its 4
    (64, 4.0, 62.0, 2),  # ... unless the others leave fewer than that
    (2, 1.0, 0.0, 1),
    (2, 1.5, 1.0, 1),
])
def test_other_load_on_the_host_does_not_shrink_a_cpu_quota(monkeypatch, cores, quota, busy, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_settings, "_affinity", lambda: set(range(cores)))
    monkeypatch.setattr(cpu_settings, "cpu_quota", lambda: quota)
    assert cpu_settings.free_threads(busy) == expected


@pytest.mark.parametrize(("membership", "files", "headroom"), [
    ("0::/jobs/run\n", {"jobs/run/memory.max": "1000\n", "jobs/run/memory.current": "400\n"}, 600),
    ("0::/jobs/run\n", {"jobs/run/memory.max": "max\n", "jobs/run/memory.current": "400\n",
                        "jobs/memory.max": "900\n", "jobs/memory.current": "800\n"}, 100),  # the tighter above
    ("0::/a\n", {"a/memory.max": "100\n", "a/memory.current": "300\n"}, 0),  # over its limit: none left
    ("0::/a\n", {"a/memory.max": "max\n", "a/memory.current": "300\n"}, None),
    ("0::/a\n", {"a/memory.max": "1000\n"}, None),  # no usage to subtract
    ("0::/a\n", {"a/memory.max": "1000 5\n", "a/memory.current": "400\n"}, None),  # not one field: unreadable
    ("0::/a\n", {"a/memory.max": "1000\n", "a/memory.current": "400 5\n"}, None),
    ("3:memory:/d\n", {"memory/d/memory.limit_in_bytes": "2000\n", "memory/d/memory.usage_in_bytes": "500\n"}, 1500),
    # page cache the kernel can drop is not used memory (files written or read count in the usage)
    ("0::/a\n", {"a/memory.max": "1000\n", "a/memory.current": "900\n",
                 "a/memory.stat": "anon 100\nfile 800\ninactive_file 700\nactive_file 100\n"}, 800),
    ("3:memory:/d\n", {"memory/d/memory.limit_in_bytes": "2000\n", "memory/d/memory.usage_in_bytes": "1500\n",
                       "memory/d/memory.stat": "cache 1400\ninactive_file 9\ntotal_inactive_file 1200\n"}, 1700),
    ("0::/a\n", {"a/memory.max": "1000\n", "a/memory.current": "900\n", "a/memory.stat": "inactive_file x\n"},
     100),  # unreadable: nothing subtracted
    ("3:memory:/d\n", {"memory/d/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
                       "memory/d/memory.usage_in_bytes": "500\n"}, None),
    ("3:cpu:/d\n", {"memory/d/memory.limit_in_bytes": "2000\n", "memory/d/memory.usage_in_bytes": "500\n"}, None),
    ("", {}, None),
])
def test_the_memory_headroom_is_the_least_room_under_a_cgroup_limit(monkeypatch, tmp_path, membership, files,
                                                                     headroom):
    pretend_cgroups(monkeypatch, tmp_path, membership, files)
    assert cgroups.memory_headroom() == headroom


def test_no_cgroup_membership_file_is_no_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(cgroups, "PROC_CGROUP", str(tmp_path / "absent"))
    assert cpu_settings.cpu_quota() is None


@pytest.mark.parametrize(("quota", "cores", "usable"), [
    (None, 2, 2),
    (1.0, 2, 1),  # a container of one core on two: one thread (two measured 1.4-1.7x slower)
    (1.25, 2, 1),
    (1.5, 2, 2),  # half up: two threads measured 1.1-1.2x faster in a 1.5-core cgroup
    (2.5, 4, 3),  # half up, not to even
    (0.3, 2, 1),  # a fraction of a core: still one thread
    (8.0, 2, 2),  # a quota above the affinity mask: the mask
    (3.0, 8, 3),
])
def test_usable_cores_are_the_affinity_mask_within_the_cpu_quota(monkeypatch, quota, cores, usable):
    monkeypatch.setattr(cpu_settings, "cpu_quota", lambda: quota)
    monkeypatch.setattr(cpu_settings, "_affinity", lambda: set(range(cores)))
    assert cpu_settings.usable_cores() == usable


def test_the_automatic_count_stays_within_the_cpu_quota(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_settings, "_affinity", lambda: set(range(4)))
    monkeypatch.setattr(cpu_settings, "busy_cores", lambda seconds=cpu_settings.SAMPLE_SECONDS: 0.0)
    pretend_cgroups(monkeypatch, tmp_path, "0::/run\n", {"run/cpu.max": "200000 100000\n"})
    assert cpu_settings.auto_threads() == 2
    adapter = cpu_settings.ThreadAdapter()  # re-chosen within it too: from one thread up to two, not four
    assert [adapter.decide(0.0, 1) for _ in range(adapter.CHANGE_AFTER)][-1] == 2


def test_busy_cores_exclude_this_process_own_work(monkeypatch):
    """Ticks spent by this process (its own threads, startup) are not other work."""
    readings = iter([(1000, 5000), (1100, 5020)])  # 100 busy ticks over the sample, i.e. 1 s at 100 Hz
    clock = iter([10.0, 11.0])  # ... all of it this process's own CPU time
    monkeypatch.setattr(cpu_settings, "_cpu_ticks", lambda cpus: next(readings))
    monkeypatch.setattr(cpu_settings.time, "process_time", lambda: next(clock))
    monkeypatch.setattr(cpu_settings.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(cpu_settings.os, "sysconf", lambda name: 100)
    monotonic = iter([0.0, 1.0])
    monkeypatch.setattr(cpu_settings.time, "monotonic", lambda: next(monotonic))
    assert cpu_settings.busy_cores() == pytest.approx(0.0)


@pytest.mark.parametrize(("opened", "now", "others"), [
    ((100, 1000), (100, 1000), None),  # no tick counted since the window opened: nothing known
    ((100, 1000), (100, 1200), 0.0),  # idle ticks only: known to be free
    ((100, 1000), (200, 1200), 1.0),  # a core-second of busy ticks at 100 Hz, none of them this process's
    (None, (100, 1000), None),  # /proc/stat unreadable when the window opened
    ((100, 1000), None, None),  # ... or now
], ids=["no-tick", "idle", "one-core", "unreadable-at-open", "unreadable-now"])
def test_a_window_knows_the_load_only_once_a_tick_was_counted_at_both_ends(monkeypatch, opened, now, others):
    readings = iter([opened, now])
    monkeypatch.setattr(cpu_settings, "_cpu_ticks", lambda cpus: next(readings))
    monkeypatch.setattr(cpu_settings.time, "process_time", lambda: 5.0)  # this process did nothing
    monotonic = iter([0.0, 1.0])
    monkeypatch.setattr(cpu_settings.time, "monotonic", lambda: next(monotonic))
    monkeypatch.setattr(cpu_settings.os, "sysconf", lambda name: 100)
    seen = cpu_settings.LoadWindow().others()
    assert seen == (None if others is None else pytest.approx(others))


def test_a_busy_process_is_seen_as_a_busy_core():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        seen = max(cpu_settings.busy_cores(0.3) for _ in range(3))  # other load may add, never subtract
    finally:
        busy.kill()
        busy.wait()
    assert seen >= 0.6


def test_explicit_count_applies_inside_and_the_previous_count_returns_after():
    before = torch.get_num_threads()
    with cpu_settings.intra_op_threads(1) as count:
        assert count == 1 and torch.get_num_threads() == 1
        with cpu_settings.intra_op_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_automatic_count_inside_a_run_reuses_the_run_choice(machine):
    machine(2, 0.0)
    with cpu_settings.intra_op_threads(0) as outer:
        machine(2, 1.0)  # the machine got busier: an inner automatic block does not sample again
        with cpu_settings.intra_op_threads(0) as inner:
            assert inner == outer == 2 == torch.get_num_threads()


def test_count_is_restored_when_the_block_raises():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with cpu_settings.intra_op_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_denormals_are_flushed_inside_the_block_and_the_previous_mode_returns_after():
    tiny = torch.tensor([1e-30])
    before = cpu_settings.denormals_flushed()
    with cpu_settings.flushed_denormals():
        assert float(tiny * 1e-9) == 0.0
    assert cpu_settings.denormals_flushed() == before
    torch.set_flush_denormal(False)
    try:
        assert float(tiny * 1e-9) > 0.0  # subnormal results survive outside the block
        with cpu_settings.flushed_denormals():
            assert cpu_settings.denormals_flushed()
        assert not cpu_settings.denormals_flushed()
    finally:
        torch.set_flush_denormal(before)


def test_training_flushes_denormals_and_restores_the_mode(tmp_path, tiny_data):
    from lightning.pytorch.callbacks import Callback

    from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
    from ptycho_torch.generators import tiny_model_config
    from ptycho_torch.training import train

    seen = []

    class Probe(Callback):
        def on_train_batch_start(self, *args):
            seen.append(cpu_settings.denormals_flushed())

    training = TrainingConfig(model=tiny_model_config("cnn"), epochs=1, batch_size=4, val_fraction=0.0)
    execution = PyTorchExecutionConfig(enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)
    torch.set_flush_denormal(False)
    train(training, execution, tiny_data[0], tmp_path, callbacks=[Probe()])
    assert seen and all(seen)
    assert not cpu_settings.denormals_flushed()


@pytest.mark.parametrize(("num_threads", "devices", "expected"), [(0, 1, 4), (0, 2, 2), (3, 1, 3), (3, 2, 3)])
def test_a_run_uses_its_num_threads_or_shares_the_free_cores_among_its_devices(machine, num_threads, devices,
                                                                               expected):
    from ptycho_torch.config import PyTorchExecutionConfig

    machine(4, 0.0)
    execution = PyTorchExecutionConfig(num_threads=num_threads, devices=devices, strategy="ddp" if devices > 1 else "auto")
    with cpu_settings.run_threads(execution) as count:
        assert count == expected == torch.get_num_threads()


FIRST_CALLS = """
import torch
from ptycho_torch.cpu_settings import intra_op_threads
x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0)) + 0.1
with intra_op_threads(2):
    names = ("tanh", "exp", "sqrt", "erf", "log", "sin", "cos")
    firsts = [getattr(torch, name)(x) for name in names]
    print(sum(not torch.equal(first, getattr(torch, name)(x)) for first, name in zip(firsts, names)))
"""


def test_the_first_math_call_of_a_process_equals_every_later_one():
    """Without the warm-up, 2 threads made about a quarter of these first calls differ in the last
    bits (a run's first step then differed between processes); each process is fresh."""
    differing = [int(subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True,
                                    timeout=120, check=True).stdout) for _ in range(6)]  # one at a time: both threads run
    assert differing == [0] * 6


def test_math_kernels_are_warmed_on_every_thread_once(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_settings, "_warmed_threads", 0)
    monkeypatch.setattr(torch, "tanh", lambda values: calls.append(len(values)))
    with cpu_settings.intra_op_threads(2):
        with cpu_settings.intra_op_threads(1):
            pass
    assert calls == [1 << 17, 1 << 17]  # float32 and float64, long enough for 2 threads; not again for 1
    with cpu_settings.intra_op_threads(3):
        pass
    assert calls[2:] == [3 << 16, 3 << 16]  # more threads than warmed: warmed again


PAGE_FAULTS_PER_FORWARD = """
import resource, statistics
import torch
from ptycho_torch.config import ModelConfig
from ptycho_torch.cpu_settings import intra_op_threads
from ptycho_torch.generators import build_generator

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

generator = build_generator(ModelConfig(architecture="fno")).eval()
patterns = torch.rand(64, 32, 32, generator=torch.Generator().manual_seed(0))
counts = []
with intra_op_threads(1), torch.no_grad():
    for _ in range(6):  # the heap grows to the forward's peak
        generator(patterns)
    for _ in range(6):
        before = faults()
        generator(patterns)
        counts.append(faults() - before)
print(statistics.median(counts))
"""


def _faults_per_forward(**environment: str) -> float:
    """Median page faults of a warm fno forward on 64 patterns, in a fresh process."""
    import os

    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")} | environment
    return float(subprocess.run([sys.executable, "-c", PAGE_FAULTS_PER_FORWARD], capture_output=True, text=True,
                                timeout=120, check=True, env=env).stdout)


@pytest.mark.skipif(cpu_settings._glibc() is None, reason="malloc thresholds are glibc's")
def test_freed_memory_is_reused_instead_of_faulting_fresh_pages():
    """With glibc's adaptive thresholds an fno forward faulted 6,000-12,000 fresh pages (its freed
    activations went back to the system; since the spectral blocks sum in place, in some address
    layouts none, as the cnn's 4,000 or none); with the thresholds fixed, a warm forward faults none."""
    assert _faults_per_forward() == 0
    # the control, not left to the address layout: the user's own threshold (glibc's starting one,
    # which the adaptive rule would raise) is left alone, and then every forward faults
    assert _faults_per_forward(MALLOC_MMAP_THRESHOLD_="131072") > 1000


@pytest.mark.skipif(cpu_settings._glibc() is None, reason="malloc thresholds are glibc's")
def test_malloc_tunables_of_the_user_are_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_settings, "_memory_retained", False)
    monkeypatch.setattr(cpu_settings, "_glibc", lambda: type("libc", (), {"mallopt": lambda *a: calls.append(a) or 1}))
    for name, value in (("MALLOC_ARENA_MAX", "2"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert cpu_settings.retain_freed_memory() is False
    assert calls == []
    assert cpu_settings.retain_freed_memory() is True
    assert calls == [(cpu_settings.M_MMAP_THRESHOLD, 32 << 20), (cpu_settings.M_TRIM_THRESHOLD, 512 << 20)]
