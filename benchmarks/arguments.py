"""Argument types of the benchmarks: a bad value stops the command before any timing starts, with
argparse's exit status 2 and a message that names the flag and the rule."""

from __future__ import annotations

import argparse

from ptycho_torch.config import ARCHITECTURES, ConfigError, ModelConfig, plain_int


def architectures(text: str) -> list[str]:
    """'cnn,hybrid' -> each named architecture once, in the order given."""
    names = list(dict.fromkeys(word.strip() for word in text.split(",")))
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(ARCHITECTURES)}")
    return names


def variant(text: str) -> tuple[str, int]:
    """'ARCH' or 'ARCH:GRIDSIZE' -> (architecture, gridsize), by the model's own rules."""
    architecture, _, gridsize = text.strip().partition(":")
    size = plain_int(gridsize) if gridsize else 1
    if size is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ARCHITECTURE or ARCHITECTURE:GRIDSIZE")
    try:
        ModelConfig(architecture=architecture, gridsize=size)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {'; '.join(str(p) for p in err.problems)}") from None
    return architecture, size


def variants(text: str) -> list[tuple[str, int]]:
    """'cnn:1,fno:2' -> each (architecture, gridsize) once, in the order given."""
    return list(dict.fromkeys(variant(item) for item in text.split(",")))
