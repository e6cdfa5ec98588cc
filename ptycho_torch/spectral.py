"""The spectral convolution of a Fourier neural operator (Li et al. 2021, arXiv:2010.08895).

    y = irfft2( Z ),   Z[k] = sum_i X_i[k] W[o, i, k] on the kept modes k, 0 elsewhere,   X = rfft2(x)

Kept modes: rows 0..m-1 and H-m..H-1 (positive and negative frequencies) of the first axis and
columns 0..m-1 of rfft2's half spectrum on the second; K = 2m * m of them. (The tests hold the
definition written one mode at a time and check forward and backward against it.)

Why not autograd through rfft2, a complex einsum and irfft2: torch runs those per-mode products
as a complex batched matmul over strided, conjugated views, one small matrix at a time with a
copy of each (thousands of copies per step: 11 ms per layer fwd+bwd at the default size, most of
an fno step), and both FFTs transform every row and column only to drop most of them. Here both
axes go through matrix products with the DFT matrices of exactly the kept columns and rows, in
channels_last layout (B, H, W, C), which leaves the modes contiguous and mode-major: (K, B, in)
against each mode's (in, out) matrix in one batched product. irfft2's weights c_k (1 for column 0
and the Nyquist column, 2 for the others, which stand for their mirror images too) sit inside the
column synthesis matrix, its normalization in both synthesis matrices (1/W and 1/H). The
synthesis works on the real and imaginary planes of the mixed modes (one split of them, then two
real products), so that no complex result has to be split into planes at the full image size. Its
last product can add into an existing channels_last tensor: ``generators.SpectralBlock`` sums the
3x3 convolution and this layer that way, without a pass of its own over the sum.

The backward pass is written out as the adjoint of each linear step in reverse order: analysis
and synthesis are each other's adjoints with conjugate-transposed matrices, so with G = the
adjoint of the synthesis applied to the incoming gradient,

    grad_x = adjoint of the analysis applied to  G W^H    (the layer again, with W^H per mode)
    grad_W[o, k, i] = G_o[k] conj(X_i[k])

It works with conj(G) instead, which the adjoint matrices conjugated give directly (``_transforms``
returns that set: conjugating the row matrices and negating the imaginary rows or columns of the
column matrices conjugates what they produce, or what they consume): conj(G) W^T is conj(G W^H)
with the stored weight read in place (W^H would be a conjugated copy of it), and conj(G)^T X is
conj(grad_W) from two plain operands.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable


# Below this many input channels (the composed lift's C + 1, ``lift``) the column analysis runs as one
# product with an identity-expanded matrix (C times the multiplications, one well-shaped product
# instead of B H tiny ones: 0.02 against 0.2 ms at C = 2, 0.13 against 0.28 at C = 5, slower from
# C = 8, at the default size on this CPU), and the weight gradient's products put the inputs first
# (0.10 against 0.28 ms at C = 2, slower at C = 32).
FEW_CHANNELS = 8


def check_modes(modes: int, height: int, width: int) -> None:
    if 2 * modes > height or modes > width // 2 + 1:
        raise ValueError(f"modes={modes} do not fit a {height}x{width} input (need modes <= size/2)")


class _Transforms(NamedTuple):
    """The four matrices of one input size, and their adjoints (conjugate transposes)."""

    row_analysis: torch.Tensor  # (2m, H) complex: e^{-2 pi i f h / H} for the kept row frequencies f
    column_analysis: torch.Tensor  # (2m, W) real: rows (cos, -sin) of 2 pi c w / W, c < m: rfft's columns
    # the synthesis matrices act on real and imaginary planes (``_planar_synthesis``)
    row_synthesis: torch.Tensor  # (2H, 4m) real: S = e^{+2 pi i f h / H} / H (ifft's normalization) as a real map
    column_synthesis: torch.Tensor  # (W, 2m) real: columns (cos | -sin) * c_c / W: irfft, zero-padded


@functools.lru_cache(maxsize=64)
def _transforms(height: int, width: int, m: int, dtype: torch.dtype, device: torch.device) -> tuple[_Transforms, _Transforms]:
    """(forward, conjugated adjoint) matrices for an (H, W) input and m modes, built in float64.

    With the second set, ``_analyse`` gives the conjugate of the adjoint synthesis and ``_synthesise``
    applies the adjoint analysis to the conjugate of its input."""
    frequencies = torch.cat([torch.arange(m), torch.arange(height - m, height)]).double()  # (2m,)
    row_angles = 2 * math.pi * torch.outer(frequencies, torch.arange(height).double()) / height  # (2m, H)
    row_analysis = torch.polar(torch.ones_like(row_angles), -row_angles)
    column_angles = 2 * math.pi * torch.outer(torch.arange(m).double(), torch.arange(width).double()) / width
    column_analysis = torch.stack([column_angles.cos(), -column_angles.sin()], dim=1).reshape(2 * m, width)
    twice = torch.full((m, 1, 1), 2.0, dtype=torch.float64)  # irfft counts column c for c and its mirror
    twice[0] = 1.0
    if width % 2 == 0 and m == width // 2 + 1:
        twice[-1] = 1.0  # the Nyquist column is its own mirror
    synthesis_rows = (twice * column_analysis.view(m, 2, width) / width).reshape(2 * m, width)
    forward = _Transforms(row_analysis, column_analysis, row_analysis.conj().T / height, synthesis_rows.T)
    # the adjoint's analysis is the forward synthesis conjugate-transposed and vice versa; conjugated,
    # the row matrices are plain transposes, and the real column matrices negate their imaginary part
    imaginary = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(m)  # -1 at the im part of each column c
    conjugated_adjoint = _Transforms(forward.row_synthesis.T, imaginary[:, None] * forward.column_synthesis.T,
                                     forward.row_analysis.T, forward.column_analysis.T * imaginary)

    def cast(matrices: _Transforms) -> _Transforms:
        return _Transforms(*(t.to(device=device, dtype=dtype if not t.is_complex() else dtype.to_complex())
                             .contiguous() for t in _planar_synthesis(matrices)))
    return cast(forward), cast(conjugated_adjoint)


def _planar_synthesis(matrices: _Transforms) -> _Transforms:
    """The synthesis matrices rewritten for real and imaginary planes: the complex row matrix S as the
    real (2H, 4m) map [[Re S, -Im S], [Im S, Re S]] with rows (h, re/im) and columns (re/im, f), the
    column matrix's columns from (c, re/im) to (re/im, c)."""
    rows, columns = matrices.row_synthesis, matrices.column_synthesis
    height, width, m = rows.shape[0], columns.shape[0], columns.shape[1] // 2
    block = torch.stack([torch.cat([rows.real, -rows.imag], dim=1),
                         torch.cat([rows.imag, rows.real], dim=1)], dim=1).reshape(2 * height, 4 * m)
    planar_columns = columns.view(width, m, 2).transpose(1, 2).reshape(width, 2 * m)
    return matrices._replace(row_synthesis=block, column_synthesis=planar_columns)


