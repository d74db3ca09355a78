"""MMDetection's ssdlite_mobilenetv2, yolov3_mobilenetv2, retinanet_r50_fpn and ENOT's ssd_mnv2 as plain functions of their
state_dicts (torch.nn.functional), for tests/test_imports_mmdet.py. MMDetection is not installed: written
from its code (the files tests/fixtures/mmdetection/make_fixtures.py lists), never from nasdet's:

- mmcv ConvModule: conv (bias only without a norm), BN (eval: running statistics, the config's eps), act;
- MobileNetV2: conv1 (3x3 s2), layer1..7 of InvertedResidual (expand 1x1 unless the ratio is 1, depthwise
  3x3 with padding 1, linear 1x1 without act; residual when stride 1 and in == out), conv2 (1x1 to 1280);
  ``i in out_indices`` over [layer1..7, conv2];
- SSDNeck (depthwise): per extra a 1x1 ConvModule to out / 2, then a DepthwiseSeparableConvModule (3x3 s2
  p1 depthwise, 1x1 pointwise, both with BN and act); SSDHead (depthwise): 3x3 depthwise ConvModule, 1x1 conv;
  ENOT's ssd_mnv2 (mmdetection-enot, MMDetection 2.16): MobileNetV2 out_indices (2, 4, 6), BN eps 1e-5, ReLU6;
  SSDNeck without depthwise (1x1 ConvModule to out / 2, 3x3 s2 p1 ConvModule); SSDHead as above (BN eps 1e-3);
- YOLOV3Neck: detect1 on the last input; per finer scale conv_i (1x1), x2 nearest upsample, cat(up, feat),
  detect_i+1 (1x1, 3x3, 1x1, 3x3, 1x1); YOLOV3Head: 3x3 bridge, 1x1 pred; LeakyReLU(0.1) everywhere;
- ResNet-50 (pytorch style: stride on the 3x3), FPN (start_level 1, nearest upsample to the finer size,
  'on_input' extras: P6 from C5, P7 = conv(P6), no ReLU), RetinaHead (4 conv + ReLU per tower, 3x3 outs);
- the test path of each head (BaseDenseHead / YOLOV3Head ``predict_by_feat``, ``filter_scores_and_topk``,
  ``_bbox_post_process``) and its box coders (DeltaXYWHBBoxCoder: ``delta2bbox``; YOLOBBoxCoder).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

MNV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def conv_module(sd, name, x, act=None, eps=1e-5, stride=1, padding=0, groups=1):
    x = F.conv2d(x, sd[f"{name}.conv.weight"], sd.get(f"{name}.conv.bias"), stride, padding, 1, groups)
    if f"{name}.bn.weight" in sd:
        x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                         sd[f"{name}.bn.bias"], False, 0.0, eps)
    return act(x) if act is not None else x


def mobilenet_v2(sd, x, out_indices, act, eps):
    x = conv_module(sd, "backbone.conv1", x, act, eps, stride=2, padding=1)
    outs, cin = [], 32
    for i, (t, c, n, s) in enumerate(MNV2):
        for j in range(n):
            name, stride, mid = f"backbone.layer{i + 1}.{j}", s if j == 0 else 1, int(round(cin * t))
            out = conv_module(sd, f"{name}.expand_conv", x, act, eps) if t != 1 else x
            out = conv_module(sd, f"{name}.depthwise_conv", out, act, eps, stride=stride, padding=1, groups=mid)
            out = conv_module(sd, f"{name}.linear_conv", out, None, eps)
            x = x + out if stride == 1 and cin == c else out
            cin = c
        if i in out_indices:
            outs.append(x)
    x = conv_module(sd, "backbone.conv2", x, act, eps)
    if 7 in out_indices:
        outs.append(x)
    return outs


# ------------------------------------------------------------------------------------ ssdlite_mobilenetv2
def ssdlite_forward(sd, x):
    """-> (cls_scores, bbox_preds): per level (N, A * (K + 1), H, W) and (N, A * 4, H, W)."""
    eps, act = 1e-3, F.relu6
    feats = mobilenet_v2(sd, x, (4, 7), act, eps)
    for i in range(4):
        name = f"neck.extra_layers.{i}"
        y = conv_module(sd, f"{name}.0", feats[-1], act, eps)
        c = y.shape[1]
        y = conv_module(sd, f"{name}.1.depthwise_conv", y, act, eps, stride=2, padding=1, groups=c)
        feats.append(conv_module(sd, f"{name}.1.pointwise_conv", y, act, eps))
    return ssd_head(sd, feats, act, eps)


def ssd_head(sd, feats, act, eps):
    out = ([], [])
    for i, f in enumerate(feats):
        for j, tower in enumerate(("cls_convs", "reg_convs")):
            y = conv_module(sd, f"bbox_head.{tower}.{i}.0", f, act, eps, padding=1, groups=f.shape[1])
            out[j].append(F.conv2d(y, sd[f"bbox_head.{tower}.{i}.1.weight"], sd[f"bbox_head.{tower}.{i}.1.bias"]))
    return out


def enot_ssd_forward(sd, x):
    """ENOT's ssd_mnv2 -> (cls_scores, bbox_preds): per level (N, 15 * (K + 1), H, W) and (N, 15 * 4, H, W)."""
    act = F.relu6
    feats = mobilenet_v2(sd, x, (2, 4, 6), act, 1e-5)
    for i in range(2):
        y = conv_module(sd, f"neck.extra_layers.{i}.0", feats[-1], act, 1e-5)
        feats.append(conv_module(sd, f"neck.extra_layers.{i}.1", y, act, 1e-5, stride=2, padding=1))
    return ssd_head(sd, feats, act, 1e-3)


