"""``ElasticMobileNetV2``: the ENOT ssd_mobilenetv2-style MobileNetV2 supernet as a detection backbone.

Layout (torchvision ``mobilenet_v2``; widths ``make_divisible(c * width_mult, 8)``, the last conv
``make_divisible(1280 * max(1, width_mult), 8)`` as torchvision)::

    first_conv   3 -> 32, 3x3 s2, BN, ReLU6                                      stride 2
    first_block  32 -> 16, t=1 (depthwise 3x3, 1x1), fixed                        stride 2
    stage1  t6,  24, n2, s2                                       -> c2            stride 4
    stage2  t6,  32, n3, s2                                       -> c3            stride 8
    stage3  t6,  64, n4, s2                                                        stride 16
    stage4  t6,  96, n3, s1                                       -> c4            stride 16
    stage5  t6, 160, n3, s2                                                        stride 32
    stage6  t6, 320, n1, s1
    final_expand 320 -> 1280, 1x1, BN, ReLU6                      -> c5            stride 32

Choices: per block ``stage{s}.block{j}.kernel`` (3, 5, 7; depthwise, OFA kernel transform 7->5->3)
and ``stage{s}.block{j}.expand`` (3, 6); per stage with n > 1 ``stage{s}.depth`` (1..n: the first d
blocks run, the first block, which carries the stride and the width change, is always kept). Mid
width = ``int(round(c_in * expand))`` as torchvision's ``InvertedResidual`` (and ENOT's
``calculate_hidden_channels``) compute it; with c_in a multiple of 8 it is a multiple of 8 anyway.
The DEFAULT arch (kernel 3, expand 6, full depth) is torchvision's ``mobilenet_v2(width_mult=w)``
layer for layer; ``export`` of it has torchvision's module tree and state_dict keys.

What ENOT does with depth: its SSD MobileNetV2 space (ENOT-AutoDL/ENOTDataSphere,
``mmdet_tools/configs/_base_/models/search_space_ssd.py``) gives every block of up to 4 per stage
one of 7 ops, ``MIB_k={3,5,7}_t={6,3}`` or ``conv1x1-skip`` (a 1x1 conv + BN, with a residual where
shapes allow), so a "skipped" block is a cheap 1x1 layer, not nothing, and any block may take it.
Here depth is OFA's per-stage prefix instead: a skipped block is a true identity (only residual
blocks, stride 1 and in == out, are ever skipped), the stage keeps at least its first block, and
the block counts stay torchvision's (2, 3, 4, 3, 3, 1) so that the default arch is the standard net.
c4 and c5 never change width, so heads need no elastic input.

Supernet protocol: ``search_space()``, ``set_arch(arch)``, ``active_arch``, ``export(arch=None)``
(a static ``MobileNetV2Backbone`` of torchvision modules), plus ``load_standard_state_dict`` /
``standard_key_map`` to start from a torchvision ``mobilenet_v2`` backbone's weights (ImageNet ones through
``model.backbone.pretrained``; how each choice starts: docs/pretrained.md).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d

from ...errors import CheckpointError, ConfigError
from ...space import SearchSpace
from ...space.elastic import (ElasticBatchNorm2d, ElasticConv2d, apply_channel_moves, he_fout_init, make_divisible,
                              middle_channel_moves)
from ...space.supernet import STAGE_LEVEL, StagedSupernet  # c5 = final_expand output
from .ofa_mobilenet import ElasticStage
from .pretrained import state_dict_problems
from .torchvision_backbones import SequentialStagesBackbone

STEM_WIDTH, FIRST_BLOCK_WIDTH, LAST_WIDTH = 32, 16, 1280
SETTING = ((6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # t, c, n, s
STANDARD_KERNEL = 3  # torchvision's depthwise kernel
# torchvision InvertedResidual (t != 1) submodule -> ElasticInvertedResidual submodule
_BLOCK_KEYS = (("conv.0.0", "expand_conv.conv"), ("conv.0.1", "expand_bn.bn"), ("conv.1.0", "depth_conv.conv"),
               ("conv.1.1", "depth_bn.bn"), ("conv.2", "project_conv.conv"), ("conv.3", "project_bn.bn"))


def _norm_layer(norm: str, eps: float, momentum: float):
    if norm == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps, momentum=momentum)
    if norm == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    raise ConfigError(f"backbone.norm must be 'bn' or 'frozen_bn', got {norm!r}")


def mid_channels(in_channels: int, expand: float) -> int:
    """Width of an inverted residual's expanded part, as torchvision's ``InvertedResidual``."""
    return int(round(in_channels * expand))


# --------------------------------------------------------------------------------- static backbone
class MobileNetV2Backbone(SequentialStagesBackbone):
    """A static subnet (what ``ElasticMobileNetV2.export`` returns): ``features`` as torchvision lays
    them out, cut at known ``stage_ends`` -> OrderedDict(c2..c5). Unlike the parent it does not
    probe the cut points with a dummy forward (the supernet knows them; works on any device)."""

    def __init__(self, features: nn.Sequential, stage_ends: dict[str, int], out_channels: dict[str, int]):
        nn.Module.__init__(self)
        self.features = features
        self.stage_ends = dict(stage_ends)
        self.out_channels = dict(out_channels)


# ------------------------------------------------------------ shared by the MobileNetV2 supernets
def export_staged(net: nn.Module, arch: Mapping[str, Any] | None, head_layers) -> MobileNetV2Backbone:
    """The static backbone of ``arch`` (default: the active one) of a MobileNetV2 supernet: ``head_layers()``
    (stem and first block), every stage's export, the last conv; the active arch is left as it was."""
    previous = net.active_arch
    if arch is not None:
        net.set_arch(arch)
    try:
        layers = list(head_layers())
        ends: dict[str, int] = {}
        for i, stage in enumerate(net.stages, start=1):
            layers.extend(stage.export())
            if i in STAGE_LEVEL:
                ends[STAGE_LEVEL[i]] = len(layers) - 1
        layers.append(copy.deepcopy(net.final_expand))
        ends["c5"] = len(layers) - 1
        static = MobileNetV2Backbone(nn.Sequential(*layers), ends, net.out_channels)
    finally:
        if arch is not None:
            net.set_arch(previous)
    return static.train(net.training)


