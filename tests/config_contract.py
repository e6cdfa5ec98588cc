"""The config contract as reusable checks: each returns the list of broken promises.

Tests assert the lists are empty for the real classes and non-empty (naming the culprit)
for deliberately broken ones, so the gate itself is shown to go red.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from scripts.studies.runner_fields import DESTINATIONS, SHARED, route_of


def route_problems(runner_cls: type) -> list[str]:
    """Every runner field declares a route; runner-only fields say why."""
    problems = []
    for f in dataclasses.fields(runner_cls):
        route = route_of(f)
        if route is None:
            problems.append(f"{runner_cls.__name__}.{f.name} has no declared route")
        elif not route.to and not route.why_runner_only:
            problems.append(f"{runner_cls.__name__}.{f.name} is runner-only without a reason")
        elif set(route.to) - set(DESTINATIONS):
            problems.append(f"{runner_cls.__name__}.{f.name} routes to unknown {set(route.to) - set(DESTINATIONS)}")
    return problems


def source_problems(runner_cls: type, outputs: Mapping[str, type],
                    nested: Mapping[tuple[str, str], str]) -> list[str]:
    """Every output field has a source, and every route lands on a field that exists."""
    routed: dict[str, set[str]] = {dest: set() for dest in outputs}
    problems = []
    for f in dataclasses.fields(runner_cls):
        route = route_of(f)
        for dest in route.to if route else ():
            routed.setdefault(dest, set()).add(f.name)
            if dest in outputs and f.name not in {g.name for g in dataclasses.fields(outputs[dest])}:
                problems.append(f"{runner_cls.__name__}.{f.name} routes to {dest} but "
                                f"{outputs[dest].__name__} has no field {f.name!r}")
    for dest, cls in outputs.items():
        for g in dataclasses.fields(cls):
            if g.name not in routed[dest] and (dest, g.name) not in nested:
                problems.append(f"{cls.__name__}.{g.name} has no source: no {runner_cls.__name__} "
                                f"field routes to {dest} under that name")
    return problems


def roundtrip_problems(cfg: Any, resolve: Callable[[Any], Mapping[str, Any]]) -> list[str]:
    """Each routed value arrives unchanged in every config it is routed to; shared fields agree."""
    resolved = resolve(cfg)
    problems = []
    for f in dataclasses.fields(cfg):
        sent = getattr(cfg, f.name)
        for dest in route_of(f).to:
            arrived = getattr(resolved[dest], f.name)
            if arrived != sent or type(arrived) is not type(sent):
                problems.append(f"{f.name}: sent {sent!r}, {dest} holds {arrived!r}")
        if set(SHARED) <= set(route_of(f).to):
            values = {dest: getattr(resolved[dest], f.name) for dest in SHARED}
            if len(set(map(repr, values.values()))) != 1:
                problems.append(f"shared field {f.name} disagrees: {values}")
    return problems
