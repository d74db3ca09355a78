"""YOLOv3 as MMDetection's ``yolov3_mobilenetv2`` recipe builds it, on any nasdet backbone.

Read from open-mmlab/mmdetection: configs/yolo/yolov3_mobilenetv2_8xb24-{320,ms-416}-300e_coco.py,
mmdet/models/necks/yolo_neck.py, mmdet/models/dense_heads/yolo_head.py, the GridAssigner and the
YOLO box coder / anchor generator. Own code, same arithmetic:

- inputs: the stride-8 / 16 / 32 maps; on MobileNetV2 the stage outputs of 32 / 96 / 320 channels
  (``c3``, ``c4`` and ``c5_pre``, the last stage before the final 1x1 expand, which MobileNet backbones
  give on ``forward(x, pre_expand=True)``, its width in ``pre_expand_channels``; other backbones: ``c5``). As MMDetection's MobileNetV2 (out_indices 2, 4, 6), the 1280-channel
  expand is still computed and counted (it is part of the backbone), its output is not used;
- neck (``YOLOV3Neck``): per scale from stride 32 down, a detection block of five conv-BN-LeakyReLU(0.1)
  (1x1 n, 3x3 2n, 1x1 n, 3x3 2n, 1x1 n); between scales a 1x1 conv, nearest x2 upsample and concat with
  the finer map; n = 96 for every scale (MMDetection's light version; the paper: 512/256/128);
- head: per scale a 3x3 conv-BN-LeakyReLU (96) and a 1x1 conv to 3 anchors x (5 + K): x, y, w, h,
  objectness, K class logits; anchors (w, h in pixels of the input) are MMDetection's: its 320 px set
  ``(220,125),(128,222),(264,266) / (35,87),(102,96),(60,170) / (10,15),(24,36),(72,42)`` or its 416 px
  set (the paper's COCO anchors); anchors sit at cell centres;
- targets (GridAssigner, pos IoU 0.5, neg IoU 0.5, min pos IoU 0): only the anchors of the cell holding a
  box's centre (on every scale) may be positive, those with IoU > 0.5, plus each box's best such anchor;
  anchors with IoU <= 0.5 to every box are negatives, the rest are ignored. Box coder: x, y = offset in
  the cell (sigmoid, BCE target in (0, 1)), w, h = log(box / anchor) (MSE);
- loss: BCE for classes (positives), objectness (positives and negatives) and x, y (positives), MSE for w, h
  (positives); weights 1, 1, 2, 2, summed over anchors and images (MMDetection's reduction='sum');
- init: prediction convs N(0, 0.01); objectness bias for a prior of 8 objects per 608-px map, class bias
  for p = 0.01 (MMDetection's init_weights, after ultralytics);
- test: objectness >= ``conf_thresh`` (0.005), top ``topk_candidates`` (1000) by objectness per scale,
  classes with sigmoid > ``score_thresh`` (0.05) kept, score = class x objectness (MMDetection multiplies
  after the threshold), class-wise NMS at 0.45, 100 per image;
- ``multiscale_sizes``: each training batch is resized to one of these (MMDetection's RandomResize over
  320 and 416), evaluation at ``input_size``.

Where this differs from the paper, it follows MMDetection (96-channel neck and head, the assigner's
centre-cell rule with IoU instead of the paper's best-anchor-shape match, sum reduction). Where it differs
from MMDetection: the backbone keeps its own activations (ReLU6 in MobileNetV2; MMDetection's config
switches its backbone to LeakyReLU(0.1): ``layout: mmdetection`` does too, for its checkpoints, see
``models/imports``), so the searchable spaces and torchvision weights apply unchanged;
images are resized to a square without keeping the aspect ratio (nasdet's model-side resize), not
letterboxed; boxes are not filtered by size.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou

from ...space.supernet import Supernet, mark_space_unit
from ..config import BaseModelConfig
from .base import (POSTPROCESSING_ATTRS, DetectorFamily, anchor_description, lower_cuts, nms_description, resize_transform,
                   to_image)

STRIDES = (32, 16, 8)  # MMDetection's order: coarse to fine
# w, h in input pixels per scale (strides 32, 16, 8), from MMDetection's yolov3_mobilenetv2 configs
MMDET_ANCHORS = {
    "mmdet_320": (((220, 125), (128, 222), (264, 266)), ((35, 87), (102, 96), (60, 170)), ((10, 15), (24, 36), (72, 42))),
    "mmdet_416": (((116, 90), (156, 198), (373, 326)), ((30, 61), (62, 45), (59, 119)), ((10, 13), (16, 30), (33, 23))),
}
POS_IOU, NEG_IOU = 0.5, 0.5  # GridAssigner of the recipe (min_pos_iou 0)
LOSS_WEIGHTS = {"loss_cls": 1.0, "loss_conf": 1.0, "loss_xy": 2.0, "loss_wh": 2.0}
LEAKY_SLOPE = 0.1
CODER_EPS = 1e-6


class YOLOv3ModelConfig(BaseModelConfig):
    detector: Literal["yolov3"]
    score_thresh: float = Field(0.05, ge=0, le=1)  # class probability, before x objectness
    nms_thresh: float = Field(0.45, gt=0, le=1)
    conf_thresh: float = Field(0.005, ge=0, le=1)  # objectness
    topk_candidates: int = Field(1000, gt=0)  # per scale, by objectness (MMDetection's nms_pre)
    neck_channels: list[int] = [96, 96, 96]  # per scale, strides 32, 16, 8 (the paper: 512, 256, 128)
    head_channels: list[int] = [96, 96, 96]  # the 3x3 conv before each prediction conv (the paper: 1024, 512, 256)
    # "mmdet_320" / "mmdet_416" (MMDetection's sets) or 3 scales x anchors as [w, h] pixels at the input size
    anchors: Union[Literal["mmdet_320", "mmdet_416"], list[list[tuple[float, float]]]] = "mmdet_320"
    multiscale_sizes: Optional[list[int]] = None  # training batches resized to one of these (e.g. [320, 416])
    # "mmdetection": the backbone's ReLU/ReLU6 become LeakyReLU(0.1), as yolov3_mobilenetv2's act_cfg
    layout: Literal["nasdet", "mmdetection"] = "nasdet"

    @field_validator("neck_channels", "head_channels")
    @classmethod
    def _three(cls, v):
        if len(v) != 3 or any(c <= 0 for c in v):
            raise ValueError(f"must be 3 positive channel counts (strides 32, 16, 8), got {v}")
        return v

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v):
        if isinstance(v, list) and (len(v) != 3 or len({len(level) for level in v}) != 1 or not v[0]
                                    or any(w <= 0 or h <= 0 for level in v for w, h in level)):
            raise ValueError(f"anchors must list 3 scales (strides 32, 16, 8) with the same number of positive "
                             f"[w, h] pairs each, got {v}")
        return v

    @model_validator(mode="after")
    def _sizes(self):
        sizes = [self.input_size, *(self.multiscale_sizes or [])]
        if any(s % 32 for s in sizes):
            raise ValueError(f"YOLOv3 sizes must be multiples of 32 (stride 32 map, x2 upsampling), got {sizes}")
        return self


def anchor_sizes(cfg: YOLOv3ModelConfig) -> list[list[tuple[float, float]]]:
    chosen = MMDET_ANCHORS[cfg.anchors] if isinstance(cfg.anchors, str) else cfg.anchors
    return [[(float(w), float(h)) for w, h in level] for level in chosen]


# --------------------------------------------------------------------------------------------- modules
def conv_bn_leaky(cin: int, cout: int, k: int) -> nn.Sequential:
    """MMDetection's ConvModule with BN and LeakyReLU(0.1): conv without bias, BN, activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


