"""The PINN LightningModule: generator + fixed physics, manual optimization, model-level clipping.

One optimizer step (manual optimization):
    loss -> manual_backward -> opt.step():
        Lightning (under fp16 AMP: after unscaling) calls ``on_before_optimizer_step``, where we
        record grad_norm_preclip -> check finiteness under nonfinite_grad_policy -> clip by
        gradient_clip_algorithm -> record grad_norm_postclip; then the optimizer steps
    -> zero_grad.
Clipping lives in the hook, not in ``training_step``: under fp16 AMP the gradients seen in
``training_step`` are still multiplied by the loss scale (Lightning issue #18089).
The learning-rate scheduler is stepped here once per epoch; Lightning does not under manual
optimization. Settings are read only from TrainingConfig, by attribute.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch.plugins.precision import MixedPrecision

from ptycho_torch.clipping import clip_gradients_, global_grad_norm, grads_finite
from ptycho_torch.config import TrainingConfig, clipping_enabled, from_jsonable, to_jsonable
from ptycho_torch.generators import build_generator
from ptycho_torch.interrupts import deferred
from ptycho_torch.losses import PINN_LOSSES, supervised_loss
from ptycho_torch.optimization import build_optimizer, build_scheduler, step_scheduler
from ptycho_torch.outcome import NonFiniteGradientError
from ptycho_torch.overlap import extract_from_canvas, merge_with_weight, overlap_weights
from ptycho_torch.physics import apply_probe_mask, forward_amplitude

HISTORY_COLUMNS = ("epoch", "step", "loss", "lr", "grad_norm_preclip", "grad_norm_postclip", "skipped")
RUN_STATE = "ptycho_run_state"  # the checkpoint entry holding the run's records (history, counters)


class PtychoPINN(L.LightningModule):
    """``cfg`` is the resolved TrainingConfig, or its JSON form as a checkpoint stores it, so that
    ``PtychoPINN.load_from_checkpoint(path)`` rebuilds the model without the runner."""

    def __init__(self, cfg: TrainingConfig | Mapping[str, Any], probe: torch.Tensor):
        super().__init__()
        if isinstance(cfg, Mapping):
            cfg = from_jsonable(TrainingConfig, cfg)
        probe = torch.as_tensor(probe).to(torch.complex64)
        # Plain data only (JSON-like config, one tensor): checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"cfg": to_jsonable(cfg), "probe": probe.detach().cpu().clone()}, logger=False)
        self.automatic_optimization = False
        self.cfg = cfg
        model = cfg.model
        self.generator = build_generator(model)
        if model.probe_mask:  # the physics of pinn training sees the masked probe (supervised never looks)
            probe = apply_probe_mask(probe, model.probe_mask_diameter)
        self.register_buffer("probe", probe.to(torch.complex64))  # (N, N) complex64
        if model.gridsize > 1:  # the overlap constraint's merge weights (none at gridsize 1: same state as before)
            self.register_buffer("overlap_weights", overlap_weights(self.probe), persistent=False)  # (N, N) real
        self.history: list[dict] = []  # one row per optimizer step (HISTORY_COLUMNS)
        self.nonfinite_skips = 0
        self.optimizer_steps = 0
        self._rows: list[dict] = []  # this epoch's rows, tensors kept on device until epoch end
        self._val_losses: list[torch.Tensor] = []  # per validation batch: its loss times its item count
        self._val_items = 0
        self.last_val_loss: float | None = None
        self.trained_threads: int | None = None  # from a checkpoint: the intra-op threads it trained with
        self.trained_precision: str | None = None  # from a checkpoint: the precision Lightning trained at
        # Fit time of the weights across resumes: what the checkpoint resumed from had spent (None when
        # it predates the record), plus this process's fit since on_fit_start.
        self.prior_fit_seconds: float | None = 0.0
        self.data_digest: str | None = None  # the train split's (``GridLinesData.digest``), set by ``training.train``
        self._fit_started: float | None = None

    # --- forward and loss ------------------------------------------------------------------

    def forward(self, diffraction: torch.Tensor) -> torch.Tensor:
        """Object patches (B, N, N) complex64 from measured amplitudes (B, N, N); at gridsize 2,
        (B, C, N, N) -> (B, C, N, N), the generator's raw patches (see ``consistent_patches``)."""
        return self.generator(diffraction)

    def consistent_patches(self, diffraction: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """The patches the physics sees: at gridsize 2 the group's patches merged on its canvas and
        re-extracted (the overlap constraint); at gridsize 1 the generator's output."""
        if offsets is None:
            return self(diffraction)
        canvas, _ = self.group_canvas(diffraction, offsets)
        return extract_from_canvas(canvas, offsets, diffraction.shape[-1])  # (B, C, N, N)

    def group_canvas(self, diffraction: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gridsize 2: the group's merged canvas (B, side, side) complex64 and its weight (B, side, side)."""
        obj = self(diffraction)  # (B, C, N, N)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return merge_with_weight(obj.to(torch.complex64), offsets, self.overlap_weights)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        obj = self.consistent_patches(batch["diffraction"], batch.get("offsets"))
        with torch.autocast(device_type=self.device.type, enabled=False):  # FFT and losses in fp32
            obj = obj.to(torch.complex64)
            if self.cfg.model.training_procedure == "pinn":
                pinn_loss = PINN_LOSSES[self.cfg.torch_loss_mode]
                return pinn_loss(forward_amplitude(obj, self.probe), batch["diffraction"].float())
            return supervised_loss(obj, batch["amplitude"].float(), batch["phase"].float())

    # --- one optimizer step ----------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        loss = self.loss(batch)
        self._rows.append({"epoch": self.current_epoch, "step": self.optimizer_steps, "loss": loss.detach(),
                           "lr": opt.param_groups[0]["lr"], "grad_norm_preclip": None,
                           "grad_norm_postclip": None, "skipped": False})
        with deferred():  # a signal stops the run between optimizer steps, never inside one
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.optimizer_steps += 1
        self.log("train_loss", loss.detach(), prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=batch["diffraction"].shape[0], sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs on unscaled gradients, just before the optimizer steps (every precision mode)."""
        self._unscale_for_a_fused_optimizer(optimizer)
        cfg = self.cfg
        policy = cfg.nonfinite_grad_policy  # decided before the gradients are looked at
        params = [p for p in self.parameters() if p.grad is not None]
        row = self._rows[-1]
        preclip = global_grad_norm(params)
        # One host sync per step, none per parameter; an L2 norm can overflow on huge finite
        # gradients, so a non-finite norm is confirmed element-wise before the step is skipped.
        if not torch.isfinite(preclip) and not grads_finite(params):
            self._skip_step(params, row, policy)
            return
        clipping = clipping_enabled(cfg.gradient_clip_val)
        if clipping:
            clip_gradients_(params, cfg.gradient_clip_algorithm, cfg.gradient_clip_val)
        if cfg.log_grad_norm and self.optimizer_steps % cfg.grad_norm_log_freq == 0:
            row["grad_norm_preclip"] = preclip.detach()
            row["grad_norm_postclip"] = global_grad_norm(params) if clipping else preclip.detach()

    def _skip_step(self, params: list[torch.nn.Parameter], row: dict, policy: str) -> None:
        scaler_overflow = self._grad_scaler_active()
        if policy == "error" and not scaler_overflow:
            raise NonFiniteGradientError(
                f"non-finite gradient at optimizer step {self.optimizer_steps} (epoch {self.current_epoch}); "
                "nonfinite_grad_policy=error")
        for p in params:  # no gradient -> the optimizer leaves the weight and its state alone
            p.grad = None
        row["skipped"] = True
        self.nonfinite_skips += 1
        self.log("nonfinite_skips", float(self.nonfinite_skips), on_step=True, on_epoch=False)

    def _unscale_for_a_fused_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Under fp16 AMP Lightning unscales the gradients before this hook, except for an optimizer that
        divides the loss scale out inside its own step (a fused Adam): those are still scaled here. Unscaled
        now, the scaler's step then leaves them alone (torch's GradScaler: an optimizer already unscaled).
        Lightning's own test of which optimizers it skips decides, so that the two cannot disagree."""
        if self._grad_scaler_active() and _optimizer_handles_unscaling(optimizer):
            self.trainer.precision_plugin.scaler.unscale_(optimizer)

    def _grad_scaler_active(self) -> bool:
        """fp16 AMP overflows are the GradScaler's to handle: it skips the step and lowers its scale."""
        plugin = self.trainer.precision_plugin
        return isinstance(plugin, MixedPrecision) and plugin.scaler is not None

    # --- validation and epoch end -------------------------------------------------

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.loss(batch)
        items = batch["diffraction"].shape[0]
        self._val_losses.append(loss.detach() * items)
        self._val_items += items
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=items, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """The epoch's validation loss as a mean over items, as the logged ``val_loss`` (a smaller last
        batch does not weigh more), over every rank's items."""
        if self._val_losses:
            total = torch.stack(self._val_losses).sum()
            items = torch.tensor(float(self._val_items), dtype=total.dtype, device=total.device)
            reduce = self.trainer.strategy.reduce
            self.last_val_loss = float(reduce(total, reduce_op="sum") / reduce(items, reduce_op="sum"))
        self._val_losses.clear()
        self._val_items = 0

    def on_train_epoch_end(self) -> None:
        self._flush_rows()
        step_scheduler(self.lr_schedulers(), self.last_val_loss)

    def _flush_rows(self) -> None:
        """Move this epoch's step records to the host in one transfer."""
        tensors = [(i, k) for i, row in enumerate(self._rows) for k in HISTORY_COLUMNS
                   if isinstance(row[k], torch.Tensor)]
        values = torch.stack([self._rows[i][k].float() for i, k in tensors]).tolist() if tensors else []
        for (i, k), value in zip(tensors, values):
            self._rows[i][k] = value
        self.history.extend(self._rows)
        self._rows = []

    # --- checkpoints: the run's records travel with the weights ----------------------------------

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def fit_seconds(self) -> float | None:
        """Seconds of fitting these weights have had, earlier processes included (None: unknown)."""
        if self.prior_fit_seconds is None:
            return None
        return self.prior_fit_seconds + (0.0 if self._fit_started is None else time.perf_counter() - self._fit_started)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_STATE] = {"history": list(self.history), "nonfinite_skips": self.nonfinite_skips,
                                 "optimizer_steps": self.optimizer_steps, "last_val_loss": self.last_val_loss,
                                 "threads": torch.get_num_threads(),  # a resumed run sums with as many
                                 "precision": str(self.trainer.precision),  # as run: 16-mixed on a CPU is bf16-mixed
                                 "fit_seconds": self.fit_seconds(), "data_digest": self.data_digest}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RUN_STATE)
        if state is None:
            return
        self.history = [dict(row) for row in state["history"]]
        self.nonfinite_skips = state["nonfinite_skips"]
        self.optimizer_steps = state["optimizer_steps"]
        self.last_val_loss = state["last_val_loss"]
        self.trained_threads = state.get("threads")  # what prediction can use to sum in the same order
        self.trained_precision = state.get("precision")  # absent in checkpoints written before it was recorded
        self.prior_fit_seconds = state.get("fit_seconds")

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.cfg)
        return {"optimizer": optimizer, "lr_scheduler": build_scheduler(optimizer, self.cfg)}
