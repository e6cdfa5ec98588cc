"""Fixtures of the ptycho_torch unit tests."""

from __future__ import annotations

import pytest

from ptycho_torch import cpu_settings


@pytest.fixture
def machine(monkeypatch):
    """A pretend machine: ``machine(cores, busy)`` fixes what the sampling functions report."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, busy: float) -> None:
        monkeypatch.setattr(cpu_settings, "_affinity", lambda: set(range(cores)))
        monkeypatch.setattr(cpu_settings, "cpu_quota", lambda: None)
        monkeypatch.setattr(cpu_settings, "busy_cores", lambda seconds=cpu_settings.SAMPLE_SECONDS: busy)
    return set_machine
