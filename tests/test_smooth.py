"""hwmodels.smooth against the exact model: values, gradient signs, ranking."""
import math
import random
import zlib

import pytest
import torch
from scipy.stats import spearmanr

from hwmodels import ConvLayer, LinearLayer, layer_cost, load_accelerator, network_cost
from hwmodels.smooth import (from_layers, hard_ceil_div, network_cost_torch, sigmoid_ceil_div,
                             soft_conv, soft_ceil_div, soft_linear)


def random_layers(n, seed):
    rng = random.Random(seed)
    layers = []
    for i in range(n):
        cin, cout = rng.randint(1, 300), rng.randint(1, 300)
        k = rng.choice([1, 3, 5])
        hw = rng.choice([4, 8, 16, 32])
        if rng.random() < 0.15:
            layers.append(LinearLayer(f"fc{i}", cin * 4, cout, batch=rng.choice([1, 8])))
        elif rng.random() < 0.2:
            layers.append(ConvLayer(f"dw{i}", hw, hw, cin, cin, k, k, padding=k // 2, groups=cin))
        else:
            layers.append(ConvLayer(f"c{i}", hw, hw, cin, cout, k, k, padding=k // 2,
                                    stride=rng.choice([1, 2]), batch=rng.choice([1, 4])))
    return layers


def test_ceil_div_matches_math_ceil_at_integers():
    x = torch.arange(1, 5000, dtype=torch.float64)
    for d in (1, 8, 16, 128, 256):
        expected = torch.tensor([math.ceil(v / d) for v in range(1, 5000)], dtype=torch.float64)
        assert torch.equal(hard_ceil_div(x, d), expected)
        # sigmoid surrogate with a sharp temperature lands within 1e-3 of the steps
        assert (sigmoid_ceil_div(x, d, 0.05) - expected).abs().max() < 1e-3


def test_sigmoid_surrogate_has_no_overflow_and_no_offset():
    # far past U-Boost's 300-step limit, and below a quarter tile (U-Boost read < 1 there)
    x = torch.tensor([1.0, 10.0, 128 * 1000.0 + 1, 1e7], dtype=torch.float64)
    value = sigmoid_ceil_div(x, 128.0, 0.05)
    assert torch.isfinite(value).all()
    expected = torch.tensor([1.0, 1.0, 1001.0, math.ceil(1e7 / 128)], dtype=torch.float64)
    assert torch.allclose(value, expected, atol=1e-3)


@pytest.mark.parametrize("d, t", [(2, 1.0), (4, 4.0), (1, 1.0), (128, 1.0)])
def test_sigmoid_surrogate_equals_the_untruncated_sum_of_steps(d, t):
    # A soft temperature next to a small step (the fold-rounds ceiling over 2 or 4 arrays): the
    # evaluated window moves with x, and must do so without a jump against the sum over all steps.
    # The k = 0 step is 1 from one element on (below, the sigmoid rescaled to run 0 -> 1 on [0, 1]).
    x = torch.linspace(0.0, 30.0 * d, 6001, dtype=torch.float64)
    ks = torch.arange(1, 40, dtype=torch.float64)
    lo, hi = 1 / (1 + math.exp(0.5 / t)), 1 / (1 + math.exp(-0.5 / t))
    first = torch.where(x >= 1, torch.ones_like(x), (torch.sigmoid((x - 0.5) / t) - lo) / (hi - lo))
    full = first + torch.sigmoid((x[:, None] - ks * d - 0.5) / t).sum(1)
    assert (sigmoid_ceil_div(x, d, t) - full).abs().max() < 1e-3


def test_sigmoid_surrogate_first_tile_is_whole_from_one_element():
    # ceil(x / 128) = 1 for 1 <= x <= 128.  At t = 1 the old k = 0 step, centred at 1/2, read
    # sigmoid(0.5) = 0.62 at x = 1.  Now 1 exactly; what is left near 128 is the k = 1 step's tail,
    # sigmoid((x - 128.5) / t): sigmoid(-1.5) = 0.182 at 127, sigmoid(-0.5) = 0.378 at 128,
    # sigmoid(0.5) = 0.622 at 129 (so 1.182, 1.378, 1.622), the blur of temperature 1.
    x = torch.tensor([1.0, 2.0, 64.0, 127.0, 128.0, 129.0], dtype=torch.float64, requires_grad=True)
    value = sigmoid_ceil_div(x, 128, 1.0)
    s = lambda z: 1 / (1 + math.exp(-z))
    expected = [1.0, 1.0, 1.0, 1 + s(-1.5), 1 + s(-0.5), 1 + s(0.5)]
    assert value[0].item() == 1.0
    assert value.tolist() == pytest.approx(expected, abs=1e-12)
    # gradient: flat on the first tile, the k = 1 step's slope s'(z) / t = s(z)(1 - s(z)) near 128
    (grad,) = torch.autograd.grad(value.sum(), x)
    slope = lambda z: s(z) * (1 - s(z))
    assert grad.tolist() == pytest.approx([0.0, 0.0, 0.0, slope(-1.5), slope(-0.5), slope(0.5)], abs=1e-12)
    for t in (0.1, 0.5, 1.0, 4.0):   # never below 1 tile from one element on, at any temperature
        xs = torch.arange(1.0, 300.0, dtype=torch.float64)
        assert (sigmoid_ceil_div(xs, 8, t) >= 1.0).all() and (sigmoid_ceil_div(xs, 128, t) >= 1.0).all()


def test_sigmoid_surrogate_counts_a_depthwise_layer_whole_at_temperature_one():
    # 3x3 depthwise, 32 channels, 8x8 output: 32 GEMMs of M = 64, K = 9, N = 1; on one 128 x 128
    # array in uboost mode each takes ceil(9/128) * ceil(1/128) = 1 tile of 64 rows: 32 * 64 = 2048
    # cycles.  The old first step read 0.62 * 0.62 of a tile, 38 % of the true cycles.
    acc = load_accelerator("uboost")
    dw = ConvLayer("dw", 8, 8, 32, 32, 3, 3, padding=1, groups=32)
    got = network_cost_torch(from_layers([dw]), acc, "uboost", "sigmoid", temperature=1.0)["cycles"]
    assert float(got) == pytest.approx(2048.0, rel=1e-12)


def test_sigmoid_surrogate_refuses_a_temperature_that_is_not_positive():
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            sigmoid_ceil_div(torch.ones(3), 8, t)


@pytest.mark.parametrize("preset", ["uboost", "tpu_v3", "edge_16x16"])
@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
@pytest.mark.parametrize("mode", ["uboost", "systolic"])
def test_smooth_equals_exact_at_integer_counts(preset, dataflow, mode):
    acc = load_accelerator(preset).replace(dataflow=dataflow)
    layers = random_layers(120, seed=zlib.crc32(f"{preset}-{dataflow}-{mode}".encode()) % 1000)   # same every run
    exact = torch.tensor([layer_cost(l, acc, mode).cycles for l in layers], dtype=torch.float64)
    soft = from_layers(layers)
    st = network_cost_torch(soft, acc, mode, "straight_through")["cycles"]
    assert torch.allclose(st, exact, rtol=1e-12)       # forward of straight-through is exact
    sig = network_cost_torch(soft, acc, mode, "sigmoid", temperature=0.1)["cycles"]
    assert ((sig - exact).abs() / exact).max() < 0.04   # array rounds add a ceiling of their own


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
@pytest.mark.parametrize("mode", ["uboost", "systolic"])
def test_smooth_equals_exact_on_a_calibrated_accelerator(dataflow, mode):
    """Every calibration term (what `ubnas calibrate` fits) reaches the smooth model: the presets'
    neutral Calibration() would not notice one left out."""
    from hwmodels import Calibration
    cal = Calibration(cycle_scale=1.3, fold_overhead_cycles=17.0, layer_overhead_cycles=250.0,
                      bandwidth_efficiency=0.6)
    neutral = load_accelerator("edge_16x16").replace(dataflow=dataflow)
    acc = neutral.replace(calibration=cal)
    layers = random_layers(80, seed=zlib.crc32(f"cal-{dataflow}-{mode}".encode()) % 1000)
    costs = [layer_cost(l, acc, mode) for l in layers]
    if mode == "systolic":   # the bandwidth term acts: some layers are memory-bound
        assert any(c.memory_cycles > c.compute_cycles for c in costs)
    exact = torch.tensor([c.cycles for c in costs], dtype=torch.float64)
    assert not torch.allclose(exact, torch.tensor([layer_cost(l, neutral, mode).cycles for l in layers],
                                                  dtype=torch.float64))
    st = network_cost_torch(from_layers(layers), acc, mode, "straight_through")
    assert torch.allclose(st["cycles"], exact, rtol=1e-12)
    assert float(st["utilization"]) == pytest.approx(network_cost(layers, acc, mode).utilization, rel=1e-12)


def test_utilization_gradient_pushes_129_down_and_120_up():
    acc = load_accelerator("uboost")   # 128 x 128
    for width, sign in ((129.0, -1), (120.0, +1)):
        cout = torch.tensor(width, dtype=torch.float64, requires_grad=True)
        layers = soft_conv(16, 16, 128, cout, kernel=1)
        util = network_cost_torch(layers, acc, "uboost", "straight_through")["utilization"]
        util.backward()
        assert torch.sign(cout.grad).item() == sign, (width, cout.grad)


def test_latency_gradient_is_positive_across_a_fold_boundary():
    acc = load_accelerator("uboost")
    cin = torch.tensor(128.6, dtype=torch.float64, requires_grad=True)  # just past a K fold
    cycles = network_cost_torch(soft_conv(8, 8, cin, 64, kernel=1), acc, "systolic", "sigmoid")["total_cycles"]
    cycles.backward()
    assert cin.grad > 0
    # finite differences agree with autograd for the sigmoid surrogate
    eps = 1e-4
    f = lambda c: float(network_cost_torch(soft_conv(8, 8, torch.tensor(c, dtype=torch.float64), 64, kernel=1),
                                           acc, "systolic", "sigmoid")["total_cycles"])
    assert abs((f(128.6 + eps) - f(128.6 - eps)) / (2 * eps) - float(cin.grad)) < 1e-3 * abs(float(cin.grad)) + 1e-6


def test_linear_512_to_10_utilization_is_the_true_figure():
    # U-Boost's surrogate read 0.33 here; the true value is 512*10 / (128*128*4*1) = 0.078
    acc = load_accelerator("uboost")
    util = network_cost_torch(soft_linear(512, 10), acc, "uboost", "sigmoid", temperature=0.1)["utilization"]
    assert abs(float(util) - 512 * 10 / (128 * 128 * 4)) < 1e-3


def test_ranking_agreement_on_random_layers():
    acc = load_accelerator("uboost")
    layers = random_layers(300, seed=3)
    exact = [layer_cost(l, acc).utilization for l in layers]
    soft = network_cost_torch(from_layers(layers), acc, "systolic", "sigmoid", temperature=1.0)
    smooth_util = (from_layers(layers).macs / (soft["cycles"] * acc.pes)).tolist()
    rho = spearmanr(exact, smooth_util).correlation
    assert rho > 0.99, rho


def test_unknown_surrogate_is_an_error():
    with pytest.raises(ValueError, match="surrogate"):
        soft_ceil_div(torch.tensor([3.0]), 2, "nope")


def test_layers_follow_the_device_of_soft_widths():
    # constants (map sizes, kernel) must be created where the soft widths live (cuda in a
    # GPU search); the meta device stands in for it here
    width = torch.tensor(100.0, device="meta")
    for layers in (soft_conv(8, 8, 3, width, 3, 1, 1), soft_conv(8, 8, width, width, 3, depthwise=True),
                   soft_linear(width, 10)):
        for name in layers.__dataclass_fields__:
            assert getattr(layers, name).device.type == "meta", name


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=5), "does not fit the 2x2 input"),          # out_h = (2 - 5) // 1 + 1 = -2 used to pass
    (dict(kernel=3, stride=0), "stride and dilation must be >= 1"),   # was a ZeroDivisionError
    (dict(kernel=3, dilation=0), "stride and dilation must be >= 1"),
    (dict(kernel=1, padding=-1), "padding must be >= 0"),
    (dict(kernel=2.5), "kernel_h must be an integer"),
    (dict(kernel=1, batch=0), "batch must be >= 1"),
])
def test_soft_conv_checks_its_geometry_like_conv_layer(kwargs, message):
    with pytest.raises(ValueError, match=message):
        soft_conv(2, 2, 3, 8, **kwargs)


