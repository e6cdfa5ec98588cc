"""The machine a benchmark ran on, printed beside its figures.

The host behind a machine of the same size can change from one day to the next: this project's
two-core machine has been an Intel CPU with AMX bf16 matrix units (float32 1024^3 matmul 290-416
GFLOP/s, bf16 1.3-1.5 TFLOP/s) and an AMD EPYC with AVX-512 bf16 instructions but no matrix units
(float32 190-200 GFLOP/s, bf16 410-430). Step times from two hosts do not compare; their ratios to
the in-process matmul do. So every benchmark names the CPU and the features that decide its rates.
"""

from __future__ import annotations

import os
import platform

import torch

from ptycho_torch.cpu_settings import usable_cores

# vector and matrix instructions that set the float32 and bf16 rates of oneDNN and MKL
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _field(cpuinfo: str, name: str) -> str | None:
    """The first ``name : value`` line's value in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == name:
            return value.strip()
    return None


def cpu_description(cpuinfo: str) -> str:
    """'MODEL; avx2 avx512f no-avx512_bf16 no-amx_bf16' from /proc/cpuinfo's text ('unknown CPU'
    and no features where it says nothing of them)."""
    model = _field(cpuinfo, "model name") or platform.processor() or "unknown CPU"
    flags = _field(cpuinfo, "flags")
    if flags is None:
        return f"{model}; features unknown"
    present = set(flags.split())
    return f"{model}; " + " ".join(name if name in present else f"no-{name}" for name in FEATURES)


def host_line() -> str:
    """One line: the CPU and its features, the cores this process may use, torch's version."""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = cpu_description(info.read())
    except OSError:  # not Linux
        cpu = cpu_description("")
    return f"host: {cpu}; {usable_cores()} of {os.cpu_count()} cores usable; torch {torch.__version__}"
