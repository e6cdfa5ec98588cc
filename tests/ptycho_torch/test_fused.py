"""Prediction-time fusion of convolution + GELU: the same values as the layers one by one, taken
exactly where it applies (no autograd, CPU, float32 / bf16), and checkpoints unchanged."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ptycho_torch import fused
from ptycho_torch.config import ARCHITECTURES
from ptycho_torch.fused import ConvGELUSequential
from ptycho_torch.generators import DenseGELU, build_generator, tiny_model_config
from ptycho_torch.upsampling import UpsampleConv2d
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(fused._POINTWISE_CONV is None, reason="this torch build has no oneDNN fused convolution")


@pytest.fixture
def fused_calls(monkeypatch):
    """The number of fused oneDNN calls made so far."""
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return fused._POINTWISE_CONV.__wrapped__(*args)

    counted.__wrapped__ = fused._POINTWISE_CONV
    monkeypatch.setattr(fused, "_POINTWISE_CONV", counted)
    return calls


@contextlib.contextmanager
def unfused():
    """The fused convolution missing, as in a build without oneDNN."""
    op = fused._POINTWISE_CONV
    fused._POINTWISE_CONV = None
    try:
        yield
    finally:
        fused._POINTWISE_CONV = op


def autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 20), st.integers(1, 12), st.sampled_from([1, 3]),
       st.booleans(), st.booleans(), st.sampled_from([torch.float32, torch.bfloat16]), seeds)
def test_a_fused_pair_equals_the_two_layers_to_the_dtype_tolerance(batch, cin, cout, size, kernel, bias, channels_last,
                                                                  dtype, seed):
    """float32: the same values to rounding; bf16 (autocast): the fused GELU reads the unrounded
    convolution, so within bf16's tolerance of the rounded one's. The answer is channels_last."""
    torch.manual_seed(seed)
    pair = ConvGELUSequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), DenseGELU())
    x = torch.randn(batch, cin, size, size)
    if channels_last:
        x, pair = x.contiguous(memory_format=torch.channels_last), pair.to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(dtype):
        expected = pair[1](pair[0](x))
        got = pair(x)
    assert got.dtype == expected.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -7, atol=2 ** -8)


def test_under_bf16_autocast_the_fused_convolution_rounds_its_bias_as_autocast_does():
    """Only the GELU's input is left unrounded: the convolution's operands, bias included, are the bf16
    values autocast gives the unfused layer. One pixel, a 1x1 kernel: the sum is w + b, and GELU is the
    identity at 10 (to float precision); b = 10.02 rounds to 10.0, w to 0.0200195, and their sum to
    10.0 (an unrounded bias would make it 10.04, rounded up to 10.0625)."""
    pair = ConvGELUSequential(nn.Conv2d(1, 1, 1), DenseGELU())
    with torch.no_grad():
        pair[0].weight.fill_(0.02)
        pair[0].bias.fill_(10.02)

    def bf16(value: float) -> float:
        return torch.tensor(value, dtype=torch.float64).to(torch.bfloat16).item()

    expected = bf16(bf16(0.02) + bf16(10.02))
    assert expected == 10.0
    x = torch.ones(1, 1, 1, 1)
    with torch.no_grad(), autocast(torch.bfloat16):
        assert pair(x).item() == expected == pair[1](pair[0](x)).item()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generators_predict_the_same_patches_fused_and_unfused(architecture, dtype, fused_calls):
    torch.manual_seed(0)
    generator = build_generator(tiny_model_config(architecture, N=32)).eval()
    x = torch.rand(6, 32, 32) * 5
    with torch.no_grad(), autocast(dtype):
        got = generator(x)
        assert fused_calls, "no fused call was made"
        with unfused():
            expected = generator(x)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.05, atol=0.02)
    torch.testing.assert_close(got, expected, **tolerance)


def _conv_gelu_pairs(generator: nn.Module) -> int:
    return sum(isinstance(a, nn.Conv2d) and isinstance(b, nn.GELU)
               for seq in generator.modules() if isinstance(seq, nn.Sequential) for a, b in zip(seq, list(seq)[1:]))


def test_every_conv_gelu_pair_of_the_cnn_is_fused_in_prediction_and_none_in_training(fused_calls):
    torch.manual_seed(0)
    generator = build_generator(tiny_model_config("cnn", N=32))
    pairs = _conv_gelu_pairs(generator)
    assert pairs == 10  # encoder and decoder: 5 blocks of 2
    generator(torch.rand(2, 32, 32)).abs().sum().backward()  # autograd on: the layers one by one
    assert fused_calls == []
    with torch.no_grad():
        generator(torch.rand(2, 32, 32))
    assert len(fused_calls) == pairs
    with torch.inference_mode():
        generator(torch.rand(2, 32, 32))
    assert len(fused_calls) == 2 * pairs


def test_training_values_and_gradients_are_those_of_a_plain_sequential():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 5, 3, padding=1), DenseGELU(), nn.Conv2d(5, 4, 1), DenseGELU()]
    x = torch.randn(2, 3, 9, 9)
    outputs, grads = [], []
    for container in (ConvGELUSequential(*layers), nn.Sequential(*layers)):
        container.zero_grad()
        out = container(x)
        out.square().sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in container.parameters()])
    assert torch.equal(*outputs)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_other_dtypes_run_the_layers_one_by_one(fused_calls):
    torch.manual_seed(0)
    pair = ConvGELUSequential(nn.Conv2d(2, 3, 3, padding=1), DenseGELU()).double()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(pair(x), pair[1](pair[0](x)))
    assert fused_calls == []


def test_a_gelu_without_a_convolution_before_it_is_not_fused(fused_calls):
    chain = ConvGELUSequential(nn.AvgPool2d(2), DenseGELU(), nn.Conv2d(1, 1, 1))
    with torch.no_grad():
        out = chain(torch.randn(1, 1, 4, 4))
    assert fused_calls == [] and out.shape == (1, 1, 2, 2)


def test_parameter_names_are_those_of_nn_sequential_so_checkpoints_load_either_way():
    layers = [nn.Conv2d(1, 2, 3), DenseGELU(), nn.Conv2d(2, 2, 3), DenseGELU()]
    assert list(ConvGELUSequential(*layers).state_dict()) == list(nn.Sequential(*layers).state_dict())


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's note on entering the flags
def test_nothing_is_fused_where_the_user_turned_onednn_off(fused_calls):
    pair = ConvGELUSequential(nn.Conv2d(2, 3, 3, padding=1), DenseGELU())
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        pair(torch.randn(1, 2, 8, 8))
    assert fused_calls == []
    with torch.no_grad():
        pair(torch.randn(1, 2, 8, 8))
    assert len(fused_calls) == 1


@pytest.mark.parametrize("first", [lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: UpsampleConv2d(3, 4)],
                         ids=["conv", "upsampling conv"])
def test_unbatched_input_runs_the_layers_one_by_one(first, fused_calls):
    """oneDNN's fused op takes batched input only; an unbatched one, which the layers accept, is not
    sent to it."""
    torch.manual_seed(0)
    pair = ConvGELUSequential(first(), DenseGELU())
    x = torch.randn(3, 5, 5)
    with torch.no_grad():
        got = pair(x)
        expected = pair[1](pair[0](x))
    assert fused_calls == []
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
