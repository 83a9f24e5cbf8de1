"""Analytical cycle and utilization models of systolic-array accelerators.

Knows nothing of search: ``ubnas`` imports ``hwmodels``, never the reverse.
"""
from .accelerator import (Accelerator, Calibration, HardwareConfigError, load_accelerator,
                          preset_names, save_accelerator)
from .estimate import estimate, register_layer_handler
from .exact import LayerCost, NetworkCost, layer_cost, network_cost
from .layers import ConvLayer, Gemm, GemmLayer, LinearLayer
from .layers_csv import read_layers_csv

__all__ = [
    "Accelerator", "Calibration", "HardwareConfigError", "load_accelerator", "preset_names",
    "save_accelerator", "LayerCost", "NetworkCost", "layer_cost", "network_cost",
    "ConvLayer", "Gemm", "GemmLayer", "LinearLayer",
    "estimate", "register_layer_handler", "read_layers_csv",
]
