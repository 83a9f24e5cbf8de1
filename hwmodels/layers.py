"""Layer descriptors and their lowering to GEMMs ("matrixification").

Every layer the array executes becomes ``repeats`` independent GEMMs of shape
(M x K) @ (K x N): M rows stream through the array, K is the reduction depth,
N the number of outputs.  A convolution with output Ho x Wo, batch B, kernel
kh x kw, Cin inputs, Cout outputs and g groups is g GEMMs of M = B*Ho*Wo,
K = kh*kw*Cin/g, N = Cout/g.  Depthwise (g = Cin = Cout) is Cin GEMMs with
K = kh*kw and N = 1.  Linear: M = B, K = in, N = out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple, Union

Pair = Tuple[int, int]
IntOrPair = Union[int, Pair]


def _whole(value, name: str) -> int:
    """``value`` as an int; a fraction (2.5) or a non-number is a ValueError naming ``name``."""
    try:
        whole = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if type(value).__name__ in ("bool", "bool_") or whole != value:   # numpy's bool too (not a bool subclass)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return whole


def _pair(value: IntOrPair, name: str) -> Pair:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        return _whole(value[0], name), _whole(value[1], name)
    return _whole(value, name), _whole(value, name)


def _counts_at_least_one(layer, attrs) -> None:
    """Each of ``attrs`` becomes an int >= 1, or a ValueError naming the layer and the field."""
    for attr in attrs:
        try:
            value = _whole(getattr(layer, attr), attr)
        except ValueError as exc:
            raise ValueError(f"layer {layer.name!r}: {exc}") from None
        if value < 1:
            raise ValueError(f"layer {layer.name!r}: {attr} must be >= 1, got {value}")
        object.__setattr__(layer, attr, value)


@dataclass(frozen=True)
class Gemm:
    """``repeats`` independent GEMMs of (m x k) @ (k x n); all counts in elements."""

    m: int
    k: int
    n: int
    repeats: int = 1

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.repeats


@dataclass(frozen=True)
class ConvLayer:
    """A 2-D convolution on an in_h x in_w map (NCHW semantics, as torch.nn.Conv2d).

    stride, padding and dilation are an int or an (h, w) pair; ``batch`` images.
    ``extra_padding`` (int or (h, w) pair, elements): rows at the bottom and columns at the right
    padded beyond ``padding``, as torch's ``padding='same'`` pads when dilation * (kernel - 1) is odd.
    """

    name: str
    in_h: int
    in_w: int
    in_channels: int
    out_channels: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride: IntOrPair = 1
    padding: IntOrPair = 0
    dilation: IntOrPair = 1
    groups: int = 1
    batch: int = 1
    extra_padding: IntOrPair = 0
    kind: str = field(default="conv", init=False)

    def __post_init__(self):
        _counts_at_least_one(self, ("in_h", "in_w", "in_channels", "out_channels", "kernel_h", "kernel_w",
                                    "groups", "batch"))
        problems = []
        for attr in ("stride", "padding", "dilation", "extra_padding"):
            try:
                object.__setattr__(self, attr, _pair(getattr(self, attr), attr))
            except ValueError as exc:
                raise ValueError(f"layer {self.name!r}: {exc}") from None
        if min(self.stride) < 1 or min(self.dilation) < 1:
            problems.append("stride and dilation must be >= 1")
        if min(self.padding) < 0 or min(self.extra_padding) < 0:
            problems.append("padding must be >= 0")
        if (self.in_channels % self.groups or self.out_channels % self.groups):
            problems.append(f"in_channels ({self.in_channels}) and out_channels "
                            f"({self.out_channels}) must be divisible by groups ({self.groups})")
        if not problems and (self.out_h < 1 or self.out_w < 1):
            problems.append(f"the {self.kernel_h}x{self.kernel_w} kernel (dilation "
                            f"{self.dilation}, padding {self.padding}) does not fit the "
                            f"{self.in_h}x{self.in_w} input")
        if problems:
            raise ValueError(f"layer {self.name!r}: " + "; ".join(problems))

    @property
    def out_h(self) -> int:
        span = self.dilation[0] * (self.kernel_h - 1) + 1
        return (self.in_h + 2 * self.padding[0] + self.extra_padding[0] - span) // self.stride[0] + 1

    @property
    def out_w(self) -> int:
        span = self.dilation[1] * (self.kernel_w - 1) + 1
        return (self.in_w + 2 * self.padding[1] + self.extra_padding[1] - span) // self.stride[1] + 1

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def lower(self) -> Gemm:
        g = self.groups
        return Gemm(m=self.batch * self.out_h * self.out_w,
                    k=self.kernel_h * self.kernel_w * self.in_channels // g,
                    n=self.out_channels // g, repeats=g)

    # Bytes moved off-chip if each tensor is read or written once (elements).
    def input_elements(self) -> int:
        return self.batch * self.in_channels * self.in_h * self.in_w

    def weight_elements(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel_h * self.kernel_w

    def output_elements(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w


@dataclass(frozen=True)
class LinearLayer:
    """A fully connected layer y = x W^T on ``batch`` rows."""

    name: str
    in_features: int
    out_features: int
    batch: int = 1
    kind: str = field(default="linear", init=False)

    def __post_init__(self):
        _counts_at_least_one(self, ("in_features", "out_features", "batch"))

    def lower(self) -> Gemm:
        return Gemm(m=self.batch, k=self.in_features, n=self.out_features)

    def input_elements(self) -> int:
        return self.batch * self.in_features

    def weight_elements(self) -> int:
        return self.in_features * self.out_features

    def output_elements(self) -> int:
        return self.batch * self.out_features


@dataclass(frozen=True)
class GemmLayer:
    """A raw GEMM (m x k) @ (k x n), ``repeats`` times."""

    name: str
    m: int
    k: int
    n: int
    repeats: int = 1
    kind: str = field(default="gemm", init=False)

    def __post_init__(self):
        _counts_at_least_one(self, ("m", "k", "n", "repeats"))

    def lower(self) -> Gemm:
        return Gemm(self.m, self.k, self.n, self.repeats)

    def input_elements(self) -> int:
        return self.repeats * self.m * self.k

    def weight_elements(self) -> int:
        return self.repeats * self.k * self.n

    def output_elements(self) -> int:
        return self.repeats * self.m * self.n


Layer = Union[ConvLayer, LinearLayer, GemmLayer]