def standard_key_map(net: nn.Module, head: list[tuple[str, nn.Module, str]]) -> dict[str, str]:
    """torchvision ``features.N...`` key -> supernet key: ``head`` (standard prefix, module, own prefix)
    entries, then every stage block (``_BLOCK_KEYS``) and the last conv."""
    out: dict[str, str] = {}

    def add(std_prefix: str, module: nn.Module, own_prefix: str) -> None:
        for name in module.state_dict():
            out[std_prefix + name] = own_prefix + name

    for std, module, own in head:
        add(std, module, own)
    i = 2
    for s, stage in enumerate(net.stages):
        for j, block in enumerate(stage.blocks):
            for std, own in _BLOCK_KEYS:
                add(f"features.{i}.{std}.", block.get_submodule(own), f"stages.{s}.blocks.{j}.{own}.")
            i += 1
    add(f"features.{i}.", net.final_expand, "final_expand.")
    return out


def checked_standard_state(state: Mapping[str, torch.Tensor], key_map: dict[str, str], own: dict, width_mult: float,
                           want=lambda key, shape: shape, network: str = "mobilenet_v2") -> dict[str, torch.Tensor]:
    """``state`` without ``classifier.*``, or ``CheckpointError`` naming missing, unexpected and mis-shaped keys
    (``want(own_key, own_shape)``: the shape a standard tensor must have)."""
    given = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    problems = state_dict_problems(given, {k: want(v, tuple(own[v].shape)) for k, v in key_map.items()})
    if problems:
        raise CheckpointError(f"not torchvision's {network}(width_mult={width_mult}) layout: " + "; ".join(problems))
    return given


def importance_order(project_weight: torch.Tensor) -> torch.Tensor:
    """Hidden channels by the L1 norm of the projecting 1x1 conv's weights (out, hidden, 1, 1), largest first
    (ties keep their order)."""
    importance = project_weight.detach().abs().sum(dim=(0, 2, 3))
    return torch.sort(importance, descending=True, stable=True).indices


def permute_bn(bn: ElasticBatchNorm2d, order: torch.Tensor) -> None:
    inner = bn.bn
    for t in (inner.weight, inner.bias, inner.running_mean, inner.running_var):
        t.data.copy_(t.data[order])


