"""Generators: shapes and dtypes, head ranges, gradient flow, registry, determinism, and the spectral convolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptycho_torch.config import ARCHITECTURES, GENERATOR_OUTPUT_MODES
from ptycho_torch.generators import (GENERATORS, ComplexHead, DenseGELU, PointwiseConv2d, SpectralBlock,
                                     SpectralConv2d, build_generator, halvings, tiny_model_config)
from ptycho_torch.spectral import spectral_conv
from tests.helpers import assert_layer_matches, examples
from tests.strategies import circular_shifts, seeds

SIZES = (16, 32, 64, 128, 256)


def amplitudes(batch: int, N: int, seed: int = 0) -> torch.Tensor:
    """(batch, N, N) float32 non-negative amplitudes with a bright centre, like a diffraction pattern."""
    gen = torch.Generator().manual_seed(seed)
    radius = torch.linspace(-1, 1, N).square()
    peak = 20.0 * torch.exp(-(radius[:, None] + radius[None, :]) / 0.02)  # (N, N)
    return peak + torch.rand(batch, N, N, generator=gen)


def seeded_generator(seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return build_generator(tiny_model_config(**cfg))


def test_registry_keys_equal_config_architectures():
    assert tuple(GENERATORS) == ARCHITECTURES


@pytest.mark.parametrize("N", (16, 64, 256))
@pytest.mark.parametrize("mode", GENERATOR_OUTPUT_MODES)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_output_is_complex64_patch_of_input_size(architecture, mode, N):
    generator = seeded_generator(architecture=architecture, N=N, generator_output_mode=mode)
    out = generator(amplitudes(2, N))
    assert out.shape == (2, N, N) and out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()


@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_size_works_with_one_and_with_the_most_modes(architecture, N):
    for modes in (1, N // 2):
        generator = seeded_generator(architecture=architecture, N=N, fno_modes=modes)
        assert generator(amplitudes(1, N).unsqueeze(1)).shape == (1, N, N)  # (B, 1, N, N) input too


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_wrong_input_shape_is_refused(architecture):
    generator = seeded_generator(architecture=architecture, N=16)
    with pytest.raises(ValueError, match="amplitude must be"):
        generator(amplitudes(2, 32))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_amp_phase_head_keeps_amplitude_in_unit_interval_and_phase_within_pi(architecture):
    generator = seeded_generator(architecture=architecture, N=32, generator_output_mode="amp_phase")
    out = generator(amplitudes(4, 32)).detach()
    assert ((out.abs() > 0) & (out.abs() < 1)).all()
    assert (out.angle().abs() <= math.pi).all()


@pytest.mark.parametrize("mode", GENERATOR_OUTPUT_MODES)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_reach_every_parameter(architecture, mode):
    generator = seeded_generator(architecture=architecture, N=16, generator_output_mode=mode)
    out = generator(amplitudes(2, 16))
    weights = torch.randn(2, 16, 16, 2, generator=torch.Generator().manual_seed(1))
    (torch.view_as_real(out) * weights).sum().backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_seed_gives_bitwise_identical_outputs(architecture):
    first, second = (seeded_generator(7, architecture=architecture, N=32)(amplitudes(2, 32)) for _ in range(2))
    assert torch.equal(first, second)
    other = seeded_generator(8, architecture=architecture, N=32)(amplitudes(2, 32))
    assert not torch.equal(first, other)


# Each size field the architecture reads changes the parameter count (a dead field would not).
SIZE_FIELDS = [
    ("cnn", "cnn_channels", 8),
    ("fno", "fno_modes", 2),
    ("fno", "fno_width", 12),
    ("fno", "fno_blocks", 3),
    ("fno", "fno_cnn_blocks", 2),
    ("hybrid", "cnn_channels", 8),
    ("hybrid", "fno_modes", 2),
    ("hybrid", "fno_width", 12),
    ("hybrid", "fno_blocks", 3),
]


@pytest.mark.parametrize("architecture, name, value", SIZE_FIELDS, ids=[f"{a}-{n}" for a, n, _ in SIZE_FIELDS])
def test_each_size_field_changes_the_model(architecture, name, value):
    def count(**overrides) -> int:
        return sum(p.numel() for p in build_generator(tiny_model_config(architecture, 32, **overrides)).parameters())

    assert count(**{name: value}) != count()


@pytest.mark.parametrize("N, bottleneck", [(16, (8, 8, 8)), (64, (32, 8, 8)), (256, (32, 8, 8))])
def test_the_cnn_halves_down_to_8x8_and_doubles_its_channels_at_most_three_times(N, bottleneck):
    """cnn_channels 4: the encoder's last features are 8x8 pixels, with 4 * 2**min(levels, 3) channels."""
    generator = seeded_generator(architecture="cnn", N=N, cnn_channels=4)
    seen = []
    generator.body[-1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    generator(amplitudes(1, N))
    assert tuple(seen[0][1:]) == bottleneck


@pytest.mark.parametrize("size, minimum, most, count", [
    (4, 8, None, 0), (8, 8, None, 0), (15, 8, None, 0), (16, 8, None, 1), (64, 8, None, 3), (64, 8, 2, 2),
])
def test_halvings_counts_the_halvings_that_stay_at_or_above_the_minimum(size, minimum, most, count):
    assert halvings(size, minimum, most) == count


@pytest.mark.parametrize("mode", GENERATOR_OUTPUT_MODES)
def test_the_head_reads_its_first_channels_as_amplitude_or_real_part_and_the_others_as_phase_or_imaginary_part(mode):
    """Channels [0, P) and [P, 2P) of the projection, P patches: a checkpoint's meaning of each channel."""
    torch.manual_seed(0)
    head = ComplexHead(3, mode, patches=2)
    features = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        first, second = head.project(features).split(2, dim=1)  # 2 x (B, P, n, n)
        out = head(features)
    if mode == "amp_phase":
        expected = torch.polar(torch.sigmoid(first), math.pi * torch.tanh(second))
    else:
        expected = torch.complex(first, second)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_every_convolution_weight_of_the_generators_is_channels_last():
    for architecture in ARCHITECTURES:
        for gridsize in (1, 2):
            model = build_generator(tiny_model_config(architecture, gridsize=gridsize))
            plain = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
                     and not m.weight.is_contiguous(memory_format=torch.channels_last)]
            assert plain == [], (architecture, gridsize)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_output_mode_changes_the_output(architecture):
    amp_phase, real_imag = (
        seeded_generator(architecture=architecture, N=16, generator_output_mode=mode)(amplitudes(1, 16))
        for mode in ("amp_phase", "real_imag")
    )
    assert not torch.allclose(amp_phase, real_imag)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_runs_under_bf16_autocast(architecture):
    generator = seeded_generator(architecture=architecture, N=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generator(amplitudes(2, 16))
    assert out.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(out)).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_few_adam_steps_fit_a_fixed_object(architecture):
    """Short convergence check: the network can move its output towards a target."""
    generator = seeded_generator(architecture=architecture, N=16, generator_output_mode="real_imag")
    x = amplitudes(2, 16)
    target = torch.polar(torch.full((2, 16, 16), 0.8), torch.full((2, 16, 16), 0.5))
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (generator(x) - target).abs().square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


