"""The supernet protocol: what a search needs from a weight-sharing backbone, in one place.

A supernet is an ``nn.Module`` with ``search_space()`` (its choices), ``set_arch(arch)`` (activate one
subnet in place: everything a forward pass needs) and ``export(arch)`` (a standalone static network
of plain torch modules with the same outputs in eval mode). ``StagedSupernet`` implements it for the
MobileNet family (first_conv -> first_block -> elastic stages -> final_expand).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .space import SearchSpace

STAGE_LEVEL = {1: "c2", 2: "c3", 4: "c4"}  # c5 = final_expand output


@runtime_checkable
class Supernet(Protocol):
    """A backbone whose subnets share weights (checked with ``isinstance(module, Supernet)``)."""

    def search_space(self) -> SearchSpace: ...

    def set_arch(self, arch: Mapping[str, Any]) -> None: ...

    def export(self, arch: Mapping[str, Any] | None = None) -> nn.Module: ...


def staged_forward(net: nn.Module, x: torch.Tensor, pre_expand: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """first_conv -> first_block -> stages -> final_expand, returning c2..c5 (the supernets of this
    family and their static exports share this layout); with ``pre_expand`` also ``c5_pre``: the last stage's
    output before the final 1x1 expand (``pre_expand_channels`` wide; what MMDetection's YOLOv3 neck reads)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    x = net.first_block(net.first_conv(x))
    for i, stage in enumerate(net.stages, start=1):
        x = stage(x)
        if i in STAGE_LEVEL:
            out[STAGE_LEVEL[i]] = x
    if pre_expand:
        out["c5_pre"] = x
    out["c5"] = net.final_expand(x)
    return out


def input_channels(final_expand: nn.Module) -> int:
    """Input width of a final 1x1 expand block (a Sequential / Conv2dNormActivation starting with its conv)."""
    return final_expand[0].in_channels


def mark_space_unit(supernet: nn.Module, unit: str) -> None:
    """Make ``supernet``'s space say that its subnets compute otherwise than its default (``SearchSpace.unit``),
    e.g. after its activations were replaced; supernets keep their space in ``_space``."""
    supernet._space = supernet.search_space().with_unit(unit)


class ArchState:
    """``search_space()`` and ``active_arch`` of a supernet that keeps its space in ``_space`` and its
    active arch in ``_arch``."""

    def search_space(self) -> SearchSpace:
        return self._space

    @property
    def active_arch(self) -> dict[str, Any]:
        return dict(self._arch)


class StagedSupernet(ArchState, nn.Module):
    """The supernet protocol shared by the MobileNet-family supernets: choices ``stageS.depth`` (absent
    = the stage always runs all its blocks) and ``stageS.blockJ.{kernel,expand}``; subclasses build
    ``first_conv``, ``first_block``, ``stages`` (each with ``blocks``, ``active_depth``; blocks with
    ``set_active(kernel, expand)``), ``final_expand``, ``_space`` and ``export``."""

    def set_arch(self, arch: Mapping[str, Any]) -> None:
        """Validate ``arch`` (``ArchError`` otherwise) and activate that subnet in place."""
        arch = self._space.validate(arch)
        for s, stage in enumerate(self.stages, start=1):
            stage.active_depth = arch.get(f"stage{s}.depth", len(stage.blocks))
            for j, block in enumerate(stage.blocks):
                block.set_active(arch[f"stage{s}.block{j}.kernel"], arch[f"stage{s}.block{j}.expand"])
        self._arch = arch

    def forward(self, x: torch.Tensor, pre_expand: bool = False) -> "OrderedDict[str, torch.Tensor]":
        return staged_forward(self, x, pre_expand)

    def middle_channel_moves(self, trained: Sequence[float]) -> list:
        """Every elastic block's middle channels sorted by importance (OFA's ``re_organize_middle_weights``, done when
        a progressive-shrinking phase opens a smaller expand ratio), the widths of the ratios ``trained`` before
        keeping their channels; the moves for ``nasdet.space.elastic.apply_channel_moves``. Empty for blocks
        without it."""
        return [m for stage in self.stages for block in stage.blocks if hasattr(block, "middle_channel_moves")
                for m in block.middle_channel_moves(trained)]

    @property
    def pre_expand_channels(self) -> int:
        return input_channels(self.final_expand)
