"""Consumption: a short fit reads every setting that is active under its config."""

from __future__ import annotations

import torch
from hypothesis import given

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig, active_settings
from ptycho_torch.generators import tiny_model_config
from ptycho_torch.model import PtychoPINN
from ptycho_torch.optimization import build_scheduler
from ptycho_torch.training import train
from tests.ptycho_torch.test_training import QUIET, TRAINING_RUNS
from tests.strategies import tiny_training_configs


class ReadRecorder:
    """A read-only view of a config that records every attribute read (nested model included)."""

    def __init__(self, cfg, reads: set[str]):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name):
        value = getattr(self._cfg, name)
        self._reads.add(name)
        return ReadRecorder(value, self._reads) if name == "model" else value

    def __setattr__(self, name, value):
        raise AttributeError(f"configs are read-only; tried to set {name}")


def unread_settings(cfg: TrainingConfig, module_class=PtychoPINN, tmp_dir=None, data=None) -> list[str]:
    reads: set[str] = set()
    execution = PyTorchExecutionConfig(gradient_clip_val=cfg.gradient_clip_val, learning_rate=cfg.learning_rate,
                                       **QUIET)
    train(ReadRecorder(cfg, reads), execution, data, tmp_dir, module_class=module_class)
    return sorted(active_settings(cfg) - reads)


@TRAINING_RUNS
@given(cfg=tiny_training_configs())
def test_every_active_setting_is_read_during_a_fit(cfg, tiny_data, tmp_path_factory):
    assert unread_settings(cfg, tmp_dir=tmp_path_factory.mktemp("reads"), data=tiny_data[0]) == []


class IgnoresMomentum(PtychoPINN):
    """A deliberately broken model: builds its own SGD and never reads the momentum setting."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.cfg.learning_rate, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": build_scheduler(optimizer, self.cfg)}


def test_a_setting_that_is_never_read_is_named(tiny_data, tmp_path):
    cfg = TrainingConfig(model=tiny_model_config("cnn"), epochs=1, batch_size=8,
                         optimizer="sgd", momentum=0.5, weight_decay=0.0)
    unread = unread_settings(cfg, IgnoresMomentum, tmp_path, tiny_data[0])
    assert "momentum" in unread and "weight_decay" in unread
