"""MMDetection detection checkpoints -> nasdet's detectors of the same layout.

MMDetection 2.x / 3.x save ``{"meta": {.., "CLASSES" (2.x) or "dataset_meta": {"classes"} (3.x)},
"state_dict": {..}}``. Layouts (tests/fixtures/mmdetection/ lists their keys and shapes, and the files
of open-mmlab/mmdetection and mmcv they come from):

- ``ssdlite_mobilenetv2`` -> ``ssdlite`` on ``mobilenet_v2`` with ``layout: mmdetection``: MobileNetV2
  (``conv1``, ``layerN.M.{expand,depthwise,linear}_conv``, ``conv2``: torchvision's ``features``), SSDNeck's
  depthwise ``extra_layers`` (nasdet's SSDLite extras), SSDHead's depthwise ``cls_convs`` / ``reg_convs``
  (torchvision's SSDLiteHead). Its class convs put the background last, torchvision's SSD first: rows
  reordered. Its BN eps is 1e-3 everywhere, torchvision's MobileNetV2 1e-5: the running variances take the
  difference, so the eval-mode function is the same;
- ``yolov3_mobilenetv2`` (320 / 416: the same tensors) -> ``yolov3`` on ``mobilenet_v2`` with ``layout:
  mmdetection`` (LeakyReLU backbone) and ``anchors: mmdet_320`` / ``mmdet_416``: ``neck.detectK.convJ`` ->
  ``backbone.detect``, ``neck.convK`` -> ``backbone.lateral``, ``bbox_head.convs_{bridge,pred}`` -> ``head``;
- ``retinanet_r50_fpn`` -> ``retinanet`` on ``resnet50`` with ``variant: mmdetection``: ResNet's names are
  torchvision's but for the stem; FPN ``lateral_convs`` / ``fpn_convs`` (P3-P5, then P6 from C5 and P7)
  -> torchvision's FPN ``inner_blocks`` / ``layer_blocks`` / ``extra_blocks.p6, p7``; RetinaHead
  ``cls_convs`` / ``reg_convs`` / ``retina_cls`` / ``retina_reg`` -> torchvision's RetinaNetHead, whose
  class outputs have a background column (label 0) MMDetection's do not: added, never scored;
- ENOT's ``ssd_mnv2`` (ENOT-AutoDL/mmdetection-enot, MMDetection 2.16: ENOT's ``baseline_ckpt``) -> ``ssdlite`` on
  ``mobilenet_v2`` with ``layout: enot``: MobileNetV2 as above, SSDNeck's two ``extra_layers`` of ConvModules (1x1,
  then a full 3x3) -> nasdet's extras ``backbone.extras.i.{0, 1, 3, 4}``, SSDHead as ssdlite_mobilenetv2's (15
  anchors a location), background rows as there. Its BN eps are nasdet's (1e-5; 1e-3 in the head).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

MOBILENET_V2_BLOCKS = (1, 2, 3, 4, 3, 3, 1)  # blocks per layer1..7; torchvision's features 1..17


@dataclass
class MMDetLayout:
    """One MMDetection model mapped onto a nasdet detector."""

    name: str  # MMDetection's config name
    rename: Callable[[str], str]
    class_lead: int  # per anchor, the outputs before the class ones (after the mapping)
    has_background: bool = False  # SSD: a background output per anchor (last in MMDetection, first in nasdet)
    add_background: bool = False  # RetinaNet: none in MMDetection; torchvision's heads have one (never positive)
    bn_eps: float | None = 1e-5  # MMDetection's BN eps in this model (None: each BN's is nasdet's)
    needs: str = ""  # the nasdet config setting its function needs ("" when the model has it)

    def convert(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MMDetection's tensors as ``model``'s keys, with the values its modules need for the same function."""
        out = {self.rename(k): v for k, v in weights.items()}
        eps = {f"{name}.running_var": m.eps for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        for k, own_eps in eps.items():
            if k in out and self.bn_eps is not None and own_eps != self.bn_eps:
                out[k] = out[k] + (self.bn_eps - own_eps)  # (x - mean) / sqrt(var + eps) unchanged
        if self.has_background:  # its anchors per location are the model's (6 per map for ssdlite_mobilenetv2)
            anchors = model.anchor_generator.num_anchors_per_location()
            for k in list(out):
                m = re.fullmatch(r"head\.classification_head\.module_list\.(\d+)\.1\.(weight|bias)", k)
                if m and int(m[1]) < len(anchors):
                    out[k] = background_first(out[k], anchors[int(m[1])])
        if self.add_background:
            anchors = model.anchor_generator.num_anchors_per_location()[0]
            for k in ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"):
                if k in out and out[k].shape[0] % anchors == 0:
                    out[k] = with_background(out[k], anchors)
        return out


NEVER = -1e4  # a logit whose sigmoid is 0 in float32


def with_background(tensor: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Rows (anchor, class 1..K) -> (anchor, [background, class 1..K]); the background output is ``NEVER``
    (weights 0), so torchvision's RetinaNet never scores it, as MMDetection has no such output."""
    blocks = tensor.reshape(num_anchors, -1, *tensor.shape[1:])
    background = torch.full_like(blocks[:, :1], NEVER if tensor.dim() == 1 else 0.0)
    return torch.cat([background, blocks], 1).reshape(-1, *tensor.shape[1:])


def background_first(tensor: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Rows (anchor, [class 1..K, background]) -> (anchor, [background, class 1..K])."""
    if tensor.shape[0] % num_anchors:
        return tensor  # another layout: the shape check names it
    blocks = tensor.reshape(num_anchors, -1, *tensor.shape[1:])
    return torch.cat([blocks[:, -1:], blocks[:, :-1]], 1).reshape(tensor.shape)


def _conv_module(rest: str, conv: str, bn: str) -> str:
    """mmcv ConvModule's ``conv.*`` / ``bn.*`` -> the module names of a Sequential. Anything else (another model's
    key that matched a pattern: a ResNet's ``backbone.conv1.weight``) is left as it is, for the key check to name."""
    kind, dot, tail = rest.partition(".")
    if not dot or kind not in ("conv", "bn"):
        return rest
    return f"{conv if kind == 'conv' else bn}.{tail}"


def _mobilenet_v2_key(key: str, last: int) -> str:
    m = re.match(r"backbone\.conv([12])\.(.*)", key)
    if m:
        return f"backbone.body.features.{0 if m[1] == '1' else last}.{_conv_module(m[2], '0', '1')}"
    m = re.match(r"backbone\.layer(\d)\.(\d+)\.(expand_conv|depthwise_conv|linear_conv)\.(.*)", key)
    if not m:
        return key
    layer, block, part, rest = int(m[1]), int(m[2]), m[3], m[4]
    index = 1 + sum(MOBILENET_V2_BLOCKS[:layer - 1]) + block
    expands = layer != 1  # layer1's expand ratio is 1: no expand conv (torchvision: no conv.0 for it)
    names = {"expand_conv": ("conv.0.0", "conv.0.1"),
             "depthwise_conv": ("conv.1.0", "conv.1.1") if expands else ("conv.0.0", "conv.0.1"),
             "linear_conv": ("conv.2", "conv.3") if expands else ("conv.1", "conv.2")}[part]
    return f"backbone.body.features.{index}.{_conv_module(rest, *names)}"


def _ssdlite_key(key: str, last: int) -> str:
    m = re.match(r"neck\.extra_layers\.(\d+)\.(0|1\.depthwise_conv|1\.pointwise_conv)\.(.*)", key)
    if m:  # nasdet's extra: conv, bn, act (1x1), conv, bn, act (3x3 dw), conv, bn, act (1x1)
        first = {"0": 0, "1.depthwise_conv": 3, "1.pointwise_conv": 6}[m[2]]
        return f"backbone.extras.{m[1]}.{_conv_module(m[3], str(first), str(first + 1))}"
    m = re.match(r"bbox_head\.(cls|reg)_convs\.(\d+)\.(0|1)\.(.*)", key)
    if m:
        head = "classification_head" if m[1] == "cls" else "regression_head"
        rest = _conv_module(m[4], "0.0", "0.1") if m[3] == "0" else f"1.{m[4]}"
        return f"head.{head}.module_list.{m[2]}.{rest}"
    return _mobilenet_v2_key(key, last)


def _enot_ssd_key(key: str, last: int) -> str:
    m = re.match(r"neck\.extra_layers\.(\d+)\.([01])\.(.*)", key)
    if m:  # nasdet's extra: conv, bn, act (1x1), conv, bn, act (3x3 stride 2)
        first = 0 if m[2] == "0" else 3
        return f"backbone.extras.{m[1]}.{_conv_module(m[3], str(first), str(first + 1))}"
    return _ssdlite_key(key, last)


def _yolov3_key(key: str, last: int) -> str:
    m = re.match(r"neck\.detect(\d)\.conv(\d)\.(.*)", key)
    if m:
        return f"backbone.detect.{int(m[1]) - 1}.{int(m[2]) - 1}.{_conv_module(m[3], '0', '1')}"
    for pattern, target, first in ((r"neck\.conv(\d)\.(.*)", "backbone.lateral", 1),
                                   (r"bbox_head\.convs_bridge\.(\d+)\.(.*)", "head.bridges", 0)):
        m = re.match(pattern, key)
        if m:  # conv_bn_leaky Sequentials: conv, bn, act
            return f"{target}.{int(m[1]) - first}.{_conv_module(m[2], '0', '1')}"
    m = re.match(r"bbox_head\.convs_pred\.(\d+)\.(.*)", key)
    if m:
        return f"head.preds.{m[1]}.{m[2]}"
    return _mobilenet_v2_key(key, last)


def _retinanet_key(key: str) -> str:
    m = re.match(r"backbone\.(conv1|bn1)\.(.*)", key)
    if m:
        return f"backbone.body.stem.{'0' if m[1] == 'conv1' else '1'}.{m[2]}"
    if key.startswith("backbone.layer"):
        return "backbone.body." + key[len("backbone."):]
    m = re.match(r"neck\.(lateral|fpn)_convs\.(\d)\.conv\.(.*)", key)
    if m:
        i = int(m[2])
        if m[1] == "lateral":
            return f"backbone.fpn.inner_blocks.{i}.0.{m[3]}"
        return f"backbone.fpn.layer_blocks.{i}.0.{m[3]}" if i < 3 else f"backbone.fpn.extra_blocks.p{i + 3}.{m[3]}"
    m = re.match(r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(.*)", key)
    if m:
        head = "classification_head" if m[1] == "cls" else "regression_head"
        return f"head.{head}.conv.{m[2]}.0.{m[3]}"
    m = re.match(r"bbox_head\.retina_(cls|reg)\.(.*)", key)
    if m:
        return (f"head.classification_head.cls_logits.{m[2]}" if m[1] == "cls" else
                f"head.regression_head.bbox_reg.{m[2]}")
    return key


def mmdet_layout(model: nn.Module) -> MMDetLayout | None:
    """The MMDetection model whose checkpoints map onto ``model``, or None when MMDetection has none like it."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.ssd import SSD

    from ..mmdet_layout import MMDetAnchorGenerator
    from ..backbones import ResNetBackbone
    from ..backbones.torchvision_backbones import SequentialStagesBackbone
    from ..families.retinanet import P6P7FromC5
    from ..families.ssd import SSDNeck
    from ..families.yolov3 import YOLOv3, YOLOv3Neck

    body = getattr(model.backbone, "body", None)
    mobilenet = isinstance(body, SequentialStagesBackbone) and len(body.features) == 19  # MobileNetV2's
    last = 18
    if isinstance(model, SSD) and isinstance(model.backbone, SSDNeck) and mobilenet and model.backbone.c5 == "c5_pre":
        return MMDetLayout("ssd_mnv2 (mmdetection-enot)", lambda k: _enot_ssd_key(k, last), class_lead=1,
                           has_background=True, bn_eps=None)
    if isinstance(model, SSD) and isinstance(model.backbone, SSDNeck) and mobilenet:
        mmdet_anchors = isinstance(model.anchor_generator, MMDetAnchorGenerator)
        return MMDetLayout("ssdlite_mobilenetv2", lambda k: _ssdlite_key(k, last), class_lead=1, has_background=True,
                           bn_eps=1e-3, needs="" if mmdet_anchors else "model.layout: mmdetection (its anchors)")
    if isinstance(model, YOLOv3) and isinstance(model.backbone, YOLOv3Neck) and mobilenet:
        leaky = not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in body.modules())
        return MMDetLayout("yolov3_mobilenetv2", lambda k: _yolov3_key(k, last), class_lead=5,
                           needs="" if leaky else "model.layout: mmdetection (its LeakyReLU backbone)")
    if isinstance(model, RetinaNet) and isinstance(body, ResNetBackbone):
        ok = (isinstance(model.backbone.fpn.extra_blocks, P6P7FromC5)
              and isinstance(model.anchor_generator, MMDetAnchorGenerator))
        needs = "model.variant: mmdetection (P6 from C5, no ReLU before P7, its anchors)"
        return MMDetLayout("retinanet_r50_fpn", _retinanet_key, class_lead=1, add_background=True,
                           needs="" if ok else needs)
    return None


def checkpoint_classes(checkpoint: dict) -> list[str] | None:
    """The class names an MMDetection checkpoint was trained on (3.x ``meta.dataset_meta.classes``, 2.x
    ``meta.CLASSES``), or None."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        return None
    classes = (meta.get("dataset_meta") or {}).get("classes") if isinstance(meta.get("dataset_meta"), dict) else None
    classes = classes if classes is not None else meta.get("CLASSES")
    if isinstance(classes, str):
        classes = [classes]
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else None