def detection_block(cin: int, n: int) -> nn.Sequential:
    """1x1 n, 3x3 2n, 1x1 n, 3x3 2n, 1x1 n."""
    return nn.Sequential(conv_bn_leaky(cin, n, 1), conv_bn_leaky(n, 2 * n, 3), conv_bn_leaky(2 * n, n, 1),
                         conv_bn_leaky(n, 2 * n, 3), conv_bn_leaky(2 * n, n, 1))


class YOLOv3Neck(nn.Module):
    """Backbone -> OrderedDict of the three neck outputs at strides 32, 16, 8 (``body`` inside, as every
    nasdet neck, so a supernet backbone is ``model.backbone.body``)."""

    def __init__(self, body: nn.Module, channels: list[int]):
        super().__init__()
        self.body = body
        # MobileNets: the last stage's output, before the final 1x1 expand (MMDetection's out_indices 6)
        pre = getattr(body, "pre_expand_channels", None)
        self.levels = ("c5_pre" if pre else "c5", "c4", "c3")  # strides 32, 16, 8
        cin = [pre or body.out_channels["c5"], body.out_channels["c4"], body.out_channels["c3"]]
        self.detect = nn.ModuleList([detection_block(cin[0], channels[0])])
        self.lateral = nn.ModuleList()
        for i in (1, 2):
            self.lateral.append(conv_bn_leaky(channels[i - 1], channels[i], 1))
            self.detect.append(detection_block(cin[i] + channels[i], channels[i]))
        self.out_channels_list = list(channels)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x, pre_expand=True) if self.levels[0] == "c5_pre" else self.body(x)
        out = self.detect[0](feats[self.levels[0]])
        outs = OrderedDict(s32=out)
        for i, name in ((1, "s16"), (2, "s8")):
            up = F.interpolate(self.lateral[i - 1](out), scale_factor=2.0, mode="nearest")
            out = self.detect[i](torch.cat([up, feats[self.levels[i]]], 1))
            outs[name] = out
        return outs


