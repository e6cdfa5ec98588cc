"""Gradient clipping and gradient norms, in plain torch (no Lightning).

Algorithms (named by ``config.CLIP_ALGORITHMS``; ``clip_val`` None or 0 = off):
- ``norm``: scale every gradient by min(1, c / (||G||_2 + 1e-6)), ||G||_2 the global L2 norm.
- ``value``: clamp each gradient element to [-c, c].
- ``agc``: unit-wise adaptive gradient clipping (Brock, De, Smith, Simonyan 2021,
  arXiv:2102.06171, section 4.1): for each unit i of a parameter W with gradient G,
  if ||G_i|| / max(||W_i||, eps) > lambda then G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i,
  eps = 1e-3, lambda = c. A unit is a slice along dim 0 (a row of a linear weight, an output
  filter of a convolution); a 0-d or 1-d parameter (bias, norm scale) is one unit.

Where to call it: on the unscaled gradients of the step, after backward and before
``optimizer.step()``. Under fp16 AMP with Lightning's manual optimization the gradients in
``training_step`` are still multiplied by the loss scale; call ``clip_gradients_`` from the
LightningModule's ``on_before_optimizer_step`` hook, which runs after the scaler unscaled them
(Lightning #18089), except for an optimizer that unscales inside its own step (a fused Adam), whose
gradients the hook must unscale itself (``PtychoPINN``). Check ``grads_finite`` first: a single NaN
makes ``norm`` clipping write NaN into every gradient.

No function here synchronizes with the host per parameter: norms are fused (``_foreach_norm``)
or computed per tensor on the device, and the result stays a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real

import torch
from torch import nn

from ptycho_torch.config import CLIP_ALGORITHMS

AGC_EPS = 1e-3  # floor on ||W_i|| so that zero-initialized units can still learn (Brock et al.)

Params = Iterable[torch.Tensor] | torch.Tensor


def _with_grads(params: Params) -> list[torch.Tensor]:
    params = [params] if isinstance(params, torch.Tensor) else params
    return [p for p in params if p.grad is not None]


def global_grad_norm(params: Params) -> torch.Tensor:
    """Global L2 norm over every gradient, 0-d float32 on the gradients' device (0 if none)."""
    grads = [p.grad for p in _with_grads(params)]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    return nn.utils.get_total_norm(grads, norm_type=2.0).to(torch.float32)  # per-tensor norms fused


def grads_finite(params: Params) -> torch.Tensor:
    """0-d bool tensor: True when no gradient element is NaN or inf.

    The max-abs norm propagates NaN and inf and, unlike the L2 norm, cannot overflow on
    large finite values, so one fused reduction answers the question exactly.
    """
    grads = [p.grad for p in _with_grads(params)]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    device = grads[0].device
    largest = torch.stack([n.to(device) for n in torch._foreach_norm(grads, math.inf)])  # (P,)
    return torch.isfinite(largest).all()


def _unit_norms(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of each unit (slice along dim 0), in float32 or wider, shaped to broadcast against ``tensor``."""
    dims = tuple(range(1, tensor.ndim)) if tensor.ndim > 1 else None  # None: the whole tensor
    dtype = torch.promote_types(tensor.dtype, torch.float32)  # float64 may not be narrowed
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True, dtype=dtype)


def _agc_norms(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||G_i||, max(||W_i||, eps)) per unit of one parameter, broadcastable to its shape."""
    return _unit_norms(param.grad), _unit_norms(param.detach()).clamp_min(AGC_EPS)


def agc_unit_ratios(params: Params) -> list[torch.Tensor]:
    """Per parameter with a gradient: ||G_i|| / max(||W_i||, eps) for each unit, shape (units,)."""
    ratios = []
    for param in _with_grads(params):
        grad_norm, weight_norm = _agc_norms(param)
        ratios.append((grad_norm / weight_norm).reshape(-1))  # (units,)
    return ratios


def _agc_(params: list[torch.Tensor], lam: float) -> None:
    for param in params:  # one small kernel chain per parameter, no host sync
        grad_norm, weight_norm = _agc_norms(param)
        max_norm = lam * weight_norm
        # Units within the bound get a factor of exactly 1, which leaves them bitwise unchanged. A unit
        # that is scaled has ||G_i|| > max_norm >= 0, so its division needs no floor (one would bend
        # the factor for tiny norms); the other units' quotient (x / 0 included) is discarded.
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm, 1.0)
        param.grad.mul_(scale.to(param.grad.dtype))


def _clip_value_(params: list[torch.Tensor], clip_val: float) -> None:
    """Clamp to [-c, c] per gradient dtype, c capped at the dtype's largest finite value.

    torch refuses a clamp bound its dtype cannot hold (1e5 for float16, anything past 3.4e38 for
    float32); clamping to the largest finite value is what such a bound means for those elements.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in params:
        by_dtype.setdefault(param.grad.dtype, []).append(param)
    for dtype, group in by_dtype.items():
        nn.utils.clip_grad_value_(group, clip_value=min(clip_val, torch.finfo(dtype).max))


def check_clip_args(algorithm: str, clip_val: float | None) -> None:
    """Raise ValueError naming the problem; torch itself accepts negative or NaN clip values."""
    if algorithm not in CLIP_ALGORITHMS:
        raise ValueError(f"gradient_clip_algorithm={algorithm!r}: must be one of {', '.join(CLIP_ALGORITHMS)}")
    if clip_val is None:
        return
    if isinstance(clip_val, bool) or not isinstance(clip_val, Real) or not math.isfinite(clip_val) or clip_val < 0:
        raise ValueError(
            f"gradient_clip_val={clip_val!r}: must be None/0 (off) or a finite number > 0 "
            "(negative, NaN and inf are refused)"
        )


def clip_gradients_(params: Params, algorithm: str, clip_val: float | None) -> None:
    """Clip the gradients of ``params`` in place; ``clip_val`` None or 0 leaves them untouched.

    ``algorithm``: ``norm`` (global L2 max norm c), ``value`` (elements to [-c, c]) or ``agc``
    (unit-wise, lambda = c). Run it on unscaled gradients (see the module docstring).
    """
    check_clip_args(algorithm, clip_val)
    if not clip_val:
        return
    params = _with_grads(params)
    if algorithm == "norm":
        nn.utils.clip_grad_norm_(params, max_norm=float(clip_val))  # factor min(1, c / (norm + 1e-6))
    elif algorithm == "value":
        _clip_value_(params, float(clip_val))
    else:
        _agc_(params, float(clip_val))
