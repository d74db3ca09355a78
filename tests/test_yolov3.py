"""YOLOv3 (MMDetection's yolov3_mobilenetv2 recipe) as a nasdet detector family."""
import pytest
import torch

from nasdet.config import ConfigError, make_model_config
from nasdet.models import build_detector, set_input_size
from nasdet.models.families.yolov3 import (MMDET_ANCHORS, decode, encode, grid_anchors, grid_assign, responsible)
from nasdet.models.supernet import supernet_body
from nasdet.search.cost import detector_macs, detector_params


def tiny(backbone="mbv2_elastic", **kw):
    width = {} if backbone.startswith("detnas") else {"width_mult": 0.25}
    return make_model_config(detector="yolov3", backbone={"name": backbone, **width}, input_size=96,
                             neck_channels=[32, 24, 16], head_channels=[32, 24, 16], **kw)


def batch():
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 10.0, 100.0, 40.0], [5.0, 30.0, 40.0, 75.0]]), "labels": torch.tensor([3, 2])}]
    return images, targets


# ------------------------------------------------------------------------------------ MMDetection sizes
def mmdet_yolov3_mobilenetv2_layers(size: int, num_classes: int = 80):
    """Convs of MMDetection's YOLOv3-MobileNetV2 (configs/yolo/yolov3_mobilenetv2_*: MobileNetV2 out_indices
    2, 4, 6 with its conv2 to 1280 built and run; YOLOV3Neck in [320, 96, 32], out [96, 96, 96]; YOLOV3Head
    96 -> 96 3x3 bridge and 1x1 to 3 x (5 + K)), written from its configs and modules, not from nasdet's:
    (cin, cout, kernel, groups, out side, bias, bn)."""
    layers, h = [], size // 2
    layers.append((3, 32, 3, 1, h, False, True))  # conv1, stride 2
    cin = 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                       [6, 320, 1, 1]]:
        for i in range(n):
            stride = s if i == 0 else 1
            mid = int(round(cin * t))
            if t != 1:
                layers.append((cin, mid, 1, 1, h, False, True))
            h = h // stride
            layers.append((mid, mid, 3, mid, h, False, True))
            layers.append((mid, c, 1, 1, h, False, True))
            cin = c
    layers.append((320, 1280, 1, 1, h, False, True))  # conv2 (index 7, computed though not an output)
    sides = [size // 32, size // 16, size // 8]
    for i, (cin, side) in enumerate(zip([320, 96 + 96, 32 + 96], sides)):  # neck
        if i:
            layers.append((96, 96, 1, 1, sides[i - 1], False, True))  # conv{i} before the upsample
        for a, b, k in [(cin, 96, 1), (96, 192, 3), (192, 96, 1), (96, 192, 3), (192, 96, 1)]:
            layers.append((a, b, k, 1, side, False, True))
    for side in sides:  # head
        layers.append((96, 96, 3, 1, side, False, True))
        layers.append((96, 3 * (5 + num_classes), 1, 1, side, True, False))
    return layers


@pytest.mark.parametrize("size", [320, 416])
def test_sizes_equal_mmdetection_yolov3_mobilenetv2(size):
    """MMDetection publishes no params or FLOPs for these models (configs/yolo/README.md and metafile.yml give
    memory and box AP only: 22.2 at 320, 23.9 at 416), so they are counted here from its layer list."""
    layers = mmdet_yolov3_mobilenetv2_layers(size)
    params = sum(ci // g * co * k * k + co * bias + 2 * co * bn for ci, co, k, g, _, bias, bn in layers)
    macs = sum(ci // g * co * k * k * side * side for ci, co, k, g, side, _, _ in layers)
    anchors = "mmdet_320" if size == 320 else "mmdet_416"
    model = build_detector(make_model_config(detector="yolov3", backbone={"name": "mobilenet_v2"}, input_size=size,
                                             anchors=anchors), num_classes=80)
    assert detector_params(model)["total"] == params
    assert detector_macs(model)["total"] == macs
    # the supernet's default subnet is the same network: the same MACs
    elastic = build_detector(make_model_config(detector="yolov3", backbone={"name": "mbv2_elastic"}, input_size=size),
                             num_classes=80)
    assert detector_macs(elastic)["total"] == macs
    assert 3.5e6 < params < 3.9e6  # backbone 2.22 M + neck and head at 96 channels


# --------------------------------------------------------------------------------- assigner and coder
def test_grid_assigner_follows_mmdetection():
    sizes = [(3, 3), (6, 6), (12, 12)]  # 96 px
    anchors, strides = grid_anchors(sizes, [[(60, 60)], [(30, 30)], [(10, 10)]], "cpu")
    gt = torch.tensor([[20.0, 20.0, 50.0, 50.0]])  # centre 35, 35: cells (1, 1) / (2, 2) / (4, 4)
    flags = responsible(gt, sizes, 1)
    assert flags.sum() == 3 and flags[0 * 9 + 1 * 3 + 1] and flags[9 + 2 * 6 + 2] and flags[45 + 4 * 12 + 4]
    assigned = grid_assign(anchors, gt, flags)
    # the stride-16 anchor (30 x 30 at 40, 40: IoU 0.72) is the only responsible one above 0.5
    assert torch.nonzero(assigned > 0).flatten().tolist() == [9 + 2 * 6 + 2]
    # ignored: IoU above 0.5 but not responsible; negatives: IoU <= 0.5 everywhere
    from torchvision.ops import box_iou
    iou = box_iou(gt, anchors)[0]
    assert ((assigned == -1) == ((iou > 0.5) & ~flags)).all()
    assert ((assigned == 0) == ((iou <= 0.5) & ~((assigned > 0)))).all()
    # a box no anchor overlaps by > 0.5 still gets its best responsible anchor (min_pos_iou 0)
    small = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
    assigned = grid_assign(anchors, small, responsible(small, sizes, 1))
    assert torch.nonzero(assigned > 0).flatten().tolist() == [45]
    # coder: decode(encode(gt)) = gt, x / y targets inside (0, 1)
    idx = torch.tensor([9 + 2 * 6 + 2, 45 + 4 * 12 + 4])
    target = encode(anchors[idx], strides[idx], gt.expand(2, 4))
    assert (target[:, :2] > 0).all() and (target[:, :2] < 1).all()
    logits = torch.cat([torch.logit(target[:, :2]), target[:, 2:]], 1)
    assert torch.allclose(decode(anchors[idx], strides[idx], logits), gt.expand(2, 4), atol=1e-3)


def test_mmdetection_anchors_and_model_keys():
    assert MMDET_ANCHORS["mmdet_416"][0] == ((116, 90), (156, 198), (373, 326))  # the paper's COCO anchors
    with pytest.raises(ConfigError, match=r"model\.extra_channels: unknown key.*ssd or ssdlite"):
        make_model_config(detector="yolov3", extra_channels=[1, 2, 3, 4])
    with pytest.raises(ConfigError, match="multiples of 32"):
        make_model_config(detector="yolov3", input_size=100)
    cfg = make_model_config(detector="yolov3")
    assert (cfg.score_thresh, cfg.nms_thresh, cfg.conf_thresh, cfg.detections_per_img) == (0.05, 0.45, 0.005, 100)


# ------------------------------------------------------------------------------ contract on every space
@pytest.mark.parametrize("backbone", ["mbv2_elastic", "ofa_mbv3", "detnas_tiny"])
def test_trains_and_detects_on_every_searchable_backbone(backbone):
    torch.manual_seed(0)
    model = build_detector(tiny(backbone, score_thresh=0.0, conf_thresh=0.0), num_classes=3)
    body = supernet_body(model)
    body.set_arch(body.search_space().smallest())
    images, targets = batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_cls", "loss_conf", "loss_xy", "loss_wh"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.preds[2].weight.grad.abs().sum() > 0
    set_input_size(model, 64)
    out = model.eval()(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    assert 0 < len(out[1]["scores"]) <= 100 and out[1]["labels"].min() >= 1 and out[1]["labels"].max() <= 3
    assert out[1]["boxes"][:, 2].max() > 64  # back in the 112 px image's coordinates


def test_multiscale_training_and_distillation_positives():
    from nasdet.train.distill import LossesWithLogits

    torch.manual_seed(0)
    model = build_detector(tiny(multiscale_sizes=[64, 128]), num_classes=3).train()
    seen = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    images, targets = batch()
    for _ in range(6):
        model(images, targets)
    assert set(seen) == {64, 128}
    model.multiscale_sizes = []
    seen.clear()
    losses, logits, positives = LossesWithLogits(model)(images, targets)
    hook.remove()
    assert seen == [96] and logits.shape == (2, positives.shape[1], 3)
    assert 1 <= positives[0].sum() and 2 <= positives[1].sum()  # every box has a positive anchor
    # the same assignment drives the loss: classification loss only on those anchors
    t_images, t_targets = model.transform(images, targets)
    maps = model.head(list(model.backbone(t_images.tensors).values()))
    _, pos = model.compute_loss(maps, t_targets)
    assert torch.equal(pos, positives)


def test_onnx_export_with_nms_matches_torch(tmp_path):
    from nasdet.export import check_parity, export_onnx

    torch.manual_seed(0)
    model = build_detector(tiny(score_thresh=0.3, conf_thresh=0.0, nms_thresh=0.45), num_classes=3).eval()
    with torch.no_grad():  # a head that fires, with spread scores (as after training)
        for pred in model.head.preds:
            pred.weight.normal_(std=0.3)
            pred.bias.zero_()
    images = [(torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8) for i in range(2)]
    path = export_onnx(model, tmp_path / "yolo.onnx")
    report = check_parity(model, path, images, raw=False, box_atol=1e-3, score_atol=1e-4, raw_atol=1e-4)
    # check_parity raises on any difference not explained by a float near-tie at a cut or in NMS
    assert report["detections_torch"] > 50 and report["matched"] >= report["detections_torch"] - 2
    # the model's own forward listing the same detections in another order (near-tied scores) is the same: the
    # record compared them index by index (196 px for detections that matched)
    forward = type(model).forward

    def reordered(self, *a, **k):
        return [{key: v.flip(0) for key, v in out.items()} for out in forward(self, *a, **k)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model), "forward", reordered)
        again = check_parity(model, path, images, raw=False, box_atol=1e-3, score_atol=1e-4, raw_atol=1e-4)
    assert again["max_box_diff_vs_model_forward_px"] < 1e-3, again
    raw = export_onnx(model, tmp_path / "yolo_raw.onnx", raw=True)
    assert check_parity(model, raw, images, raw=True, box_atol=1e-3, score_atol=1e-4, raw_atol=1e-4)["max_abs_diff"] < 1e-4
    # the relative part of the tolerance scales with the value, it does not hide a graph that computes otherwise
    from nasdet.errors import ExportParityError
    with torch.no_grad():
        model.head.preds[0].bias.add_(0.01)
    with pytest.raises(ExportParityError, match="more than export.raw_atol 0.0001 \\+ export.raw_rtol 0.001 x"):
        check_parity(model, raw, images, raw=True, box_atol=1e-3, score_atol=1e-4, raw_atol=1e-4, raw_rtol=1e-3)
    import numpy as np
    anchors = np.load(raw.with_suffix(".anchors.npy"))
    assert anchors.shape == ((3 * 3 + 6 * 6 + 12 * 12) * 3, 4)


def test_the_mmdetection_layout_is_part_of_the_space_id():
    """A ReLU6 supernet's weights were searched with LeakyReLU units (model.layout: mmdetection) without a word:
    both layouts had one space id. The default layout keeps the id it always had."""
    from nasdet.models.supernet import detector_space

    own, mmdet = (detector_space(build_detector(tiny(layout=layout), num_classes=3)) for layout in ("nasdet", "mmdetection"))
    assert own.unit is None and mmdet.unit == "model.layout mmdetection"
    assert own.choices == mmdet.choices and own.space_id != mmdet.space_id
    plain = supernet_body(build_detector(tiny(), num_classes=3)).search_space()
    assert own.space_id == detector_space(build_detector(tiny(), num_classes=3)).space_id and plain.unit is None


def test_multiscale_sizes_beside_a_multi_resolution_supernet_is_refused(tiny_config):
    """YOLOv3's multiscale resize replaced each supernet step's drawn resolution: the resolutions the search picks
    from were never trained, silently."""
    model = {"backbone": {"name": "mbv2_elastic", "width_mult": 0.35}, "multiscale_sizes": [64]}
    with pytest.raises(ConfigError, match=r"supernet.multi_resolution trains each step at one of supernet.input_sizes, "
                                          r"and model.multiscale_sizes \[64\] would resize every training batch"):
        tiny_config("yolov3", model=model, supernet={"multi_resolution": True, "input_sizes": [64, 96]})
    tiny_config("yolov3", model=model, supernet={"input_sizes": [64, 96]})  # one resolution per run: the model's own
    tiny_config("yolov3", model={**model, "multiscale_sizes": None},
                supernet={"multi_resolution": True, "input_sizes": [64, 96]})
