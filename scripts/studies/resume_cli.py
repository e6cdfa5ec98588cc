"""``--resume`` on the command line: the recorded run's settings, checked against those given.

A resumed run is the recorded run continued, so its settings come from the run's own
config.json; a setting given (flag or ``--config``) must equal the recorded value, except
``epochs``, which may grow, and ``output_dir``, which names the run. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ptycho_torch.config import ConfigError, Problem, shown_value
from scripts.studies.config_file import read_settings

RESUME_FLAG = "--resume"
RUN_RECORD = "config.json"
MAY_CHANGE = ("epochs", "output_dir", "overwrite")  # overwrite: refused on its own below
EPOCH_SHAPED = ("WarmupCosine",)  # schedules whose learning rate at every epoch depends on the epoch count


def resumed_settings(cls: type, given: dict[str, Any], chosen: Iterable[str]) -> tuple[dict[str, Any], set[str]]:
    """(settings for ``cls``, names the user chose) of the run in ``given["output_dir"]`` (or the
    default folder); ``chosen``: the names of ``given`` the user chose (a run's config.json given as
    ``--config`` spells out every setting). ConfigError names every given setting that differs from
    the record."""
    output_dir = Path(given.get("output_dir", cls().output_dir))
    record = output_dir / RUN_RECORD
    if given.get("overwrite"):
        raise ConfigError("resume", [Problem("overwrite", True, f"cannot be combined with {RESUME_FLAG}, which "
                                                                "continues the run in place (--overwrite removes it)")])
    try:
        recorded = read_settings(record, cls)
    except ConfigError as err:
        rule = "; ".join(p.rule for p in err.problems)
        raise ConfigError("resume", [Problem("resume", str(record),
                                             f"needs the run's {RUN_RECORD}, which cannot be read as one ({rule}); "
                                             "is --output-dir the folder of the run?")]) from None
    base = cls(**recorded.values)
    merged = cls(**{**recorded.values, **given})
    problems = [Problem(f.name, getattr(merged, f.name),
                        f"differs from the recorded run's {shown_value(getattr(base, f.name))} ({record}); "
                        f"{RESUME_FLAG} continues that run unchanged (only --epochs may grow)")
                for f in dataclasses.fields(cls)
                if f.name not in MAY_CHANGE and getattr(merged, f.name) != getattr(base, f.name)]
    if merged.epochs < base.epochs:
        problems.append(Problem("epochs", merged.epochs, f"must be >= the recorded run's {base.epochs} "
                                                         f"({RESUME_FLAG} may let a run train longer, not shorter)"))
    elif merged.epochs != base.epochs and base.scheduler in EPOCH_SHAPED:
        problems.append(Problem("epochs", merged.epochs, f"differs from the recorded run's {base.epochs}, which shapes "
                                                         f"its {base.scheduler} schedule over every epoch: the run "
                                                         "cannot be continued to another count (start a new run)"))
    if problems:
        raise ConfigError("resume", problems)
    settings = {**recorded.values, "epochs": merged.epochs, "output_dir": output_dir, "overwrite": False}
    return settings, recorded.given | set(chosen)