# ------------------------------------------------------------------------------------ elastic block
class ElasticInvertedResidual(nn.Module):
    """MobileNetV2 block with elastic kernel and expand ratio: 1x1 expand, BN, ReLU6 -> depthwise k,
    BN, ReLU6 -> 1x1 project, BN (+ input when stride 1 and in == out). Holds the largest block."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernels: tuple[int, ...], expands: tuple[float, ...],
                 norm: str, eps: float, momentum: float):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.kernels, self.expands = tuple(kernels), tuple(expands)
        frozen = norm == "frozen_bn"
        mid = mid_channels(in_ch, max(expands))
        self.expand_conv = ElasticConv2d(in_ch, mid, 1)
        self.expand_bn = ElasticBatchNorm2d(mid, eps, momentum, frozen)
        self.depth_conv = ElasticConv2d(mid, mid, self.kernels, stride, depthwise=True)
        self.depth_bn = ElasticBatchNorm2d(mid, eps, momentum, frozen)
        self.project_conv = ElasticConv2d(mid, out_ch, 1)
        self.project_bn = ElasticBatchNorm2d(out_ch, eps, momentum, frozen)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch
        self.active_kernel, self.active_expand = max(self.kernels), max(self.expands)

    def set_active(self, kernel: int, expand: float) -> None:
        mid = mid_channels(self.in_ch, expand)
        self.expand_conv.set_active(out_channels=mid)
        self.expand_bn.set_active(mid)
        self.depth_conv.set_active(out_channels=mid, kernel_size=kernel)
        self.depth_bn.set_active(mid)
        self.project_conv.set_active(in_channels=mid)
        self.active_kernel, self.active_expand = kernel, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand_bn(self.expand_conv(x)))
        y = self.act(self.depth_bn(self.depth_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return x + y if self.residual else y

    def middle_channel_moves(self, trained: Sequence[float]) -> list:
        """OFA's re-organisation when smaller expand ratios open (``nasdet.space.elastic``): the widths of the ratios
        ``trained`` before keep their channels."""
        keep = [mid_channels(self.in_ch, e) for e in trained]
        return middle_channel_moves(self.expand_conv, self.expand_bn, self.depth_conv, self.depth_bn,
                                    self.project_conv, None, keep)

    def reorder_channels(self) -> None:
        """Sort the hidden channels by importance (every one, none kept in place): the full block computes the same,
        a smaller hidden width (a prefix) keeps the most important channels."""
        apply_channel_moves(self.middle_channel_moves(()))

    def export(self) -> InvertedResidual:
        """torchvision's ``InvertedResidual`` with the active weights (depthwise conv of the active kernel)."""
        block = InvertedResidual(self.in_ch, self.out_ch, self.stride, expand_ratio=self.active_expand)
        block.conv[0][0], block.conv[0][1] = self.expand_conv.export(), self.expand_bn.export()
        block.conv[1][0], block.conv[1][1] = self.depth_conv.export(), self.depth_bn.export()
        block.conv[2], block.conv[3] = self.project_conv.export(), self.project_bn.export()
        return block.to(self.project_conv.conv.weight.device)

    def extra_repr(self) -> str:
        return f"active: kernel={self.active_kernel}, expand={self.active_expand}"


