"""Writing run artifacts safely: atomic files (the output folder itself: see output_folder).

Every file is written to a temporary name in its own folder and renamed into place, so an
interrupted run leaves either the previous complete file or none, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"}))
    try:
        with handle:
            yield handle
            handle.flush()
            os.chmod(handle.fileno(), 0o666 & ~_umask())  # the mode a plain open() would give, not 0600
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """Non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> Path:
    with atomic_file(path, "w") as handle:
        json.dump(json_safe(data), handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in columns} for row in rows)
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)
    return path
