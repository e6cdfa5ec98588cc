"""The fno's and hybrid's lift composed into the first spectral block that reads it.

The lift is a 1x1 convolution from the C = gridsize^2 input patterns to ``width`` channels,
x = A a + b per pixel, and the block after it computes x + GELU(K x + W x) with two linear maps
of x: a 3x3 convolution W (zero padding) and a spectral convolution K. A linear map of a linear
map is one linear map, so

    W x = W' [a; 1],   K x = K' [a; 1],   W' = W M,  K' = K M  over input channels,  M = [A | b]

where [a; 1] is the input with a constant channel of ones appended (outside the image it is the
convolution's zero padding, as x is there: x = M [a; 1] pixel by pixel, and 0 = M 0). The two maps
then read C + 1 channels instead of ``width`` (2 instead of 32 at gridsize 1): the 3x3 convolution
does 1/16 of its multiplications, the spectral analysis transforms 2 channels instead of 32, and
neither computes a gradient for its input (the patterns need none; the lift's parameters get theirs
through M). The lifted x itself is still computed, for the block's residual sum.

The values are those of the lift followed by the block, up to float rounding (the sums run in
another order; property-tested forward and backward). The composed weights are rebuilt from the
stored ones on every call (the parameters, their names and checkpoints are unchanged), in float32
both ways also under autocast: Lightning runs the backward inside the step's bf16 autocast, where
autograd's own products would round the composed weights' gradients to bf16.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def lift_matrix(lift: nn.Conv2d) -> torch.Tensor:
    """M = [A | b]: (width, C + 1) for a lift with a bias, A alone (width, C) without one."""
    matrix = lift.weight.view(lift.out_channels, lift.in_channels)
    return matrix if lift.bias is None else torch.cat([matrix, lift.bias[:, None]], dim=1)


def lifted_inputs(x: torch.Tensor, lift: nn.Conv2d) -> torch.Tensor:
    """[x; 1] (B, C + 1, H, W) channels_last for a lift with a bias (the bias's constant channel), else x."""
    if lift.bias is None:
        return x
    ones = torch.ones(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    return torch.cat([x, ones], dim=1).contiguous(memory_format=torch.channels_last)


class _ComposeChannels(torch.autograd.Function):
    """rows (P, in) real or complex, matrix (in, J) real -> rows @ matrix (P, J), in float32 (or the
    rows' dtype) both ways, whatever autocast says."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, matrix)
        with torch.autocast(device_type=rows.device.type, enabled=False):
            return _few_columns(rows, matrix)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, matrix = ctx.saved_tensors
        grad_rows = grad_matrix = None
        with torch.autocast(device_type=grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:  # the matrix is real: its adjoint is its transpose
                grad_rows = _times_real(grad, matrix.T)
            if ctx.needs_input_grad[1]:  # a real matrix takes the real part of rows^H grad
                grad_matrix = _real_inner_products(rows, grad).to(matrix.dtype)
        return grad_rows, grad_matrix


# The products here have a long axis P (the weight's out kh kw or out 2m m rows: 9216 for the fno's
# spectral weight) and a short one J = C + 1. Written with P as the result's last axis, BLAS gets a
# wide product instead of a tall one with J columns: at the fno's spectral weight on this CPU the
# composition 0.45 -> 0.11 ms, its matrix gradient 0.44 -> 0.12 ms (warm caches).

def _few_columns(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """rows (P, in) @ matrix (in, J) computed as (matrix^T rows^T)^T, contiguous."""
    return (matrix.T.to(rows.dtype) @ rows.T).T.contiguous()


def _real_inner_products(rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Re(rows^H grad): (in, J) from rows (P, in) and grad (P, J), real or complex alike. Complex
    operands as their (re, im) planes: Re(conj(r) g) = Re r Re g + Im r Im g, summed over P in one
    real product (P, (J, re/im))^T @ (P, (in, re/im))."""
    if not rows.is_complex():
        return (grad.T @ rows).T
    (count, inner), outer = rows.shape, grad.shape[1]
    row_planes = torch.view_as_real(rows.resolve_conj()).reshape(count, 2 * inner)
    grad_planes = torch.view_as_real(grad.resolve_conj()).reshape(count, 2 * outer)
    products = (grad_planes.T @ row_planes).view(outer, 2, inner, 2)  # (J, re/im, in, re/im)
    return (products[:, 0, :, 0] + products[:, 1, :, 1]).T


def _times_real(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """rows (P, J) real or complex @ matrix (J, I) real. Complex rows as one real product of their
    (re, im) planes with matrix (x) the 2x2 identity: MKL's complex product with so short an inner
    axis (J = C + 1) took 4x as long (0.34 against 0.09 ms for the fno's spectral weight here)."""
    if not rows.is_complex():
        return rows @ matrix.to(rows.dtype)
    (count, inner), outer = rows.shape, matrix.shape[1]
    planes = torch.view_as_real(rows.resolve_conj()).reshape(count, 2 * inner)  # (P, (J, re/im))
    identity = torch.eye(2, dtype=planes.dtype, device=planes.device)
    product = planes @ torch.kron(matrix.to(planes.dtype).contiguous(), identity)  # (P, (I, re/im))
    return torch.view_as_complex(product.reshape(count, outer, 2))


def compose_channels(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``rows @ matrix``: a weight's input-channel axis (last of ``rows``) mapped through ``matrix``."""
    return _ComposeChannels.apply(rows, matrix)


def composed_conv_weight(conv: nn.Conv2d, matrix: torch.Tensor) -> torch.Tensor:
    """W' = W M: (out, J, kh, kw) channels_last from ``conv``'s (out, in, kh, kw) weight."""
    out_channels, _, kh, kw = conv.weight.shape
    rows = conv.weight.permute(0, 2, 3, 1).reshape(out_channels * kh * kw, -1)  # a view when channels_last
    composed = compose_channels(rows, matrix)  # (out kh kw, J)
    return composed.view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)


def composed_spectral_weight(weight: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """K' = K M: (out, 2m, m, J, 2) from a spectral weight (out, 2m, m, in, 2) (re, im) in float32."""
    rows = torch.view_as_complex(weight.float()).reshape(-1, weight.shape[3])  # (out 2m m, in) complex
    composed = compose_channels(rows, matrix.float())  # (out 2m m, J)
    return torch.view_as_real(composed.view(*weight.shape[:3], -1))


def plain_conv(conv: nn.Module) -> bool:
    """A plain Conv2d (no subclass with a forward of its own) that pads with zeros and has no stride,
    dilation or groups: one the composition holds for."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def composable(lift: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether composing ``lift`` into the next block pays: fewer input channels than it lifts to."""
    extra = 0 if lift.bias is None else 1
    return x.ndim == 4 and lift.in_channels + extra < lift.out_channels


def lifted_block(lift: nn.Conv2d, local: nn.Conv2d, spectral: nn.Module, act: nn.Module,
                 x: torch.Tensor) -> torch.Tensor:
    """``lift(x) + act(spectral(lift(x)) + local(lift(x)))`` with the lift composed into ``local`` and
    ``spectral`` (module docstring); ``spectral`` is a ``generators.SpectralConv2d``."""
    matrix = lift_matrix(lift)
    inputs = lifted_inputs(x, lift)
    local_out = F.conv2d(inputs, composed_conv_weight(local, matrix), local.bias, padding=local.padding)
    local_out = local_out.contiguous(memory_format=torch.channels_last)  # one input channel: oneDNN's own layout
    mixed = spectral.with_weight(inputs, composed_spectral_weight(spectral.weight, matrix), add_to=local_out)
    return lift(x) + act(mixed)
