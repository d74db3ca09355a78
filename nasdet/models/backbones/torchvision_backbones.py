"""torchvision classification networks as multi-level detection backbones (no downloaded weights).

Every nasdet backbone, fixed or searchable, follows one contract: ``forward(x)`` returns an
``OrderedDict`` with keys ``c2..c5`` (strides 4, 8, 16, 32) and ``out_channels`` maps those keys to
channel counts. Necks (FPN, SSD extras) in ``nasdet.models.detectors`` consume any such module.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.ops import FrozenBatchNorm2d

from ...errors import ConfigError

LEVELS = ("c2", "c3", "c4", "c5")


class SequentialStagesBackbone(nn.Module):
    """A ``features`` Sequential (MobileNets) cut where the stride reaches 4, 8, 16, 32.

    ``stage_ends[level]`` is the index of the last module at that stride, found once by a dummy
    forward, so the cut follows torchvision's definition of each network rather than hard-coded indices.
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        self.stage_ends: dict[str, int] = {}
        self.out_channels: dict[str, int] = {}
        was_training = features.training
        features.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, 64, 64)
            for i, m in enumerate(features):
                x = m(x)
                stride = 64 // x.shape[-1]
                level = {4: "c2", 8: "c3", 16: "c4", 32: "c5"}.get(stride)
                if level is not None:
                    self.stage_ends[level] = i
                    self.out_channels[level] = x.shape[1]
        features.train(was_training)
        missing = [lv for lv in LEVELS if lv not in self.stage_ends]
        if missing:
            raise ValueError(f"backbone features never reach stride of levels {missing}")

    @property
    def pre_expand_channels(self) -> int:
        """Width of ``c5_pre``, the input of the final 1x1 expand (the last module of the MobileNets)."""
        return self.features[self.stage_ends["c5"]][0].in_channels

    def forward(self, x: torch.Tensor, pre_expand: bool = False) -> "OrderedDict[str, torch.Tensor]":
        """c2..c5; with ``pre_expand`` also ``c5_pre``: the stride-32 map before the final 1x1 expand
        (MMDetection's YOLOv3 neck reads it; not in ``out_channels``, whose c2..c5 every backbone gives)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        ends = {i: lv for lv, i in self.stage_ends.items()}
        if pre_expand:
            ends[self.stage_ends["c5"] - 1] = "c5_pre"
        last = max(ends)
        for i, m in enumerate(self.features):
            x = m(x)
            if i in ends:
                out[ends[i]] = x
            if i == last:
                break
        return out


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc: stem -> layer1..4 = c2..c5."""

    def __init__(self, net: tvm.ResNet):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        widths = [self._width(getattr(self, f"layer{i}")) for i in range(1, 5)]
        self.out_channels = dict(zip(LEVELS, widths))
        self.frozen: list[nn.Module] = []

    def freeze_stages(self, n: int) -> None:
        """The stem and layer1..n keep their weights, and their BatchNorms their statistics (eval mode in training:
        MMDetection's ``_freeze_stages`` with ``frozen_stages = n``)."""
        self.frozen = [self.stem, *(getattr(self, f"layer{i}") for i in range(1, n + 1))]
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in getattr(self, "frozen", ()):
            module.eval()
        return self

    @staticmethod
    def _width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).weight.shape[0]  # FrozenBatchNorm2d has no num_features

    def forward(self, x):
        x = self.stem(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c2=c2, c3=c3, c4=c4, c5=c5)


def _norm(norm: str):
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    raise ConfigError(f"backbone.norm must be 'bn' or 'frozen_bn', got {norm!r}")


def _mobilenet_v2(width_mult: float, norm: str) -> nn.Module:
    net = tvm.mobilenet_v2(weights=None, width_mult=width_mult, norm_layer=_norm(norm))
    return SequentialStagesBackbone(net.features)


def _mobilenet_v3(arch: str, width_mult: float, norm: str, reduced_tail: bool = False) -> nn.Module:
    # BN eps as torchvision's MobileNetV3; momentum 0.1, not its 0.01 (see detectors.BN_MOMENTUM).
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1) if norm == "bn" else _norm(norm)
    builder = tvm.mobilenet_v3_large if arch == "large" else tvm.mobilenet_v3_small
    net = builder(weights=None, width_mult=width_mult, norm_layer=norm_layer, reduced_tail=reduced_tail)
    return SequentialStagesBackbone(net.features)


def _resnet(depth: int, width_mult: float, norm: str) -> nn.Module:
    if width_mult != 1.0:
        raise ConfigError(f"backbone resnet{depth} has no width_mult (got {width_mult}); use 1.0")
    net = getattr(tvm, f"resnet{depth}")(weights=None, norm_layer=_norm(norm))
    return ResNetBackbone(net)


BACKBONES = {
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_large": partial(_mobilenet_v3, "large"),
    "mobilenet_v3_small": partial(_mobilenet_v3, "small"),
    "resnet18": partial(_resnet, 18),
    "resnet34": partial(_resnet, 34),
    "resnet50": partial(_resnet, 50),
}
