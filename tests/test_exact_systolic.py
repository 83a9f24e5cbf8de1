"""The ``systolic`` mode against an independent cycle-level simulator of a systolic array.

The simulator below moves operands through an R x C grid of PE registers one
clock at a time and knows nothing of exact.py's formula:

* weight-stationary (ws): the fold's R x C weight block is shifted in from the
  top, one row per cycle (R cycles).  Then input row m's element r enters PE
  row r from the left at stream cycle m + r (the skew) and moves one PE right
  per cycle; partial sums move one PE down per cycle; a finished dot product
  leaves the bottom of column c.  The fold ends in the cycle its last output
  leaves the array (the whole padded array drains: SCALE-Sim pads partial
  folds to the full array).
* output-stationary (os): PE (r, c) owns output (r, c) of the fold; A's row r
  enters from the left skewed by r, W's column c from the top skewed by c, both
  tagged with their reduction index k (asserted equal where they meet).  A
  PE's result is taken in the cycle of its K-th MAC: results leave through an
  output chain that overlaps the next fold, so the fold ends with the last
  MAC (this is how SCALE-Sim schedules os; there is no stationary-operand load).
* input-stationary (is): ws on the transposed problem (A^T stationary, W^T
  streamed), i.e. C^T = W^T A^T.

SCALE-Sim 3.0.0 itself is compared in tests/test_exact_vs_scalesim.py: it
reports sum over folds of (2R + C + T - 2) for ws/is and (R + C + K - 2) for
os, minus 1 per simulated GEMM (its 'Total Cycles' is the last cycle's index).

Every fold's result is accumulated and compared with numpy's matmul, so the
simulator is known to compute the right thing before its cycle counts are
compared with ``layer_cost(..., mode="systolic")``.
"""
import math

import numpy as np
import pytest

from hwmodels import Accelerator, Calibration, GemmLayer, LinearLayer, layer_cost, network_cost


def _ws_fold(wblock, ablock):
    """Simulate one ws fold. wblock: R x C stationary, ablock: T x R streamed.

    Returns (cycles, out T x C)."""
    R, C = wblock.shape
    T = ablock.shape[0]
    w = np.zeros((R, C))
    cycle = 0
    for step in range(R):                        # shift weight rows in from the top
        w = np.vstack([wblock[R - 1 - step][None, :], w[:-1]])
        cycle += 1
    assert np.array_equal(w, wblock)
    a_val = np.zeros((R, C)); a_tag = np.full((R, C), -1)
    p_val = np.zeros((R, C)); p_tag = np.full((R, C), -1)
    out = np.full((T, C), np.nan)
    remaining, last = T * C, None
    stream = 0
    while remaining:
        new_a_val = np.zeros((R, C)); new_a_tag = np.full((R, C), -1)
        new_a_val[:, 1:], new_a_tag[:, 1:] = a_val[:, :-1], a_tag[:, :-1]
        for r in range(R):                       # left edge: row r is skewed by r cycles
            m = stream - r
            if 0 <= m < T:
                new_a_val[r, 0], new_a_tag[r, 0] = ablock[m, r], m
        new_p_val = np.zeros((R, C)); new_p_tag = np.full((R, C), -1)
        for r in range(R):
            for c in range(C):
                tag = new_a_tag[r, c]
                if tag < 0:
                    continue
                above = p_val[r - 1, c] if r else 0.0
                if r:
                    assert p_tag[r - 1, c] == tag, "partial sum and input out of step"
                new_p_val[r, c] = above + new_a_val[r, c] * w[r, c]
                new_p_tag[r, c] = tag
        a_val, a_tag, p_val, p_tag = new_a_val, new_a_tag, new_p_val, new_p_tag
        cycle += 1
        stream += 1
        for c in range(C):                       # bottom row: outputs leave this cycle
            if p_tag[R - 1, c] >= 0:
                out[p_tag[R - 1, c], c] = p_val[R - 1, c]
                remaining -= 1
                last = cycle
        assert stream < 10 * (R + C + T), "simulator did not drain"
    return last, out


