"""``WidthMobileNetV3`` (``mbv3_width``): ENOT's per-block hidden-width space on torchvision's MobileNetV3-Large.

The supernet of a trained ssdlite320_mobilenet_v3_large (``model.layout: torchvision``): its default arch
(every width 1.0) is torchvision's ``mobilenet_v3_large(width_mult, reduced_tail)`` ``features``, index for
index, so the imported baseline starts the supernet (``pipeline.init_supernet_from_baseline``) and the
default subnet computes what it computed. As ENOT's ssd_mnv2 space (``mbv2_width``), every inverted
residual keeps a fraction of its expanded channels:

- choices ``block{i}.width`` (``i``: the block's index in ``features``), ratios ``ENOT_WIDTHS`` ascending,
  0.0 (the block skipped) only where the block is residual;
- hidden width = ``make_divisible(expanded * ratio, 8)``: torchvision's rule for every MobileNetV3
  width, so an exported block is torchvision's ``InvertedResidual`` of that expanded width (its SE
  squeezes ``make_divisible(hidden // 4, 8)`` channels, as OFA's ``DynamicSE``);
- fixed (no choice): the first block (no expand conv: its hidden channels are its input) and the last
  stride-2 block, whose expansion is the first map ssdlite320 predicts on (``SSDLiteMobileNetNeck``): the
  head reads it, so its width never changes; c5 (the last 1x1 conv) keeps its width too;
- ``reorder_channels()`` sorts each block's hidden channels by the L1 norm of its projecting conv
  (``mbv2_width``, OFA's ``re_organize_middle_weights``), so that a width keeps the most important ones;
  ``load_standard_state_dict`` (the baseline's torchvision-layout weights) ends with it;
- ``export(arch)`` is a ``SequentialStagesBackbone`` of torchvision modules; a skipped block is an
  ``nn.Identity`` in its place, so the indices (and the neck's tap) stay those of torchvision's network.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig, _mobilenet_v3_conf

from ...errors import ConfigError
from ...space import SearchSpace
from ...space.supernet import ArchState
from ...space.elastic import he_fout_init, make_divisible
from .mbv2_elastic import checked_standard_state, importance_order, permute_bn
from .mbv2_width import ENOT_WIDTHS, WidthChoice
from .ofa_mobilenet import ElasticMBConv
from .torchvision_backbones import SequentialStagesBackbone, _norm

# torchvision InvertedResidual (with an expand conv) submodule -> WidthMBConv submodule; SE at block.2
_BLOCK_KEYS = (("block.0.0.", "expand_conv.conv."), ("block.0.1.", "expand_bn.bn."), ("block.1.0.", "depth_conv.conv."),
               ("block.1.1.", "depth_bn.bn."), ("block.2.fc1.", "se.reduce."), ("block.2.fc2.", "se.expand."))


def hidden_width(expanded: int, ratio: float) -> int:
    """Hidden channels of a block at ``ratio`` of its ``expanded`` ones (0: skipped)."""
    return 0 if ratio == 0 else min(expanded, make_divisible(expanded * ratio, 8))


class WidthMBConv(WidthChoice, ElasticMBConv):
    """torchvision's MobileNetV3 ``InvertedResidual`` (``cnf``: its kernel, expanded width, SE, activation)
    whose hidden width is ``hidden_width(expanded, ratio)``; width 0 makes a residual block the identity."""

    def __init__(self, cnf: InvertedResidualConfig, norm: str, eps: float, momentum: float):
        if cnf.dilation != 1 or cnf.expanded_channels == cnf.input_channels:
            raise ConfigError("mbv3_width: a block with dilation or without an expand conv has no width choice")
        super().__init__(cnf.input_channels, cnf.out_channels, cnf.stride, "h_swish" if cnf.use_hs else "relu",
                         cnf.use_se, (cnf.kernel,), (cnf.expanded_channels / cnf.input_channels,), norm, eps, momentum)
        self.cnf = cnf
        self.full = self.expand_conv.max_out
        if self.full != cnf.expanded_channels:  # torchvision's widths are multiples of 8: never expected
            raise ConfigError(f"mbv3_width: expanded width {cnf.expanded_channels} of a {cnf.input_channels}-channel "
                              f"block rebuilt as {self.full}")
        self.width = 1.0

    def hidden(self, ratio: float) -> int:
        return hidden_width(self.full, ratio)

    def reorder_channels(self) -> None:
        """Hidden channels by importance, largest first (the full block computes the same function)."""
        order = importance_order(self.project_conv.conv.weight)
        with torch.no_grad():
            for conv in (self.expand_conv.conv, self.depth_conv.conv):
                conv.weight.copy_(conv.weight[order])
            permute_bn(self.expand_bn, order)
            permute_bn(self.depth_bn, order)
            if self.se is not None:
                self.se.reduce.weight.copy_(self.se.reduce.weight[:, order])
                self.se.expand.weight.copy_(self.se.expand.weight[order])
                self.se.expand.bias.copy_(self.se.expand.bias[order])
            self.project_conv.conv.weight.copy_(self.project_conv.conv.weight[:, order])

    def export(self) -> nn.Module:
        """torchvision's ``InvertedResidual`` of the active hidden width (``nn.Identity`` when skipped)."""
        if self.width == 0:
            return nn.Identity()
        # built at the full width (a hidden width equal to the input would drop torchvision's expand conv),
        # then every module replaced by the active one
        block = InvertedResidual(self.cnf, partial(nn.BatchNorm2d, eps=self.expand_bn.bn.eps,
                                                   momentum=self.expand_bn.bn.momentum))
        layers = block.block
        layers[0][0], layers[0][1] = self.expand_conv.export(), self.expand_bn.export()
        layers[1][0], layers[1][1] = self.depth_conv.export(), self.depth_bn.export()
        if self.se is not None:
            layers[2] = self.se.export()
        layers[-1][0], layers[-1][1] = self.project_conv.export(), self.project_bn.export()
        for layer in (layers[0], layers[1]):
            layer.out_channels = layer[0].out_channels  # torchvision's record of the width it was built with
        return block.to(self.project_conv.conv.weight.device)


