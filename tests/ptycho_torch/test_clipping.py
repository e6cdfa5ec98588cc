"""Gradient clipping: each algorithm keeps its bound, leaves in-bound gradients alone, and refuses bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from torch import nn

from ptycho_torch.clipping import agc_unit_ratios, clip_gradients_, global_grad_norm, grads_finite
from ptycho_torch.config import CLIP_ALGORITHMS
from tests.helpers import examples
from tests.strategies import clip_bounds, grad_scales, headrooms, seeds

fast = settings(deadline=None, max_examples=examples(25))


def params_with_grads(seed: int, scale: float) -> list[nn.Parameter]:
    """A linear weight, a conv weight, a bias, a 0-d scalar and one parameter without a gradient."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (3, 2, 3, 3), (4,), ()]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    with torch.no_grad():
        params[1][0].zero_()  # a zero filter: its unit norm sits on AGC's eps floor
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=gen)
    return params + [nn.Parameter(torch.ones(2))]  # grad is None: skipped everywhere


def grads_of(params: list[nn.Parameter]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


def max_abs(params: list[nn.Parameter]) -> torch.Tensor:
    return max(p.grad.abs().max() for p in params if p.grad is not None)


def max_agc_ratio(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat(agc_unit_ratios(params)).max()


# What each algorithm bounds by clip_val, and the relative slack that float32 rounding needs.
MEASURES = {"norm": (global_grad_norm, 1e-6), "value": (max_abs, 0.0), "agc": (max_agc_ratio, 1e-5)}


def test_measures_cover_every_algorithm():
    assert tuple(MEASURES) == CLIP_ALGORITHMS


def test_global_grad_norm_equals_norm_of_concatenated_grads():
    params = params_with_grads(seed=0, scale=3.0)
    flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    total = global_grad_norm(params)
    assert total.shape == () and total.dtype == torch.float32
    torch.testing.assert_close(total, torch.linalg.vector_norm(flat), rtol=1e-6, atol=0.0)


def test_global_grad_norm_of_no_grads_is_zero():
    assert global_grad_norm([nn.Parameter(torch.ones(3))]) == 0


@pytest.mark.parametrize("algorithm", CLIP_ALGORITHMS)
@fast
@given(seed=seeds, scale=grad_scales, clip_val=clip_bounds)
def test_clipping_brings_gradients_within_the_bound(algorithm, seed, scale, clip_val):
    params = params_with_grads(seed, scale)
    measure, slack = MEASURES[algorithm]
    clip_gradients_(params, algorithm, clip_val)
    assert measure(params) <= clip_val * (1 + slack)


@pytest.mark.parametrize("algorithm", CLIP_ALGORITHMS)
@fast
@given(seed=seeds, scale=grad_scales, headroom=headrooms)
@example(seed=0, scale=1.0, headroom=1e-6)  # clip_val a hair above the bound
def test_gradients_within_the_bound_are_bitwise_unchanged(algorithm, seed, scale, headroom):
    """The +1e-6 covers norm clipping's own epsilon: its factor c / (norm + 1e-6) is then clamped to exactly 1;
    a headroom >= 1e-6 covers float32 rounding of the AGC ratio."""
    params = params_with_grads(seed, scale)
    measure, _ = MEASURES[algorithm]
    before = grads_of(params)
    clip_gradients_(params, algorithm, float(measure(params)) * (1 + headroom) + 1e-6)
    assert all(old is None and p.grad is None or torch.equal(p.grad, old) for old, p in zip(before, params))


@pytest.mark.parametrize("clip_val", [None, 0, 0.0], ids=["none", "int-zero", "float-zero"])
@pytest.mark.parametrize("algorithm", CLIP_ALGORITHMS)
def test_clipping_off_leaves_gradients_bitwise_unchanged(algorithm, clip_val):
    params = params_with_grads(seed=1, scale=1e3)
    before = grads_of(params)
    clip_gradients_(params, algorithm, clip_val)
    assert all(old is None and p.grad is None or torch.equal(p.grad, old) for old, p in zip(before, params))


def test_clipping_actually_bites():
    """Guard against a vacuous pass: the drawn gradients exceed a small bound, and clipping changes them."""
    for algorithm, (measure, _) in MEASURES.items():
        params = params_with_grads(seed=2, scale=10.0)
        assert measure(params) > 0.1
        clip_gradients_(params, algorithm, 0.1)
        assert measure(params) <= 0.1 * (1 + 1e-5), algorithm


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
GRAD_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("clip_val", [1e5, math.nextafter(FLOAT32_MAX, math.inf), 1e300],
                         ids=["past-float16", "past-float32", "past-everything-but-float64"])
@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("algorithm", CLIP_ALGORITHMS)
def test_a_bound_past_the_gradients_range_leaves_them_unchanged(algorithm, dtype, clip_val):
    """A finite bound the gradients' dtype cannot hold is valid config (the rule only asks > 0):
    torch's clamp refuses such a scalar, so clipping must cap it rather than crash mid-run."""
    params = [nn.Parameter(p.detach().to(dtype)) for p in params_with_grads(seed=6, scale=2.0)]
    for p, source in zip(params, params_with_grads(seed=6, scale=2.0)):
        p.grad = None if source.grad is None else source.grad.to(dtype)
    before = grads_of(params)
    clip_gradients_(params, algorithm, clip_val)
    assert all(old is None and p.grad is None or torch.equal(p.grad, old) for old, p in zip(before, params))


def test_value_clipping_of_mixed_dtypes_caps_each_dtype_separately():
    """One float16 gradient must not lower the bound applied to a float32 one."""
    half, single = nn.Parameter(torch.zeros(2, dtype=torch.float16)), nn.Parameter(torch.zeros(2))
    half.grad = torch.tensor([60000.0, -60000.0], dtype=torch.float16)
    single.grad = torch.tensor([1e6, -3e5])
    clip_gradients_([half, single], "value", 5e5)
    assert torch.equal(half.grad, torch.tensor([60000.0, -60000.0], dtype=torch.float16))
    assert torch.equal(single.grad, torch.tensor([5e5, -3e5]))


def linear_with(weight: torch.Tensor, grad: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.weight.grad = grad.clone()
    return layer


def test_agc_is_unit_wise_on_the_brock_example():
    """W = diag(10, 0.01), G = diag(0.05, 0.05), lambda = 0.01 (FACTS.md)."""
    weight, grad, lam = torch.diag(torch.tensor([10.0, 0.01])), torch.diag(torch.tensor([0.05, 0.05])), 0.01
    layer = linear_with(weight, grad)
    clip_gradients_(layer.parameters(), "agc", lam)
    clipped = layer.weight.grad
    assert torch.equal(clipped[0], grad[0])  # ratio 0.05 / 10 = 0.005 <= lambda: untouched
    # ratio 0.05 / 0.01 = 5 > lambda: scaled to lambda * ||W_2|| = 1e-4, direction kept
    torch.testing.assert_close(clipped[1], torch.tensor([0.0, 1e-4]), rtol=1e-5, atol=0.0)
    # A per-tensor rule would see ||G|| / ||W|| = 0.0707 / 10 = 0.007 <= lambda and leave row 2 at 0.05.
    per_tensor_ratio = torch.linalg.vector_norm(grad) / torch.linalg.vector_norm(weight)
    assert per_tensor_ratio <= lam
    assert clipped[1, 1] < grad[1, 1] / 100


def test_agc_units_of_a_conv_weight_are_output_filters():
    conv = nn.Conv2d(2, 3, kernel_size=3, bias=False)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * torch.tensor([10.0, 1.0, 0.0])[:, None, None, None])
    conv.weight.grad = torch.randn(conv.weight.shape, generator=gen)
    expected = torch.stack([
        conv.weight.grad[i].norm() / max(conv.weight[i].norm(), torch.tensor(1e-3)) for i in range(3)
    ])  # one ratio per output filter, by an explicit loop
    (ratios,) = agc_unit_ratios(conv.parameters())
    torch.testing.assert_close(ratios, expected.detach())
    lam = float(ratios.min()) * 1.5  # the filter with the large weight stays, the others are clipped
    before = conv.weight.grad.clone()
    clip_gradients_(conv.parameters(), "agc", lam)
    after = agc_unit_ratios(conv.parameters())[0]
    keep = ratios <= lam
    assert keep.any() and not keep.all()
    assert torch.equal(conv.weight.grad[keep], before[keep])
    torch.testing.assert_close(after[~keep], torch.full_like(after[~keep], lam), rtol=1e-5, atol=0.0)


def test_agc_treats_one_dimensional_params_as_one_unit():
    bias = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||W|| = 5
    bias.grad = torch.tensor([6.0, 8.0])  # ||G|| = 10, ratio 2
    assert [r.tolist() for r in agc_unit_ratios([bias])] == [[2.0]]
    clip_gradients_([bias], "agc", 0.5)
    torch.testing.assert_close(bias.grad, torch.tensor([1.5, 2.0]))  # norm 0.5 * 5 = 2.5, same direction


def test_agc_scales_a_tiny_gradient_exactly_onto_a_tinier_bound():
    """The scale is lambda * ||W_i|| / ||G_i|| however small ||G_i|| is: ||G|| = 1e-33 over ||W|| = 1 at
    lambda = 1e-36 lands on 1e-36 (float64, so the norms do not underflow)."""
    weight = nn.Parameter(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    weight.grad = torch.tensor([[0.0, 1e-33]], dtype=torch.float64)
    clip_gradients_([weight], "agc", 1e-36)
    torch.testing.assert_close(weight.grad, torch.tensor([[0.0, 1e-36]], dtype=torch.float64), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("algorithm, clipped", [
    pytest.param("norm", [0.6, 0.8], id="norm"),  # ||(3, 4)|| = 5 -> scaled to norm 1
    pytest.param("value", [1.0, 1.0], id="value"),
    pytest.param("agc", [0.6, 0.8], id="agc"),  # ||W|| = 1 (one unit), so lambda * ||W|| = 1
])
def test_a_single_tensor_is_clipped_like_a_one_element_list(algorithm, clipped):
    param = nn.Parameter(torch.tensor([1.0, 0.0]))
    param.grad = torch.tensor([3.0, 4.0])
    assert float(global_grad_norm(param)) == 5.0
    assert bool(grads_finite(param))
    assert [r.tolist() for r in agc_unit_ratios(param)] == [[5.0]]
    clip_gradients_(param, algorithm, 1.0)
    torch.testing.assert_close(param.grad, torch.tensor(clipped), rtol=1e-6, atol=0.0)


BAD_ARGUMENTS = [
    pytest.param("norm", -1.0, "gradient_clip_val=-1.0", id="negative"),
    pytest.param("value", math.nan, "gradient_clip_val=nan", id="nan"),
    pytest.param("agc", math.inf, "gradient_clip_val=inf", id="inf"),
    pytest.param("norm", -math.inf, "gradient_clip_val=-inf", id="minus-inf"),
    pytest.param("norm", True, "gradient_clip_val=True", id="bool"),
    pytest.param("norm", "1.0", "gradient_clip_val='1.0'", id="string"),
    pytest.param("adaptive", 1.0, "gradient_clip_algorithm='adaptive'.*norm, value, agc", id="unknown-algorithm"),
    pytest.param("Norm", None, "gradient_clip_algorithm='Norm'", id="unknown-algorithm-while-off"),
]


@pytest.mark.parametrize("algorithm, clip_val, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_problem(algorithm, clip_val, message):
    params = params_with_grads(seed=4, scale=1.0)
    before = grads_of(params)
    with pytest.raises(ValueError, match=message):
        clip_gradients_(params, algorithm, clip_val)
    assert all(old is None or torch.equal(p.grad, old) for old, p in zip(before, params))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "minus-inf"])
def test_grads_finite_is_false_with_one_non_finite_element(bad):
    params = params_with_grads(seed=5, scale=1.0)
    assert bool(grads_finite(params))
    params[1].grad[2, 1, 0, 2] = bad
    result = grads_finite(params)
    assert result.shape == () and result.dtype == torch.bool and not bool(result)


def test_grads_finite_is_true_for_huge_finite_grads():
    """Large finite values overflow an L2 norm to inf; the check must not call them non-finite."""
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), 3e38)
    assert torch.isinf(global_grad_norm([p]))
    assert bool(grads_finite([p]))
