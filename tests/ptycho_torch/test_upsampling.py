"""The decoder's upsampling inside its first convolution: the values and gradients of upsampling then
convolving, the old checkpoints' names, and float32 tap sums under autocast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from ptycho_torch.config import ARCHITECTURES
from ptycho_torch.generators import ConvDecoder, build_generator, conv_block, tiny_model_config
from ptycho_torch.upsampling import UpsampleConv2d, interleave_phases
from tests.helpers import assert_layer_matches, examples
from tests.strategies import seeds


def upsampled_then_convolved(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), layer.weight, layer.bias, padding=1)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.sampled_from([torch.channels_last, torch.contiguous_format]), seeds)
def test_equals_nearest_upsampling_then_the_convolution_forward_and_backward(batch, inputs, outputs, h, w, bias,
                                                                             layout, seed):
    """Any sizes (odd, rectangular, 1 pixel: every phase and border), either layout in and weight
    layout, channels_last out."""
    gen = torch.Generator().manual_seed(seed)
    layer = UpsampleConv2d(inputs, outputs).to(memory_format=layout)
    if not bias:
        layer.bias = None
    plain = torch.randn(batch, inputs, h, w, generator=gen)
    upstream = torch.randn(batch, outputs, 2 * h, 2 * w, generator=gen)
    assert_layer_matches(layer, lambda x: upsampled_then_convolved(layer, x), plain, upstream, layout)


def test_gradients_pass_gradcheck_in_double():
    torch.manual_seed(0)
    layer = UpsampleConv2d(2, 3).double()
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
    assert torch.autograd.gradcheck(
        lambda x, weight, bias: torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,)),
        (x, weight, bias))


def test_interleaving_places_each_phase_pixel_at_its_output_pixel():
    """Phase (a, b)'s pixel (i + a, j + b) is output pixel (2i + a, 2j + b): each value tagged by where
    it came from, and the gradient goes back to exactly those places (0 at the unused border)."""
    batch, channels, h, w = 2, 3, 3, 4
    phases = torch.arange(batch * 4 * channels * (h + 1) * (w + 1), dtype=torch.float64).view(
        batch, 4 * channels, h + 1, w + 1).requires_grad_()
    out = interleave_phases(phases)
    expected = torch.empty(batch, channels, 2 * h, 2 * w, dtype=torch.float64)
    for a in (0, 1):
        for b in (0, 1):
            phase = phases.detach()[:, (2 * a + b) * channels:(2 * a + b + 1) * channels]
            expected[:, :, a::2, b::2] = phase[:, :, a:a + h, b:b + w]
    assert torch.equal(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    back = torch.zeros_like(phases)
    for a in (0, 1):
        for b in (0, 1):
            back[:, (2 * a + b) * channels:(2 * a + b + 1) * channels, a:a + h, b:b + w] = upstream[:, :, a::2, b::2]
    assert torch.equal(phases.grad, back)


def test_unbatched_input_works_as_for_a_convolution():
    layer, x = UpsampleConv2d(3, 2), torch.randn(3, 4, 5)
    torch.testing.assert_close(layer(x), upsampled_then_convolved(layer, x[None])[0], rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_it_answers_in_bf16_and_sums_its_taps_in_float32_both_ways():
    """The phase kernels are summed in float32 and cast once by the convolution; the weight gradient's
    sums stay float32 too, also when Lightning calls backward inside the step's autocast (autograd's
    own product would round them to bf16 there)."""
    torch.manual_seed(0)
    layer, x = UpsampleConv2d(4, 5), torch.randn(2, 4, 6, 6)
    grads = []
    for inside in (False, True):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer.phase_conv()[0].dtype == torch.float32
            out = layer(x)
            reference = upsampled_then_convolved(layer, x)
            if inside:
                out.float().square().sum().backward()
        if not inside:
            out.float().square().sum().backward()
        assert out.dtype == reference.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=5e-2)
        grads.append(layer.weight.grad)
    assert torch.equal(grads[0], grads[1])
    assert not torch.equal(grads[1], grads[1].bfloat16().float())  # sums of bf16 terms, kept in float32


def _separate_upsampling_decoder(channels: list[int]) -> nn.Module:
    """The decoder as it was: each stage an ``nn.Upsample`` and a conv block."""
    decoder = nn.Module()
    decoder.stages = nn.ModuleList(
        nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_block(channels[k], channels[k - 1]))
        for k in range(len(channels) - 1, 0, -1))
    return decoder


def test_a_checkpoint_of_the_separate_upsampling_loads_and_answers_alike():
    torch.manual_seed(0)
    channels = [2, 4, 8]
    old = _separate_upsampling_decoder(channels)
    state = nn.ModuleDict({"decoder": old}).state_dict()  # under a prefix, as inside a generator
    assert "decoder.stages.0.1.0.weight" in state
    new = nn.ModuleDict({"decoder": ConvDecoder(channels)})
    new.load_state_dict(state)  # strict: every name found, none left over
    x = torch.randn(2, 8, 3, 3)
    expected = x
    for stage in old.stages:
        expected = stage(expected)
    torch.testing.assert_close(new["decoder"](x), expected, rtol=1e-5, atol=1e-5)
    new.load_state_dict(new.state_dict())  # and its own names load as they are


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_no_generator_upsamples_separately_and_each_decoder_stage_starts_with_the_upsampling_convolution(architecture):
    for gridsize in (1, 2):
        model = build_generator(tiny_model_config(architecture, N=32, gridsize=gridsize))
        assert not any(isinstance(m, nn.Upsample) for m in model.modules())
        for decoder in (m for m in model.modules() if isinstance(m, ConvDecoder)):
            assert decoder.stages and all(isinstance(stage[0], UpsampleConv2d) for stage in decoder.stages)
