"""Off-chip traffic, worked out by hand, on a low-bandwidth accelerator where it sets the latency.

Accelerator: 2 arrays of 8 rows x 4 columns, ws, 500 MHz, 1 MB/s, bf16 (2 bytes per element),
1 MiB on chip (every layer below fits, so each tensor moves once): a byte costs
500e6 / 1e6 = 500 cycles, far more than any of these layers computes.
"""
import pytest
import torch

from hwmodels import Accelerator, ConvLayer, GemmLayer, LinearLayer, layer_cost, network_cost
from hwmodels.smooth import from_layers, network_cost_torch, soft_conv, soft_linear

ACC = Accelerator("lowbw", 8, 4, num_arrays=2, dataflow="ws", clock_hz=5e8, bandwidth_bytes_per_s=1e6,
                  onchip_bytes=2**20, bytes_per_element=2)
CYCLES_PER_BYTE = 500

# grouped conv, non-square map, batch 3: 9 x 7 input, 3x3, stride 2, padding 1, 6 -> 10 channels, 2 groups
#   output (9 + 2 - 3) // 2 + 1 = 5 by (7 + 2 - 3) // 2 + 1 = 4
#   inputs  3 * 6 * 9 * 7       = 1134
#   weights 10 * (6 / 2) * 3 * 3 = 270
#   outputs 3 * 10 * 5 * 4      = 600
GROUPED = ConvLayer("grouped", 9, 7, 6, 10, 3, 3, stride=2, padding=1, groups=2, batch=3)
GROUPED_ELEMENTS = (1134, 270, 600)
# the same without groups: weights 10 * 6 * 3 * 3 = 540
CONV = ConvLayer("conv", 9, 7, 6, 10, 3, 3, stride=2, padding=1, batch=3)
CONV_ELEMENTS = (1134, 540, 600)
# depthwise 3x3, padding 1, 8 channels on a 6 x 10 map, batch 2: output 6 x 10
#   inputs 2 * 8 * 6 * 10 = 960, weights 8 * 1 * 3 * 3 = 72, outputs 2 * 8 * 6 * 10 = 960
DEPTHWISE = ConvLayer("dw", 6, 10, 8, 8, 3, 3, padding=1, groups=8, batch=2)
DEPTHWISE_ELEMENTS = (960, 72, 960)
# linear 300 -> 20 on 4 rows: inputs 4 * 300 = 1200, weights 300 * 20 = 6000 (not per row), outputs 4 * 20 = 80
LINEAR = LinearLayer("fc", 300, 20, batch=4)
LINEAR_ELEMENTS = (1200, 6000, 80)

CASES = [(GROUPED, GROUPED_ELEMENTS), (CONV, CONV_ELEMENTS), (DEPTHWISE, DEPTHWISE_ELEMENTS),
         (LINEAR, LINEAR_ELEMENTS)]


@pytest.mark.parametrize("layer, elements", CASES, ids=lambda v: getattr(v, "name", ""))
def test_tensor_sizes_by_hand(layer, elements):
    assert (layer.input_elements(), layer.weight_elements(), layer.output_elements()) == elements


@pytest.mark.parametrize("layer, elements", CASES, ids=lambda v: getattr(v, "name", ""))
def test_memory_bound_layer_cost_by_hand(layer, elements):
    nbytes = 2 * sum(elements)
    cost = layer_cost(layer, ACC)
    assert cost.bytes == nbytes
    assert cost.memory_cycles == pytest.approx(nbytes * CYCLES_PER_BYTE)
    assert cost.compute_cycles < cost.memory_cycles / 100          # memory-bound by far
    assert cost.cycles == pytest.approx(nbytes * CYCLES_PER_BYTE)
    assert cost.seconds == pytest.approx(nbytes / 1e6)              # bytes / bandwidth, not compute
    assert cost.lost["memory_stall"] == pytest.approx((cost.cycles - cost.compute_cycles) * 8 * 4 * 2)
    # the smooth twin moves the same bytes
    smooth = network_cost_torch(from_layers([layer]), ACC, "systolic", "straight_through")
    assert float(smooth["cycles"][0]) == pytest.approx(nbytes * CYCLES_PER_BYTE, rel=1e-12)
    assert float(smooth["seconds"]) == pytest.approx(nbytes / 1e6, rel=1e-12)


def test_network_seconds_are_cycles_over_the_clock():
    # 2 * (2004 + 2274 + 1992 + 7280) = 2 * 13550 = 27100 bytes -> 13.55 M cycles -> 27.1 ms at 500 MHz
    net = network_cost([layer for layer, _ in CASES], ACC)
    assert net.cycles == pytest.approx(27100 * CYCLES_PER_BYTE)
    assert net.seconds == pytest.approx(27100 / 1e6)


