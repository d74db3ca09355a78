"""MMDetection's anchors and test-path filter for torchvision's detectors (``layout: mmdetection`` /
``variant: mmdetection``), so MMDetection's checkpoints keep their function (``models/imports``).

Read from open-mmlab/mmdetection mmdet/models/task_modules/prior_generators/anchor_generator.py:
per level a few base anchors around a cell's origin, shifted by ``(x, y) * stride`` for every cell and
ordered (y, x, anchor), as the heads order their outputs. Float sizes, never rounded (torchvision's
``AnchorGenerator`` rounds its base anchors and takes the stride from the map size, so it cannot make them).

- ``AnchorGenerator`` (RetinaNet): base size = stride, scales ``octave_base_scale * 2 ** (i / n)``, ratios
  h / w; ratios outer, scales inner (``scale_major``); centred on the cell's origin (``center_offset`` 0).
- ``SSDAnchorGenerator`` (ssdlite_mobilenetv2): per level the ratios 1, then 1/r, r for each configured r
  at ``min_size``, then a square of ``sqrt(min_size * max_size)``; centred at ``stride / 2``. Its sizes
  are pixels at a 320 px input; at another input size nasdet scales them (MMDetection has no such case).

Its test path (``BaseDenseHead._bbox_post_process``, ``min_bbox_size`` 0) drops boxes left empty by clipping
to the image before NMS; torchvision's SSD and RetinaNet keep them: ``with_mmdet_test_path`` drops them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

# configs/ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py, at its input size
SSDLITE_MOBILENETV2 = {"reference_size": 320, "strides": [16, 32, 64, 107, 160, 320], "ratios": [[2, 3]] * 6,
                       "min_sizes": [48, 100, 150, 202, 253, 304], "max_sizes": [100, 150, 202, 253, 304, 320]}
# configs/_base_/models/retinanet_r50_fpn.py
RETINANET = {"strides": [8, 16, 32, 64, 128], "ratios": [0.5, 1.0, 2.0], "octave_base_scale": 4, "scales_per_octave": 3}
# ENOT-AutoDL/mmdetection-enot configs/ssd/pascal_voc/ssd_mnv2.py (MMDetection 2.16's AnchorGenerator)
ENOT_SSD_MNV2 = {"strides": [8, 16, 32, 64, 128], "ratios": [1.0, 0.5, 2.0, 0.6666, 1.5], "octave_base_scale": 4,
                 "scales_per_octave": 3}


def _centred(cx: float, cy: float, ws: Tensor, hs: Tensor) -> Tensor:
    return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)


def ssd_base_anchors(strides: list[float], ratios: list[list[float]], min_sizes: list[float],
                     max_sizes: list[float]) -> list[Tensor]:
    out = []
    for stride, level_ratios, lo, hi in zip(strides, ratios, min_sizes, max_sizes):
        r = [1.0]
        for x in level_ratios:
            if all(abs(x - have) >= 1e-6 for have in r):
                r += [1 / x, x]
        h_ratios = torch.sqrt(torch.tensor(r))
        w_ratios = 1 / h_ratios
        size = torch.tensor([float(lo)])
        square = torch.tensor([math.sqrt(hi * lo)], dtype=torch.float32)
        centre = stride / 2.0
        out.append(torch.cat([_centred(centre, centre, (size[:, None] * w_ratios[None]).view(-1),
                                       (size[:, None] * h_ratios[None]).view(-1)),
                              _centred(centre, centre, square, square)]))
    return out


def octave_base_anchors(strides: list[int], ratios: list[float], octave_base_scale: float,
                        scales_per_octave: int) -> list[Tensor]:
    scales = torch.tensor([octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
    h_ratios = torch.sqrt(torch.tensor(ratios))
    w_ratios = 1 / h_ratios
    return [_centred(0.0, 0.0, (s * w_ratios[:, None] * scales[None, :]).view(-1),
                     (s * h_ratios[:, None] * scales[None, :]).view(-1)) for s in strides]


class MMDetAnchorGenerator(nn.Module):
    """Anchors of level k: ``base_anchors[k]`` shifted by ``(x, y) * strides[k]`` per cell, ordered (y, x, a);
    with ``reference_size``, everything scaled by input size / reference size. Holds no state_dict entries."""

    def __init__(self, base_anchors: list[Tensor], strides: list[float], reference_size: int | None = None):
        super().__init__()
        self.base_anchors, self.strides, self.reference_size = base_anchors, list(strides), reference_size

    def num_anchors_per_location(self) -> list[int]:
        return [len(b) for b in self.base_anchors]

    def level_anchors(self, sizes: list[tuple[int, int]], image_size: tuple[int, int], dtype=torch.float32,
                      device=None) -> list[Tensor]:
        if len(sizes) != len(self.base_anchors):
            raise ValueError(f"{len(sizes)} feature maps, but anchors for {len(self.base_anchors)} levels")
        h, w = image_size
        ref = self.reference_size
        scale = torch.tensor([w / ref, h / ref] * 2 if ref else [1.0] * 4, dtype=dtype, device=device)
        out = []
        for base, stride, (fh, fw) in zip(self.base_anchors, self.strides, sizes):
            xs = torch.arange(fw, device=device).to(dtype) * stride
            ys = torch.arange(fh, device=device).to(dtype) * stride
            xx, yy = xs.repeat(fh), ys.view(-1, 1).repeat(1, fw).view(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1)
            anchors = (base.to(device=device, dtype=dtype)[None] + shifts[:, None]).view(-1, 4)
            out.append(anchors if ref is None else anchors * scale)
        return out

    def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
        """torchvision's anchor generator contract: one (anchors, 4) xyxy tensor per image."""
        f = feature_maps[0]
        levels = self.level_anchors([tuple(m.shape[-2:]) for m in feature_maps], tuple(image_list.tensors.shape[-2:]),
                                    f.dtype, f.device)
        anchors = torch.cat(levels)
        return [anchors for _ in image_list.image_sizes]


