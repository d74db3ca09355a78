"""A detector whose backbone is a supernet, seen as one supernet: space, set_arch, export.

The detector's space is the backbone's space under the prefix ``backbone.`` plus ``input_size`` (the
resolution the model resizes to). Heads stay fixed: every searchable backbone gives arch-independent
channel counts at the levels the necks read (c4 = a stage output of fixed width, c5 = the final 1x1
expand layer), so a head never needs elastic input channels.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

from torch import nn

from ..errors import ConfigError
from ..space import ArchError, SearchSpace, prefix_arch, strip_prefix
from ..space.supernet import Supernet
from .detectors import get_input_size, set_input_size

BACKBONE_PREFIX = "backbone"
INPUT_SIZE = "input_size"


def supernet_body(model: nn.Module) -> Supernet:
    """The backbone supernet inside a detector built by ``build_detector`` (``model.backbone.body``)."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None or not isinstance(body, Supernet):
        name = type(body).__name__ if body is not None else "none"
        raise ConfigError(
            f"the detector's backbone ({name}) is not a supernet: set model.backbone.name to a searchable "
            "backbone (ofa_mbv3, mbv2_elastic, ...)"
        )
    return body


def has_supernet_body(model: nn.Module) -> bool:
    """Whether ``model``'s backbone is a supernet (``supernet_body`` would return it)."""
    return isinstance(getattr(getattr(model, "backbone", None), "body", None), Supernet)


def detector_space(model: nn.Module, input_sizes: Sequence[int] | None = None) -> SearchSpace:
    """``backbone.*`` choices + ``input_size`` (ascending; default = the model's current size if listed)."""
    body = supernet_body(model)
    sizes = tuple(sorted({int(s) for s in (input_sizes or [get_input_size(model)])}))
    inner = body.search_space()
    default = prefix_arch(inner.default(), BACKBONE_PREFIX)
    current = get_input_size(model)
    default[INPUT_SIZE] = current if current in sizes else sizes[-1]
    merged = SearchSpace.merge(inner.prefixed(BACKBONE_PREFIX), SearchSpace({INPUT_SIZE: sizes}))
    return SearchSpace(merged.choices, default=default, unit=merged.unit)


def set_detector_arch(model: nn.Module, arch: Mapping, space: SearchSpace | None = None) -> None:
    """Activate ``arch`` (backbone choices and input size) in place."""
    if space is not None:
        arch = space.validate(arch)
    if INPUT_SIZE not in arch:
        raise ArchError(f"arch has no {INPUT_SIZE!r}: {sorted(arch)[:5]}...")
    supernet_body(model).set_arch(strip_prefix(arch, BACKBONE_PREFIX))
    set_input_size(model, int(arch[INPUT_SIZE]))


def export_detector(model: nn.Module, arch: Mapping, space: SearchSpace | None = None) -> nn.Module:
    """A standalone detector for ``arch``: the supernet body replaced by its static export, the rest
    (neck, heads) copied. Equal outputs to the supernet with ``arch`` active."""
    if space is not None:
        arch = space.validate(arch)
    body = supernet_body(model)
    static_body = body.export(strip_prefix(arch, BACKBONE_PREFIX))
    holder = model.backbone
    holder.body = nn.Identity()  # do not deep-copy the whole supernet
    try:
        clone = copy.deepcopy(model)
    finally:
        holder.body = body
    clone.backbone.body = static_body
    set_input_size(clone, int(arch[INPUT_SIZE]))
    return clone


def build_supernet(cfg, num_classes: int) -> tuple[nn.Module, SearchSpace]:
    """The detector supernet of an ExperimentConfig and its search space (backbone choices + input_size)."""
    from .detectors import build_detector

    model = build_detector(cfg.model, num_classes=num_classes)
    return model, detector_space(model, cfg.supernet.input_sizes)
