"""The PINN under manual optimization: clipping provably applies, in every precision, every step."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from lightning.pytorch.plugins.precision import MixedPrecision

from ptycho_torch.clipping import agc_unit_ratios, global_grad_norm
from ptycho_torch.config import FLOAT32_MAX, ConfigError, PyTorchExecutionConfig, TrainingConfig, to_jsonable
from ptycho_torch.generators import tiny_model_config
from ptycho_torch.model import RUN_STATE, NonFiniteGradientError, PtychoPINN
from ptycho_torch.optimization import build_optimizer, build_scheduler, step_scheduler, warmup_cosine_factor
from ptycho_torch.physics import forward_amplitude
from ptycho_torch.training import parameter_digest, prediction_autocast, train
from tests.helpers import QUIET, TRAINING_RUNS



def configs(architecture="cnn", epochs=2, **training):
    cfg = TrainingConfig(model=tiny_model_config(architecture), epochs=epochs, batch_size=4, **training)
    return cfg, PyTorchExecutionConfig(gradient_clip_val=cfg.gradient_clip_val,
                                       learning_rate=cfg.learning_rate, **QUIET)


class Recording(PtychoPINN):
    """Captures, for every optimizer step, the gradient statistics just before and after clipping."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before: list[dict] = []
        self.after: list[dict] = []

    def _stats(self) -> dict:
        params = [p for p in self.parameters() if p.grad is not None]
        return {"norm": float(global_grad_norm(params)),
                "max_abs": max(float(p.grad.abs().max()) for p in params),
                "agc_ratio": max(float(r.max()) for r in agc_unit_ratios(params))}

    def on_before_optimizer_step(self, optimizer):
        self.before.append(self._stats())
        super().on_before_optimizer_step(optimizer)
        self.after.append(self._stats())


BOUND = {"norm": "norm", "value": "max_abs", "agc": "agc_ratio"}


@pytest.mark.parametrize("algorithm", ["norm", "value", "agc"])
@TRAINING_RUNS
@given(clip=st.floats(1e-5, 1e-3))
def test_postclip_gradients_obey_the_bound_and_the_clip_bites(algorithm, clip, tiny_data, tmp_path_factory):
    cfg, execution = configs(epochs=1, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    module = train(cfg, execution, tiny_data[0], tmp_path_factory.mktemp("clip"), module_class=Recording).module
    stat = BOUND[algorithm]
    assert len(module.after) == math.ceil(23 / 4)
    assert all(step[stat] <= clip * (1 + 1e-5) for step in module.after), module.after
    assert any(step[stat] > clip for step in module.before), "the clip never bit: the test would be vacuous"
    rows = module.history
    assert all(r["grad_norm_postclip"] <= r["grad_norm_preclip"] * (1 + 1e-6) for r in rows)
    if algorithm == "norm":
        assert all(r["grad_norm_postclip"] <= clip * (1 + 1e-6) for r in rows)


def test_without_clipping_the_same_run_exceeds_the_clip(tiny_data, tmp_path):
    cfg, execution = configs(gradient_clip_val=None)
    module = train(cfg, execution, tiny_data[0], tmp_path, module_class=Recording).module
    assert max(step["norm"] for step in module.after) > 1e-3
    assert all(r["grad_norm_postclip"] == r["grad_norm_preclip"] for r in module.history)


@pytest.mark.parametrize("optimizer, fused", [("adam", True), ("adamw", True), ("sgd", False)])
def test_fp16_amp_clips_and_records_the_unscaled_gradients(tiny_data, tmp_path, optimizer, fused):
    """Lightning unscales the gradients before the hook only for an optimizer that does not do it inside
    its own step; the fused Adam and AdamW do, so the model unscales theirs, or it would clip and record
    norms 2**10 times the true ones (and SGD's must not be unscaled twice)."""
    clip = 1e-3
    cfg, execution = configs(gradient_clip_val=clip, gradient_clip_algorithm="norm", optimizer=optimizer)
    float32 = train(cfg, execution, tiny_data[0], tmp_path / "float32").module.history
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    module = train(cfg, execution, tiny_data[0], tmp_path / "fp16",
                   plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]).module
    assert bool(module.optimizers().optimizer.defaults.get("fused")) is fused
    assert scaler.get_scale() > 1.0  # gradients really were scaled during backward
    stepped = [r for r in module.history if not r["skipped"]]
    assert stepped and any(r["grad_norm_preclip"] > clip for r in stepped)
    assert stepped[0]["step"] == 0 and 0.9 < stepped[0]["grad_norm_preclip"] / float32[0]["grad_norm_preclip"] < 1.1
    for row in stepped:  # unscaled clipping: the norm lands on min(pre, clip), not clip / scale
        assert row["grad_norm_postclip"] == pytest.approx(min(row["grad_norm_preclip"], clip), rel=1e-3)


