"""``build_detector``: a detector of any family (nasdet.models.families) around any nasdet backbone (OrderedDict c2..c5).

Conventions kept by every detector here:
- labels are 1..K with 0 = background, so every detector is built with ``num_classes = K + 1``
  (as torchvision's COCO models use 91); sigmoid heads (RetinaNet, FCOS, YOLOv3) simply never see class 0;
- the model takes float images in [0, 1] of any size, normalises them and resizes them to
  ``input_size x input_size`` itself (``GeneralizedRCNNTransform`` with ``fixed_size``), and returns
  boxes in the input image's coordinates. The resize is therefore part of the model (and of its
  exported graph), and a candidate resolution is set with ``set_input_size`` without touching data.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import build_backbone
from .families import DETECTORS, family_named, family_of
from .families.base import BN_MOMENTUM, IMAGE_MEAN, IMAGE_STD

__all__ = ["BN_MOMENTUM", "DETECTORS", "IMAGE_MEAN", "IMAGE_STD", "build_detector", "dense_forward", "get_input_size",
           "set_aspect_resize", "set_input_size"]

# the detectors whose references test with the aspect ratio kept (torchvision's GeneralizedRCNNTransform defaults,
# MMDetection's keep_ratio); SSD / SSDLite resize to a square in both
ASPECT_RESIZE_DETECTORS = ("faster_rcnn", "retinanet", "fcos", "yolov3")


def build_detector(model_cfg, num_classes: int | None = None, backbone: nn.Module | None = None,
                   fad_search: bool = False) -> nn.Module:
    """A detector for ``model_cfg`` (a member of nasdet.config.ModelConfig, the union over families).

    ``num_classes``: object classes without background (from the data when the config leaves it
    unset). ``backbone``: a ready backbone module (e.g. a supernet) instead of ``model_cfg.backbone``.
    FCOS / RetinaNet get FAD's searched towers when ``model_cfg.head.genotype`` is set, and FAD's search
    head (with alphas) when ``fad_search`` (``search.strategy: darts``).
    """
    k = model_cfg.num_classes if model_cfg.num_classes is not None else num_classes
    if k is None:
        raise ConfigError("model.num_classes is not set and no data set gave it")
    if num_classes is not None and model_cfg.num_classes is not None and num_classes != model_cfg.num_classes:
        raise ConfigError(f"model.num_classes is {model_cfg.num_classes} but the data set has {num_classes} classes")
    family = family_named(model_cfg.detector)
    if fad_search and not family.fad_heads:
        able = " or ".join(sorted(n for n in DETECTORS if family_named(n).fad_heads))
        raise ConfigError(f"a FAD search needs model.detector {able}, not {model_cfg.detector!r}")
    body = backbone if backbone is not None else build_backbone(model_cfg.backbone)
    return family.build(model_cfg, k + 1, body, fad_search)  # + background


def set_input_size(model: nn.Module, input_size: int) -> None:
    """Change the resolution the detector resizes to (resolution search, multi-resolution training)."""
    s = int(input_size)
    model.transform.min_size = (s,)
    model.transform.max_size = s
    model.transform.fixed_size = (s, s)
    family_of(model).set_input_size(model, s)


def set_aspect_resize(model: nn.Module, min_size: int, max_size: int) -> None:
    """Resize each image with its aspect ratio kept, as torchvision's Faster R-CNN / RetinaNet / FCOS do
    (shorter side ``min_size``, longer side at most ``max_size``; 800 / 1333) and MMDetection's keep_ratio
    (yolov3 at 416 x 416: ``min_size = max_size = 416``), padded to the transform's size divisor: to evaluate a
    detector as it was tested where it was trained. Not for search or export: their costs are at the square
    ``input_size``. SSD / SSDLite (square in torchvision and MMDetection) are refused."""
    names = family_of(model).names
    if not set(names) & set(ASPECT_RESIZE_DETECTORS):
        name = "/".join(names)
        raise ConfigError(f"a resize keeping the aspect ratio is for {', '.join(ASPECT_RESIZE_DETECTORS)}; {name} "
                          "resizes to a square model.input_size, as torchvision's and MMDetection's do")
    if not 0 < int(min_size) <= int(max_size):
        raise ConfigError(f"the aspect-keeping resize needs 0 < min size <= max size, got {min_size}, {max_size}")
    model.transform.min_size = (int(min_size),)
    model.transform.max_size = int(max_size)
    model.transform.fixed_size = None


def get_input_size(model: nn.Module) -> int:
    return int(model.transform.fixed_size[0])


def training_input_size(model: nn.Module, input_size: int | None = None) -> int:
    """The largest size the training forward resizes to at ``input_size`` (default: the model's): YOLOv3 with
    ``multiscale_sizes`` draws one of those per batch."""
    sizes = getattr(model, "multiscale_sizes", None)
    return max(sizes) if sizes else int(input_size or get_input_size(model))


def dense_forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The data-independent part of a detector on a normalised, resized batch ``x``: backbone,
    neck and heads, without anchor matching, decoding or NMS. Used for MACs and dense-part latency."""
    return family_of(model).dense_forward(model, x)