def _os_fold(ablock, wblock):
    """Simulate one os fold. ablock: R x K (rows of A), wblock: K x C. Returns (cycles, out R x C)."""
    R, K = ablock.shape
    C = wblock.shape[1]
    a_val = np.zeros((R, C)); a_tag = np.full((R, C), -1)
    w_val = np.zeros((R, C)); w_tag = np.full((R, C), -1)
    acc = np.zeros((R, C)); done = np.zeros((R, C), dtype=int)
    out = np.full((R, C), np.nan)
    cycle, remaining, last = 0, R * C, None
    while remaining:
        new_a_val = np.zeros((R, C)); new_a_tag = np.full((R, C), -1)
        new_a_val[:, 1:], new_a_tag[:, 1:] = a_val[:, :-1], a_tag[:, :-1]
        new_w_val = np.zeros((R, C)); new_w_tag = np.full((R, C), -1)
        new_w_val[1:, :], new_w_tag[1:, :] = w_val[:-1, :], w_tag[:-1, :]
        for r in range(R):
            k = cycle - r
            if 0 <= k < K:
                new_a_val[r, 0], new_a_tag[r, 0] = ablock[r, k], k
        for c in range(C):
            k = cycle - c
            if 0 <= k < K:
                new_w_val[0, c], new_w_tag[0, c] = wblock[k, c], k
        for r in range(R):
            for c in range(C):
                if new_a_tag[r, c] >= 0 or new_w_tag[r, c] >= 0:
                    assert new_a_tag[r, c] == new_w_tag[r, c], "operands out of step"
                    acc[r, c] += new_a_val[r, c] * new_w_val[r, c]
                    done[r, c] += 1
                    if done[r, c] == K:          # K-th MAC: the result is final
                        out[r, c] = acc[r, c]
                        remaining -= 1
                        last = cycle + 1
        a_val, a_tag, w_val, w_tag = new_a_val, new_a_tag, new_w_val, new_w_tag
        cycle += 1
        assert cycle < 10 * (R + C + K), "simulator did not drain"
    return last, out


def simulate_gemm(a, w, R, C, dataflow):
    """Cycle-level run of a @ w (M x K @ K x N) on an R x C array: (fold cycles list, result)."""
    M, K = a.shape
    N = w.shape[1]
    result = np.zeros((M, N))
    folds = []
    if dataflow == "is":
        cycles, res_t = simulate_gemm(w.T, a.T, R, C, "ws")
        return cycles, res_t.T
    if dataflow == "ws":
        for n0 in range(0, N, C):
            for k0 in range(0, K, R):
                wb = np.zeros((R, C)); wb[:min(R, K - k0), :min(C, N - n0)] = w[k0:k0 + R, n0:n0 + C]
                ab = np.zeros((M, R)); ab[:, :min(R, K - k0)] = a[:, k0:k0 + R]
                cyc, out = _ws_fold(wb, ab)
                result[:, n0:n0 + C] += out[:, :min(C, N - n0)]
                folds.append(cyc)
    else:
        for n0 in range(0, N, C):
            for m0 in range(0, M, R):
                ab = np.zeros((R, K)); ab[:min(R, M - m0)] = a[m0:m0 + R]
                wb = np.zeros((K, C)); wb[:, :min(C, N - n0)] = w[:, n0:n0 + C]
                cyc, out = _os_fold(ab, wb)
                result[m0:m0 + R, n0:n0 + C] = out[:min(R, M - m0), :min(C, N - n0)]
                folds.append(cyc)
    return folds, result


def _acc(R, C, dataflow, arrays=1, **kw):
    kw.setdefault("bandwidth_bytes_per_s", 1e30)   # compute-bound unless a test says otherwise
    return Accelerator("sim", R, C, num_arrays=arrays, dataflow=dataflow, **kw)


def _shapes(seed, count):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield (int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 13)),
               int(rng.integers(1, 19)), int(rng.integers(1, 13)))


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_simulator_matches_systolic_mode(dataflow):
    rng = np.random.default_rng(1)
    for R, C, M, K, N in _shapes({"ws": 7, "os": 8, "is": 9}[dataflow], 12):
        a, w = rng.standard_normal((M, K)), rng.standard_normal((K, N))
        folds, result = simulate_gemm(a, w, R, C, dataflow)
        np.testing.assert_allclose(result, a @ w, rtol=1e-12, atol=1e-12)
        cost = layer_cost(GemmLayer("g", M, K, N), _acc(R, C, dataflow), mode="systolic")
        assert cost.folds == len(folds), (R, C, M, K, N)
        per_fold = cost.compute_cycles / cost.folds
        assert all(f == per_fold for f in folds), (dataflow, R, C, M, K, N, folds, per_fold)
        assert cost.compute_cycles == sum(folds)


def test_single_fold_timing_by_hand():
    # 4x3 array, ws, 5 streamed rows: R loads + last input row 4 enters row 3 at
    # stream cycle 4+3, crosses 2 more columns: R + (T-1) + (R-1) + (C-1) + 1 cycles.
    folds, _ = simulate_gemm(np.ones((5, 4)), np.ones((4, 3)), 4, 3, "ws")
    assert folds == [4 + 4 + 3 + 2 + 1]


def test_several_arrays_share_folds_in_rounds():
    for R, C, M, K, N in _shapes(11, 10):
        for arrays in (1, 2, 3, 5):
            one = layer_cost(GemmLayer("g", M, K, N, repeats=2), _acc(R, C, "ws"))
            many = layer_cost(GemmLayer("g", M, K, N, repeats=2), _acc(R, C, "ws", arrays))
            folds = 2 * math.ceil(K / R) * math.ceil(N / C)
            assert one.folds == many.folds == folds
            assert many.compute_cycles == math.ceil(folds / arrays) * (one.compute_cycles / folds)