def ssd_anchors(size_hw, sizes):
    """SSDAnchorGenerator of ssdlite_mobilenetv2 (its 320 px values), written as loops."""
    strides, lo, hi = [16, 32, 64, 107, 160, 320], [48, 100, 150, 202, 253, 304], [100, 150, 202, 253, 304, 320]
    levels = []
    for (h, w), s, a, b in zip(sizes, strides, lo, hi):
        base = [(a / math.sqrt(r), a * math.sqrt(r)) for r in (1, 1 / 2, 2, 1 / 3, 3)] + [(math.sqrt(a * b),) * 2]
        levels.append(torch.tensor([[x * s + s / 2 - bw / 2, y * s + s / 2 - bh / 2, x * s + s / 2 + bw / 2,
                                     y * s + s / 2 + bh / 2] for y in range(h) for x in range(w) for bw, bh in base]))
    return levels


def delta2bbox(anchors, deltas, stds, max_shape):
    deltas = deltas * deltas.new_tensor(stds)
    pxy, pwh = (anchors[:, :2] + anchors[:, 2:]) * 0.5, anchors[:, 2:] - anchors[:, :2]
    max_ratio = abs(math.log(16 / 1000))
    gxy = pxy + pwh * deltas[:, :2]
    gwh = pwh * deltas[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=max_shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=max_shape[0])
    return boxes


def filter_scores_and_topk(scores, score_thr, topk):
    valid = scores > score_thr
    kept = scores[valid]
    idxs = torch.nonzero(valid)
    kept, order = kept.sort(descending=True)
    n = min(topk, idxs.size(0))
    top = idxs[order[:n]]
    return kept[:n], top[:, 1], top[:, 0]  # scores, labels, anchor indices


def post_process(boxes, scores, labels, nms_iou, max_per_img):
    """``_bbox_post_process`` with min_bbox_size 0 (drops empty boxes), class-wise NMS, max_per_img."""
    wh = boxes[:, 2:] - boxes[:, :2]
    valid = (wh[:, 0] > 0) & (wh[:, 1] > 0)
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def dense_predict(cls_scores, bbox_preds, anchors, size_hw, *, softmax, stds, score_thr, nms_pre, nms_iou,
                  max_per_img):
    """BaseDenseHead's test path for one image (index 0): per level filter and top-k, then NMS."""
    all_boxes, all_scores, all_labels = [], [], []
    for cls, reg, a in zip(cls_scores, bbox_preds, anchors):
        cls = cls[0].permute(1, 2, 0).reshape(a.shape[0], -1)
        reg = reg[0].permute(1, 2, 0).reshape(-1, 4)
        scores = cls.softmax(-1)[:, :-1] if softmax else cls.sigmoid()
        scores, labels, idx = filter_scores_and_topk(scores, score_thr, nms_pre)
        all_boxes.append(delta2bbox(a[idx], reg[idx], stds, size_hw))
        all_scores.append(scores)
        all_labels.append(labels)
    return post_process(torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels), nms_iou, max_per_img)


