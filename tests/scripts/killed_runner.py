"""The runner, killed with SIGKILL one optimizer step into epoch K (0-based): K epochs and their
checkpoint are done, the step taken in epoch K is lost, as when a scheduler kills a job.

    python -m tests.scripts.killed_runner K [runner flags...]
"""

from __future__ import annotations

import os
import signal
import sys

from lightning.pytorch.callbacks import Callback

from ptycho_torch import training
from scripts.studies import grid_lines_torch_runner


class KillInEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    epoch, argv = int(sys.argv[1]), sys.argv[2:]
    build = training.build_trainer

    def build_with_kill(*args, callbacks=(), **kwargs):
        return build(*args, callbacks=[*callbacks, KillInEpoch(epoch)], **kwargs)

    training.build_trainer = build_with_kill
    sys.exit(grid_lines_torch_runner.main(argv))


if __name__ == "__main__":
    main()
