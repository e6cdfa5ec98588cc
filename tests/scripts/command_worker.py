"""A long-lived process that runs the project's commands on request, for tests about processes.

    python -m tests.scripts.command_worker
    stdin:  one JSON list per line: [command, *argv]   (command: runner | wrapper | datagen)
    stdout: "ready" once imports are done, then "done <exit status>" per request

Imports happen once, before "ready", so that a test can release several workers at the same
instant (the race in claiming one output folder) without import time spreading them apart.
"""

from __future__ import annotations

import json
import sys

import lightning  # noqa: F401  (the expensive imports, done before "ready")
import torch  # noqa: F401

from scripts import grid_lines_datagen
from scripts.studies import grid_lines_compare_wrapper, grid_lines_torch_runner

COMMANDS = {"runner": grid_lines_torch_runner.main, "wrapper": grid_lines_compare_wrapper.main,
            "datagen": grid_lines_datagen.main}


def serve() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        command, *argv = json.loads(line)
        try:
            status = COMMANDS[command](argv)
        except SystemExit as exit_:
            status = exit_.code
        print(f"done {status}", flush=True)


if __name__ == "__main__":
    serve()
