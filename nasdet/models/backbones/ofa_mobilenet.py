"""``OFAMobileNetV3``: once-for-all's MobileNetV3 supernet (ofa_mbv3) as a detection backbone.

Layout (once-for-all ``ofa_mbv3.py``, widths at ``width_mult`` 1.0, each ``make_divisible(w * m, 8)``)::

    first_conv   3 -> 16, 3x3 s2, BN, h-swish                                stride 2
    first_block  16 -> 16, depthwise 3x3 + 1x1 (expand 1), ReLU, residual    stride 2
    stage1  24, s2, ReLU                                          -> c2      stride 4
    stage2  40, s2, ReLU, SE                                      -> c3      stride 8
    stage3  80, s2, h-swish                                                  stride 16
    stage4 112, s1, h-swish, SE                                   -> c4      stride 16
    stage5 160, s2, h-swish, SE
    final_expand 160 -> 960, 1x1, BN, h-swish                     -> c5      stride 32

Each stage holds 4 elastic MBConv blocks; per block ``kernel`` (3, 5, 7) and ``expand`` (3, 4, 6), per
stage ``depth`` (2, 3, 4) = its first d blocks run. Mid width = ``make_divisible(round(c_in * e), 8)``.
c5 is taken after the final 1x1 expand, so its width (960 x m) never depends on the arch and a head
needs no elastic input.

Supernet protocol (``nasdet.space.supernet``): ``search_space()``, ``set_arch(arch)``, ``export(arch=None)`` (a static
``MobileNetV3Backbone`` of plain torch/torchvision modules, same outputs in eval mode).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ...errors import ConfigError
from ...space import SearchSpace
from ...space.elastic import (ElasticBatchNorm2d, ElasticConv2d, ElasticSE, he_fout_init, make_divisible,
                              middle_channel_moves)
from ...space.supernet import STAGE_LEVEL, StagedSupernet, input_channels, staged_forward  # noqa: F401 (re-exported)

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # first conv, first block, 5 stages, final expand, feature mix
STRIDES = (1, 2, 2, 2, 1, 2)  # first block, stages 1..5
ACTS = ("relu", "relu", "relu", "h_swish", "h_swish", "h_swish")
USE_SE = (False, False, True, False, True, True)


TINY_WIDTH_MULT = 0.25  # widths 8, 8, 8, 16, 24, 32, 40, 240: for CPU tests


def _act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Hardswish(inplace=True)


def _bn(c: int, norm: str, eps: float, momentum: float) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm2d(c, eps=eps, momentum=momentum)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(c, eps=eps)
    raise ConfigError(f"backbone.norm must be 'bn' or 'frozen_bn', got {norm!r}")


def mid_channels(in_channels: int, expand: float) -> int:
    """Width of an MBConv block's expanded (depthwise) part."""
    return make_divisible(round(in_channels * expand), 8)


# --------------------------------------------------------------------------------- static modules
class InvertedResidual(nn.Module):
    """A static MBConv block: ``layers`` (plain modules in order), plus the input if ``residual``."""

    def __init__(self, layers: nn.Sequential, residual: bool):
        super().__init__()
        self.layers = layers
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class MobileNetV3Backbone(nn.Module):
    """A static OFA MobileNetV3 subnet (what ``OFAMobileNetV3.export`` returns): x -> OrderedDict(c2..c5)."""

    def __init__(self, first_conv: nn.Module, first_block: nn.Module, stages: list[nn.Sequential],
                 final_expand: nn.Module, out_channels: dict[str, int]):
        super().__init__()
        self.first_conv, self.first_block = first_conv, first_block
        self.stages = nn.ModuleList(stages)
        self.final_expand = final_expand
        self.out_channels = dict(out_channels)

    def forward(self, x: torch.Tensor, pre_expand: bool = False) -> "OrderedDict[str, torch.Tensor]":
        return staged_forward(self, x, pre_expand)

    @property
    def pre_expand_channels(self) -> int:
        return input_channels(self.final_expand)


