"""Detector families: one adapter per family (see ``base``); a new family is one file plus a line here."""
from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from . import faster_rcnn, fcos, retinanet, ssd, yolov3
from .base import DetectorFamily

FAMILIES: tuple[DetectorFamily, ...] = (ssd.FAMILY, retinanet.FAMILY, fcos.FAMILY, faster_rcnn.FAMILY, yolov3.FAMILY)
BY_DETECTOR: dict[str, DetectorFamily] = {name: f for f in FAMILIES for name in f.names}
DETECTORS = tuple(BY_DETECTOR)


def family_named(detector: str) -> DetectorFamily:
    """The family of ``model.detector``."""
    if detector not in BY_DETECTOR:
        raise ConfigError(f"model.detector {detector!r} is not one of {DETECTORS}")
    return BY_DETECTOR[detector]


def family_of(model: nn.Module) -> DetectorFamily:
    """The family of a model ``build_detector`` returned."""
    for f in FAMILIES:
        if isinstance(model, f.model_types):
            return f
    raise TypeError(f"{type(model).__name__} is not a detector of any family ({', '.join(DETECTORS)})")