# --- the spectral convolution on its own ---------------------------------------------------

def numpy_spectral_conv(x: np.ndarray, weight: np.ndarray, modes: int) -> np.ndarray:
    """Reference: (B, I, n, n) real, (O, 2m, m, I) complex -> (B, O, n, n), loops over kept modes."""
    batch, _, n, _ = x.shape
    x_ft = np.fft.rfft2(x.astype(np.float64))  # (B, I, n, n//2+1) complex128
    out_ft = np.zeros((batch, weight.shape[0], n, n // 2 + 1), dtype=np.complex128)
    rows = list(range(modes)) + list(range(n - modes, n))  # positive then negative frequencies
    for k, row in enumerate(rows):
        for col in range(modes):
            out_ft[:, :, row, col] = x_ft[:, :, row, col] @ weight[:, k, col, :].T  # (B, I) @ (I, O)
    return np.fft.irfft2(out_ft, s=(n, n))


@pytest.mark.parametrize("modes", (1, 3, 8), ids=lambda m: f"modes{m}")
def test_spectral_conv_agrees_with_numpy_reference(modes):
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 2, modes)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = numpy_spectral_conv(x.numpy(), torch.view_as_complex(layer.weight.detach()).numpy(), modes)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=0, atol=2e-6)


def test_spectral_conv_with_all_modes_and_identity_weights_keeps_all_but_the_nyquist_column():
    n, modes = 16, 8
    layer = SpectralConv2d(1, 1, modes)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[..., 0] = 1.0  # weight 1 + 0i on every kept mode
    x = torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(2))
    spectrum = np.fft.rfft2(x.numpy().astype(np.float64))
    spectrum[..., n // 2] = 0  # rfft2 column n/2 (Nyquist) lies outside the kept modes
    np.testing.assert_allclose(layer(x).detach().numpy(), np.fft.irfft2(spectrum, s=(n, n)), atol=2e-6)


@settings(deadline=None, max_examples=examples(20))
@given(shift=circular_shifts, seed=seeds)
def test_spectral_conv_commutes_with_circular_shifts(shift, seed):
    torch.manual_seed(seed % 1000)
    layer = SpectralConv2d(2, 3, 5)
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(seed))
    shifted_first = layer(torch.roll(x, shift, dims=(-2, -1)))
    shifted_after = torch.roll(layer(x), shift, dims=(-2, -1))
    torch.testing.assert_close(shifted_first, shifted_after, rtol=0, atol=2e-6)


