"""Necks shared by several detector families."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class FPNNeck(nn.Module):
    """Backbone levels -> FPN maps with one channel count, as RetinaNet/FCOS/Faster R-CNN expect."""

    def __init__(self, body: nn.Module, levels: tuple[str, ...], out_channels: int, extra: nn.Module, norm_layer=None):
        super().__init__()
        self.body = body
        self.levels = levels
        self.fpn = FeaturePyramidNetwork([body.out_channels[lv] for lv in levels], out_channels, extra_blocks=extra,
                                         norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[lv]) for i, lv in enumerate(self.levels)))
