"""Seeded suites of CNN layers used as SCALE-Sim references (calibration, tests).

``suite_layers(name, seed)`` gives the layers of ``cifar`` (32/16/8 maps: stems,
single-channel, depthwise, grouped, FC and seeded random convs), ``imagenet`` (224
stem, ResNet-50 56..7 maps, MobileNet depthwise/pointwise, FC and seeded random
convs) or ``mixed`` (both).  ``suite_parts`` keeps which part each layer came from.
"""
from __future__ import annotations

import random
from typing import List, Tuple

from .layers import ConvLayer, Layer, LinearLayer

SUITES = ("cifar", "imagenet", "mixed")

CIFAR_CHANNELS = [3, 16, 64, 100, 129, 200, 256]
IMAGENET_CHANNELS = [24, 32, 64, 96, 128, 160, 256, 320, 384, 512]


def conv(name, hw, cin, cout, k, stride=1, groups=1):
    """A square conv with 'same'-style padding k // 2."""
    return ConvLayer(name, hw, hw, cin, cout, k, k, stride=stride, padding=k // 2, groups=groups)


def cifar_layers(seed=0):
    """ResNet/VGG-on-CIFAR-like layers: fixed corner cases plus seeded random convs."""
    layers = [conv("stem3x3_3to16", 32, 3, 16, 3), conv("stem3x3_3to64", 32, 3, 64, 3),
              conv("single_ch_3x3_1to16", 32, 1, 16, 3), conv("single_ch_5x5_1to8", 32, 1, 8, 5),
              conv("single_ch_1x1_1to1", 16, 1, 1, 1),
              conv("dw3x3_32_c16", 32, 16, 16, 3, groups=16),
              conv("dw3x3_16_c64", 16, 64, 64, 3, groups=64),
              conv("dw3x3_16_c100_s2", 16, 100, 100, 3, stride=2, groups=100),
              conv("dw5x5_8_c129", 8, 129, 129, 5, groups=129),
              conv("grouped3x3_16_64to64_g4", 16, 64, 64, 3, groups=4),
              LinearLayer("fc_256to10", 256, 10), LinearLayer("fc_64to100", 64, 100),
              LinearLayer("fc_200to10", 200, 10), LinearLayer("fc_129to100", 129, 100)]
    rnd = random.Random(seed)
    for hw in (32, 16, 8):
        for k in (3, 5, 1):
            for i in range(3):
                cin, cout = rnd.choice(CIFAR_CHANNELS), rnd.choice(CIFAR_CHANNELS)
                stride = rnd.choice((1, 1, 2))
                layers.append(conv(f"c{hw}_k{k}_{cin}to{cout}_s{stride}_{i}", hw, cin, cout, k, stride))
    return layers


def imagenet_layers(seed=0):
    """ResNet-50/MobileNet-like ImageNet layers plus seeded random convs."""
    layers = [conv("stem7x7_s2", 224, 3, 64, 7, stride=2),
              conv("res_56_3x3_64", 56, 64, 64, 3), conv("res_56_1x1_64to256", 56, 64, 256, 1),
              conv("res_56_1x1_256to64", 56, 256, 64, 1), conv("res_56_3x3_128_s2", 56, 128, 128, 3, 2),
              conv("res_28_3x3_128", 28, 128, 128, 3), conv("res_28_1x1_512to128", 28, 512, 128, 1),
              conv("res_28_1x1_256to512_s2", 28, 256, 512, 1, 2), conv("res_14_3x3_256", 14, 256, 256, 3),
              conv("res_14_1x1_1024to256", 14, 1024, 256, 1), conv("res_7_3x3_512", 7, 512, 512, 3),
              conv("res_7_1x1_512to2048", 7, 512, 2048, 1),
              conv("mb_dw_112_c32", 112, 32, 32, 3, groups=32), conv("mb_pw_112_32to64", 112, 32, 64, 1),
              conv("mb_dw_112_c64_s2", 112, 64, 64, 3, stride=2, groups=64),
              conv("mb_dw_56_c128", 56, 128, 128, 3, groups=128), conv("mb_pw_56_128to128", 56, 128, 128, 1),
              conv("mb_dw_28_c256", 28, 256, 256, 3, groups=256), conv("mb_pw_28_256to256", 28, 256, 256, 1),
              conv("mb_dw_14_c512", 14, 512, 512, 3, groups=512), conv("mb_pw_14_512to512", 14, 512, 512, 1),
              conv("mb_dw_7_c1024", 7, 1024, 1024, 3, groups=1024),
              conv("mb_pw_7_1024to1024", 7, 1024, 1024, 1),
              conv("mbv2_dw5x5_14_c480", 14, 480, 480, 5, groups=480),
              LinearLayer("fc_512to1000", 512, 1000), LinearLayer("fc_1024to1000", 1024, 1000),
              LinearLayer("fc_2048to1000", 2048, 1000), LinearLayer("fc_1280to1000", 1280, 1000)]
    rnd = random.Random(seed + 1)
    for hw in (56, 28, 14, 7):
        for i in range(4):
            k = rnd.choice((1, 1, 3, 3, 5))
            cin, cout = rnd.choice(IMAGENET_CHANNELS), rnd.choice(IMAGENET_CHANNELS)
            stride = rnd.choice((1, 1, 1, 2))
            layers.append(conv(f"i{hw}_k{k}_{cin}to{cout}_s{stride}_{i}", hw, cin, cout, k, stride))
    return layers


def suite_parts(suite: str, seed: int = 0) -> List[Tuple[str, Layer]]:
    """[(part, layer)] for 'cifar', 'imagenet' or 'mixed' (part is cifar or imagenet)."""
    if suite not in SUITES:
        raise ValueError(f"unknown layer suite {suite!r} (expected one of {', '.join(SUITES)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:   # random.Random(-1) is Random(1)
        raise ValueError(f"layer suite seed: expected an integer >= 0, got {seed!r}")
    parts = {"cifar": ["cifar"], "imagenet": ["imagenet"], "mixed": ["cifar", "imagenet"]}[suite]
    make = {"cifar": cifar_layers, "imagenet": imagenet_layers}
    return [(part, layer) for part in parts for layer in make[part](seed)]


def suite_layers(name: str, seed: int = 0) -> List[Layer]:
    """The layers of suite ``name`` ('cifar', 'imagenet' or 'mixed'), seeded."""
    return [layer for _, layer in suite_parts(name, seed)]


def simulated_lines(layer, rows, cols, dataflow):
    """Cycles SCALE-Sim steps through for one group (its runtime driver): folds x fold length."""
    g = layer.lower()
    cd = lambda a, b: -(-a // b)  # noqa: E731
    if dataflow == "ws":
        return cd(g.k, rows) * cd(g.n, cols) * (2 * rows + cols + g.m - 2)
    if dataflow == "os":
        return cd(g.m, rows) * cd(g.n, cols) * (rows + cols + g.k - 2)
    return cd(g.k, rows) * cd(g.m, cols) * (2 * rows + cols + g.n - 2)


def _one_or_pair(pair):
    """A square (h, w) pair as one int, as the CSV column holds it; otherwise the [h, w] list, so
    that no two layers share a row (or a SCALE-Sim cache key)."""
    return int(pair[0]) if pair[0] == pair[1] else [int(pair[0]), int(pair[1])]


def layer_fields(layer):
    """The layer columns of the CSV (a linear layer reads as a 1x1 conv on a 1x1 map).

    stride, padding and dilation are one int when square; a non-square one is an [h, w] list,
    which the CSV cannot hold (``read_layers_csv`` refuses it with the file and line)."""
    if isinstance(layer, LinearLayer):
        return dict(kind="linear", in_h=1, in_w=1, in_channels=layer.in_features,
                    out_channels=layer.out_features, kernel_h=1, kernel_w=1, stride=1, padding=0,
                    dilation=1, groups=1, batch=layer.batch)
    fields = dict(kind=layer.kind, in_h=layer.in_h, in_w=layer.in_w, in_channels=layer.in_channels,
                  out_channels=layer.out_channels, kernel_h=layer.kernel_h, kernel_w=layer.kernel_w,
                  stride=_one_or_pair(layer.stride), padding=_one_or_pair(layer.padding),
                  dilation=_one_or_pair(layer.dilation),
                  groups=layer.groups, batch=layer.batch)
    if any(layer.extra_padding):   # only then: the SCALE-Sim cache keys of every other layer stay as they were
        fields["extra_padding"] = _one_or_pair(layer.extra_padding)
    return fields
