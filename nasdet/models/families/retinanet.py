"""RetinaNet (torchvision's) on FPN P3-P7, with FAD's searched towers as an option."""
from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..mmdet_layout import mmdet_retinanet_anchors, with_mmdet_test_path
from ..config import FPNModelConfig
from ..heads.fad import FADRetinaNetHead, fad_towers
from ..necks import FPNNeck
from .base import OneStageFamily, head_and_anchors, match_anchors, resize_transform


class RetinaNetModelConfig(FPNModelConfig):
    detector: Literal["retinanet"]
    # torchvision's builders: v1 = retinanet_resnet50_fpn; v2 = retinanet_resnet50_fpn_v2: P6 from C5 (not P5),
    # GroupNorm(32) in the head's towers, GIoU box loss; mmdetection = MMDetection's retinanet_r50_fpn: P6
    # from C5 and P7 from P6 without a ReLU between (its FPN, add_extra_convs 'on_input'), v1's head, its
    # float anchors (models/anchors.py)
    variant: Literal["v1", "v2", "mmdetection"] = "v1"


class P6P7FromC5(LastLevelP6P7):
    """MMDetection's FPN extra convs for RetinaNet: P6 = conv(C5), P7 = conv(P6) (relu_before_extra_convs False)."""

    def forward(self, p, c, names):
        p6 = self.p6(c[-1])
        p7 = self.p7(p6)
        return p + [p6, p7], names + ["p6", "p7"]


class RetinaNetFamily(OneStageFamily):
    names = ("retinanet",)
    config = RetinaNetModelConfig
    model_types = (RetinaNet,)
    fad_heads = True
    class_layers = (r"head\.classification_head\.cls_logits\.(weight|bias)",)

    def build(self, cfg: RetinaNetModelConfig, num_classes: int, body: nn.Module, fad_search: bool) -> nn.Module:
        n, c = num_classes, cfg.fpn_channels
        v2, mmdet = cfg.variant == "v2", cfg.variant == "mmdetection"
        c5 = body.out_channels["c5"]
        extra = P6P7FromC5(c5, c) if mmdet else LastLevelP6P7(c5 if v2 else c, c)
        neck = FPNNeck(body, ("c3", "c4", "c5"), c, extra)  # P3-P7
        anchor_sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
        anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
        a = anchors.num_anchors_per_location()[0]
        if fad_search or cfg.head.genotype is not None:
            head = FADRetinaNetHead(fad_towers(c, cfg.head, search=fad_search), c, a, n)
        else:
            head = RetinaNetHead(c, a, n, norm_layer=partial(nn.GroupNorm, 32) if v2 else None)
            if v2:
                head.regression_head._loss_type = "giou"  # as torchvision's builder sets it
        detector = with_mmdet_test_path(RetinaNet) if mmdet else RetinaNet
        model = detector(neck, n, anchor_generator=anchors, head=head, topk_candidates=cfg.topk_candidates,
                         score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                         detections_per_img=cfg.detections_per_img)
        if mmdet:  # torchvision's RetinaNet accepts only its own AnchorGenerator in __init__
            model.anchor_generator = mmdet_retinanet_anchors()
        model.transform = resize_transform(cfg.input_size, size_divisible=32)
        return model

    def raw_output_names(self, model: nn.Module) -> list[str]:
        return ["cls_logits", "bbox_regression"]

    def raw_decoding(self, model: nn.Module, x: torch.Tensor) -> dict:
        columns = self.raw_layout(model, x)[0]["cls_logits"][-1]
        # torchvision's RetinaNet scores every column, the background's too (never a positive in training)
        scores = {"output": "cls_logits", "activation": "sigmoid", "columns": [0, columns - 1],
                  "label": "the column index (column 0 is the background: scored like the others, so a label 0 "
                           "detection is possible, as in the end-to-end file)"}
        candidates = {"score_above": float(model.score_thresh), "top_k": int(model.topk_candidates),
                      "top_k_per": "level", "over": "each level's (anchor, column) pairs (anchors.levels gives "
                                                   "each level's rows, in order)"}
        return self.decode_block(model, x, scores, candidates)

    def losses_with_logits(self, model, images, targets):
        _, head_outputs, anchors = head_and_anchors(model, images)
        matched = match_anchors(model, targets, anchors)
        losses = model.compute_loss(targets, head_outputs, anchors)
        return losses, head_outputs["cls_logits"], torch.stack([mi >= 0 for mi in matched])


FAMILY = RetinaNetFamily()