def test_soft_layers_move_the_same_tensors():
    # soft_conv / soft_linear at integer counts against the hand-worked sizes above
    for soft, elements in ((soft_conv(9, 7, 6, 10, 3, 2, 1, batch=3), CONV_ELEMENTS),
                           (soft_conv(6, 10, 8, 8, 3, 1, 1, depthwise=True, batch=2), DEPTHWISE_ELEMENTS),
                           (soft_linear(300, 20, batch=4), LINEAR_ELEMENTS)):
        got = (soft.input_elements.item(), soft.weight_elements.item(), soft.output_elements.item())
        assert got == elements
        out = network_cost_torch(soft, ACC, "systolic", "straight_through")
        assert float(out["cycles"][0]) == pytest.approx(2 * sum(elements) * CYCLES_PER_BYTE, rel=1e-12)
    # GEMM shapes: conv M = 3 * 5 * 4 = 60, K = 6 * 9 = 54, N = 10; depthwise M = 2 * 60 = 120,
    # K = 9, N = 1, 8 repeats; linear M = 4, K = 300, N = 20
    conv, dw, fc = (soft_conv(9, 7, 6, 10, 3, 2, 1, batch=3),
                    soft_conv(6, 10, 8, 8, 3, 1, 1, depthwise=True, batch=2), soft_linear(300, 20, batch=4))
    assert [conv.m.item(), conv.k.item(), conv.n.item(), conv.repeats.item()] == [60, 54, 10, 1]
    assert [dw.m.item(), dw.k.item(), dw.n.item(), dw.repeats.item()] == [120, 9, 1, 8]
    assert [fc.m.item(), fc.k.item(), fc.n.item(), fc.repeats.item()] == [4, 300, 20, 1]


def test_spill_counts_outputs_and_bytes_per_element():
    # (64 x 8) @ (8 x 16) on one 4 x 4 ws array, 2 bytes per element, 2000 bytes on chip.
    # inputs 64 * 8 = 512, weights 8 * 16 = 128, outputs 64 * 16 = 1024 elements:
    #   inputs + weights = 640 elements = 1280 bytes would fit, all three 1664 elements = 3328 bytes
    #   do not (nor would 1664 *elements* counted as bytes: 1664 <= 2000).
    # Spilled, ws re-reads the inputs once per column fold of the weights, ceil(16 / 4) = 4:
    #   4 * 512 + 128 + 1024 = 3200 elements = 6400 bytes -> 3.2 M cycles at 500 cycles per byte
    # (compute: ceil(8/4) * ceil(16/4) = 8 folds of 2*4 + 4 + 64 - 2 = 74 cycles = 592).
    acc = Accelerator("small", 4, 4, clock_hz=5e8, bandwidth_bytes_per_s=1e6, onchip_bytes=2000,
                      bytes_per_element=2)
    layer = GemmLayer("g", 64, 8, 16)
    cost = layer_cost(layer, acc)
    assert cost.compute_cycles == 592
    assert cost.bytes == 6400 and cost.cycles == pytest.approx(3.2e6)
    smooth = network_cost_torch(from_layers([layer]), acc, "systolic", "straight_through")
    assert float(smooth["cycles"][0]) == pytest.approx(3.2e6, rel=1e-12)
    # with 3328 bytes on chip the three tensors fit and move once: 3328 bytes
    roomy = acc.replace(onchip_bytes=3328)
    assert layer_cost(layer, roomy).bytes == 3328
    assert float(network_cost_torch(from_layers([layer]), roomy, "systolic")["cycles"][0]) == \
        pytest.approx(3328 * 500, rel=1e-12)


def test_systolic_uses_every_array_and_rectangular_folds():
    # (10 x 200) @ (200 x 40) on 3 arrays of 64 rows x 32 columns, ws, compute-bound:
    # folds ceil(200/64) * ceil(40/32) = 4 * 2 = 8 (rows and columns swapped: ceil(200/32) * ceil(40/64) = 7), in
    # ceil(8 / 3) = 3 rounds of 2*64 + 32 + 10 - 2 = 168 cycles = 504 cycles.
    # utilization = 10*200*40 / (504 * 64*32*3) = 80000 / 3096576
    acc = Accelerator("tri", 64, 32, num_arrays=3, bandwidth_bytes_per_s=1e30)
    cost = layer_cost(GemmLayer("g", 10, 200, 40), acc)
    assert (cost.folds, cost.compute_cycles, cost.cycles) == (8, 504, 504)
    assert cost.utilization == pytest.approx(80000 / 3096576, rel=1e-12)
    # idle arrays: 3 rounds * 3 arrays - 8 folds = 1 fold slot of (10 + 2*64 + 32 - 2) * 64*32 PE-cycles
    assert cost.lost["idle_arrays"] == 168 * 64 * 32
    out = network_cost_torch(from_layers([GemmLayer("g", 10, 200, 40)]), acc, "systolic", "straight_through")
    assert float(out["total_cycles"]) == 504
    assert float(out["utilization"]) == pytest.approx(80000 / 3096576, rel=1e-12)


def test_smooth_seconds_use_the_clock():
    out = network_cost_torch(soft_linear(torch.tensor(300.0, dtype=torch.float64), 20, batch=4), ACC)
    assert float(out["seconds"]) == pytest.approx(float(out["total_cycles"]) / 5e8, rel=1e-12)