class WidthMobileNetV3(ArchState, SequentialStagesBackbone):
    """torchvision's MobileNetV3-Large ``features`` (at ``width_mult``, ``reduced_tail``) with ENOT's
    per-block hidden-width choices: x (N, 3, H, W) -> OrderedDict(c2..c5); c2..c5 widths never change."""

    def __init__(self, width_mult: float = 1.0, norm: str = "bn", reduced_tail: bool = False,
                 widths: tuple[float, ...] = ENOT_WIDTHS, bn_eps: float = 0.001, bn_momentum: float = 0.1):
        widths = tuple(sorted(float(w) for w in widths))
        if 1.0 not in widths or any(not 0 <= w <= 1 for w in widths):
            raise ConfigError(f"mbv3_width: width ratios must lie in [0, 1] and include 1.0 (the baseline), got {widths}")
        # torchvision's own network and init; the blocks with a width choice are rebuilt from their configs
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum) if norm == "bn" else _norm(norm)
        setting, _ = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=width_mult, reduced_tail=reduced_tail)
        from torchvision.models.mobilenetv3 import MobileNetV3

        features = MobileNetV3(setting, last_channel=1280, norm_layer=norm_layer).features
        super().__init__(features)
        self.width_mult, self.reduced_tail, self.ratios = width_mult, reduced_tail, widths
        tap = self.stage_ends["c4"] + 1  # ssdlite320's first map: the expansion inside this block
        choices = {}
        for i, cnf in enumerate(setting, start=1):
            if i == tap or cnf.expanded_channels == cnf.input_channels:
                continue
            block = WidthMBConv(cnf, norm, bn_eps, bn_momentum)
            he_fout_init(block)
            self.features[i] = block
            choices[f"block{i}.width"] = widths if block.residual else tuple(w for w in widths if w > 0)
        self._space = SearchSpace(choices, default={n: 1.0 for n in choices})
        self._arch = self._space.default()
        self.set_arch(self._arch)

    @property
    def width_blocks(self) -> dict[str, WidthMBConv]:
        return {name: self.features[int(name[len("block"):-len(".width")])] for name in self._space.names}

    # ---------------------------------------------------------------------------------- protocol
    def set_arch(self, arch: Mapping[str, Any]) -> None:
        arch = self._space.validate(arch)
        for name, block in self.width_blocks.items():
            block.set_width(arch[name])
        self._arch = arch

    def export(self, arch: Mapping[str, Any] | None = None) -> SequentialStagesBackbone:
        """A static backbone of ``arch`` (default: the active one): torchvision's modules at torchvision's
        indices; the supernet's active arch is left as it was."""
        previous = self.active_arch
        if arch is not None:
            self.set_arch(arch)
        try:
            layers = [m.export() if isinstance(m, WidthMBConv) else copy.deepcopy(m) for m in self.features]
        finally:
            self.set_arch(previous)
        static = SequentialStagesBackbone(nn.Sequential(*layers))
        static.train(self.training)
        return static

    # ------------------------------------------------------------------------ baseline weights
    def reorder_channels(self) -> None:
        for block in self.width_blocks.values():
            block.reorder_channels()

    def standard_key_map(self) -> dict[str, str]:
        """Key of torchvision's ``mobilenet_v3_large(width_mult, reduced_tail).features`` state (as nasdet's
        static ``mobilenet_v3_large`` backbone names it) -> key of this supernet."""
        own = self.state_dict()
        key_map = {}
        for k in own:
            key_map[k] = k
        for block_name, block in self.width_blocks.items():
            i = block_name[len("block"):-len(".width")]
            project = 3 if block.se is not None else 2
            pairs = (*_BLOCK_KEYS, (f"block.{project}.0.", "project_conv.conv."), (f"block.{project}.1.", "project_bn.bn."))
            for k in [k for k in own if k.startswith(f"features.{i}.")]:
                del key_map[k]
            for std, mine in pairs:
                for k in own:
                    if k.startswith(f"features.{i}.{mine}"):
                        key_map[f"features.{i}.{std}{k[len(f'features.{i}.{mine}'):]}"] = k
        return key_map

    def load_standard_state_dict(self, state: Mapping[str, torch.Tensor], reorder: bool = True) -> None:
        """Load a trained torchvision ``mobilenet_v3_large`` backbone (keys ``features.N...``, as
        torchvision and nasdet's static backbone name them), then (``reorder``) sort hidden channels by
        importance; the default arch then computes the loaded network. ``ValueError`` naming missing,
        unexpected and mis-shaped keys; nothing is loaded then."""
        key_map = self.standard_key_map()
        own = self.state_dict()
        given = checked_standard_state(state, key_map, own, self.width_mult, network="mobilenet_v3_large")
        with torch.no_grad():
            for k, v in given.items():
                if k in key_map:
                    own[key_map[k]].copy_(v)
        if reorder:
            self.reorder_channels()


def build_mbv3_width(width_mult: float = 1.0, norm: str = "bn", reduced_tail: bool = False) -> WidthMobileNetV3:
    """Registry entry ``mbv3_width``: the baseline (all widths 1.0) active."""
    return WidthMobileNetV3(width_mult=width_mult, norm=norm, reduced_tail=reduced_tail)
