"""``build_detector``: torchvision detectors composed around any nasdet backbone (OrderedDict c2..c5).

Conventions kept by every detector here:
- labels are 1..K with 0 = background, so every detector is built with ``num_classes = K + 1``
  (as torchvision's COCO models use 91); sigmoid heads (RetinaNet, FCOS) simply never see class 0;
- the model takes float images in [0, 1] of any size, normalises them and resizes them to
  ``input_size x input_size`` itself (``GeneralizedRCNNTransform`` with ``fixed_size``), and returns
  boxes in the input image's coordinates. The resize is therefore part of the model (and of its
  exported graph), and a candidate resolution is set with ``set_input_size`` without touching data.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError
from .backbones import build_backbone
from .heads.fad import build_fad_head
from .ssd_focal import FocalSSD

IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]
DETECTORS = ("ssd", "ssdlite", "retinanet", "fcos", "faster_rcnn")
# torchvision's detection MobileNets use BN momentum 0.01-0.03, tuned for 600-epoch schedules from
# pretrained weights; from scratch on short schedules the running statistics then lag the weights
# so far that eval-mode outputs are garbage while the training loss is fine. PyTorch's 0.1 keeps up.
BN_MOMENTUM = 0.1


# ---------------------------------------------------------------------------------------------- necks
class FPNNeck(nn.Module):
    """Backbone levels -> FPN maps with one channel count, as RetinaNet/FCOS/Faster R-CNN expect."""

    def __init__(self, body: nn.Module, levels: tuple[str, ...], out_channels: int, extra: nn.Module):
        super().__init__()
        self.body = body
        self.levels = levels
        self.fpn = FeaturePyramidNetwork([body.out_channels[lv] for lv in levels], out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[lv]) for i, lv in enumerate(self.levels)))


def _extra_block_lite(cin: int, cout: int, norm_layer) -> nn.Sequential:
    """SSDLite extra layer: 1x1 reduce, depthwise 3x3 stride 2, 1x1 expand (torchvision/MobileNetV2 paper)."""
    mid = max(cout // 2, 1)
    act = partial(nn.ReLU6, inplace=True)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(mid), act(),
        nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False), norm_layer(mid), act(),
        nn.Conv2d(mid, cout, 1, bias=False), norm_layer(cout), act(),
    )


def _extra_block_ssd(cin: int, cout: int, norm_layer) -> nn.Sequential:
    """SSD extra layer: 1x1 reduce then 3x3 stride 2 (SSD300 / aw_nas's extras, with BN)."""
    mid = max(cout // 2, 1)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, stride=2, padding=1, bias=False), norm_layer(cout), nn.ReLU(inplace=True),
    )


class SSDNeck(nn.Module):
    """Backbone levels (default C4, C5) and four extra stride-2 layers after C5: the maps of SSD's default boxes."""

    def __init__(self, body: nn.Module, extra_channels: list[int], lite: bool, levels: tuple[str, ...] = ("c4", "c5")):
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=BN_MOMENTUM)
        make = _extra_block_lite if lite else _extra_block_ssd
        chans = [body.out_channels["c5"], *extra_channels]
        self.extras = nn.ModuleList(make(chans[i], chans[i + 1], norm_layer) for i in range(len(extra_channels)))
        self.out_channels_list = [body.out_channels[lv] for lv in self.levels] + list(extra_channels)

    def forward(self, x):
        feats = self.body(x)
        out = OrderedDict((lv, feats[lv]) for lv in self.levels)
        y = feats["c5"]
        for i, block in enumerate(self.extras):
            y = block(y)
            out[f"e{i}"] = y
        return out


# ------------------------------------------------------------------------------------------ detectors
def _transform(input_size: int, size_divisible: int) -> GeneralizedRCNNTransform:
    s = int(input_size)
    return GeneralizedRCNNTransform(
        s, s, IMAGE_MEAN, IMAGE_STD, size_divisible=size_divisible, fixed_size=(s, s)
    )


