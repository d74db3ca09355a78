"""torchvision detection checkpoints -> nasdet's detectors of the same layout: key renames only.

The layouts are torchvision's own builders (``torchvision/models/detection``) and nasdet's families:
- ``ssdlite320_mobilenet_v3_large`` -> ``ssdlite`` with ``layout: torchvision`` (+ ``backbone.reduced_tail``
  when it was trained without an ImageNet backbone, as torchvision's COCO weights were). torchvision
  re-slices the MobileNet into ``features.0`` (up to the expansion inside the last stride-2 block) and
  ``features.1`` (the rest of that block, then the tail); nasdet keeps the MobileNet whole and taps inside
  the block (``SSDLiteMobileNetNeck``). The extras (``backbone.extra``) and the head keep their names.
- ``retinanet_resnet50_fpn`` (``_v2``: ``variant: v2``), ``fcos_resnet50_fpn``, ``fasterrcnn_resnet50_fpn``
  (``_v2``: ``variant: v2``) -> ``retinanet``, ``fcos``, ``faster_rcnn`` on ``resnet50``: the same FPN (P3-P7,
  or P2-P6 with max pooling), heads, anchors and box coders; only the ResNet stem is named ``stem.0`` /
  ``stem.1`` in nasdet.
  With an ImageNet backbone torchvision trains with FrozenBatchNorm2d (no ``num_batches_tracked``).
"""
from __future__ import annotations

import re

from torch import nn
from torchvision.models._meta import _COCO_CATEGORIES

# torchvision's COCO detectors: label = COCO category id, 91 outputs ("__background__" and "N/A" gaps)
COCO_LABELS: tuple[str, ...] = tuple(_COCO_CATEGORIES)


def _resnet_keys(key: str) -> str:
    return re.sub(r"^backbone\.body\.(conv1|bn1)\.", lambda m: f"backbone.body.stem.{'0' if m[1] == 'conv1' else '1'}.",
                  key)


def _ssdlite_keys(key: str, c4_pos: int) -> str:
    """torchvision's ``SSDLiteFeatureExtractorMobileNet.features`` -> the nasdet MobileNet's ``features``."""
    m = re.match(r"backbone\.features\.0\.(\d+)\.(.*)", key)
    if m:
        i, rest = int(m[1]), m[2]
        return f"backbone.body.features.{i}.{rest}" if i < c4_pos else f"backbone.body.features.{c4_pos}.block.0.{rest}"
    m = re.match(r"backbone\.features\.1\.0\.(\d+)\.(.*)", key)  # block[1:] (a slice keeps its keys)
    if m:
        return f"backbone.body.features.{c4_pos}.block.{m[1]}.{m[2]}"
    m = re.match(r"backbone\.features\.1\.(\d+)\.(.*)", key)  # the blocks after it, the last conv
    if m:
        return f"backbone.body.features.{c4_pos + int(m[1])}.{m[2]}"
    return key


def torchvision_keys(model: nn.Module):
    """The key rename from torchvision's detector of ``model``'s layout to ``model``'s, or None when
    torchvision has no detector of this layout."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.ssd import SSD

    from ..backbones import ResNetBackbone
    from ..families.ssd import SSDLiteMobileNetNeck

    if isinstance(model, SSD) and isinstance(model.backbone, SSDLiteMobileNetNeck):
        c4_pos = model.backbone.c4_pos
        return lambda key: _ssdlite_keys(key, c4_pos)
    body = getattr(model.backbone, "body", None)
    if isinstance(model, (RetinaNet, FCOS, FasterRCNN)) and isinstance(body, ResNetBackbone):
        return _resnet_keys
    return None
