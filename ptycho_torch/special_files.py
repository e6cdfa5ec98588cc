"""Inputs that are not regular files: reading a pipe or socket waits for a writer that may never
come, and a device such as /dev/zero never ends. Each input path is checked before it is read.
Standard library only: the command line's settings files are checked with it too.
"""

from __future__ import annotations

import os
import stat


def is_special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a pipe, socket or device (not a regular file or a folder)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unnamable: the read itself says so
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
