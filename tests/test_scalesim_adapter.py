"""SCALE-Sim adapter on tiny layers, and the committed SCALE-Sim reference CSV."""
import csv
from pathlib import Path

import pytest

from hwmodels.accelerator import Accelerator
from hwmodels.layers import ConvLayer, GemmLayer, LinearLayer

REFERENCE = Path(__file__).parent / "data" / "scalesim_reference.csv"


def _ws_hand_count():
    """GEMM M=5, K=6, N=7 on a 4 x 4 weight-stationary array, counted from the dataflow.

    The 6 x 7 weight matrix is cut into ceil(6/4) * ceil(7/4) = 4 folds.  Per fold:
    R = 4 cycles to shift a weight tile in (one array row per cycle), M = 5 input rows
    streamed, R - 1 = 3 cycles of skew while the last input row crosses the array rows
    and C - 1 = 3 cycles while its sums leave across the columns: 4 + 5 + 3 + 3 = 15.
    Folds run back to back; the report counts cycles from 0, so it reads 4 * 15 - 1.
    """
    rows = cols = 4
    m, k, n = 5, 6, 7
    folds = -(-k // rows) * -(-n // cols)
    per_fold = rows + m + (rows - 1) + (cols - 1)  # load weights, stream rows, skew in, skew out
    return folds * per_fold - 1


def _os_hand_count():
    """Same GEMM, output stationary: the 5 x 7 output is cut into ceil(5/4)*ceil(7/4) = 4
    tiles; each streams the K = 6 reduction (6 cycles) with a row skew of R - 1 and a
    column skew of C - 1 before the last output is complete: 6 + 3 + 3 = 12 per fold."""
    rows = cols = 4
    m, k, n = 5, 6, 7
    folds = -(-m // rows) * -(-n // cols)
    return folds * (k + (rows - 1) + (cols - 1)) - 1


@pytest.mark.scalesim
def test_adapter_tiny_gemm_matches_hand_count(tmp_path):
    pytest.importorskip("scalesim")
    from hwmodels.scalesim import run_scalesim

    layer = GemmLayer("tiny", m=5, k=6, n=7)
    ws = run_scalesim([layer], Accelerator("t", 4, 4, dataflow="ws"), workdir=str(tmp_path / "ws"))
    os_ = run_scalesim([layer], Accelerator("t", 4, 4, dataflow="os"))
    assert ws[0].name == "tiny" and ws[0].stall_cycles == 0
    assert ws[0].compute_cycles == ws[0].total_cycles == _ws_hand_count() == 59
    assert os_[0].compute_cycles == _os_hand_count() == 47
    assert 0 < ws[0].overall_utilization <= 1 and 0 < ws[0].mapping_efficiency <= 1


@pytest.mark.scalesim
def test_adapter_padding_stride_groups_linear():
    pytest.importorskip("scalesim")
    from hwmodels.scalesim import run_scalesim

    acc = Accelerator("t", 4, 4, dataflow="ws")
    # 7x7 input, pad 1, 3x3 stride 2 -> 4x4 output (M = 16), K = 9 per group, N = 1, 3 groups.
    dw = ConvLayer("dw", 7, 7, 3, 3, 3, 3, stride=2, padding=1, groups=3)
    fc = LinearLayer("fc", 10, 3)  # M = 1, K = 10, N = 3
    reports = run_scalesim([dw, fc], acc)
    assert [r.name for r in reports] == ["dw", "fc"]
    assert reports[0].compute_cycles == 3 * (3 * 1 * (2 * 4 + 4 + 16 - 2) - 1)
    assert reports[1].compute_cycles == 3 * 1 * (2 * 4 + 4 + 1 - 2) - 1
    # dilated and unequal-stride convs: tests/test_cal_scalesim_rows.py


def test_reference_csv_parses_and_has_every_dataflow():
    with open(REFERENCE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 100
    assert {r["dataflow"] for r in rows} == {"ws", "os", "is"}
    assert {"cifar", "imagenet"} <= {r["suite"] for r in rows}
    for r in rows:
        assert int(r["scalesim_total_cycles"]) >= int(r["scalesim_compute_cycles"]) > 0
        assert int(r["array_rows"]) > 0 and int(r["array_cols"]) > 0


@pytest.mark.parametrize("option, value", [("bandwidth_words_per_cycle", 0.5), ("bandwidth_words_per_cycle", 0),
                                           ("sram_kb", 0.5), ("sram_kb", -64), ("sram_kb", True)])
def test_run_scalesim_refuses_what_its_integer_config_cannot_hold(option, value):
    """int(0.5) wrote 'Bandwidth : 0' into SCALE-Sim's config; sram_kb 0.5 fell back to the default."""
    from hwmodels.scalesim import run_scalesim
    with pytest.raises(ValueError, match=f"{option} expected a whole number >= 1"):
        run_scalesim([GemmLayer("tiny", m=5, k=6, n=7)], Accelerator("t", 4, 4), **{option: value})