def dense_predict_v2(cls_scores, bbox_preds, anchors, size_hw, *, stds, score_thr, nms_pre, nms_iou, max_per_img):
    """MMDetection 2.x's softmax test path (mmdetection-enot: AnchorHead._get_bboxes, multiclass_nms) for one
    image: per level the nms_pre anchors of highest foreground score, decoded; then every (anchor, class) pair
    above score_thr, class-wise NMS, the first max_per_img. Boxes clipped empty are kept (3.x drops them)."""
    boxes, scores = [], []
    for cls, reg, a in zip(cls_scores, bbox_preds, anchors):
        probs = cls[0].permute(1, 2, 0).reshape(a.shape[0], -1).softmax(-1)
        reg = reg[0].permute(1, 2, 0).reshape(-1, 4)
        if 0 < nms_pre < a.shape[0]:
            top = probs[:, :-1].max(-1).values.topk(nms_pre).indices
            a, reg, probs = a[top], reg[top], probs[top]
        boxes.append(delta2bbox(a, reg, stds, size_hw))
        scores.append(probs)
    boxes, scores = torch.cat(boxes), torch.cat(scores)[:, :-1]
    k = scores.shape[1]
    boxes = boxes[:, None].expand(-1, k, 4).reshape(-1, 4)
    labels = torch.arange(k).view(1, -1).expand_as(scores).reshape(-1)
    scores = scores.reshape(-1)
    valid = scores > score_thr
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ------------------------------------------------------------------------------------- yolov3_mobilenetv2
def yolov3_forward(sd, x):
    """-> per scale (strides 32, 16, 8) (N, 3 * (5 + K), H, W)."""
    act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    feats = mobilenet_v2(sd, x, (2, 4, 6), act, 1e-5)

    def detect(name, y):
        for j in range(5):
            y = conv_module(sd, f"{name}.conv{j + 1}", y, act, padding=1 if j % 2 else 0)
        return y

    outs = [detect("neck.detect1", feats[-1])]
    for i, f in enumerate(reversed(feats[:-1])):
        up = F.interpolate(conv_module(sd, f"neck.conv{i + 1}", outs[-1], act), scale_factor=2)
        outs.append(detect(f"neck.detect{i + 2}", torch.cat((up, f), 1)))
    return [F.conv2d(conv_module(sd, f"bbox_head.convs_bridge.{i}", o, act, padding=1),
                     sd[f"bbox_head.convs_pred.{i}.weight"], sd[f"bbox_head.convs_pred.{i}.bias"])
            for i, o in enumerate(outs)]


YOLO_BASE_SIZES = {  # the two configs' anchor_generator.base_sizes (strides 32, 16, 8)
    320: [[(220, 125), (128, 222), (264, 266)], [(35, 87), (102, 96), (60, 170)], [(10, 15), (24, 36), (72, 42)]],
    416: [[(116, 90), (156, 198), (373, 326)], [(30, 61), (62, 45), (59, 119)], [(10, 13), (16, 30), (33, 23)]],
}


def yolo_anchors(sizes, base_sizes):
    """YOLOAnchorGenerator: centred at stride / 2 of each cell."""
    return [torch.tensor([[x * s + s / 2 - bw / 2, y * s + s / 2 - bh / 2, x * s + s / 2 + bw / 2, y * s + s / 2 + bh / 2]
                          for y in range(h) for x in range(w) for bw, bh in base])
            for (h, w), s, base in zip(sizes, (32, 16, 8), base_sizes)]