class NaNGradients(PtychoPINN):
    def on_before_optimizer_step(self, optimizer):
        grad = next(self.parameters()).grad
        grad[(0,) * grad.ndim] = float("nan")
        super().on_before_optimizer_step(optimizer)


def test_skip_policy_leaves_weights_bit_identical_and_counts(tiny_data, tmp_path):
    cfg, execution = configs(epochs=1, nonfinite_grad_policy="skip", gradient_clip_val=1e-3)
    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in NaNGradients(cfg, torch.from_numpy(tiny_data[0].probeGuess)).state_dict().items()}
    module = train(cfg, execution, tiny_data[0], tmp_path, module_class=NaNGradients).module
    for name, value in module.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert module.nonfinite_skips == module.optimizer_steps == 6
    assert all(r["skipped"] for r in module.history)


def test_error_policy_raises_naming_the_step(tiny_data, tmp_path):
    cfg, execution = configs(epochs=1, nonfinite_grad_policy="error")
    with pytest.raises(NonFiniteGradientError, match="optimizer step 0"):
        train(cfg, execution, tiny_data[0], tmp_path, module_class=NaNGradients)


def _lr_per_epoch(module: PtychoPINN) -> list[float]:
    return [next(r["lr"] for r in module.history if r["epoch"] == e) for e in range(module.current_epoch)]


