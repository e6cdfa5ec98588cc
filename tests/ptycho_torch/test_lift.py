"""The lift composed into the first spectral block: the same values and gradients as the two layers
one after the other, in float32 also under bf16 autocast, and the path the generators take."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptycho_torch.fused import ConvGELUSequential
from ptycho_torch.generators import LiftedSequential, PointwiseConv2d, SpectralBlock, build_generator, tiny_model_config
from ptycho_torch.lift import compose_channels, composable, lifted_block
from tests.helpers import examples
from tests.strategies import seeds


@st.composite
def lifted_cases(draw):
    """(batch, inputs, width, bias, height, width of the image, modes, layout, seed) with the lift
    lifting to more channels than it reads (with its bias channel)."""
    inputs, bias = draw(st.integers(1, 4)), draw(st.booleans())
    width = draw(st.integers(inputs + 2, inputs + 6))
    height, columns = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    modes = draw(st.integers(1, min(height // 2, columns // 2 + 1)))
    layout = draw(st.sampled_from([torch.channels_last, torch.contiguous_format]))
    return draw(st.integers(1, 3)), inputs, width, bias, height, columns, modes, layout, draw(seeds)


def lift_and_block(inputs: int, width: int, modes: int, bias: bool, seed: int) -> tuple[PointwiseConv2d, SpectralBlock]:
    torch.manual_seed(seed)
    lift, block = PointwiseConv2d(inputs, width), SpectralBlock(width, modes)
    if not bias:
        lift.bias = None
    block.local.to(memory_format=torch.channels_last)  # as the generators hold it
    return lift, block


def outputs_and_grads(function, x: torch.Tensor, upstream: torch.Tensor, layers) -> tuple[torch.Tensor, ...]:
    params = [p for layer in layers for p in layer.parameters()]
    out = function(x)
    return (out.detach(), *torch.autograd.grad((out * upstream).sum(), params))


@settings(deadline=None, max_examples=examples(40))
@given(case=lifted_cases())
@example(case=(2, 1, 8, True, 8, 8, 4, torch.channels_last, 0))  # gridsize 1, the Nyquist column kept
@example(case=(2, 4, 7, True, 7, 9, 3, torch.contiguous_format, 1))  # gridsize 2's four patterns, odd sizes
def test_the_composed_block_equals_the_lift_then_the_block_forward_and_backward(case):
    """Output and every parameter's gradient (lift weight and bias, convolution weight and bias,
    spectral weight) against the layers run one after the other, to float32 rounding."""
    batch, inputs, width, bias, height, columns, modes, layout, seed = case
    lift, block = lift_and_block(inputs, width, modes, bias, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, inputs, height, columns, generator=gen).contiguous(memory_format=layout)
    upstream = torch.randn(batch, width, height, columns, generator=gen)
    assert composable(lift, x)
    composed = outputs_and_grads(lambda a: lifted_block(lift, block.local, block.spectral, block.act, a),
                                 x, upstream, (lift, block))
    reference = outputs_and_grads(lambda a: block(lift(a)), x, upstream, (lift, block))
    for index, (got, want) in enumerate(zip(composed, reference)):
        scale = 1 + want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale, msg=f"output/gradient {index}")


def test_the_composed_block_answers_in_channels_last():
    lift, block = lift_and_block(1, 6, 3, True, 0)
    out = lifted_block(lift, block.local, block.spectral, block.act, torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 6, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("architecture", ["fno", "hybrid"])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_the_spectral_generators_compose_their_lift_and_still_compute_the_layers(architecture, gridsize):
    """The generators' bodies take the composed path (the first block's own convolution is never
    called) and give the values and gradients of their layers run one by one."""
    torch.manual_seed(0)
    generator = build_generator(tiny_model_config(architecture, gridsize=gridsize))
    body = generator.body
    assert isinstance(body, LiftedSequential)
    assert list(body.state_dict()) == list(torch.nn.Sequential(*body).state_dict())  # checkpoints load
    x = torch.rand(3, gridsize ** 2, 16, 16).contiguous(memory_format=torch.channels_last)
    calls = []
    body[1].local.register_forward_hook(lambda *_: calls.append(1))
    upstream = torch.randn_like(body(x))
    calls.clear()
    composed = outputs_and_grads(body, x, upstream, [body])
    assert not calls  # composed: the 3x3 convolution of the lifted channels did not run
    reference = outputs_and_grads(lambda a: ConvGELUSequential.run(body, a), x, upstream, [body])
    assert calls  # the reference ran it
    for index, (got, want) in enumerate(zip(composed, reference)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * (1 + want.abs().max().item()),
                                   msg=f"output/gradient {index}")


@pytest.mark.parametrize("architecture", ["fno", "hybrid"])
def test_prediction_without_autograd_composes_too_and_answers_like_the_layers(architecture):
    """No autograd: the composed pair, then the later layers with their convolution + GELU fusion,
    against every layer called on its own."""
    torch.manual_seed(0)
    body = build_generator(tiny_model_config(architecture, gridsize=2)).body
    x = torch.rand(3, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    calls = []
    body[1].local.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        composed = body(x)
        assert not calls
        reference = x
        for layer in body:
            reference = layer(reference)
    torch.testing.assert_close(composed, reference, rtol=1e-4, atol=1e-5 * (1 + reference.abs().max().item()))


class OwnConv(torch.nn.Conv2d):
    """A convolution subclass with a forward of its own: the composition would skip it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class OwnBlock(SpectralBlock):
    """A spectral block subclass with a forward of its own: the composition would skip it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize("case", ["circular padding", "a convolution subclass", "a spectral block subclass",
                                  "unbatched input"])
def test_what_the_composition_does_not_hold_for_runs_the_layers_one_by_one(case):
    torch.manual_seed(0)
    body = LiftedSequential(PointwiseConv2d(1, 6), SpectralBlock(6, 2))
    if case == "circular padding":
        body[1].local.padding_mode = "circular"
    if case == "a convolution subclass":
        body[1].local = OwnConv(6, 6, 3, padding=1)
    if case == "a spectral block subclass":
        body[1] = OwnBlock(6, 2)
    x = torch.rand(1, 8, 8) if case == "unbatched input" else torch.rand(2, 1, 8, 8)
    calls = []
    body[1].local.register_forward_hook(lambda *_: calls.append(1))
    if case == "unbatched input":  # the layers' own path: the spectral layer takes batches only
        with pytest.raises(ValueError):
            body(x)
    else:
        assert torch.equal(body(x), body[1](body[0](x)))
    assert calls


def test_a_lift_to_no_more_channels_than_it_reads_runs_the_layers_one_by_one():
    """With as many lifted channels as inputs plus the bias channel, composing saves nothing."""
    body = LiftedSequential(PointwiseConv2d(3, 4), SpectralBlock(4, 2))
    body[1].local.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6)
    assert not composable(body[0], x)
    calls = []
    body[1].local.register_forward_hook(lambda *_: calls.append(1))
    assert torch.equal(body(x), body[1](body[0](x)))
    assert calls


@pytest.mark.parametrize("bias, composes", [(False, True), (True, False)], ids=["without bias", "with bias"])
def test_a_lift_composes_when_its_inputs_and_bias_channel_are_fewer_than_its_outputs(bias, composes):
    """3 inputs lifted to 4 channels: the composition reads 3 channels without a bias, 4 with its
    constant channel, which saves nothing."""
    lift = PointwiseConv2d(3, 4)
    if not bias:
        lift.bias = None
    assert composable(lift, torch.randn(2, 3, 6, 6)) is composes


@pytest.mark.parametrize("complex_rows", [False, True])
def test_composed_weights_have_exact_gradients(complex_rows):
    dtype = torch.complex128 if complex_rows else torch.float64
    rows = torch.randn(7, 5, dtype=dtype, requires_grad=True)
    matrix = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(compose_channels, (rows, matrix))


@pytest.mark.parametrize("count", [0, 6])
def test_the_composition_takes_any_complex_gradient_autograd_hands_it(count):
    """A conjugated view (what autograd passes back through a later ``.conj()``) and no rows at all:
    the rows' gradient is that of the plain complex product."""
    gen = torch.Generator().manual_seed(4)
    matrix = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    upstream = torch.randn(count, 4, generator=gen, dtype=torch.complex128)
    grads = []
    for product in (compose_channels, lambda r, m: r @ m.to(r.dtype)):
        rows = torch.randn(count, 3, generator=torch.Generator().manual_seed(5), dtype=torch.complex128,
                           requires_grad=True)
        (product(rows, matrix).conj() * upstream).real.sum().backward()
        grads.append(rows.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_composed_weights_and_their_gradients_stay_float32_under_bf16_autocast():
    """Lightning runs the backward inside the step's autocast: there the composition's products
    would be taken in bf16 by autograd's own matmul backward (rounding every gradient)."""
    gen = torch.Generator().manual_seed(0)
    rows, matrix = torch.randn(40, 32, generator=gen), torch.randn(32, 2, generator=gen)
    upstream = torch.randn(40, 2, generator=gen)

    def grads(autocast: bool):
        r, m = rows.clone().requires_grad_(), matrix.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = compose_channels(r, m)
            grad = torch.autograd.grad((out * upstream).sum(), (r, m))
        return (out, *grad)

    for plain, autocast in zip(grads(False), grads(True)):
        assert autocast.dtype == torch.float32
        assert torch.equal(plain, autocast)


def test_the_composed_block_under_bf16_autocast_answers_like_the_layers_forward_and_backward():
    """Lightning's bf16-mixed runs forward and backward inside autocast: values within bf16 rounding
    of the layers', every gradient float32 and close to theirs."""
    lift, block = lift_and_block(1, 8, 4, True, 0)
    x = torch.rand(2, 1, 8, 8)
    upstream = torch.randn(2, 8, 8, 8)
    results = []
    for function in (lambda a: lifted_block(lift, block.local, block.spectral, block.act, a),
                     lambda a: block(lift(a))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(outputs_and_grads(function, x, upstream, (lift, block)))
    (composed, *composed_grads), (reference, *reference_grads) = results
    assert composed.dtype == reference.dtype
    torch.testing.assert_close(composed.float(), reference.float(), rtol=3e-2, atol=3e-2)
    for got, want in zip(composed_grads, reference_grads):
        assert got.dtype == torch.float32
        assert (got - want).norm() <= 3e-2 * want.norm()