# ---------------------------------------------------------------------------------------- supernet
class ElasticMobileNetV2(StagedSupernet):
    """MobileNetV2 supernet backbone: x (N, 3, H, W) -> OrderedDict(c2..c5) at strides 4, 8, 16, 32.

    The default arch (kernel 3, expand 6, full depth = torchvision's MobileNetV2) is active after
    construction. BN defaults are torchvision's (eps 1e-5, momentum 0.1).
    """

    def __init__(self, width_mult: float = 1.0, norm: str = "bn", kernels: tuple[int, ...] = (3, 5, 7),
                 expands: tuple[float, ...] = (3, 6), min_depth: int = 1, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        norm_layer = _norm_layer(norm, bn_eps, bn_momentum)
        if STANDARD_KERNEL not in kernels:
            raise ConfigError(f"kernel choices must include torchvision's {STANDARD_KERNEL}, got {kernels}")
        if min_depth < 1:
            raise ConfigError(f"min_depth must be >= 1 (a stage keeps its first block), got {min_depth}")
        self.width_mult, self.norm = width_mult, norm
        c0 = make_divisible(STEM_WIDTH * width_mult, 8)
        c1 = make_divisible(FIRST_BLOCK_WIDTH * width_mult, 8)
        widths = [make_divisible(c * width_mult, 8) for _, c, _, _ in SETTING]
        last = make_divisible(LAST_WIDTH * max(1.0, width_mult), 8)
        self.widths = (c0, c1, *widths, last)

        self.first_conv = Conv2dNormActivation(3, c0, stride=2, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        self.first_block = InvertedResidual(c0, c1, 1, expand_ratio=1, norm_layer=norm_layer)
        stages, c_in = [], c1
        for (_, _, n, stride), c in zip(SETTING, widths):
            blocks = []
            for j in range(n):
                blocks.append(ElasticInvertedResidual(c_in, c, stride if j == 0 else 1, kernels, expands, norm,
                                                      bn_eps, bn_momentum))
                c_in = c
            stages.append(ElasticStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.final_expand = Conv2dNormActivation(c_in, last, kernel_size=1, norm_layer=norm_layer,
                                                 activation_layer=nn.ReLU6)
        self.out_channels = {"c2": widths[0], "c3": widths[1], "c4": widths[3], "c5": last}

        choices: dict[str, tuple] = {}
        default: dict[str, Any] = {}
        for s, (_, _, n, _) in enumerate(SETTING, start=1):
            if n > min_depth:
                choices[f"stage{s}.depth"] = tuple(range(min_depth, n + 1))
                default[f"stage{s}.depth"] = n
            for j in range(n):
                choices[f"stage{s}.block{j}.kernel"] = tuple(sorted(kernels))
                choices[f"stage{s}.block{j}.expand"] = tuple(sorted(expands))
                default[f"stage{s}.block{j}.kernel"] = STANDARD_KERNEL
                default[f"stage{s}.block{j}.expand"] = max(expands)
        self._space = SearchSpace(choices, default=default)
        self._arch = self._space.default()
        he_fout_init(self)
        self.set_arch(self._arch)

    # ---------------------------------------------------------------------------------- protocol
    def export(self, arch: Mapping[str, Any] | None = None) -> MobileNetV2Backbone:
        """A standalone static backbone of ``arch`` (default: the active one), weights copied, same mode.

        Its ``features`` are torchvision modules in torchvision's order (stem, blocks, last conv); the
        supernet's active arch is left as it was.
        """
        return export_staged(self, arch, lambda: [copy.deepcopy(self.first_conv), copy.deepcopy(self.first_block)])


    # ------------------------------------------------------------------------ standard weights
    def standard_key_map(self) -> dict[str, str]:
        """Key of torchvision's ``mobilenet_v2(width_mult).features`` state (as nasdet's
        ``SequentialStagesBackbone`` holds it: ``features.N....``) -> key of this supernet, at full depth.

        A standard depthwise ``features.N.conv.1.0.weight`` (c, 1, 3, 3) maps onto the 7x7
        ``...depth_conv.conv.weight`` (its centre); every other tensor maps shape for shape.
        """
        return standard_key_map(self, [("features.0.", self.first_conv, "first_conv."),
                                       ("features.1.", self.first_block, "first_block.")])

    def load_standard_state_dict(self, state: Mapping[str, torch.Tensor], reorder: bool = True) -> None:
        """Load torchvision ``mobilenet_v2(width_mult=self.width_mult)`` backbone weights (keys
        ``features.N....``; ``classifier.*`` keys of a whole torchvision model are ignored).

        Afterwards the default arch computes the standard network: 3x3 depthwise kernels sit at the
        centre of the 7x7 weights with zeros around them (so kernels 5 and 7 start equal to 3), the
        kernel-transform matrices are reset to identity, and expand 6 fills every mid channel; with
        ``reorder`` every block's hidden channels are then sorted by importance (``importance_order``), so
        expand 3 keeps the most important half (the full block computes the same, up to float rounding).
        ``num_batches_tracked`` is loaded where both sides have it and never required (frozen BN has none).
        Raises ``CheckpointError`` (a ``ValueError``) naming missing, unexpected and mis-shaped keys; nothing
        is loaded then.
        """
        key_map = self.standard_key_map()
        own = self.state_dict()

        def want(k: str, shape: tuple) -> tuple:
            return shape[:2] + (STANDARD_KERNEL, STANDARD_KERNEL) if k.endswith("depth_conv.conv.weight") else shape
        given = checked_standard_state(state, key_map, own, self.width_mult, want)
        with torch.no_grad():
            for k, v in given.items():
                if k not in key_map:
                    continue
                target = own[key_map[k]]
                if key_map[k].endswith("depth_conv.conv.weight"):
                    lo = (target.shape[-1] - STANDARD_KERNEL) // 2
                    target.zero_()
                    target[:, :, lo:lo + STANDARD_KERNEL, lo:lo + STANDARD_KERNEL].copy_(v)
                else:
                    target.copy_(v)
            for name, p in self.named_parameters():
                if ".kernel_transforms." in name:
                    p.copy_(torch.eye(p.shape[0], dtype=p.dtype, device=p.device))
        if reorder:
            for stage in self.stages:
                for block in stage.blocks:
                    block.reorder_channels()


def build_mbv2_elastic(width_mult: float = 1.0, norm: str = "bn") -> ElasticMobileNetV2:
    """Registry entry ``mbv2_elastic``: the supernet with its default (torchvision MobileNetV2) arch active."""
    return ElasticMobileNetV2(width_mult=width_mult, norm=norm)