def _analyse(x: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) real -> (K, B, C) complex: ``columns`` (2m, W) along W, ``rows`` (2m, H) along H.

    With the analysis matrices this is rfft2 on the kept modes; with the adjoint synthesis
    matrices it is the adjoint of ``_synthesise``."""
    batch, height, width, channels = x.shape
    m = columns.shape[0] // 2
    if channels < FEW_CHANNELS:  # one product with columns^T (x) identity: (B H, W C) @ (W C, 2m C)
        identity = torch.eye(channels, dtype=x.dtype, device=x.device)
        along_columns = (x.view(batch * height, width * channels) @ torch.kron(columns.T.contiguous(), identity))
        along_columns = along_columns.view(batch * height, 2 * m, channels)
    else:  # B H small products
        along_columns = torch.matmul(columns, x.view(batch * height, width, channels))  # (B H, 2m, C)
    parts = along_columns.view(batch, height, m, 2, channels).permute(1, 2, 0, 3, 4)  # (H, m, B, re/im, C)
    # torch.complex interleaves the two parts in a vectorized pass (a permuted copy took twice as long)
    by_row = torch.empty(height, m, batch, channels, dtype=x.dtype.to_complex(), device=x.device)
    torch.complex(parts[..., 0, :], parts[..., 1, :], out=by_row)
    by_row = by_row.view(height, m * batch * channels)  # (H, m B C)
    return (rows @ by_row).view(-1, batch, channels)  # (2m, m B C) = (K, B, C)


def _synthesise(modes: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                add_to: torch.Tensor | None = None) -> torch.Tensor:
    """(K, B, C) complex -> (B, H, W, C) real: ``rows`` (2H, 4m) along H, ``columns`` (W, 2m) along W
    (``_planar_synthesis``), one image at a time, so that the result comes out in the layout the
    convolutions use. With ``add_to`` (B, H, W, C) contiguous, the result is added into it by the
    last product (no separate pass over the sum) and ``add_to`` is returned.

    With the synthesis matrices this is irfft2 of the kept modes (0 elsewhere); with the adjoint
    analysis matrices it is the adjoint of ``_analyse``."""
    _, batch, channels = modes.shape
    height, width, m = rows.shape[0] // 2, columns.shape[0], columns.shape[1] // 2
    # per image, the modes' real and imaginary planes as one ((re/im, f), (c, C)) matrix: the only
    # stride-2 read here
    planes = torch.view_as_real(modes).permute(1, 3, 0, 2).contiguous().view(batch, 4 * m, m * channels)
    by_row = torch.matmul(rows, planes).view(batch * height, 2 * m, channels)  # (B H, (re/im, c), C)
    if add_to is None:
        return torch.matmul(columns, by_row).view(batch, height, width, channels)
    add_to.view(batch * height, width, channels).baddbmm_(columns.expand(batch * height, -1, -1), by_row)
    return add_to


class _SpectralConv(torch.autograd.Function):
    """x (B, in, H, W) real, weight (out, 2m, m, in, 2) real -> (B, out, H, W) channels_last; with
    ``add_to`` (B, out, H, W) channels_last, the result is added into it in place."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, modes: int, add_to: torch.Tensor | None) -> torch.Tensor:
        height, width = x.shape[2:]
        forward, conjugated_adjoint = _transforms(height, width, modes, x.dtype, x.device)
        out_channels, in_channels = weight.shape[0], weight.shape[3]
        stored = torch.view_as_complex(weight).view(out_channels, -1, in_channels)  # (out, K, in)
        x_modes = _analyse(_pixels(x), forward.row_analysis, forward.column_analysis)  # (K, B, in)
        ctx.save_for_backward(x_modes, stored)
        ctx.conjugated_adjoint = conjugated_adjoint
        ctx.weight_shape = weight.shape
        mixed = torch.bmm(x_modes, stored.permute(1, 2, 0))  # (K, B, out)
        if add_to is None:
            return _synthesise(mixed, forward.row_synthesis, forward.column_synthesis).permute(0, 3, 1, 2)
        ctx.mark_dirty(add_to)
        _synthesise(mixed, forward.row_synthesis, forward.column_synthesis, add_to.permute(0, 2, 3, 1))
        return add_to

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # The backward runs in the caller's autocast state (Lightning calls it inside the training
        # step's bf16 autocast): the DFT products must stay float32 there too, as in the forward.
        with torch.autocast(device_type=grad.device.type, enabled=False):
            return _SpectralConv._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: torch.Tensor):
        x_modes, stored = ctx.saved_tensors
        conjugated = ctx.conjugated_adjoint
        g_conj = _analyse(_pixels(grad), conjugated.row_analysis, conjugated.column_analysis)  # conj(G) (K, B, out)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # conj(G) W^T per mode = conj(G W^H); the synthesis conjugates it back
            grad_x = _synthesise(torch.bmm(g_conj, stored.transpose(0, 1)), conjugated.row_synthesis,
                                 conjugated.column_synthesis).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            per_mode = torch.empty(stored.shape, dtype=stored.dtype, device=stored.device)  # (out, K, in)
            if x_modes.shape[2] < FEW_CHANNELS:  # the products' short side first: faster for few inputs
                conj_per_mode = torch.bmm(x_modes.transpose(1, 2), g_conj)  # (K, in, out)
                torch.conj_physical(conj_per_mode.permute(2, 0, 1), out=per_mode)
            else:
                conj_per_mode = torch.bmm(g_conj.transpose(1, 2), x_modes)  # conj(G^T conj(X)): (K, out, in)
                torch.conj_physical(conj_per_mode.transpose(0, 1), out=per_mode)
            grad_w = torch.view_as_real(per_mode).view(ctx.weight_shape)
        return grad_x, grad_w, None, grad if ctx.needs_input_grad[3] else None


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) contiguous: a view when ``x`` is channels_last."""
    return x.permute(0, 2, 3, 1).contiguous()


def spectral_conv(x: torch.Tensor, weight: torch.Tensor, modes: int, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """(B, in, H, W) real, weight (out, 2m, m, in, 2) real (re, im) of x's dtype -> (B, out, H, W)
    channels_last.

    ``add_to`` (B, out, H, W): the result is ``add_to`` + the layer, computed in ``add_to``'s memory
    when it is a channels_last tensor of x's dtype (the caller gives it up: it is overwritten)."""
    height, width = x.shape[-2:]
    check_modes(modes, height, width)
    if add_to is not None and not _summable_in_place(add_to, x, weight.shape[0]):
        return add_to + _SpectralConv.apply(x, weight, modes, None)
    return _SpectralConv.apply(x, weight, modes, add_to)


def _summable_in_place(add_to: torch.Tensor, x: torch.Tensor, out_channels: int) -> bool:
    batch, _, height, width = x.shape
    return (add_to.shape == (batch, out_channels, height, width) and add_to.dtype == x.dtype
            and add_to.device == x.device and add_to.is_contiguous(memory_format=torch.channels_last)
            and add_to._base is None  # not a view: the in-place sum must not reach other tensors
            and not (add_to.is_leaf and add_to.requires_grad))  # autograd forbids writing into those