class YOLOv3Head(nn.Module):
    """Per scale: 3x3 conv-BN-LeakyReLU, then 1x1 conv to A x (5 + K) maps (x, y, w, h, obj, classes)."""

    def __init__(self, in_channels: list[int], channels: list[int], num_anchors: int, num_classes: int):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.bridges = nn.ModuleList(conv_bn_leaky(c, m, 3) for c, m in zip(in_channels, channels))
        self.preds = nn.ModuleList(nn.Conv2d(m, num_anchors * (5 + num_classes), 1) for m in channels)
        for pred, stride in zip(self.preds, STRIDES):
            nn.init.normal_(pred.weight, std=0.01)
            bias = pred.bias.data.view(num_anchors, 5 + num_classes)
            bias.zero_()
            bias[:, 4] = _logit(8 / (608 / stride) ** 2)
            bias[:, 5:] = _logit(0.01)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """-> per scale (N, A * (5 + K), H, W)."""
        return [pred(bridge(f)) for f, bridge, pred in zip(feats, self.bridges, self.preds)]


def leaky_activations(module: nn.Module) -> None:
    """Every ReLU / ReLU6 inside ``module`` -> LeakyReLU(0.1) (MMDetection's yolov3_mobilenetv2 backbone)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.ReLU6)):
            setattr(module, name, nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        else:
            leaky_activations(child)


def _logit(p: float) -> float:
    return -math.log((1 - p) / p)


def flatten_predictions(maps: list[Tensor], num_attrib: int) -> Tensor:
    """Per-scale (N, A * attrib, H, W) maps -> (N, sum H*W*A, attrib), anchors ordered (scale, y, x, a)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, num_attrib) for m in maps], 1)


def grid_anchors(sizes: list[tuple[int, int]], base: list[list[tuple[float, float]]], device) -> tuple[Tensor, Tensor]:
    """Anchors (xyxy, at cell centres) and their strides for maps of ``sizes`` (h, w), ordered (scale, y, x, a)."""
    boxes, strides = [], []
    for (h, w), wh, stride in zip(sizes, base, STRIDES):
        wh = torch.tensor(wh, dtype=torch.float32, device=device)  # (A, 2)
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], -1).reshape(-1, 1, 2)  # (H*W, 1, 2)
        half = wh[None] / 2
        boxes.append(torch.cat([centers - half, centers + half], -1).reshape(-1, 4))
        strides.append(torch.full((h * w * wh.shape[0],), float(stride), device=device))
    return torch.cat(boxes), torch.cat(strides)


def decode(anchors: Tensor, strides: Tensor, pred: Tensor) -> Tensor:
    """YOLO box coder: sigmoid(x, y) offsets in the cell around the anchor centre, exp(w, h) x anchor size."""
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2 + (torch.sigmoid(pred[..., :2]) - 0.5) * strides[:, None]
    half = (anchors[:, 2:] - anchors[:, :2]) / 2 * pred[..., 2:4].exp()
    return torch.cat([centre - half, centre + half], -1)


def encode(anchors: Tensor, strides: Tensor, gt: Tensor) -> Tensor:
    """Inverse of ``decode`` for the matched pairs: x, y targets in (0, 1) (BCE), w, h log ratios (MSE)."""
    gt_c, gt_wh = (gt[:, :2] + gt[:, 2:]) / 2, (gt[:, 2:] - gt[:, :2])
    a_c, a_wh = (anchors[:, :2] + anchors[:, 2:]) / 2, (anchors[:, 2:] - anchors[:, :2])
    xy = ((gt_c - a_c) / strides[:, None] + 0.5).clamp(CODER_EPS, 1 - CODER_EPS)
    wh = torch.log((gt_wh / a_wh).clamp(min=CODER_EPS))
    return torch.cat([xy, wh], -1)


