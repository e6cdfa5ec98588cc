"""Helpers shared by the test modules (the one home of them; no test module imports another).

Torch-free at import time, so the contract suite (``pytest -m contract``) never loads torch:
helpers that need torch import it inside.

- Contract checks that return the list of broken promises: tests assert the lists are empty for
  the real classes and non-empty (naming the culprit) for deliberately broken ones.
- Example budgets derived from the active Hypothesis profile.
- Tiny data and run settings, read recording.
- A layer checked against a reference computation, forward and backward.
- A scripted machine load for the thread re-choice (``cpu_settings.LoadWindow``'s interface).
- The truncated Gaussian kernel the probe and object recipes blur with, written out.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypothesis import settings

from ptycho_torch.config import SimulationConfig
from scripts.studies.runner_fields import DESTINATIONS, SHARED, route_of

# --- example budgets -----------------------------------------------------------------------------

CI_EXAMPLES = settings.get_profile("ci").max_examples


def examples(at_ci: int) -> int:
    """max_examples for a costly property: ``at_ci`` under the ci profile, scaled with the active one.

    A pinned count would silently cap the thorough profile; this one grows with it (x4) and
    shrinks under dev.
    """
    return max(1, round(at_ci * settings.default.max_examples / CI_EXAMPLES))


# Hypothesis runs that train: few examples, no deadline.
TRAINING_RUNS = settings(max_examples=examples(3), deadline=None)

# --- tiny runs -------------------------------------------------------------------------------------

QUIET = dict(enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)
TINY_SIMULATION = SimulationConfig(N=16, object_size=32, n_lines=20, n_train_images=1, n_test_images=1,
                                   train_stride=4, test_stride=8, set_phi=True, data_seed=3)

# A tiny but complete run through the command line: N=16 patches of a 32 px object.
TINY_DATA_ARGV = ["--object-size", "32", "--n-lines", "20", "--n-train-images", "1", "--n-test-images", "1",
                  "--train-stride", "4", "--test-stride", "8", "--set-phi"]
TINY_TORCH_ARGV = ["--N", "16", "--cnn-channels", "4", "--fno-modes", "4", "--fno-width", "8", "--fno-blocks", "2",
                   "--fno-cnn-blocks", "1", "--epochs", "2", "--batch-size", "4", "--learning-rate", "0.01",
                   "--no-enable-progress-bar",
                   "--logger-backend", "none"]
TINY_ARGV = TINY_DATA_ARGV + TINY_TORCH_ARGV
# Exit statuses of a tiny run that finished and wrote its results: 12 optimizer steps often leave the
# tiny cnn's output constant, which the run reports as status "collapsed" with exit status 3.
FINISHED = (0, 3)


def as_wrapper_flags(argv: list[str]) -> list[str]:
    """Runner flags spelled as the wrapper's --torch-<flag> (and --no-torch-<flag>)."""
    return ["--no-torch-" + a[5:] if a.startswith("--no-") else "--torch-" + a[2:] if a.startswith("--") else a
            for a in argv]


TINY_WRAPPER_ARGV = TINY_DATA_ARGV + as_wrapper_flags(TINY_TORCH_ARGV)


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- read recording ----------------------------------------------------------------------------

def recording(cfg: Any, reads: set[str], prefix: str, **nested: Any) -> Any:
    """A copy of a frozen config that adds ``prefix + field`` to ``reads`` on every read of a field.

    It is an instance of a subclass of the config's own class, so isinstance checks, dataclass
    helpers and validation still see a config; nested configs are given as recording copies by
    the caller through ``nested`` (``model=recording(training.model, ...)``). Writing a config down (``to_jsonable``) reads stored values, not attributes, so only
    uses are counted.
    """
    cls = type(cfg)
    names = frozenset(f.name for f in dataclasses.fields(cls))

    class Recorded(cls):
        def __getattribute__(self, name: str) -> Any:
            if name in names:
                sink = object.__getattribute__(self, "__dict__").get("_reads")
                if sink is not None:
                    sink.add(prefix + name)
            return object.__getattribute__(self, name)

    Recorded.__name__ = Recorded.__qualname__ = cls.__name__
    copy = Recorded(**{name: vars(cfg)[name] for name in names} | nested)
    object.__setattr__(copy, "_reads", reads)
    return copy


# --- config contract checks ----------------------------------------------------------------------


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


# --- layers against their reference computation --------------------------------------------------

def assert_layer_matches(layer: Any, reference: Callable[[Any], Any], plain: Any, upstream: Any, layout: Any) -> None:
    """``layer`` and ``reference`` (the same computation written plainly, reading ``layer``'s weight and
    bias) agree on the input ``plain`` given in ``layout``: outputs, and the input, weight and bias
    gradients of a backward with ``upstream``, to float32 tolerance; the layer answers channels_last."""
    import torch

    results = []
    for function in (layer, reference):
        layer.zero_grad(set_to_none=True)
        x = plain.clone(memory_format=layout).requires_grad_()
        out = function(x)
        out.backward(upstream)
        results.append((out, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad))
    (mine, *my_grads), (expected, *expected_grads) = results
    assert mine.shape == expected.shape and mine.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(my_grads, expected_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# --- a pretend machine load ----------------------------------------------------------------------

class ScriptedWindow:
    """A LoadWindow whose windows last ``seconds`` and report the loads given, in order, the last
    one from then on."""

    def __init__(self, loads, seconds: float = 1.0):
        self.loads, self.elapsed, self.opened = list(loads), seconds, 0

    def open(self) -> None:
        self.opened += 1

    def seconds(self) -> float:
        return self.elapsed

    def others(self) -> float | None:
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def roll(self) -> float | None:
        return self.others()


def gaussian_kernel(sigma: float):
    """G_sigma's weights at the integer offsets -h..h, h = int(4 sigma + 0.5) (scipy's truncation at 4
    sigma): exp(-x^2 / (2 sigma^2)), normalised to sum 1."""
    import numpy as np

    half = int(4 * sigma + 0.5)
    weights = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return weights / weights.sum()