def test_spectral_conv_refuses_modes_that_do_not_fit():
    with pytest.raises(ValueError, match="modes=9"):
        SpectralConv2d(1, 1, 9)(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("height, width, modes, fits", [
    (32, 8, 5, True), (32, 8, 6, False), (10, 32, 5, True), (10, 32, 6, False),
], ids=["width's half spectrum", "past it", "half the height", "past it on the height"])
def test_spectral_conv_keeps_at_most_half_the_height_and_the_widths_half_spectrum(height, width, modes, fits):
    layer = SpectralConv2d(1, 1, modes)
    x = torch.zeros(1, 1, height, width)
    if fits:
        assert layer(x).shape == x.shape
    else:
        with pytest.raises(ValueError, match=f"modes={modes}"):
            layer(x)


def per_mode_spectral_conv(x: torch.Tensor, weight: torch.Tensor, modes: int) -> torch.Tensor:
    """The definition, one kept mode at a time, differentiable by autograd: (B, I, H, W) real,
    weight (O, 2m, m, I, 2) real -> (B, O, H, W)."""
    height, width = x.shape[-2:]
    x_ft = torch.fft.rfft2(x)  # (B, I, H, W//2+1)
    w = torch.view_as_complex(weight)  # (O, 2m, m, I)
    rows = list(range(modes)) + list(range(height - modes, height))
    out_ft = torch.zeros(x.shape[0], w.shape[0], height, width // 2 + 1, dtype=x_ft.dtype)
    for k, row in enumerate(rows):
        for col in range(modes):
            out_ft[:, :, row, col] = x_ft[:, :, row, col] @ w[:, k, col, :].T  # (B, I) @ (I, O)
    return torch.fft.irfft2(out_ft, s=(height, width))


@st.composite
def spectral_cases(draw):
    """Odd and even sizes, rectangular inputs, every legal mode count up to the Nyquist column."""
    height, width = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    modes = draw(st.integers(1, min(height // 2, width // 2 + 1)))
    # channels on both sides of spectral.FEW_CHANNELS (two ways to compute the analysis of the input
    # and of the output's gradient, and the weight's gradient)
    return (draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.integers(1, 10)), height, width, modes,
            draw(seeds))


@settings(deadline=None, max_examples=examples(60))
@given(case=spectral_cases())
@example(case=(2, 2, 3, 8, 6, 4, 0))  # m = W/2 + 1: the Nyquist column is kept (irfft2 counts it once)
@example(case=(2, 3, 2, 7, 9, 3, 1))  # odd sizes
@example(case=(2, 2, 9, 6, 7, 3, 2))  # channels as in the composed lift: few in, many out
@example(case=(2, 9, 9, 6, 7, 3, 3))  # many in and out
def test_spectral_conv_equals_the_per_mode_definition_forward_and_backward(case):
    batch, ins, outs, height, width, modes, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ins, height, width, generator=gen, requires_grad=True)
    weight = torch.randn(outs, 2 * modes, modes, ins, 2, generator=gen, requires_grad=True)
    upstream = torch.randn(batch, outs, height, width, generator=gen)  # d loss / d output
    fast = spectral_conv(x, weight, modes)
    fast_grads = torch.autograd.grad((fast * upstream).sum(), (x, weight))
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    exact = per_mode_spectral_conv(x64, w64, modes)
    exact_grads = torch.autograd.grad((exact * upstream.double()).sum(), (x64, w64))
    scale = 1 + exact.abs().max().item()
    torch.testing.assert_close(fast, exact.float(), rtol=0, atol=2e-5 * scale)
    for name, got, want in zip(("x", "weight"), fast_grads, exact_grads):
        tolerance = 2e-5 * (1 + want.abs().max().item())
        torch.testing.assert_close(got, want.float(), rtol=0, atol=tolerance, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("architecture", ["fno", "hybrid"])
def test_spectral_gradients_are_float32_when_the_backward_runs_inside_bf16_autocast(architecture):
    """Lightning's manual optimization calls backward inside the training step's autocast: the
    spectral layer's backward must still compute its DFT products in float32 (it crashed there, and
    before that it silently ran them in bf16), so its gradients equal a backward outside autocast."""
    grads = []
    for inside in (False, True):
        generator = seeded_generator(architecture=architecture, N=16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = generator(amplitudes(3, 16)).abs().square().sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append({name: p.grad for name, p in generator.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_spectral_conv_gradients_pass_gradcheck_in_double():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(3, 4, 2, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: spectral_conv(a, b, 2).double(), (x, weight))
    start = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(  # added into a channels_last tensor, in place
        lambda a, b, c: spectral_conv(a, b, 2, add_to=c.clone(memory_format=torch.channels_last)), (x, weight, start))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 24), st.integers(1, 12), st.integers(1, 12), seeds,
       st.sampled_from([torch.float32, torch.bfloat16]))
def test_dense_gelu_equals_gelu_of_a_contiguous_tensor_and_keeps_channels_last(batch, channels, h, w, seed, dtype):
    """Bit for bit, forward and backward, whatever the layout it is given."""
    gen = torch.Generator().manual_seed(seed)
    plain = torch.randn(batch, channels, h, w, generator=gen).to(dtype)
    upstream = torch.randn(batch, channels, h, w, generator=gen).to(dtype)
    reference = plain.clone().requires_grad_()
    expected = torch.nn.functional.gelu(reference)
    expected.backward(upstream)
    for layout in (torch.channels_last, torch.contiguous_format):
        x = plain.clone(memory_format=layout).requires_grad_()
        out = DenseGELU()(x)
        out.backward(upstream.contiguous(memory_format=layout))
        assert torch.equal(out, expected) and torch.equal(x.grad, reference.grad)
        assert out.is_contiguous(memory_format=layout)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 40), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.sampled_from([torch.channels_last, torch.contiguous_format]), seeds)
def test_pointwise_conv_equals_a_1x1_convolution_forward_and_backward(batch, inputs, outputs, h, w, bias, layout, seed):
    """The matrix-product 1x1 layer against torch's convolution with the same parameters, any layout
    in, channels_last out."""
    gen = torch.Generator().manual_seed(seed)
    layer = PointwiseConv2d(inputs, outputs)
    if not bias:
        layer.bias = None
    plain = torch.randn(batch, inputs, h, w, generator=gen)
    upstream = torch.randn(batch, outputs, h, w, generator=gen)
    assert_layer_matches(layer, lambda x: torch.nn.functional.conv2d(x, layer.weight, layer.bias), plain,
                         upstream, layout)


def test_a_1x1_convolutions_checkpoint_loads_into_the_matrix_product_layer_and_answers_alike():
    conv, x = torch.nn.Conv2d(3, 5, 1), torch.randn(2, 3, 4, 4)
    layer = PointwiseConv2d(3, 5)
    layer.load_state_dict(conv.state_dict())  # strict: same names and shapes
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x[0]), conv(x[0]), rtol=1e-5, atol=1e-6)  # unbatched, as nn.Conv2d allows


def test_pointwise_conv_follows_bf16_autocast_like_a_convolution():
    layer, x = PointwiseConv2d(3, 5), torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, reference = layer(x), torch.nn.functional.conv2d(x, layer.weight, layer.bias)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=2e-2)