def responsible(gt: Tensor, sizes: list[tuple[int, int]], num_anchors: int) -> Tensor:
    """(total anchors,) bool: the anchors of a cell holding some box's centre, on every scale (one mask for
    all boxes of the image, as MMDetection's ``responsible_flags``)."""
    flags = []
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    for (h, w), stride in zip(sizes, STRIDES):
        cell = torch.zeros(h * w, dtype=torch.bool, device=gt.device)
        x = (centre[:, 0] / stride).floor().long().clamp(0, w - 1)
        y = (centre[:, 1] / stride).floor().long().clamp(0, h - 1)
        cell[y * w + x] = True
        flags.append(cell.repeat_interleave(num_anchors))
    return torch.cat(flags)


def grid_assign(anchors: Tensor, gt: Tensor, flags: Tensor) -> Tensor:
    """MMDetection's GridAssigner: per anchor -1 ignored, 0 negative, i + 1 = box i (see module docstring)."""
    assigned = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt.shape[0] == 0:
        return assigned.zero_()
    iou = box_iou(gt, anchors)  # (G, A)
    best, _ = iou.max(0)
    assigned[(best >= 0) & (best <= NEG_IOU)] = 0
    iou = iou.masked_fill(~flags[None], -1.0)  # only responsible anchors may become positive
    best, best_gt = iou.max(0)
    pos = (best > POS_IOU) & flags
    assigned[pos] = best_gt[pos] + 1
    gt_best, _ = iou.max(1)
    for i in range(gt.shape[0]):  # each box's best responsible anchors (min_pos_iou 0; all ties, as MMDetection)
        if gt_best[i] > 0:
            assigned[(iou[i] == gt_best[i]) & flags] = i + 1
    return assigned