def test_memory_bound_layer():
    # 4096 x 4096 fc, bf16, 1 GB/s, 1 GHz: weights alone take 33.5 M cycles,
    # compute 32 x 32 folds of 2*128 + 128 + 1 - 2 = 383 cycles = 0.39 M.
    acc = Accelerator("slow", 128, 128, dataflow="ws", clock_hz=1e9, bandwidth_bytes_per_s=1e9,
                      onchip_bytes=2**40, bytes_per_element=2)
    layer = LinearLayer("fc", 4096, 4096, batch=1)
    cost = layer_cost(layer, acc)
    nbytes = (4096 + 4096 * 4096 + 4096) * 2          # every tensor once (fits on chip)
    assert cost.bytes == nbytes
    assert cost.cycles == pytest.approx(nbytes / 1e9 * 1e9)
    assert cost.compute_cycles == 32 * 32 * 383
    assert cost.cycles > 50 * cost.compute_cycles
    assert cost.lost["memory_stall"] == pytest.approx((cost.cycles - cost.compute_cycles) * acc.pes)


@pytest.mark.parametrize("dataflow, moved", [
    # 3 x 2 repeats of (1000 x 300) @ (300 x 500) on a 128 x 64 array; the three tensors take
    # 2 * 300,000 inputs, 2 * 150,000 weights and 2 * 500,000 outputs, 1.9 MB at 1 byte each,
    # far over the 1 kB on chip, so the streamed operand is re-read once per fold of the other:
    ("ws", 2 * (300_000 * 8 + 150_000 + 500_000)),    # inputs once per ceil(500 / 64) = 8 weight column folds
    ("os", 2 * (300_000 + 150_000 * 8 + 500_000)),    # weights once per ceil(1000 / 128) = 8 output row folds
    ("is", 2 * (300_000 + 150_000 * 16 + 500_000)),   # weights once per ceil(1000 / 64) = 16 input column folds
])
def test_layer_over_the_onchip_memory_rereads_its_streamed_operand(dataflow, moved):
    from hwmodels.smooth import from_layers, network_cost_torch
    layer = GemmLayer("g", 1000, 300, 500, repeats=2)
    acc = Accelerator("spill", 128, 64, dataflow=dataflow, clock_hz=1e9, bandwidth_bytes_per_s=1e8,
                      onchip_bytes=1000, bytes_per_element=1)
    cost = layer_cost(layer, acc)
    assert cost.bytes == moved
    assert cost.memory_cycles == pytest.approx(moved / 1e8 * 1e9)   # 10 cycles per byte at 100 MB/s, 1 GHz
    assert cost.cycles == pytest.approx(max(cost.compute_cycles, cost.memory_cycles))
    smooth = network_cost_torch(from_layers([layer]), acc, "systolic", "straight_through")
    assert float(smooth["cycles"]) == pytest.approx(cost.cycles, rel=1e-9)
    # with room on chip every tensor moves once
    roomy = layer_cost(layer, Accelerator("roomy", 128, 64, dataflow=dataflow, clock_hz=1e9,
                                          bandwidth_bytes_per_s=1e8, onchip_bytes=2_000_000, bytes_per_element=1))
    assert roomy.bytes == 2 * (300_000 + 150_000 + 500_000)


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_lost_pe_cycles_add_up(dataflow):
    for R, C, M, K, N in _shapes(5, 15):
        for arrays, bw in ((1, 1e30), (3, 1e30), (2, 1e6)):
            acc = _acc(R, C, dataflow, arrays, bandwidth_bytes_per_s=bw)
            cost = layer_cost(GemmLayer("g", M, K, N, repeats=3), acc)
            total = cost.cycles * acc.pes - cost.macs
            # 'overhead' is the residual, so the causes add up by construction: it must be ~0
            assert abs(cost.lost["overhead"]) <= 1e-9 * max(total, 1.0) + 1e-6   # nothing unexplained
            assert all(v >= -1e-6 for v in cost.lost.values())


def test_calibration_terms_enter_as_documented():
    cal = Calibration(fold_overhead_cycles=3, layer_overhead_cycles=50, cycle_scale=1.5)
    acc = _acc(4, 4, "ws", calibration=cal)
    cost = layer_cost(GemmLayer("g", 10, 9, 5), acc)     # 3 x 2 folds of 2*4+4+10-2 = 20 cycles
    assert cost.compute_cycles == pytest.approx(1.5 * 6 * (20 + 3))
    assert cost.cycles == pytest.approx(1.5 * 6 * 23 + 50)
    net = network_cost([GemmLayer("a", 10, 9, 5), GemmLayer("b", 3, 3, 3)], acc)
    assert net.cycles == pytest.approx(sum(c.cycles for c in net.layers))
