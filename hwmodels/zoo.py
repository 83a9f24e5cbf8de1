"""Reference networks as plain torch modules, for ``estimate`` and benchmarks.

``resnet18-cifar``   the standard CIFAR ResNet-18 (He et al. 2016 adapted as in
                     the widely used "pytorch-cifar" code): 3x3 stem conv to 64,
                     stages [64, 128, 256, 512] x 2 BasicBlocks with strides
                     1, 2, 2, 2, 1x1 conv + BN downsample shortcuts, global
                     average pool, fc to 10 classes.  ~0.556 GMACs at 3x32x32.
``mobilenetv2-cifar`` MobileNetV2 (Sandler et al. 2018, width 1.0, inverted
                     residuals as in the paper: no expansion conv for t = 1,
                     identity shortcut only when stride 1 and widths match,
                     ReLU6), with the CIFAR stride changes: stem conv stride 1
                     and the second stage (24 channels) stride 1; 10 classes.

Both take 3x32x32 inputs (``DEFAULT_INPUT``); ``mobilenet_v2(cifar=False,
num_classes=1000)`` is the ImageNet network (~300 M MACs at 3x224x224).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from torch import nn

DEFAULT_INPUT: Tuple[int, int, int] = (3, 32, 32)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN(-ReLU) with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """CIFAR ResNet-18: (B, 3, 32, 32) -> (B, num_classes) logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages: List[nn.Module] = []
        in_planes = 64
        for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride),
                                        BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: List[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, output channels c, repeats n, stride s) from the paper's Table 2.
MOBILENETV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0: (B, 3, H, W) -> (B, num_classes).

    cifar=True: stem stride 1 and the 24-channel stage stride 1 (32x32 inputs).
    """

    def __init__(self, num_classes: int = 10, cifar: bool = True):
        super().__init__()
        layers: List[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=1 if cifar else 2)]
        cin = 32
        for i, (t, c, n, s) in enumerate(MOBILENETV2_CFG):
            if cifar and i == 1:
                s = 1
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), ``num_classes`` outputs."""
    return ResNet18Cifar(num_classes)


def mobilenet_v2(num_classes: int = 10, cifar: bool = True) -> nn.Module:
    """MobileNetV2 (width 1.0); ``cifar``: stride-1 stem and 24-channel stage for 32x32 inputs."""
    return MobileNetV2(num_classes, cifar)


_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "resnet18-cifar": resnet18_cifar,
    "mobilenetv2-cifar": mobilenet_v2,
}


def model_names() -> List[str]:
    """Names accepted by ``get_model``, sorted."""
    return sorted(_MODELS)


def get_model(name: str) -> nn.Module:
    """A freshly initialised reference network (eval mode not set; 3x32x32 inputs)."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (expected one of {', '.join(model_names())})") from None
    return factory()