def test_soft_conv_geometry_by_hand():
    # 9 x 7 input, 3x3 kernel, stride 2, padding 1: out = (9 + 2 - 3) // 2 + 1 = 5 by (7 + 2 - 3) // 2 + 1 = 4
    layers = soft_conv(9, 7, 3, 8, kernel=3, stride=2, padding=1, batch=2)
    assert layers.m.tolist() == [2 * 5 * 4] and layers.k.tolist() == [27] and layers.n.tolist() == [8]


def test_hard_ceil_div_steps_half_way_between_counts():
    # steps at k*d + 1/2 (where the sigmoid's are), not at k*d: for d = 128 at 0.5, 128.5, 256.5
    x = torch.tensor([0.0, 0.4, 0.6, 1.0, 128.0, 128.4, 128.6, 256.4, 256.6], dtype=torch.float64)
    assert hard_ceil_div(x, 128).tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 3]
    # the straight-through forward is this staircase at soft counts too
    assert soft_ceil_div(x, 128, "straight_through").tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 3]


def test_hard_ceil_div_is_exact_in_float32_past_2_pow_23():
    # in float32, x - 1/2 rounds back to x from 2**23 on: a multiple of d must not count an extra step
    for value, d in ((2 ** 24, 128), (2 ** 23 + 2, 2), (2 ** 23, 1), (3 * 2 ** 22, 64)):
        x = torch.tensor([float(value)], dtype=torch.float32)
        assert int(x.item()) == value          # representable, so only the staircase can be off
        expected = -(-value // d)              # integer ceil
        assert hard_ceil_div(x, d).item() == expected
        assert soft_ceil_div(x, d, "straight_through").item() == expected
        assert hard_ceil_div(x, d).dtype == torch.float32


def test_empty_network_has_zero_utilization_like_the_exact_model():
    acc = load_accelerator("uboost")
    for mode in ("systolic", "uboost"):
        cost = network_cost_torch(from_layers([]), acc, mode)
        assert network_cost([], acc, mode).utilization == 0.0
        assert cost["utilization"].item() == 0.0 and cost["total_cycles"].item() == 0.0