@pytest.mark.parametrize("scheduler, training, expected", [
    pytest.param("Default", {}, lambda e: 1e-3, id="constant"),
    pytest.param("Exponential", dict(lr_gamma=0.5), lambda e: 1e-3 * 0.5**e, id="exponential"),
    pytest.param("WarmupCosine", dict(lr_warmup_epochs=2, lr_min_ratio=0.1),
                 lambda e: 1e-3 * warmup_cosine_factor(e, 5, 2, 0.1), id="warmup-cosine"),
    # threshold 1 (relative) means no epoch ever improves: reduce every patience + 1 epochs
    pytest.param("ReduceLROnPlateau", dict(plateau_factor=0.5, plateau_patience=1, plateau_threshold=1.0,
                                           plateau_min_lr=2e-4, val_fraction=0.2),
                 lambda e: max(1e-3 * 0.5 ** (e // 2), 2e-4), id="plateau"),
])
def test_learning_rate_per_epoch_matches_the_closed_form(scheduler, training, expected, tiny_data, tmp_path):
    cfg, execution = configs(epochs=5, scheduler=scheduler, **training)
    module = train(cfg, execution, tiny_data[0], tmp_path).module
    assert _lr_per_epoch(module) == pytest.approx([expected(e) for e in range(5)], rel=1e-9)


def test_warmup_cosine_closed_form_endpoints():
    assert warmup_cosine_factor(0, 10, 4, 0.1) == 0.25
    assert warmup_cosine_factor(3, 10, 4, 0.1) == 1.0
    assert warmup_cosine_factor(4, 10, 4, 0.1) == 1.0
    assert warmup_cosine_factor(9, 10, 4, 0.1) == pytest.approx(0.1)


def test_same_seed_gives_bitwise_identical_parameters(tiny_data, tmp_path):
    runs = [train(*configs(epochs=1, seed=7), tiny_data[0], tmp_path / str(i)).module for i in range(2)]
    for (name, a), (_, b) in zip(runs[0].state_dict().items(), runs[1].state_dict().items()):
        assert torch.equal(a, b), name


def test_training_refuses_disagreeing_shared_settings(tiny_data, tmp_path):
    cfg, execution = configs(gradient_clip_val=1.0)
    bad = PyTorchExecutionConfig(gradient_clip_val=None, learning_rate=cfg.learning_rate, **QUIET)
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        train(cfg, bad, tiny_data[0], tmp_path)
    assert not (tmp_path / "checkpoints").exists()


class TrueObject(torch.nn.Module):
    def __init__(self, obj: torch.Tensor):
        super().__init__()
        self.obj = obj

    def forward(self, diffraction: torch.Tensor) -> torch.Tensor:
        return self.obj


def test_physics_loss_is_zero_for_the_true_object_on_noiseless_data(tiny_data):
    data = tiny_data[0]
    cfg, _ = configs()
    module = PtychoPINN(cfg, torch.from_numpy(data.probeGuess))
    truth = torch.polar(torch.from_numpy(data.Y_I), torch.from_numpy(data.Y_phi))  # (M, N, N) complex64
    module.generator = TrueObject(truth)
    noiseless = forward_amplitude(truth, module.probe)
    assert float(module.loss({"diffraction": noiseless})) == pytest.approx(0.0, abs=1e-6)
    assert float(module.loss({"diffraction": torch.from_numpy(data.diffraction)})) < 1e-3


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # the cuda case, built on a CPU-only machine
@pytest.mark.parametrize("precision, device, dtype", [
    ("bf16-mixed", "cpu", torch.bfloat16), ("bf16-mixed", "mps", torch.bfloat16),
    ("16-mixed", "cpu", torch.bfloat16),  # Lightning runs bf16-mixed for it on a CPU
    ("16-mixed", "mps", torch.float16), ("16-mixed", "cuda", torch.float16),
])
def test_prediction_autocasts_as_training_does(precision, device, dtype):
    context = prediction_autocast(precision, torch.device(device))
    assert isinstance(context, torch.autocast) and context.device == device and context.fast_dtype == dtype


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_prediction_on_the_cpu_autocasts_like_lightnings_precision_plugin(precision):
    import warnings

    import lightning as L

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning says it replaces 16-mixed on a CPU
        plugin = L.Trainer(accelerator="cpu", precision=precision, logger=False).precision_plugin
    theirs, ours = plugin.autocast_context_manager(), prediction_autocast(precision, torch.device("cpu"))
    assert (ours.device, ours.fast_dtype) == (theirs.device, theirs.fast_dtype)


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision='bf16'"):
        prediction_autocast("bf16", torch.device("cpu"))


def test_float32_prediction_does_not_autocast():
    with prediction_autocast("32-true", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_steps_at_the_largest_learning_rate_and_weight_decay_the_rules_allow(optimizer):
    """The rules stop at float32's largest value because torch refuses a larger scalar for float32
    parameters (it would crash mid-run); at the bound itself a step runs (its result may overflow,
    which the run then reports as diverged)."""
    def step(learning_rate: float) -> None:
        param = torch.nn.Parameter(torch.ones(3))
        param.grad = torch.full((3,), 0.5)
        cfg = TrainingConfig(model=tiny_model_config("cnn"), optimizer=optimizer, learning_rate=FLOAT32_MAX,
                             weight_decay=FLOAT32_MAX, momentum=0.5)
        opt = build_optimizer([param], cfg)
        for group in opt.param_groups:
            group["lr"] = learning_rate  # past the rule only here, to show what the bound prevents
        opt.step()

    step(FLOAT32_MAX)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingConfig(learning_rate=math.nextafter(FLOAT32_MAX, math.inf))
    if optimizer == "sgd":  # SGD hands the rate to torch as a float32 scalar: past the bound it crashes
        with pytest.raises(RuntimeError, match="overflow"):
            step(math.nextafter(FLOAT32_MAX, math.inf))



@pytest.mark.parametrize("architecture", ["fno", "hybrid"])
def test_spectral_architectures_train_at_bf16_mixed(architecture, tiny_data, tmp_path):
    """Lightning runs the backward inside the step's bf16 autocast (the spectral backward crashed there)."""
    cfg, execution = configs(architecture, epochs=1)
    execution = dataclasses.replace(execution, precision="bf16-mixed")
    module = train(cfg, execution, tiny_data[0], tmp_path).module
    assert module.optimizer_steps > 0 and all(math.isfinite(row["loss"]) for row in module.history)


def test_a_single_epoch_after_the_warmup_runs_at_the_full_rate_not_at_the_final_ratio():
    """The cosine has no room there; at ratio 0 the final-ratio reading would leave the run untrained."""
    assert warmup_cosine_factor(0, epochs=1, warmup=0, min_ratio=0.0) == 1.0
    assert [warmup_cosine_factor(e, epochs=2, warmup=1, min_ratio=0.1) for e in range(2)] == [1.0, 1.0]
    assert warmup_cosine_factor(2, epochs=3, warmup=1, min_ratio=0.1) == pytest.approx(0.1)  # room: down to r


def test_the_physics_sees_the_masked_probe_and_the_checkpoint_keeps_the_unmasked_one():
    """A numpy complex128 probe of ones, masked by a disk of diameter 8 about the centre (7.5, 7.5) of a
    16 x 16 grid: a pixel stays when its centre lies within 4 pixels of it."""
    model = tiny_model_config("cnn", probe_mask=True, probe_mask_diameter=8.0)
    module = PtychoPINN(TrainingConfig(model=model), np.ones((16, 16), dtype=np.complex128))
    rows, cols = np.mgrid[:16, :16] - 7.5
    inside = np.sqrt(rows**2 + cols**2) <= 4.0
    assert module.probe.dtype == torch.complex64
    assert torch.equal(module.probe, torch.from_numpy(inside.astype(np.complex64)))
    assert 0 < inside.sum() < 16 * 16
    stored = module.hparams["probe"]
    assert stored.dtype == torch.complex64 and torch.equal(stored, torch.ones(16, 16, dtype=torch.complex64))


def test_supervised_loss_is_the_amplitude_error_plus_the_wrapped_phase_error():
    amplitude, phase = torch.full((2, 16, 16), 0.5), torch.full((2, 16, 16), 3.0)
    batch = {"diffraction": torch.ones(2, 16, 16), "amplitude": amplitude, "phase": phase}
    module = PtychoPINN(TrainingConfig(model=tiny_model_config("cnn", training_procedure="supervised")),
                        torch.ones(16, 16, dtype=torch.complex64))
    module.generator = TrueObject(torch.polar(amplitude, phase))
    assert float(module.loss(batch)) == pytest.approx(0.0, abs=1e-6)
    # amplitude 2 * 0.5 is off by 0.5; phase -3 is off by 2 pi - 6 = 0.283 once wrapped (not by 6)
    module.generator = TrueObject(torch.polar(2 * amplitude, -phase))
    assert float(module.loss(batch)) == pytest.approx(0.5 + (2 * math.pi - 6.0), rel=1e-5)


def test_a_checkpoint_without_run_records_leaves_the_fresh_state_and_one_with_them_restores_each():
    module = PtychoPINN(configs()[0], torch.ones(16, 16, dtype=torch.complex64))
    module.on_load_checkpoint({})
    assert (module.history, module.nonfinite_skips, module.optimizer_steps, module.last_val_loss) == ([], 0, 0, None)
    assert (module.trained_threads, module.trained_precision, module.prior_fit_seconds) == (None, None, 0.0)
    row = {"epoch": 0, "step": 0, "loss": 1.5, "lr": 1e-3, "grad_norm_preclip": 2.0, "grad_norm_postclip": 1.0,
           "skipped": False}
    module.on_load_checkpoint({RUN_STATE: {"history": [row], "nonfinite_skips": 2, "optimizer_steps": 7,
                                           "last_val_loss": 0.25, "threads": 3, "precision": "bf16-mixed",
                                           "fit_seconds": 12.5}})
    assert module.history == [row] and module.history[0] is not row
    assert (module.nonfinite_skips, module.optimizer_steps, module.last_val_loss) == (2, 7, 0.25)
    assert (module.trained_threads, module.trained_precision, module.prior_fit_seconds) == (3, "bf16-mixed", 12.5)


def test_a_module_built_from_the_json_config_a_checkpoint_stores_equals_one_built_from_the_config():
    cfg, _ = configs()
    probe = torch.ones(16, 16, dtype=torch.complex64)
    module = PtychoPINN(to_jsonable(cfg), probe)
    assert module.cfg == cfg
    assert module.hparams["cfg"] == to_jsonable(cfg)


def test_fit_time_is_unknown_when_the_resumed_checkpoint_did_not_record_it():
    module = PtychoPINN(configs()[0], torch.ones(16, 16, dtype=torch.complex64))
    module.prior_fit_seconds = 12.5  # not fitting in this process: only what earlier processes spent
    assert module.fit_seconds() == 12.5
    module.prior_fit_seconds = None
    assert module.fit_seconds() is None


def test_the_validation_loss_is_the_final_weights_and_every_epoch_loss_weighs_every_item_alike(tiny_data, tmp_path):
    """25 patterns, 5 validating in batches of 3 and 2, 20 training in batches of 6, 6, 6, 2. The recorded
    validation loss (the plateau scheduler's, metrics.json's final_val_loss) and the logged epoch losses are
    means over items at the final weights: each batch's mean loss weighed by its size."""
    cfg, execution = configs(epochs=2, val_fraction=0.2)
    cfg = dataclasses.replace(cfg, batch_size=6)
    run = train(cfg, dataclasses.replace(execution, infer_batch_size=3), tiny_data[0], tmp_path)
    module, val_set = run.module.eval(), run.data.val_set
    assert len(val_set) == 5
    with torch.no_grad():
        batches = [float(module.loss(torch.utils.data.default_collate([val_set[i] for i in idx])))
                   for idx in ([0, 1, 2], [3, 4])]
    item_mean = (3 * batches[0] + 2 * batches[1]) / 5
    assert batches[0] != pytest.approx(batches[1], rel=1e-3)  # else the weights could not tell
    assert module.last_val_loss == pytest.approx(item_mean, rel=1e-5)
    assert float(run.trainer.callback_metrics["val_loss"]) == pytest.approx(item_mean, rel=1e-5)
    last_epoch = [row["loss"] for row in module.history if row["epoch"] == 1]
    sizes = [6, 6, 6, 2]
    assert len(last_epoch) == len(sizes)
    size_weighted = sum(loss * size for loss, size in zip(last_epoch, sizes)) / sum(sizes)
    assert float(run.trainer.callback_metrics["train_loss"]) == pytest.approx(size_weighted, rel=1e-5)


def test_a_plateau_schedule_without_a_validation_loss_is_refused_by_name():
    param = torch.nn.Parameter(torch.ones(1))
    cfg = TrainingConfig(model=tiny_model_config("cnn"), scheduler="ReduceLROnPlateau", val_fraction=0.2)
    scheduler = build_scheduler(torch.optim.SGD([param], lr=1.0), cfg)
    with pytest.raises(RuntimeError, match="no validation ran this epoch"):
        step_scheduler(scheduler, None)


def test_the_parameter_digest_is_equal_for_equal_weights_and_changes_with_any_bit():
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    second.load_state_dict(first.state_dict())
    digest = parameter_digest(first)
    assert len(digest) == 64 and int(digest, 16) >= 0 and parameter_digest(second) == digest
    with torch.no_grad():
        second.bias[0] = torch.nextafter(second.bias[0], torch.tensor(math.inf))
    assert parameter_digest(second) != digest