def mmdet_ssdlite_anchors() -> MMDetAnchorGenerator:
    a = SSDLITE_MOBILENETV2
    return MMDetAnchorGenerator(ssd_base_anchors(a["strides"], a["ratios"], a["min_sizes"], a["max_sizes"]),
                                a["strides"], a["reference_size"])


def mmdet_retinanet_anchors() -> MMDetAnchorGenerator:
    return _octave_anchors(RETINANET)


def enot_ssd_anchors() -> MMDetAnchorGenerator:
    """ENOT's ssd_mnv2: 15 anchors a location (5 ratios x 3 scales) at strides 8 to 128."""
    return _octave_anchors(ENOT_SSD_MNV2)


def _octave_anchors(a: dict) -> MMDetAnchorGenerator:
    return MMDetAnchorGenerator(octave_base_anchors(a["strides"], a["ratios"], a["octave_base_scale"],
                                                    a["scales_per_octave"]), a["strides"])


class DropsEmptyBoxes:
    """``postprocess_detections`` of a torchvision detector, but boxes empty after clipping are dropped
    before NMS (MMDetection's ``min_bbox_size`` 0). The detector's own pass runs with an NMS that removes
    nothing (IoU > 1 never happens) and no cap, then the empty boxes go, then its NMS and cap."""

    def postprocess_detections(self, *args):
        nms, cap = self.nms_thresh, self.detections_per_img
        self.nms_thresh, self.detections_per_img = 1.0, 1 << 30
        try:
            detections = super().postprocess_detections(*args)
        finally:
            self.nms_thresh, self.detections_per_img = nms, cap
        out = []
        for d in detections:
            wh = d["boxes"][:, 2:] - d["boxes"][:, :2]
            d = {k: v[(wh > 0).all(1)] for k, v in d.items()}
            keep = batched_nms(d["boxes"], d["scores"], d["labels"], nms)[:cap]
            out.append({k: v[keep] for k, v in d.items()})
        return out


@lru_cache(maxsize=None)
def with_mmdet_test_path(detector_cls: type) -> type:
    """``detector_cls`` (torchvision's SSD, RetinaNet or a subclass) with MMDetection's empty-box filter."""
    return type(f"MMDet{detector_cls.__name__}", (DropsEmptyBoxes, detector_cls), {})
