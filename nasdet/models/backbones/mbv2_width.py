"""``WidthMobileNetV2`` (``mbv2_width``): ENOT's own MobileNetV2 search space, per-block hidden width.

ENOT builds its ssd_mnv2 space from the trained baseline (``mmdetection-enot``,
``build_search_space_from_model``: ``generate_pruned_search_variants_model(backbone,
DEFAULT_DESCRIPTORS)``, ``TransformationParameters(width_mult=m)`` for m in (1.0, 0.5, 0.33, 0.17, 0.08,
0.0)): every one of MobileNetV2's 17 inverted residual blocks keeps a fraction of its hidden (expanded)
channels, 0.0 dropping the block. Here:

- choices ``first_block.width`` and ``stage{s}.block{j}.width`` (the 17 blocks in torchvision's order),
  values ascending (the space's rule: first = smallest), default 1.0 = the baseline network;
- hidden width = ``max(1, round(full * ratio))`` (ENOT's rounding is not public);
- 0.0 skips the block (identity) and is offered only where the block is residual (stride 1, in == out);
  elsewhere a block without hidden channels would output a constant, not its input;
- the first block (t = 1) has no expand conv: its hidden channels are the stem conv's outputs, so its
  width prunes the stem conv too;
- ``reorder_channels()`` sorts every block's hidden channels by importance, the L1 norm of the
  projecting conv's weights per hidden channel, largest first (OFA's ``re_organize_middle_weights``):
  a width keeps a prefix, so every variant inherits the most important channels. The permutation
  does not change what the full network computes. ``load_standard_state_dict`` (the baseline's
  weights) ends with it;
- ``export(arch)`` is a plain torchvision-layout ``MobileNetV2Backbone`` with fewer channels and the
  skipped blocks left out;
- ENOT's ``searched_arch`` lists (one index per block into ``ENOT_WIDTHS``, 0 = 1.0 = the baseline
  block) are read by ``arch_from_enot`` and written by ``enot_from_arch``.

Why a space of its own rather than a width choice in ``mbv2_elastic``: there, expand (3/6) already sets
the hidden width and depth already drops blocks, so a width choice would give many names to one network
and break the 1:1 mapping to ENOT's 17-entry lists; here every arch is one network and one list.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation

from ...errors import ConfigError
from ...space import ArchError, SearchSpace
from ...space.elastic import ElasticBatchNorm2d, ElasticConv2d, he_fout_init, make_divisible
from .mbv2_elastic import (FIRST_BLOCK_WIDTH, LAST_WIDTH, SETTING, STEM_WIDTH, ElasticInvertedResidual,
                           MobileNetV2Backbone, _norm_layer, checked_standard_state, export_staged, importance_order,
                           permute_bn, standard_key_map)
from ...space.supernet import StagedSupernet
from .ofa_mobilenet import ElasticStage

ENOT_WIDTHS = (1.0, 0.5, 0.33, 0.17, 0.08, 0.0)  # ENOT's DEFAULT_DESCRIPTORS: searched_arch index -> ratio
FIRST_BLOCK = "first_block"


def hidden_width(full: int, ratio: float) -> int:
    """Hidden channels kept at ``ratio`` of ``full`` (0 for a skipped block)."""
    return 0 if ratio == 0 else max(1, int(round(full * ratio)))


def width_names(space: SearchSpace) -> list[str]:
    """The block width choices of a space (own or a detector's, ``backbone.`` prefixed) in block order."""
    return [n for n in space.names if n.endswith(".width")]


def enot_from_arch(space: SearchSpace, arch: Mapping[str, Any]) -> list[int]:
    """ENOT's ``searched_arch``: per block (torchvision order) the index of its width in ``ENOT_WIDTHS``."""
    arch = space.validate(arch)
    return [ENOT_WIDTHS.index(arch[n]) for n in width_names(space)]


def arch_from_enot(space: SearchSpace, indices: Sequence[int]) -> dict[str, float]:
    """The block widths of an ENOT ``searched_arch`` list (``[0] * 17`` = the baseline); a detector space's
    other choices (``input_size``) are left to the caller."""
    names, indices = width_names(space), list(indices)
    if not names or len(indices) != len(names):
        raise ArchError(f"searched_arch has {len(indices)} entries; this MobileNetV2 width space has {len(names)} "
                        "blocks (ENOT's ssd_mnv2: 17)")
    arch = {}
    for name, i in zip(names, indices):
        if not isinstance(i, int) or not 0 <= i < len(ENOT_WIDTHS):
            raise ArchError(f"searched_arch entry {i!r} for {name} is not an index into {ENOT_WIDTHS}")
        if ENOT_WIDTHS[i] not in space[name]:
            raise ArchError(f"searched_arch index {i} (width {ENOT_WIDTHS[i]}) for {name} is not among its "
                            f"choices {space[name]}")
        arch[name] = ENOT_WIDTHS[i]
    return arch


class ConvBNReLU6(nn.Module):
    """The stem: elastic conv, BN, ReLU6 (output channels pruned with the first block's hidden width)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, eps: float, momentum: float):
        super().__init__()
        self.conv = ElasticConv2d(in_ch, out_ch, 3, stride)
        self.bn = ElasticBatchNorm2d(out_ch, eps, momentum, norm == "frozen_bn")
        self.act = nn.ReLU6(inplace=True)

    def set_active(self, out_channels: int) -> None:
        self.conv.set_active(out_channels=out_channels)
        self.bn.set_active(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def export(self, norm_layer) -> Conv2dNormActivation:
        c = self.conv.active_out
        layer = Conv2dNormActivation(self.conv.max_in, c, stride=self.conv.stride, norm_layer=norm_layer,
                                     activation_layer=nn.ReLU6)
        layer[0], layer[1] = self.conv.export(), self.bn.export()
        return layer.to(self.conv.conv.weight.device)


class WidthFirstBlock(nn.Module):
    """torchvision's t = 1 block (depthwise 3x3, BN, ReLU6, 1x1 project, BN) whose hidden channels are
    the stem's outputs: ``set_width`` prunes both."""

    def __init__(self, stem: ConvBNReLU6, out_ch: int, norm: str, eps: float, momentum: float):
        super().__init__()
        hidden = stem.conv.max_out
        self.full, self.out_ch = hidden, out_ch
        self.depth_conv = ElasticConv2d(hidden, hidden, 3, 1, depthwise=True)
        self.depth_bn = ElasticBatchNorm2d(hidden, eps, momentum, norm == "frozen_bn")
        self.project_conv = ElasticConv2d(hidden, out_ch, 1)
        self.project_bn = ElasticBatchNorm2d(out_ch, eps, momentum, norm == "frozen_bn")
        self.act = nn.ReLU6(inplace=True)
        self.width = 1.0

    def set_width(self, ratio: float, stem: ConvBNReLU6) -> None:
        h = hidden_width(self.full, ratio)
        stem.set_active(h)
        self.depth_conv.set_active(out_channels=h)
        self.depth_bn.set_active(h)
        self.project_conv.set_active(in_channels=h)
        self.width = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_bn(self.project_conv(self.act(self.depth_bn(self.depth_conv(x)))))

    def reorder_channels(self, stem: ConvBNReLU6) -> None:
        order = importance_order(self.project_conv.conv.weight)
        with torch.no_grad():
            stem.conv.conv.weight.copy_(stem.conv.conv.weight[order])
            permute_bn(stem.bn, order)
            self.depth_conv.conv.weight.copy_(self.depth_conv.conv.weight[order])
            permute_bn(self.depth_bn, order)
            self.project_conv.conv.weight.copy_(self.project_conv.conv.weight[:, order])

    def export(self) -> InvertedResidual:
        block = InvertedResidual(self.depth_conv.active_out, self.out_ch, 1, expand_ratio=1)
        block.use_res_connect = False  # pruned to out_ch channels, torchvision would add the input
        block.conv[0][0], block.conv[0][1] = self.depth_conv.export(), self.depth_bn.export()
        block.conv[1], block.conv[2] = self.project_conv.export(), self.project_bn.export()
        return block.to(self.project_conv.conv.weight.device)

    def extra_repr(self) -> str:
        return f"active: width={self.width}"


class WidthChoice:
    """A hidden-width choice on an elastic inverted residual (``full`` expanded channels, ``hidden(ratio)`` of
    them kept in the expand, depthwise, SE if any, and project convs); ratio 0 skips a residual block."""

    full: int
    width: float = 1.0

    def hidden(self, ratio: float) -> int:
        return hidden_width(self.full, ratio)

    def set_width(self, ratio: float) -> None:
        if ratio == 0 and not self.residual:
            raise ArchError(f"width 0.0 skips a block, but this block ({self.in_ch} -> {self.out_ch}, stride "
                            f"{self.stride}) is not residual")
        h = self.hidden(ratio)
        if h:
            self.expand_conv.set_active(out_channels=h)
            self.expand_bn.set_active(h)
            self.depth_conv.set_active(out_channels=h)
            self.depth_bn.set_active(h)
            if getattr(self, "se", None) is not None:
                self.se.set_active(h)
            self.project_conv.set_active(in_channels=h)
        self.width = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.width == 0 else super().forward(x)

    def extra_repr(self) -> str:
        return f"active: width={self.width}"


class WidthInvertedResidual(WidthChoice, ElasticInvertedResidual):
    """An expand-t MobileNetV2 block (3x3 depthwise) whose hidden width is a fraction of ``round(in * t)``;
    width 0 makes a residual block the identity."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: float, norm: str, eps: float, momentum: float):
        super().__init__(in_ch, out_ch, stride, (3,), (expand,), norm, eps, momentum)
        self.full = self.expand_conv.max_out
        self.width = 1.0

    def export(self) -> InvertedResidual | None:
        """torchvision's ``InvertedResidual`` with the kept channels, or None for a skipped block."""
        return None if self.width == 0 else super().export()


class WidthStage(ElasticStage):
    def export(self) -> nn.Sequential:
        return nn.Sequential(*(m for b in self.blocks if (m := b.export()) is not None))


class WidthMobileNetV2(StagedSupernet):
    """MobileNetV2 (torchvision's layout at ``width_mult``) with ENOT's per-block hidden-width choices:
    x (N, 3, H, W) -> OrderedDict(c2..c5) at strides 4, 8, 16, 32. c2..c5 widths never change."""

    def __init__(self, width_mult: float = 1.0, norm: str = "bn", widths: Sequence[float] = ENOT_WIDTHS,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        widths = tuple(float(w) for w in widths)
        if 1.0 not in widths or any(not 0 <= w <= 1 for w in widths):
            raise ConfigError(f"mbv2_width: width ratios must lie in [0, 1] and include 1.0 (the baseline), got {widths}")
        self.width_mult, self.norm, self.ratios = width_mult, norm, widths
        self._norm_layer = _norm_layer(norm, bn_eps, bn_momentum)
        c0 = make_divisible(STEM_WIDTH * width_mult, 8)
        c1 = make_divisible(FIRST_BLOCK_WIDTH * width_mult, 8)
        outs = [make_divisible(c * width_mult, 8) for _, c, _, _ in SETTING]
        last = make_divisible(LAST_WIDTH * max(1.0, width_mult), 8)
        self.first_conv = ConvBNReLU6(3, c0, 2, norm, bn_eps, bn_momentum)
        self.first_block = WidthFirstBlock(self.first_conv, c1, norm, bn_eps, bn_momentum)
        stages, c_in = [], c1
        for (t, _, n, stride), c in zip(SETTING, outs):
            blocks = []
            for j in range(n):
                blocks.append(WidthInvertedResidual(c_in, c, stride if j == 0 else 1, t, norm, bn_eps, bn_momentum))
                c_in = c
            stages.append(WidthStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand = Conv2dNormActivation(c_in, last, kernel_size=1, norm_layer=self._norm_layer,
                                                 activation_layer=nn.ReLU6)
        self.out_channels = {"c2": outs[0], "c3": outs[1], "c4": outs[3], "c5": last}

        nonzero = tuple(sorted(w for w in widths if w > 0))
        choices = {f"{FIRST_BLOCK}.width": nonzero}
        for s, stage in enumerate(self.stages, start=1):
            for j, block in enumerate(stage.blocks):
                choices[f"stage{s}.block{j}.width"] = tuple(sorted(widths)) if block.residual else nonzero
        self.block_names = tuple(choices)  # torchvision / ENOT block order
        self._space = SearchSpace(choices, default={n: 1.0 for n in choices})
        self._arch = self._space.default()
        he_fout_init(self)
        self.set_arch(self._arch)

    # ---------------------------------------------------------------------------------- protocol
    def set_arch(self, arch: Mapping[str, Any]) -> None:
        arch = self._space.validate(arch)
        self.first_block.set_width(arch[f"{FIRST_BLOCK}.width"], self.first_conv)
        for s, stage in enumerate(self.stages, start=1):
            for j, block in enumerate(stage.blocks):
                block.set_width(arch[f"stage{s}.block{j}.width"])
        self._arch = arch

    def export(self, arch: Mapping[str, Any] | None = None) -> MobileNetV2Backbone:
        """A standalone static backbone of ``arch`` (default: the active one): torchvision modules in
        torchvision's order, skipped blocks left out; the supernet's active arch is left as it was."""
        return export_staged(self, arch, lambda: [self.first_conv.export(self._norm_layer), self.first_block.export()])

    # ------------------------------------------------------------------------------ ENOT lists
    def enot_from_arch(self, arch: Mapping[str, Any]) -> list[int]:
        return enot_from_arch(self._space, arch)

    def arch_from_enot(self, indices: Sequence[int]) -> dict[str, float]:
        return arch_from_enot(self._space, indices)

    # ------------------------------------------------------------------------ baseline weights
    def reorder_channels(self) -> None:
        """Sort every block's hidden channels by importance (see the module docstring)."""
        self.first_block.reorder_channels(self.first_conv)
        for stage in self.stages:
            for block in stage.blocks:
                block.reorder_channels()

    def standard_key_map(self) -> dict[str, str]:
        """Key of torchvision's ``mobilenet_v2(width_mult).features`` state -> key of this supernet."""
        head = [("features.0.0.", self.first_conv.conv.conv, "first_conv.conv.conv."),
                ("features.0.1.", self.first_conv.bn.bn, "first_conv.bn.bn.")]
        for std, own in (("conv.0.0", "depth_conv.conv"), ("conv.0.1", "depth_bn.bn"), ("conv.1", "project_conv.conv"),
                         ("conv.2", "project_bn.bn")):
            head.append((f"features.1.{std}.", self.first_block.get_submodule(own), f"first_block.{own}."))
        return standard_key_map(self, head)

    def load_standard_state_dict(self, state: Mapping[str, torch.Tensor], reorder: bool = True) -> None:
        """Load a trained torchvision ``mobilenet_v2(width_mult)`` backbone (keys ``features.N...``;
        ``classifier.*`` ignored), then (``reorder``) sort hidden channels by importance. The default
        arch then computes the loaded network. ``ValueError`` naming missing, unexpected and mis-shaped
        keys; nothing is loaded then."""
        key_map = self.standard_key_map()
        own = self.state_dict()
        given = checked_standard_state(state, key_map, own, self.width_mult)
        with torch.no_grad():
            for k, v in given.items():
                if k in key_map:
                    own[key_map[k]].copy_(v)
        if reorder:
            self.reorder_channels()


def build_mbv2_width(width_mult: float = 1.0, norm: str = "bn") -> WidthMobileNetV2:
    """Registry entry ``mbv2_width``: ENOT's width space with the baseline (all widths 1.0) active."""
    return WidthMobileNetV2(width_mult=width_mult, norm=norm)