def test_every_1x1_convolution_of_the_generators_is_the_matrix_product_layer():
    for architecture in ARCHITECTURES:
        for gridsize in (1, 2):
            model = build_generator(tiny_model_config(architecture, gridsize=gridsize))
            pointwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
            assert pointwise and all(isinstance(m, PointwiseConv2d) for m in pointwise), (architecture, gridsize)


def test_a_spectral_block_answers_in_channels_last_and_so_does_its_input_gradient():
    """Every later layer would convert if the block's sum, its output or its input gradient left
    the convolutions' channels_last layout."""
    block = SpectralBlock(6, 3)
    block.local.to(memory_format=torch.channels_last)
    summed = []
    block.act.register_forward_hook(lambda module, inputs, output: summed.append(inputs[0]))
    x = torch.randn(3, 6, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = block(x)
    out.backward(torch.randn_like(out))
    assert summed[0].is_contiguous(memory_format=torch.channels_last)  # what the GELU (and its backward) reads
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@st.composite
def summands(draw):
    """A spectral case and what its result is added to: a channels_last float32 tensor (summed in
    place), or one the layer must not write into (another layout, a view, another dtype, a leaf
    that requires grad)."""
    batch, ins, outs, height, width, modes, seed = draw(spectral_cases())
    kind = draw(st.sampled_from(["channels_last", "contiguous", "view", "float64", "leaf"]))
    return batch, ins, outs, height, width, modes, seed, kind


def addend(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "view":  # a slice of a larger tensor, itself channels_last contiguous
        return torch.randn(shape[0] + 1, *shape[1:], generator=gen).contiguous(memory_format=torch.channels_last)[1:]
    base = torch.randn(shape, generator=gen, dtype=torch.float64 if kind == "float64" else torch.float32)
    return base.contiguous(memory_format=torch.channels_last) if kind != "contiguous" else base


@settings(deadline=None, max_examples=examples(40))
@given(case=summands())
@example(case=(2, 2, 3, 8, 6, 4, 0, "channels_last"))
@example(case=(2, 2, 1, 8, 6, 4, 0, "contiguous"))  # one output channel: both layouts at once
@example(case=(1, 2, 3, 7, 9, 3, 1, "contiguous"))
@example(case=(2, 2, 3, 8, 6, 4, 0, "leaf"))
@example(case=(1, 1, 10, 6, 7, 3, 0, "channels_last"))  # in place, 1 ulp from the separate sum
def test_spectral_conv_added_to_a_tensor_equals_the_sum_and_writes_only_where_it_may(case):
    """``add_to`` + the layer against the separate sum: the three gradients bit for bit, the value to
    float32 rounding (the last product accumulates into ``add_to``, and MKL may add it inside the
    product rather than after it: 1 ulp apart at 10 or 11 output channels of width 7, say); computed
    in ``add_to``'s memory exactly when that is a channels_last float32 tensor of its own, and
    otherwise left as it was."""
    batch, ins, outs, height, width, modes, seed, kind = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, ins, height, width, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(outs, 2 * modes, modes, ins, 2, generator=gen)
    start = addend(kind, (batch, outs, height, width), gen)
    upstream = torch.randn(batch, outs, height, width, generator=gen)
    results = []
    for fused in (True, False):
        xs, ws = x.clone(memory_format=torch.channels_last).requires_grad_(), weight.clone().requires_grad_()
        leaf = start.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        base = leaf if kind == "leaf" else leaf * 1  # a non-leaf, as a convolution's output is
        if kind == "view":
            base = torch.cat([leaf[:1] * 0, leaf]).contiguous(memory_format=torch.channels_last)[1:]
        # a contiguous tensor with one channel (or one pixel) is channels_last too
        in_place = kind == "channels_last" or (kind == "contiguous" and start.is_contiguous(memory_format=torch.channels_last))
        out = spectral_conv(xs, ws, modes, add_to=base) if fused else base + spectral_conv(xs, ws, modes)
        assert (out.data_ptr() == base.data_ptr()) == (fused and in_place), kind
        if fused and not in_place:
            assert torch.equal(base, leaf.detach() if kind != "view" else start)  # untouched
        grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), (xs, ws, leaf))
        results.append((out.detach(), *grads))
    (fused_out, *fused_grads), (separate_out, *separate_grads) = results
    scale = 1 + separate_out.abs().max().item()
    torch.testing.assert_close(fused_out, separate_out, rtol=0, atol=1e-6 * scale)
    for name, fused, separate in zip(("x", "weight", "add_to"), fused_grads, separate_grads):
        assert torch.equal(fused, separate), name


