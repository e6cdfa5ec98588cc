"""Prediction-time fusion: a convolution and the GELU after it as one oneDNN call.

Without autograd on a CPU (prediction, validation), a ``Conv2d`` followed by a ``GELU`` is computed
by oneDNN with the GELU applied to the convolution's output as it is written: one pass over the
activations instead of three (the convolution, the GELU, and the layout permutes around the
GELU, see ``generators.DenseGELU``). In float32 the values are those of the two layers; under
bf16 autocast the GELU reads the convolution's unrounded float32 sum, so the output is rounded
once instead of twice (within one bf16 step of the unfused layers). With autograd on, the layers
run one by one, as the backward needs their intermediate values.
"""

from __future__ import annotations

import torch
from torch import nn

from ptycho_torch.upsampling import UpsampleConv2d, interleave_phases

# oneDNN's fused convolution, probed in the torch build (absent without oneDNN: the layers then run
# unfused, ``fusable``); a property of the installed torch, not a setting
_POINTWISE_CONV = (torch.ops.mkldnn._convolution_pointwise if hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                   else None)
FUSED_DTYPES = (torch.float32, torch.bfloat16)


class ConvGELUSequential(nn.Sequential):
    """``nn.Sequential`` whose (Conv2d, GELU) neighbours run fused where ``fusable`` says so.

    Parameters and their names are those of ``nn.Sequential``: checkpoints load either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def run(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The layers from index ``start`` on, applied to ``x``."""
        layers = list(self)
        index = start
        while index < len(layers):
            layer, after = layers[index], layers[index + 1] if index + 1 < len(layers) else None
            if isinstance(after, nn.GELU) and fusable(layer, x):
                x = conv_gelu(layer, after, x)
                index += 2
            else:
                x = layer(x)
                index += 1
        return x


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` runs in: autocast's, where it is on."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def fusable(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer`` applied to ``x`` may run fused with a following GELU."""
    return (_POINTWISE_CONV is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.ndim == 4  # oneDNN's op takes batched input only
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled  # the user may turn it off
            and isinstance(layer, nn.Conv2d)
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            and compute_dtype(x) in FUSED_DTYPES and layer.weight.dtype in FUSED_DTYPES)


def conv_gelu(conv: nn.Conv2d, gelu: nn.GELU, x: torch.Tensor) -> torch.Tensor:
    """GELU(conv(x)) in one oneDNN call, answered in channels_last (as every layer of the generators)."""
    if isinstance(conv, UpsampleConv2d):  # the GELU is pointwise: applied to the phases before they interleave
        weight, bias = conv.phase_conv()
        return interleave_phases(_conv_gelu(x, weight, bias, conv, gelu))
    return _conv_gelu(x, conv.weight, conv.bias, conv, gelu).contiguous(memory_format=torch.channels_last)


def _conv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d,
               gelu: nn.GELU) -> torch.Tensor:
    dtype = compute_dtype(x)
    bias = None if bias is None else bias.to(dtype)
    return _POINTWISE_CONV(x.to(dtype), weight.to(dtype), bias, list(conv.padding), list(conv.stride),
                           list(conv.dilation), conv.groups, "gelu", [], gelu.approximate)