def yolov3_predict(pred_maps, base_sizes, *, conf_thr=0.005, score_thr=0.05, nms_pre=1000, nms_iou=0.45,
                   max_per_img=100):
    """YOLOV3Head.predict_by_feat (3.x) for image 0: all scales at once, objectness >= conf_thr, then
    filter_scores_and_topk over class scores, score x objectness, NMS. No clipping (YOLOBBoxCoder)."""
    anchors = torch.cat(yolo_anchors([m.shape[-2:] for m in pred_maps], base_sizes))
    preds, strides = [], []
    for m, s in zip(pred_maps, (32, 16, 8)):
        p = m[0].permute(1, 2, 0).reshape(-1, m.shape[1] // 3).clone()
        p[:, :2] = p[:, :2].sigmoid()
        preds.append(p)
        strides.append(torch.full((p.shape[0], 1), float(s)))
    p, stride = torch.cat(preds), torch.cat(strides)
    centre = (anchors[:, :2] + anchors[:, 2:]) * 0.5 + (p[:, :2] - 0.5) * stride
    half = (anchors[:, 2:] - anchors[:, :2]) * 0.5 * p[:, 2:4].exp()
    boxes = torch.cat([centre - half, centre + half], -1)
    objectness, cls = p[:, 4].sigmoid(), p[:, 5:].sigmoid()
    keep = objectness >= conf_thr
    boxes, cls, objectness = boxes[keep], cls[keep], objectness[keep]
    scores, labels, idx = filter_scores_and_topk(cls, score_thr, nms_pre)
    return post_process(boxes[idx], scores * objectness[idx], labels, nms_iou, max_per_img), int((cls > score_thr).sum())


# --------------------------------------------------------------------------------------- retinanet_r50_fpn
def retinanet_forward(sd, x):
    """-> (cls_scores, bbox_preds) per level P3-P7: (N, 9 * K, H, W), (N, 9 * 4, H, W)."""
    def bn(name, y):
        return F.batch_norm(y, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    y = F.relu(bn("backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], None, 2, 3)))
    y = F.max_pool2d(y, 3, 2, 1)
    feats = []
    for i, n in enumerate((3, 4, 6, 3)):
        for j in range(n):
            name, stride = f"backbone.layer{i + 1}.{j}", (2 if i and j == 0 else 1)
            out = F.relu(bn(f"{name}.bn1", F.conv2d(y, sd[f"{name}.conv1.weight"])))
            out = F.relu(bn(f"{name}.bn2", F.conv2d(out, sd[f"{name}.conv2.weight"], None, stride, 1)))
            out = bn(f"{name}.bn3", F.conv2d(out, sd[f"{name}.conv3.weight"]))
            identity = (bn(f"{name}.downsample.1", F.conv2d(y, sd[f"{name}.downsample.0.weight"], None, stride))
                        if f"{name}.downsample.0.weight" in sd else y)
            y = F.relu(out + identity)
        feats.append(y)
    laterals = [conv_module(sd, f"neck.lateral_convs.{i}", f) for i, f in enumerate(feats[1:])]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    outs = [conv_module(sd, f"neck.fpn_convs.{i}", lat, padding=1) for i, lat in enumerate(laterals)]
    outs.append(conv_module(sd, "neck.fpn_convs.3", feats[-1], stride=2, padding=1))
    outs.append(conv_module(sd, "neck.fpn_convs.4", outs[-1], stride=2, padding=1))
    result = ([], [])
    for f in outs:
        for j, (tower, last) in enumerate((("cls_convs", "retina_cls"), ("reg_convs", "retina_reg"))):
            t = f
            for k in range(4):
                t = conv_module(sd, f"bbox_head.{tower}.{k}", t, F.relu, padding=1)
            result[j].append(F.conv2d(t, sd[f"bbox_head.{last}.weight"], sd[f"bbox_head.{last}.bias"], padding=1))
    return result


def retinanet_anchors(sizes, ratios=(0.5, 1.0, 2.0)):
    """AnchorGenerator(octave_base_scale 4, scales_per_octave 3, ratios (RetinaNet's 0.5 / 1 / 2; ENOT's ssd_mnv2
    1 / 0.5 / 2 / 0.6666 / 1.5), strides 8..128), loops."""
    levels = []
    for (h, w), s in zip(sizes, (8, 16, 32, 64, 128)):
        base = [(s * 4 * 2 ** (i / 3) / math.sqrt(r), s * 4 * 2 ** (i / 3) * math.sqrt(r))
                for r in ratios for i in range(3)]
        levels.append(torch.tensor([[x * s - bw / 2, y * s - bh / 2, x * s + bw / 2, y * s + bh / 2]
                                    for y in range(h) for x in range(w) for bw, bh in base]))
    return levels
