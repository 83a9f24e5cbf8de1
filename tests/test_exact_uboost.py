"""The ``uboost`` mode against the U-Boost paper's reference values, and the GEMM
lowering against torch's conv2d shapes and a brute-force MAC count."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwmodels import Accelerator, ConvLayer, GemmLayer, LinearLayer, layer_cost, network_cost
from hwmodels.exact import mode_pes
from hwmodels.smooth import from_layers, network_cost_torch

ACC = Accelerator("uboost-128", 128, 128)


def util(layer):
    return layer_cost(layer, ACC, mode="uboost").utilization


def test_paper_utilizations():
    assert util(ConvLayer("c", 32, 32, 128, 128, 3, 3, padding=1)) == pytest.approx(1.0)
    assert util(ConvLayer("c", 32, 32, 129, 128, 1, 1)) == pytest.approx(129 * 128 / (128 * 128 * 2))
    assert round(util(ConvLayer("c", 32, 32, 129, 128, 1, 1)), 3) == 0.504
    # K = 576 -> 5 row tiles (576/640), N = 64 -> half the columns: 0.9 * 0.5
    assert util(ConvLayer("c", 32, 32, 64, 64, 3, 3, padding=1)) == pytest.approx(0.45)
    assert util(ConvLayer("dw", 32, 32, 64, 64, 3, 3, padding=1, groups=64)) == pytest.approx(9 / 16384)
    assert util(LinearLayer("fc", 512, 10)) == pytest.approx(512 * 10 / (128 * 128 * 4))


def test_paper_cycle_count():
    # 3x3 128 -> 128, 16x16 output: 9 weight tiles x 256 streamed rows.
    cost = layer_cost(ConvLayer("c", 16, 16, 128, 128, 3, 3, padding=1), ACC, mode="uboost")
    assert cost.cycles == 2304
    assert cost.memory_cycles == 0 and cost.compute_cycles == 2304
    assert cost.seconds == pytest.approx(2304 / ACC.clock_hz)


def test_uboost_ignores_fill_arrays_memory():
    # 3x3 conv 128 -> 128 on a 16x16 map: K = 9*128 = 1152, N = 128, M = 256.
    # uboost: 9 x 1 tiles of 256 rows = 2304 cycles on ONE array, whatever num_arrays says;
    # utilization = 256*1152*128 / (2304 * 128*128) = 1.0 (the other arrays are not counted).
    slow = Accelerator("slow", 128, 128, num_arrays=4, bandwidth_bytes_per_s=1.0)
    layer = ConvLayer("c", 16, 16, 128, 128, 3, 3, padding=1)
    cost = layer_cost(layer, slow, mode="uboost")
    assert cost.cycles == 2304 and cost.compute_cycles == 2304 and cost.memory_cycles == 0
    assert cost.utilization == pytest.approx(1.0)
    assert cost.lost["idle_arrays"] == 0 and abs(cost.lost["overhead"]) < 1e-6
    assert sum(cost.lost.values()) == pytest.approx(cost.cycles * 128 * 128 - cost.macs, abs=1e-6)
    net = network_cost([layer, layer], slow, mode="uboost")
    assert net.utilization == pytest.approx(1.0)
    # systolic shares the 9 folds over 4 arrays (3 rounds of 2*128 + 128 + 256 - 2 = 638 cycles),
    # but 1 byte/s of bandwidth makes it memory-bound far beyond that
    assert layer_cost(layer, slow, mode="systolic").compute_cycles == 3 * 638
    assert layer_cost(layer, slow, mode="systolic").cycles > 1e6


def test_mode_pes():
    acc = Accelerator("four", 64, 32, num_arrays=4)
    assert mode_pes(acc, "uboost") == 64 * 32
    assert mode_pes(acc, "systolic") == 64 * 32 * 4
    with pytest.raises(ValueError, match="unknown model mode"):
        mode_pes(acc, "roofline")


def test_uboost_smooth_twin_counts_one_array():
    # same layer and 4-array machine as above: smooth cycles 2304, utilization 1.0
    slow = Accelerator("slow", 128, 128, num_arrays=4, bandwidth_bytes_per_s=1.0)
    layer = ConvLayer("c", 16, 16, 128, 128, 3, 3, padding=1)
    for surrogate, t in (("straight_through", 1.0), ("sigmoid", 0.02)):   # sigmoid(-25) ~ 1e-11
        out = network_cost_torch(from_layers([layer]), slow, "uboost", surrogate, t)
        assert float(out["total_cycles"]) == pytest.approx(2304, rel=1e-6)
        assert float(out["utilization"]) == pytest.approx(1.0, rel=1e-6)


def test_uboost_rows_cut_k_and_columns_cut_n_on_a_rectangular_array():
    # 64 rows x 32 columns: K = 200 -> ceil(200/64) = 4 row tiles, N = 40 -> ceil(40/32) = 2
    # column tiles: 8 tiles x M = 10 rows = 80 cycles (rows and columns swapped: 7 x 1 = 70).
    # utilization = 10*200*40 / (80 * 64*32) = 80000 / 163840 = 0.48828125
    acc = Accelerator("tall", 64, 32)
    cost = layer_cost(GemmLayer("g", 10, 200, 40), acc, mode="uboost")
    assert (cost.folds, cost.cycles) == (8, 80)
    assert cost.utilization == 0.48828125
    out = network_cost_torch(from_layers([GemmLayer("g", 10, 200, 40)]), acc, "uboost", "straight_through")
    assert float(out["total_cycles"]) == 80


CASES = [  # (in_h, in_w, cin, cout, kh, kw, stride, padding, dilation, groups, batch)
    (7, 9, 4, 6, 3, 3, 1, 1, 1, 1, 1),
    (11, 8, 6, 9, 3, 2, (2, 1), (1, 0), 1, 3, 2),
    (12, 12, 8, 8, 3, 3, 1, 2, 2, 8, 1),
    (9, 13, 4, 8, 5, 3, (3, 2), (2, 1), (1, 2), 2, 3),
    (5, 5, 3, 4, 1, 1, 2, 0, 1, 1, 2),
    (16, 10, 6, 12, 3, 3, 2, 1, 3, 6, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_lowering_matches_torch_and_brute_force(case):
    h, w, cin, cout, kh, kw, stride, padding, dilation, groups, batch = case
    layer = ConvLayer("c", h, w, cin, cout, kh, kw, stride, padding, dilation, groups, batch)
    x = torch.randn(batch, cin, h, w, dtype=torch.float64)
    weight = torch.randn(cout, cin // groups, kh, kw, dtype=torch.float64)
    y = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert (layer.out_h, layer.out_w) == tuple(y.shape[-2:])
    gemm = layer.lower()
    # Brute force: unfold the padded input per group, multiply, count MACs one by one.
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(batch, groups, cin // groups * kh * kw, -1)          # (B, g, K, L)
    macs = 0
    out = torch.zeros(batch, cout, y.shape[-2] * y.shape[-1], dtype=torch.float64)
    per_group = cout // groups
    for g in range(groups):
        a = cols[:, g].permute(0, 2, 1).reshape(-1, cols.shape[2])        # (B*L, K)
        wg = weight[g * per_group:(g + 1) * per_group].reshape(per_group, -1).T   # (K, N)
        assert (a.shape[0], a.shape[1], wg.shape[1]) == (gemm.m, gemm.k, gemm.n)
        prod = torch.einsum("mk,kn->mkn", a, wg)                          # every multiply
        macs += prod.numel()
        out[:, g * per_group:(g + 1) * per_group] = \
            prod.sum(1).view(batch, -1, per_group).permute(0, 2, 1)
    torch.testing.assert_close(out.view_as(y), y)
    assert gemm.repeats == groups
    assert gemm.macs == macs == y.numel() * (cin // groups) * kh * kw


def test_lowering_bad_layers():
    with pytest.raises(ValueError, match="does not fit"):
        ConvLayer("c", 3, 3, 4, 4, 5, 5)
    with pytest.raises(ValueError, match="divisible by groups"):
        ConvLayer("c", 8, 8, 6, 4, 3, 3, groups=4)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        ConvLayer("c", 8, 8, 0, 4, 3, 3)
    # a fraction would make out_h and the MAC count fractions, not an error
    with pytest.raises(ValueError, match="in_h must be an integer, got 2.5"):
        ConvLayer("c", 2.5, 8, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="stride must be an integer"):
        ConvLayer("c", 8, 8, 4, 4, 3, 3, stride=(1, 1.5))
    with pytest.raises(ValueError, match="m must be an integer"):
        GemmLayer("g", 1.5, 2, 2)
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        LinearLayer("l", 0, 3)
    assert ConvLayer("c", 8.0, 8, 4, 4, 3, 3).in_h == 8 and isinstance(ConvLayer("c", 8.0, 8, 4, 4, 3, 3).in_h, int)


def test_depthwise_is_one_column():
    layer = ConvLayer("dw", 8, 8, 32, 32, 3, 3, padding=1, groups=32)
    g = layer.lower()
    assert (g.m, g.k, g.n, g.repeats) == (64, 9, 1, 32) and layer.is_depthwise
    # Utilization independent of the map size in uboost mode.
    for hw, b in itertools.product((4, 8, 16), (1, 3)):
        dw = ConvLayer("dw", hw, hw, 32, 32, 3, 3, padding=1, groups=32, batch=b)
        assert util(dw) == pytest.approx(9 / 16384)
    np.testing.assert_equal(layer_cost(layer, ACC, "uboost").folds, 32)
