"""The SCALE-Sim adapter's topology rows, checked against real SCALE-Sim 3.0.0 runs and hand counts.

Hand counts use the fold structure of tests/test_scalesim_adapter.py (stall-free, CALC mode),
with F folds and SCALE-Sim's 'Total Cycles' one short (the index of the last cycle):
    ws: ceil(K/R)*ceil(N/C) folds of 2R + C + M - 2 cycles
    os: ceil(M/R)*ceil(N/C) folds of  R + C + K - 2 cycles
    is: ceil(K/R)*ceil(M/C) folds of 2R + C + N - 2 cycles
"""
import pytest

from hwmodels.accelerator import Accelerator
from hwmodels.layers import ConvLayer, LinearLayer

pytestmark = pytest.mark.scalesim


def _run(layers, rows, cols, dataflow):
    pytest.importorskip("scalesim")
    from hwmodels.scalesim import run_scalesim
    return [r.compute_cycles for r in run_scalesim(layers, Accelerator("t", rows, cols, dataflow=dataflow))]


def test_dilated_and_unequal_stride_convs_are_simulated_as_their_gemm():
    """They used to be refused.  A dilated 3x3 (dilation 2) on a 9x9 map has a 5x5 output
    (9 - 2*(3-1) = 5), so M = 25, K = 3*3*3 = 27, N = 5: the same (M, K, N) as the plain 3x3 conv
    on a 7x7 map, which SCALE-Sim runs as a conv row.  Both must give the same compute cycles."""
    dilated = ConvLayer("dil", 9, 9, 3, 5, 3, 3, dilation=2)
    plain = ConvLayer("plain", 7, 7, 3, 5, 3, 3)
    # stride (2, 1) on a 9x8 map, 3x3, no padding: out 4 x 6, M = 24, K = 18, N = 3;
    # plain twin: 3x3 stride 1 on a 6x8 map (out 4 x 6)
    uneven = ConvLayer("uneven", 9, 8, 2, 3, 3, 3, stride=(2, 1))
    uneven_twin = ConvLayer("twin", 6, 8, 2, 3, 3, 3)
    # on a 4 x 8 array:
    #   dil ws: ceil(27/4)=7 * ceil(5/8)=1 = 7 folds of 2*4 + 8 + 25 - 2 = 39 -> 273 - 1 = 272
    #   dil os: ceil(25/4)=7 * 1 = 7 folds of 4 + 8 + 27 - 2 = 37 -> 259 - 1 = 258
    #   dil is: ceil(27/4)=7 * ceil(25/8)=4 = 28 folds of 8 + 8 + 5 - 2 = 19 -> 532 - 1 = 531
    #   uneven ws: ceil(18/4)=5 * 1 = 5 folds of 8 + 8 + 24 - 2 = 38 -> 190 - 1 = 189
    #   uneven os: ceil(24/4)=6 * 1 = 6 folds of 4 + 8 + 18 - 2 = 28 -> 168 - 1 = 167
    #   uneven is: ceil(18/4)=5 * ceil(24/8)=3 = 15 folds of 8 + 8 + 3 - 2 = 17 -> 255 - 1 = 254
    hand = {"ws": (272, 189), "os": (258, 167), "is": (531, 254)}
    for dataflow, (dil_cycles, uneven_cycles) in hand.items():
        got = _run([dilated, plain, uneven, uneven_twin], 4, 8, dataflow)
        assert got == [dil_cycles, dil_cycles, uneven_cycles, uneven_cycles], dataflow


