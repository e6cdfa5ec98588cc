"""The host line every speed benchmark prints beside its figures."""

from __future__ import annotations

import os

import pytest

from benchmarks import host
from benchmarks.host import FEATURES, cpu_description, host_line

INTEL = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480C
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx avx2 avx512f avx512_bf16 avx512_vnni
"""


@pytest.mark.parametrize("cpuinfo, expected", [
    (INTEL, "Intel(R) Xeon(R) Platinum 8480C; avx2 avx512f avx512_bf16 amx_bf16"),
    (AMD, "AMD EPYC 9R14; avx2 avx512f avx512_bf16 no-amx_bf16"),
    ("model name : Old\nflags : sse2 avx\n", "Old; no-avx2 no-avx512f no-avx512_bf16 no-amx_bf16"),
])
def test_the_cpu_is_named_with_the_features_that_set_its_rates(cpuinfo, expected):
    assert cpu_description(cpuinfo) == expected


def test_a_feature_is_matched_as_a_whole_flag_not_as_part_of_another():
    # "avx512f" must not be read into "avx512fp16", nor "amx_bf16" into "amx_bf16x"
    described = cpu_description("model name : X\nflags : avx512fp16 amx_bf16x avx2\n")
    assert described == "X; avx2 no-avx512f no-avx512_bf16 no-amx_bf16"


def test_without_cpuinfo_the_line_says_what_it_does_not_know(monkeypatch):
    monkeypatch.setattr(host.platform, "processor", lambda: "")
    assert cpu_description("") == "unknown CPU; features unknown"


def test_the_host_line_names_this_machine_its_usable_cores_and_torch():
    line = host_line()
    assert line.startswith("host: ")
    assert f"of {os.cpu_count()} cores usable" in line and "torch " in line
    assert all(feature in line for feature in FEATURES)  # present or "no-" each, on Linux