def build_detector(model_cfg, num_classes: int | None = None, backbone: nn.Module | None = None,
                   fad_search: bool = False) -> nn.Module:
    """A torchvision detector for ``model_cfg`` (nasdet.config.ModelConfig).

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
    body = backbone if backbone is not None else build_backbone(model_cfg.backbone)
    n = k + 1  # + background
    s = model_cfg.input_size
    det = model_cfg.detector
    if (fad_search or model_cfg.head.genotype is not None) and det not in ("fcos", "retinanet"):
        raise ConfigError(f"model.head.genotype / a FAD search needs model.detector fcos or retinanet, not {det!r}")
    common = dict(score_thresh=model_cfg.score_thresh, nms_thresh=model_cfg.nms_thresh,
                  detections_per_img=model_cfg.detections_per_img)

    if det in ("ssd", "ssdlite"):
        lite = det == "ssdlite"
        neck = SSDNeck(body, model_cfg.extra_channels, lite=lite, levels=tuple(model_cfg.ssd_levels))
        maps = len(neck.out_channels_list)
        ssd300 = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]  # its last maps keep these; added first maps get [2]
        ratios = model_cfg.anchor_aspect_ratios or (
            [[2, 3]] * maps if lite else ([[2]] * max(0, maps - 6) + ssd300)[-maps:])
        lo, hi = model_cfg.anchor_ratio_range
        anchors = DefaultBoxGenerator(ratios, min_ratio=lo, max_ratio=hi)
        per_loc = anchors.num_anchors_per_location()
        if lite:
            head = SSDLiteHead(neck.out_channels_list, per_loc, n, partial(nn.BatchNorm2d, eps=0.001, momentum=BN_MOMENTUM))
        else:
            head = SSDHead(neck.out_channels_list, per_loc, n)
        ssd_cls = FocalSSD if model_cfg.ssd_loss == "focal" else SSD
        model = ssd_cls(neck, anchors, (s, s), n, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, head=head,
                        topk_candidates=model_cfg.topk_candidates, **common)
        model.transform = _transform(s, size_divisible=1)
    elif det in ("retinanet", "fcos"):
        fad = fad_search or model_cfg.head.genotype is not None
        c = model_cfg.fpn_channels
        neck = FPNNeck(body, ("c3", "c4", "c5"), c, LastLevelP6P7(c, c))  # P3-P7, P6 from P5
        if det == "retinanet":
            anchor_sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
            anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
            head = RetinaNetHead(c, anchors.num_anchors_per_location()[0], n) if not fad else \
                build_fad_head(det, c, n, model_cfg.head, anchors.num_anchors_per_location()[0], search=fad_search)
            model = RetinaNet(neck, n, anchor_generator=anchors, head=head,
                              topk_candidates=model_cfg.topk_candidates, **common)
        else:
            head = build_fad_head(det, c, n, model_cfg.head, search=fad_search) if fad else None
            model = FCOS(neck, n, head=head, topk_candidates=model_cfg.topk_candidates, **common)
        model.transform = _transform(s, size_divisible=32)
    elif det == "faster_rcnn":
        c = model_cfg.fpn_channels
        neck = FPNNeck(body, ("c2", "c3", "c4", "c5"), c, LastLevelMaxPool())  # P2-P6, as DetNAS
        model = FasterRCNN(
            neck, n, box_score_thresh=model_cfg.score_thresh, box_nms_thresh=model_cfg.nms_thresh,
            box_detections_per_img=model_cfg.detections_per_img,
            rpn_post_nms_top_n_test=model_cfg.rpn_post_nms_top_n_test,
        )
        model.transform = _transform(s, size_divisible=32)
    else:
        raise ConfigError(f"model.detector {det!r} is not one of {DETECTORS}")
    return model


def set_input_size(model: nn.Module, input_size: int) -> None:
    """Change the resolution the detector resizes to (resolution search, multi-resolution training)."""
    s = int(input_size)
    model.transform.min_size = (s,)
    model.transform.max_size = s
    model.transform.fixed_size = (s, s)
    if isinstance(model, SSD):
        model.size = (s, s)


def get_input_size(model: nn.Module) -> int:
    return int(model.transform.fixed_size[0])


def dense_forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The data-independent part of a detector on a normalised, resized batch ``x``: backbone,
    neck and heads, without anchor matching, decoding or NMS. Used for MACs and dense-part latency.

    Faster R-CNN's box head runs on ``rpn_post_nms_top_n_test`` pooled proposals (a fixed count,
    so its cost does not depend on the data).
    """
    feats = model.backbone(x)
    if isinstance(model, SSD):
        out = model.head(list(feats.values()))
        return [out["bbox_regression"], out["cls_logits"]]
    if isinstance(model, (RetinaNet, FCOS)):
        out = model.head(list(feats.values()))
        return list(out.values())
    if isinstance(model, FasterRCNN):
        objectness, deltas = model.rpn.head(list(feats.values()))
        n = model.rpn.post_nms_top_n()
        pool = model.roi_heads.box_roi_pool
        side = pool.output_size[0] if isinstance(pool.output_size, (tuple, list)) else pool.output_size
        pooled = x.new_zeros((n * x.shape[0], model.backbone.out_channels, side, side))
        scores, boxes = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        return [*objectness, *deltas, scores, boxes]
    raise TypeError(f"dense_forward does not know {type(model).__name__}")
