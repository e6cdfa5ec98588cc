"""An earlier checkout's ``ptycho_torch``, loaded beside this one in the same process.

Timed in a process of its own, an earlier commit is compared with another moment of the machine as
much as with this code: here a step's time drifts by 20-50 % within minutes. Loaded into the same
process, the two versions' steps interleave within each round and share its settings (threads,
denormals, memory thresholds). The copy is renamed (``ptycho_torch`` -> ``ptycho_torch_earlier`` in
its source, imports made inside functions included), so neither version's modules can stand in for
the other's.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "ptycho_torch"
EARLIER = "ptycho_torch_earlier"


def checkout(text: str) -> Path:
    """An argparse type: a folder that holds a ``ptycho_torch`` package (a checkout of this project)."""
    root = Path(text)
    if not text.strip() or not (root / PACKAGE / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} holds no {PACKAGE}/__init__.py: expected a checkout of "
                                         "this project (e.g. made by `git worktree add FOLDER COMMIT`)")
    return root


def load_earlier(root: Path, scratch: Path) -> ModuleType:
    """``root``'s ptycho_torch, copied into ``scratch`` as ``ptycho_torch_earlier`` and imported.

    ``scratch`` must outlive the use of the package (its modules may import more of it later).
    One earlier checkout per process."""
    if EARLIER in sys.modules:
        raise RuntimeError(f"an earlier checkout is already loaded as {EARLIER}")
    target = scratch / EARLIER
    shutil.copytree(root / PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    name = re.compile(rf"\b{PACKAGE}\b")
    for source in target.rglob("*.py"):
        source.write_text(name.sub(EARLIER, source.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(scratch))
    importlib.invalidate_caches()
    return importlib.import_module(EARLIER)