class ImageNetForm(nn.Module):
    """Classification form of a backbone (OFA's head): c5 -> global pool -> 1x1 feature mix (no BN, no bias),
    h-swish -> linear classifier. Used to compare MACs/params with OFA's published sizes."""

    def __init__(self, backbone: nn.Module, feature_mix: int = 1280, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = nn.Sequential(nn.Conv2d(backbone.out_channels["c5"], feature_mix, 1, bias=False),
                                         nn.Hardswish(inplace=True))
        self.classifier = nn.Linear(feature_mix, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.feature_mix(self.pool(self.backbone(x)["c5"]))
        return self.classifier(torch.flatten(y, 1))


def imagenet_form(backbone: nn.Module, width_mult: float = 1.0, num_classes: int = 1000) -> ImageNetForm:
    """``backbone`` (an exported subnet) with OFA's ImageNet head (feature mix 1280 x width_mult)."""
    return ImageNetForm(backbone, make_divisible(BASE_WIDTHS[-1] * width_mult, 8), num_classes)


# ------------------------------------------------------------------------------------ elastic block
class ElasticMBConv(nn.Module):
    """MBConv with elastic kernel and expand ratio: 1x1 expand, BN, act -> depthwise k, BN, act, [SE]
    -> 1x1 project, BN (+ input when stride 1 and in == out). Holds the largest block's weights."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str, use_se: bool,
                 kernels: tuple[int, ...], expands: tuple[float, ...], norm: str, eps: float, momentum: float):
        super().__init__()
        self.in_ch, self.out_ch, self.stride, self.act_name = in_ch, out_ch, stride, act
        self.kernels, self.expands = tuple(kernels), tuple(expands)
        frozen = norm == "frozen_bn"
        mid = mid_channels(in_ch, max(expands))
        self.expand_conv = ElasticConv2d(in_ch, mid, 1)
        self.expand_bn = ElasticBatchNorm2d(mid, eps, momentum, frozen)
        self.depth_conv = ElasticConv2d(mid, mid, self.kernels, stride, depthwise=True)
        self.depth_bn = ElasticBatchNorm2d(mid, eps, momentum, frozen)
        self.se = ElasticSE(mid) if use_se else None
        self.project_conv = ElasticConv2d(mid, out_ch, 1)
        self.project_bn = ElasticBatchNorm2d(out_ch, eps, momentum, frozen)
        self.act = _act(act)
        self.residual = stride == 1 and in_ch == out_ch
        self.active_kernel, self.active_expand = max(self.kernels), max(self.expands)

    def set_active(self, kernel: int, expand: float) -> None:
        mid = mid_channels(self.in_ch, expand)
        self.expand_conv.set_active(out_channels=mid)
        self.expand_bn.set_active(mid)
        self.depth_conv.set_active(out_channels=mid, kernel_size=kernel)
        self.depth_bn.set_active(mid)
        if self.se is not None:
            self.se.set_active(mid)
        self.project_conv.set_active(in_channels=mid)
        self.active_kernel, self.active_expand = kernel, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand_bn(self.expand_conv(x)))
        y = self.act(self.depth_bn(self.depth_conv(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y))
        return x + y if self.residual else y

    def middle_channel_moves(self, trained: Sequence[float]) -> list:
        """OFA's re-organisation when smaller expand ratios open (``middle_channel_moves``): the widths of the ratios
        ``trained`` before keep their channels."""
        keep = [mid_channels(self.in_ch, e) for e in trained]
        return middle_channel_moves(self.expand_conv, self.expand_bn, self.depth_conv, self.depth_bn,
                                    self.project_conv, self.se, keep)

    def export(self) -> InvertedResidual:
        layers = [self.expand_conv.export(), self.expand_bn.export(), _act(self.act_name),
                  self.depth_conv.export(), self.depth_bn.export(), _act(self.act_name)]
        if self.se is not None:
            layers.append(self.se.export())
        layers += [self.project_conv.export(), self.project_bn.export()]
        return InvertedResidual(nn.Sequential(*layers), self.residual)

    def extra_repr(self) -> str:
        return f"active: kernel={self.active_kernel}, expand={self.active_expand}"


class ElasticStage(nn.Module):
    """Up to ``len(blocks)`` blocks; the first ``active_depth`` run (the first carries the stage stride)."""

    def __init__(self, blocks: list[ElasticMBConv]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.active_depth = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[: self.active_depth]:
            x = block(x)
        return x

    def export(self) -> nn.Sequential:
        return nn.Sequential(*(b.export() for b in self.blocks[: self.active_depth]))

    def extra_repr(self) -> str:
        return f"active: depth={self.active_depth}"


class OFAMobileNetV3(StagedSupernet):
    """once-for-all MobileNetV3 supernet backbone: x (N, 3, H, W) -> OrderedDict(c2..c5) at strides 4..32.

    The largest arch is active after construction. BN defaults are OFA's (momentum 0.1, eps 1e-5).
    """

    def __init__(self, width_mult: float = 1.0, norm: str = "bn", kernels: tuple[int, ...] = (3, 5, 7),
                 expands: tuple[float, ...] = (3, 4, 6), depths: tuple[int, ...] = (2, 3, 4),
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if norm not in ("bn", "frozen_bn"):
            raise ConfigError(f"backbone.norm must be 'bn' or 'frozen_bn', got {norm!r}")
        if min(depths) < 1:
            raise ConfigError(f"depth choices must be >= 1, got {depths}")
        self.width_mult, self.norm = width_mult, norm
        w = [make_divisible(c * width_mult, 8) for c in BASE_WIDTHS]
        self.widths = tuple(w)
        bn = lambda c: _bn(c, norm, bn_eps, bn_momentum)  # noqa: E731

        self.first_conv = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), bn(w[0]), nn.Hardswish(inplace=True))
        self.first_block = InvertedResidual(nn.Sequential(
            nn.Conv2d(w[0], w[0], 3, STRIDES[0], 1, groups=w[0], bias=False), bn(w[0]), _act(ACTS[0]),
            nn.Conv2d(w[0], w[1], 1, bias=False), bn(w[1]),
        ), residual=STRIDES[0] == 1 and w[0] == w[1])
        stages, c_in = [], w[1]
        for s in range(1, 6):
            blocks = []
            for j in range(max(depths)):
                blocks.append(ElasticMBConv(c_in, w[s + 1], STRIDES[s] if j == 0 else 1, ACTS[s], USE_SE[s],
                                            kernels, expands, norm, bn_eps, bn_momentum))
                c_in = w[s + 1]
            stages.append(ElasticStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand = nn.Sequential(nn.Conv2d(w[6], w[7], 1, bias=False), bn(w[7]), nn.Hardswish(inplace=True))
        self.out_channels = {"c2": w[2], "c3": w[3], "c4": w[5], "c5": w[7]}

        choices: dict[str, tuple] = {}
        for s in range(1, 6):
            choices[f"stage{s}.depth"] = tuple(sorted(depths))
            for j in range(max(depths)):
                choices[f"stage{s}.block{j}.kernel"] = tuple(sorted(kernels))
                choices[f"stage{s}.block{j}.expand"] = tuple(sorted(expands))
        largest = {n: v[-1] for n, v in choices.items()}
        self._space = SearchSpace(choices, default=largest)
        self._arch = self._space.default()
        he_fout_init(self)
        self.set_arch(self._arch)

    @classmethod
    def tiny(cls, **kwargs) -> "OFAMobileNetV3":
        """Widths 8..40 (final expand 240): the same space, small enough for CPU tests."""
        return cls(width_mult=TINY_WIDTH_MULT, **kwargs)

    # ---------------------------------------------------------------------------------- protocol

    def export(self, arch: Mapping[str, Any] | None = None) -> MobileNetV3Backbone:
        """A standalone static backbone of ``arch`` (default: the active one), weights copied, same mode.

        The supernet's active arch is left as it was.
        """
        previous = self._arch
        if arch is not None:
            self.set_arch(arch)
        try:
            net = MobileNetV3Backbone(copy.deepcopy(self.first_conv), copy.deepcopy(self.first_block),
                                      [stage.export() for stage in self.stages], copy.deepcopy(self.final_expand),
                                      self.out_channels)
        finally:
            if arch is not None:
                self.set_arch(previous)
        return net.train(self.training)



def build_ofa_mbv3(width_mult: float = 1.0, norm: str = "bn") -> OFAMobileNetV3:
    """Registry entry ``ofa_mbv3``: the supernet with its largest arch active."""
    return OFAMobileNetV3(width_mult=width_mult, norm=norm)