def test_grouped_dilated_conv_is_one_gemm_per_group():
    """groups 2, dilation (2, 1), stride (1, 2), pad 1: 11x10 map, 3x2 kernel.
    out_h = (11 + 2 - 2*2 - 1)//1 + 1 = 9, out_w = (10 + 2 - 1*1 - 1)//2 + 1 = 6: M = 54,
    K = 3*2*(4/2) = 12, N = 6/2 = 3 per group.  ws on 4x4: ceil(12/4)=3 * ceil(3/4)=1 = 3 folds of
    2*4 + 4 + 54 - 2 = 64 -> 192 - 1 = 191 per group, 2 groups -> 382."""
    layer = ConvLayer("g", 11, 10, 4, 6, 3, 2, stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    assert _run([layer], 4, 4, "ws") == [382]


def test_gemm_rows_keep_m_n_k_apart_on_a_rectangular_array():
    """A non-square FC (K = 10 inputs, N = 3 outputs, M = batch 1) on a 4 x 8 array.  A row written
    as M, K, N (SCALE-Sim reads M, N, K) would simulate K = 3, N = 10 instead.
        ws: ceil(10/4)=3 * ceil(3/8)=1 = 3 folds of 2*4 + 8 + 1 - 2 = 15 -> 45 - 1 = 44
            (swapped: ceil(3/4)*ceil(10/8) = 2 folds -> 29)
        os: ceil(1/4)=1 * ceil(3/8)=1 = 1 fold of 4 + 8 + 10 - 2 = 20 -> 19
            (swapped: N = 10 -> 2 folds of 4 + 8 + 3 - 2 = 13 -> 25)
    The batch-4 conv goes through the same GEMM row: 1x1 conv, 2x3 map, 10 -> 3 channels, batch 4:
    M = 4*2*3 = 24, K = 10, N = 3.
        ws: 3 * 1 = 3 folds of 8 + 8 + 24 - 2 = 38 -> 114 - 1 = 113 (swapped: 2 folds -> 75)"""
    fc = LinearLayer("fc", 10, 3)
    assert _run([fc], 4, 8, "ws") == [44]
    assert _run([fc], 4, 8, "os") == [19]
    batched = ConvLayer("b", 2, 3, 10, 3, 1, 1, batch=4)
    assert _run([batched], 4, 8, "ws") == [113]


def test_conv_rows_are_cropped_to_the_rows_the_conv_reads():
    """8x8 map, no padding, 3x3 stride 2: torch's output is (8 - 3)//2 + 1 = 3 per side (M = 9);
    SCALE-Sim's own ceil((8 - 3 + 2)/2) = 4 per side would simulate M = 16.  2 -> 3 channels:
    K = 18, N = 3.  ws on 4x4: ceil(18/4)=5 * ceil(3/4)=1 = 5 folds of 2*4 + 4 + 9 - 2 = 19
    -> 95 - 1 = 94 (uncropped: 5 folds of 26 -> 129)."""
    layer = ConvLayer("c", 8, 8, 2, 3, 3, 3, stride=2)
    assert (layer.out_h, layer.out_w) == (3, 3)
    assert _run([layer], 4, 4, "ws") == [94]


DILATED_CSV = """name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,dilation,groups,batch
d1,conv,9,9,3,5,3,3,1,0,2,1,1
p1,conv,6,6,2,3,3,3,1,1,1,1,1
d2,conv,8,8,2,4,3,3,1,3,3,1,1
p2,conv,5,5,4,4,1,1,1,0,1,1,1
fc,linear,1,1,10,3,1,1,1,0,1,1,1
d3,conv,7,7,1,2,3,3,1,0,2,1,1
p3,conv,7,7,3,6,3,3,2,0,1,1,1
"""
# ws on 4x4, folds x (2*4 + 4 + M - 2) - 1 (SCALE-Sim's last cycle index):
#   d1: out 5x5, M 25, K 27, N 5: ceil(27/4)=7 * ceil(5/4)=2 = 14 folds of 35 -> 490 - 1 = 489
#   p1: out 6x6, M 36, K 18, N 3: 5 * 1 = 5 folds of 46 -> 230 - 1 = 229
#   d2: out (8 + 6 - 3*2 - 1) + 1 = 8 per side, M 64, K 18, N 4: 5 folds of 74 -> 370 - 1 = 369
#   p2: M 25, K 4, N 4: 1 fold of 35 -> 34
#   fc: M 1, K 10, N 3: 3 folds of 11 -> 33 - 1 = 32
#   d3: out 3x3, M 9, K 9, N 2: 3 folds of 19 -> 57 - 1 = 56
#   p3: out 3x3 (stride 2), M 9, K 27, N 6: 7 * 2 = 14 folds of 19 -> 266 - 1 = 265
HAND_WS_4X4 = {"d1": 489, "p1": 229, "d2": 369, "p2": 34, "fc": 32, "d3": 56, "p3": 265}


def test_cli_calibrates_on_dilated_layers(tmp_path, capsys):
    """`ubnas calibrate --reference scalesim --layers dil.csv` simulated the first layer and then
    stopped at the dilated one with a Python-call advice; every row is now simulated."""
    pytest.importorskip("scalesim")
    import json

    from hwmodels import references as refs
    from hwmodels import load_accelerator
    from hwmodels.layers_csv import read_layers_csv
    from ubnas.cli import main

    layers_csv = tmp_path / "dil.csv"
    layers_csv.write_text(DILATED_CSV)
    cache, out = tmp_path / "c.json", tmp_path / "o.yaml"
    code = main(["calibrate", "--reference", "scalesim", "--layers", str(layers_csv), "--array", "4x4",
                 "--dataflow", "ws", "--cache", str(cache), "--no-plot", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cached = json.loads(cache.read_text())
    for layer in read_layers_csv(layers_csv):
        entry = cached[refs.cache_key(layer, 4, 4, "ws", refs.scalesim_version())]
        assert entry["compute_cycles"] == HAND_WS_4X4[layer.name], layer.name
    # the systolic model counts these folds exactly (SCALE-Sim's count + 1): nothing to calibrate
    fitted = load_accelerator(out).calibration
    assert fitted.cycle_scale == pytest.approx(1.0, abs=1e-6)
    assert fitted.fold_overhead_cycles == pytest.approx(0.0, abs=1e-3)
