"""``FocalSSD``: torchvision's SSD / SSDLite trained and scored as aw_nas's SSD supernets.

aw_nas (examples/detection/ssd_supernet_training.yaml, the OFA-MobileNetV3 SSD) classifies default boxes
with a sigmoid focal loss (alpha 0.25, gamma 2) over the object classes, the background column zeroed,
normalised by the positives; its matcher takes IoU >= 0.5 as positive and < 0.4 as negative. torchvision's
SSD instead uses a softmax cross-entropy with 3:1 hard negative mining. Everything else (default boxes,
box coder, smooth-L1 box loss, heads, export) is torchvision's SSD unchanged; the head keeps its
background column (so checkpoints and ONNX graphs have the same shapes), which is never trained nor
scored here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
PRIOR_PROB = 0.01  # initial foreground probability of every class logit (RetinaNet's prior)


def class_logit_convs(head: nn.Module) -> list[nn.Conv2d]:
    """The conv that emits the class logits on each map (SSDHead: the conv itself; SSDLiteHead: the last
    conv of its depthwise-separable block)."""
    return [[m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
            for block in head.classification_head.module_list]


class FocalSSD(SSD):
    """SSD with aw_nas's focal classification loss and sigmoid scores (see the module docstring)."""

    def __init__(self, *args, focal_alpha: float = FOCAL_ALPHA, focal_gamma: float = FOCAL_GAMMA, **kwargs):
        super().__init__(*args, **kwargs)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        # Between-threshold anchors (-2) are ignored; every object keeps its best anchors (as SSD's matcher).
        self.proposal_matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
        # Without the prior, every one of the thousands of anchors starts at p = 0.5 and the summed
        # focal loss of the negatives swamps the first steps (RetinaNet, Lin et al. 2017, sec. 4.1).
        bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        for conv in class_logit_convs(self.head):
            nn.init.constant_(conv.bias, bias)

    def compute_loss(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                     anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        box_losses, cls_losses, num_pos = [], [], 0
        for tgt, reg, logits, anc, matched in zip(targets, head_outputs["bbox_regression"],
                                                  head_outputs["cls_logits"], anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            gt = matched[fg]
            num_pos += fg.numel()
            target_reg = self.box_coder.encode_single(tgt["boxes"][gt], anc[fg])
            box_losses.append(F.smooth_l1_loss(reg[fg], target_reg, reduction="sum"))
            onehot = torch.zeros_like(logits)
            onehot[fg, tgt["labels"][gt]] = 1.0
            valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
            cls_losses.append(sigmoid_focal_loss(logits[valid, 1:], onehot[valid, 1:], alpha=self.focal_alpha,
                                                 gamma=self.focal_gamma, reduction="sum"))
        n = max(1, num_pos)
        return {"bbox_regression": torch.stack(box_losses).sum() / n,
                "classification": torch.stack(cls_losses).sum() / n}

    def postprocess_detections(self, head_outputs: dict[str, Tensor], image_anchors: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        scores_all = torch.sigmoid(head_outputs["cls_logits"][..., 1:])  # per class, background never scored
        detections = []
        for reg, scores, anchors, shape in zip(head_outputs["bbox_regression"], scores_all, image_anchors, image_shapes):
            boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(reg, anchors), shape)
            num_classes = scores.shape[1]
            flat = scores.flatten()
            keep = torch.where(flat > self.score_thresh)[0]
            kept_scores = flat[keep]
            # the same candidate count per image as SSD's per-class top-k, over all classes at once
            top, order = kept_scores.topk(det_utils._topk_min(kept_scores, self.topk_candidates * num_classes, 0))
            idx = keep[order]
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            labels = idx % num_classes + 1
            box = boxes[anchor_idx]
            kept = box_ops.batched_nms(box, top, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": box[kept], "scores": top[kept], "labels": labels[kept]})
        return detections