class YOLOv3(nn.Module):
    """YOLOv3 with torchvision's detector contract: ``transform`` (normalise + square resize), ``backbone``
    (neck with the body inside), ``head``; train mode returns the loss dict, eval mode detections."""

    def __init__(self, neck: YOLOv3Neck, num_classes: int, cfg: YOLOv3ModelConfig):
        super().__init__()
        self.backbone = neck
        self.anchor_sizes = anchor_sizes(cfg)
        self.num_anchors = len(self.anchor_sizes[0])
        self.num_classes = num_classes - 1  # class logits for 1..K (no background column)
        self.head = YOLOv3Head(neck.out_channels_list, cfg.head_channels, self.num_anchors, self.num_classes)
        self.transform = resize_transform(cfg.input_size, size_divisible=32)
        self.score_thresh, self.nms_thresh, self.conf_thresh = cfg.score_thresh, cfg.nms_thresh, cfg.conf_thresh
        self.topk_candidates, self.detections_per_img = cfg.topk_candidates, cfg.detections_per_img
        self.multiscale_sizes = list(cfg.multiscale_sizes or [])

    @property
    def num_attrib(self) -> int:
        return 5 + self.num_classes

    def anchors_for(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        return grid_anchors([tuple(m.shape[-2:]) for m in maps], self.anchor_sizes, maps[0].device)

    # ------------------------------------------------------------------------------------------ train
    def assign(self, maps: list[Tensor], targets: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
        """-> target maps (N, anchors, 5 + K), positive mask and negative mask (N, anchors)."""
        anchors, strides = self.anchors_for(maps)
        sizes = [tuple(m.shape[-2:]) for m in maps]
        out, pos_all, neg_all = [], [], []
        for t in targets:
            gt = t["boxes"]
            assigned = grid_assign(anchors, gt, responsible(gt, sizes, self.num_anchors))
            target = anchors.new_zeros(anchors.shape[0], self.num_attrib)
            pos = assigned > 0
            idx = assigned[pos] - 1
            target[pos, :4] = encode(anchors[pos], strides[pos], gt[idx])
            target[pos, 4] = 1.0
            target[torch.where(pos)[0], 4 + t["labels"][idx]] = 1.0  # labels 1..K -> class columns 5..4+K
            out.append(target)
            pos_all.append(pos)
            neg_all.append(assigned == 0)
        return torch.stack(out), torch.stack(pos_all), torch.stack(neg_all)

    def compute_loss(self, maps: list[Tensor], targets: list[dict]) -> tuple[dict[str, Tensor], Tensor]:
        """MMDetection's loss (module docstring); also returns the positive mask (N, anchors)."""
        pred = flatten_predictions(maps, self.num_attrib)
        target, pos, neg = self.assign([m.detach() for m in maps], targets)
        p = pos.unsqueeze(-1).to(pred.dtype)
        bce = F.binary_cross_entropy_with_logits
        losses = {
            "loss_cls": (bce(pred[..., 5:], target[..., 5:], reduction="none") * p).sum(),
            "loss_conf": (bce(pred[..., 4], target[..., 4], reduction="none") * (pos | neg)).sum(),
            "loss_xy": (bce(pred[..., :2], target[..., :2], reduction="none") * p).sum(),
            "loss_wh": (F.mse_loss(pred[..., 2:4], target[..., 2:4], reduction="none") * p).sum(),
        }
        return {k: v * LOSS_WEIGHTS[k] for k, v in losses.items()}, pos

    # ------------------------------------------------------------------------------------------- eval
    def postprocess(self, maps: list[Tensor], index: int = 0) -> dict[str, Tensor]:
        """Detections of image ``index`` of the batch, in the coordinates of the resized input."""
        anchors, strides = self.anchors_for(maps)
        sizes = [m.shape[-2] * m.shape[-1] * self.num_anchors for m in maps]
        pred = flatten_predictions([m[index:index + 1] for m in maps], self.num_attrib)[0]
        boxes_all, cls_all, conf_all = [], [], []
        for p, a, s in zip(pred.split(sizes), anchors.split(sizes), strides.split(sizes)):
            conf = torch.sigmoid(p[:, 4])
            keep = torch.where(conf >= self.conf_thresh)[0]
            p, a, s, conf = p[keep], a[keep], s[keep], conf[keep]
            k = det_utils._topk_min(conf, self.topk_candidates, 0)
            conf, top = conf.topk(k)
            p, a, s = p[top], a[top], s[top]
            boxes_all.append(decode(a, s, p[:, :4]))
            cls_all.append(torch.sigmoid(p[:, 5:]))
            conf_all.append(conf)
        boxes, cls, conf = torch.cat(boxes_all), torch.cat(cls_all), torch.cat(conf_all)
        anchor_idx, label = torch.where(cls > self.score_thresh)  # threshold before x objectness (MMDetection)
        scores = cls[anchor_idx, label] * conf[anchor_idx]
        boxes = boxes[anchor_idx]
        keep = batched_nms(boxes, scores, label, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": label[keep] + 1}

    def forward(self, images: list[Tensor], targets: Optional[list[dict]] = None):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        if self.training and self.multiscale_sizes:
            size = self.multiscale_sizes[int(torch.randint(len(self.multiscale_sizes), ()))]
            saved = (self.transform.min_size, self.transform.max_size, self.transform.fixed_size)
            self.transform.min_size, self.transform.max_size, self.transform.fixed_size = (size,), size, (size, size)
            try:
                images_t, targets_t = self.transform(images, targets)
            finally:
                self.transform.min_size, self.transform.max_size, self.transform.fixed_size = saved
        else:
            images_t, targets_t = self.transform(images, targets)
        maps = self.head(list(self.backbone(images_t.tensors).values()))
        if self.training:
            if targets is None:
                raise ValueError("YOLOv3 in training mode needs targets")
            return self.compute_loss(maps, targets_t)[0]
        detections = [self.postprocess(maps, i) for i in range(len(images))]
        return self.transform.postprocess(detections, images_t.image_sizes, original_sizes)


# ---------------------------------------------------------------------------------------------- family
class YOLOv3Family(DetectorFamily):
    names = ("yolov3",)
    config = YOLOv3ModelConfig
    model_types = (YOLOv3,)
    class_layers = (r"head\.preds\.\d+\.(weight|bias)",)  # A x (5 + K) outputs
    class_lead, class_background = 5, False  # x, y, w, h, objectness, then classes 1..K
    dense_has_every_bn = True  # backbone, neck and head; decoding and NMS have none

    def build(self, cfg: YOLOv3ModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        if cfg.layout == "mmdetection":
            leaky_activations(body)
            if isinstance(body, Supernet):  # a ReLU6 supernet's weights are not a LeakyReLU one's
                mark_space_unit(body, "model.layout mmdetection")
        return YOLOv3(YOLOv3Neck(body, cfg.neck_channels), num_classes, cfg)

    def dense_forward(self, model: YOLOv3, x: Tensor) -> list[Tensor]:
        return model.head(list(model.backbone(x).values()))

    def detect(self, model: YOLOv3, x: Tensor) -> dict[str, Tensor]:
        return model.postprocess(model.head(list(model.backbone(x).values())))

    def raw_output_names(self, model: YOLOv3) -> list[str]:
        return [f"pred_stride{s}" for s in STRIDES]

    def raw_anchors(self, model: YOLOv3, x: Tensor) -> Tensor:
        return model.anchors_for(model.head(list(model.backbone(x).values())))[0]

    def postprocessing(self, model: YOLOv3) -> dict:
        return {k: getattr(model, k) for k in (*POSTPROCESSING_ATTRS, "conf_thresh")}

    def set_postprocessing(self, model: YOLOv3, cfg: YOLOv3ModelConfig) -> None:
        for k in (*POSTPROCESSING_ATTRS, "conf_thresh"):
            setattr(model, k, getattr(cfg, k))

    def keep_every_candidate(self, model: YOLOv3, score_margin: float) -> None:
        super().keep_every_candidate(model, score_margin)
        lower_cuts(model, ("conf_thresh",), score_margin)

    def raw_decoding(self, model: YOLOv3, x: Tensor) -> dict:
        """``YOLOv3.postprocess`` in words and constants."""
        maps = model.head(list(model.backbone(x).values()))
        names, s, a, k = self.raw_output_names(model), x.shape[-1], model.num_anchors, model.num_classes
        levels = [m.shape[-2] * m.shape[-1] * a for m in maps]
        return {
            "input_size": s, "outputs": {n: list(m.shape) for n, m in zip(names, maps)},
            "rows": f"each output (1, {a} x {model.num_attrib}, H, W) -> transpose to (H, W, {a} x "
                    f"{model.num_attrib}) -> reshape (H * W * {a}, {model.num_attrib}): rows ordered (y, x, anchor); "
                    "the outputs' rows in order (strides) match the anchors' rows",
            "columns": f"0-3: x, y, w, h; 4: objectness; 5..{4 + k}: the K classes (no background)",
            "strides": [int(st) for st in STRIDES[:len(maps)]], "anchors_per_location": a,
            "anchors": anchor_description(sum(levels), levels, s),
            "scores": {"activation": "sigmoid", "objectness_column": 4, "objectness_at_least": float(model.conf_thresh),
                       "class_columns": [5, 4 + k], "class_prob_above": float(model.score_thresh),
                       "score": "sigmoid(class column) * sigmoid(objectness)",
                       "label": "the class column - 4 (1..K)"},
            "candidates": {"top_k": int(model.topk_candidates), "top_k_per": "level", "by": "objectness",
                           "over": "each level's rows with objectness >= objectness_at_least, before the class "
                                   "threshold (MMDetection's nms_pre)"},
            "boxes": {"coder": "yolo", "clip_to_input": False, "drop_empty_before_nms": False,
                      "formula": "anchor centre cx, cy and size w, h (anchors file), stride of its level: box centre "
                                 "(cx + (sigmoid(x) - 0.5) * stride, cy + (sigmoid(y) - 0.5) * stride), size "
                                 "(w * exp(w value), h * exp(h value)); box = centre -/+ size / 2; not clipped"},
            "nms": nms_description(model), "detections_per_img": int(model.detections_per_img),
            "to_image": to_image(s),
            "steps": ["per level: objectness = sigmoid(column 4); keep rows with objectness >= objectness_at_least; "
                      "the top_k by objectness", "their boxes (boxes)", "class probabilities sigmoid(columns 5..); "
                      "every (row, class) with probability > class_prob_above is a detection scored probability x "
                      "objectness", "NMS (nms) over all levels", "the first detections_per_img by score",
                      "to the image's pixels (to_image)"]}

    def losses_with_logits(self, model: YOLOv3, images, targets):
        maps = model.head(list(model.backbone(images.tensors).values()))
        losses, pos = model.compute_loss(maps, targets)
        logits = flatten_predictions(maps, model.num_attrib)[..., 5:]
        return losses, logits, pos


FAMILY = YOLOv3Family()
