"""hwmodels.report: the dominant idle cause and the table's title, against hand-worked layers."""
from hwmodels import Accelerator, GemmLayer, layer_cost, network_cost
from hwmodels.report import dominant_loss, format_table


def test_dominant_loss_is_the_largest_cause():
    # (4 x 1) @ (1 x 1) on a 4 x 4 array, ws, compute-bound: one fold of 2*4 + 4 + 4 - 2 = 14 cycles.
    # PE-cycles 14 * 16 = 224, MACs 4.  Partial tiles: 4 streamed rows * 16 PEs - 4 MACs = 60;
    # fill/drain: (2*4 + 4 - 2) * 16 = 160, the largest; idle arrays, memory, overhead: 0.
    acc = Accelerator("a", 4, 4, bandwidth_bytes_per_s=1e30)
    cost = layer_cost(GemmLayer("g", 4, 1, 1), acc)
    assert cost.lost == {"partial_tiles": 60.0, "fill_drain": 160.0, "idle_arrays": 0.0,
                         "memory_stall": 0.0, "overhead": 0.0}
    assert dominant_loss(cost) == "fill/drain"
    # uboost mode has no fill: partial tiles are all there is (4 cycles * 16 PEs - 4 MACs = 60)
    assert dominant_loss(layer_cost(GemmLayer("g", 4, 1, 1), acc, "uboost")) == "partial tiles"
    # a full tile in uboost mode loses nothing: '-'
    assert dominant_loss(layer_cost(GemmLayer("g", 5, 4, 4), acc, "uboost")) == "-"


def test_title_says_uboost_counts_one_array():
    acc = Accelerator("quad", 4, 4, num_arrays=4)
    layers = [GemmLayer("g", 5, 4, 4)]
    assert "model uboost (one array)" in format_table(network_cost(layers, acc, "uboost")).splitlines()[0]
    assert format_table(network_cost(layers, acc, "systolic")).splitlines()[0].endswith("model systolic")
    one = Accelerator("one", 4, 4)
    assert format_table(network_cost(layers, one, "uboost")).splitlines()[0].endswith("model uboost")
