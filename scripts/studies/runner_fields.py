"""Declaring a runner setting once: its default, route, CLI flag and help text together.

``setting(...)`` returns a dataclass field whose metadata carries a ``Route``. The runner's
parser, the compare wrapper's ``--torch-*`` flags and ``setup_torch_configs`` are all derived
from these declarations, so a setting cannot be parsed in one place and dropped in another.
Torch-free: imported by ``--help`` and the contract tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The configs a runner setting can reach; "runner" fields are used by the runner itself.
DESTINATIONS = ("model", "training", "execution", "simulation")
SHARED = ("training", "execution")


@dataclass(frozen=True)
class Route:
    to: tuple[str, ...]  # destinations in DESTINATIONS; empty = runner-only
    help: str
    flag: str | None = None  # CLI flag; None = --<name-with-dashes>
    choices: tuple[str, ...] | None = None
    why_runner_only: str | None = None  # required when ``to`` is empty
    aliases: tuple[str, ...] = ()  # extra flag spellings, e.g. --grad-clip-algorithm
    machine_bound: str | None = None  # why its effect cannot be seen on a CPU-only single machine


def setting(default: Any, *, to: tuple[str, ...], help: str, flag: str | None = None,
            choices: tuple[str, ...] | None = None, why: str | None = None, aliases: tuple[str, ...] = (),
            machine_bound: str | None = None) -> Any:
    """A runner config field together with its route, flag and help text.

    ``machine_bound`` says why the setting's effect cannot be observed on a CPU-only single
    machine (e.g. "needs a GPU"); its behaviour test then checks that the value reaches the
    Lightning object that acts on it instead of observing the effect.
    """
    unknown = set(to) - set(DESTINATIONS)
    if unknown:
        raise ValueError(f"unknown destination(s) {sorted(unknown)}; expected some of {DESTINATIONS}")
    if not to and not why:
        raise ValueError("a runner-only setting needs a one-line reason (why=...)")
    route = Route(tuple(to), help, flag, choices, why, tuple(aliases), machine_bound)
    return dataclasses.field(default=default, metadata={"route": route})


def route_of(f: dataclasses.Field) -> Route | None:
    route = f.metadata.get("route")
    return route if isinstance(route, Route) else None


def flag_of(f: dataclasses.Field, prefix: str = "--") -> str:
    """The field's CLI flag; ``prefix`` replaces the leading ``--`` (the wrapper uses ``--torch-``)."""
    route = route_of(f)
    flag = route.flag if route is not None and route.flag else "--" + f.name.replace("_", "-")
    return prefix + flag[2:]


def flags_of(f: dataclasses.Field, prefix: str = "--") -> list[str]:
    """The flag and its aliases, all with ``prefix``."""
    route = route_of(f)
    return [flag_of(f, prefix)] + [prefix + alias[2:] for alias in (route.aliases if route else ())]