def test_spectral_conv_answers_in_channels_last():
    x = torch.randn(3, 4, 10, 8).contiguous(memory_format=torch.channels_last)
    out = spectral_conv(x, torch.randn(5, 6, 3, 4, 2), 3)
    assert out.shape == (3, 5, 10, 8) and out.is_contiguous(memory_format=torch.channels_last)


def test_a_float32_spectral_block_adds_the_spectral_layer_into_the_convolutions_output():
    """The block's sum costs no pass of its own: the GELU reads the convolution's output tensor,
    into which the spectral layer added itself. Under bf16 autocast the convolution answers in
    bf16, and the sum is taken out of place, in float32."""
    block = SpectralBlock(6, 3)
    block.local.to(memory_format=torch.channels_last)
    seen = {}
    block.local.register_forward_hook(lambda module, inputs, output: seen.__setitem__("conv", output))
    block.act.register_forward_hook(lambda module, inputs, output: seen.__setitem__("gelu", inputs[0]))
    x = torch.randn(3, 6, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = x + block.act(block.local(x) + block.spectral(x))
    out = block(x)
    assert seen["gelu"] is seen["conv"]
    assert torch.equal(out, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block(x).sum().backward()
    assert seen["conv"].dtype == torch.bfloat16 and seen["gelu"].dtype == torch.float32


def test_every_generator_uses_the_layout_aware_gelu():
    for architecture in ARCHITECTURES:
        acts = [type(m) for m in build_generator(tiny_model_config(architecture)).modules() if isinstance(m, torch.nn.GELU)]
        assert acts and set(acts) == {DenseGELU}, architecture


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3000), seeds)
def test_the_heads_polar_equals_torch_polar_to_float32_rounding_forward_and_backward(size, seed):
    from ptycho_torch.generators import polar

    gen = torch.Generator().manual_seed(seed)
    amplitude, phase, upstream = torch.rand(size, generator=gen), (torch.rand(size, generator=gen) - 0.5) * 2 * math.pi, \
        torch.randn(size, dtype=torch.complex64, generator=gen)
    results = []
    for function in (polar, torch.polar):
        a, p = amplitude.clone().requires_grad_(), phase.clone().requires_grad_()
        out = function(a, p)
        out.backward(upstream)
        results.append((out, a.grad, p.grad))
    for mine, torchs in zip(*results):
        torch.testing.assert_close(mine, torchs, rtol=1e-6, atol=1e-6)
