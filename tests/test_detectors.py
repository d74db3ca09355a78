import pytest
import torch

from nasdet.config import make_model_config
from nasdet.models import DETECTORS, build_detector, get_input_size, set_input_size

LOSS_KEYS = {
    "ssd": {"bbox_regression", "classification"}, "ssdlite": {"bbox_regression", "classification"},
    "retinanet": {"classification", "bbox_regression"}, "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "yolov3": {"loss_cls", "loss_conf", "loss_xy", "loss_wh"},
}
NECK = {"ssd": {"extra_channels": [64, 32, 32, 16]}, "ssdlite": {"extra_channels": [64, 32, 32, 16]},
        "yolov3": {"neck_channels": [32, 32, 32], "head_channels": [32, 32, 32]}}


def tiny(detector, **kw):
    return make_model_config(detector=detector, backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                             input_size=128, **NECK.get(detector, {"fpn_channels": 64}), **kw)


@pytest.mark.parametrize("detector", DETECTORS)
def test_train_and_eval_contract(detector):
    torch.manual_seed(0)
    model = build_detector(tiny(detector), num_classes=4)
    images = [torch.rand(3, 100, 140), torch.rand(3, 90, 90)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[detector]
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert set(o) == {"boxes", "scores", "labels"}
        if len(o["boxes"]):  # boxes come back in the input image's coordinates, not the resized ones
            assert o["boxes"][:, 2].max() <= img.shape[2] + 1e-3 and o["boxes"][:, 3].max() <= img.shape[1] + 1e-3
            assert o["labels"].min() >= 0 and o["labels"].max() <= 4


@pytest.mark.parametrize("detector", ["ssdlite", "ssd"])
def test_ssd_on_a_stride_8_level_adds_a_first_map_of_default_boxes(detector):
    base = build_detector(tiny(detector), num_classes=3).eval()
    dense = build_detector(tiny(detector, ssd_levels=["c3", "c4", "c5"]), num_classes=3).eval()
    assert list(dense.backbone.levels) == ["c3", "c4", "c5"]
    per_loc = dense.anchor_generator.num_anchors_per_location()
    assert per_loc[1:] == base.anchor_generator.num_anchors_per_location() and len(per_loc) == 7
    x = [torch.rand(3, 128, 128)]
    feats = dense.backbone(dense.transform(x)[0].tensors)
    assert [f.shape[-1] for f in feats.values()][:3] == [16, 8, 4]  # stride 8, 16, 32 at 128 px
    n_base = sum(a.shape[0] for a in base.anchor_generator(base.transform(x)[0], list(base.backbone(base.transform(x)[0].tensors).values())))
    n_dense = sum(a.shape[0] for a in dense.anchor_generator(dense.transform(x)[0], list(feats.values())))
    assert n_dense == n_base + 16 * 16 * per_loc[0]
    with torch.no_grad():
        assert set(dense(x)[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("detector", ["ssdlite", "ssd"])
def test_ssd_on_c5_alone_has_five_maps(detector):
    model = build_detector(tiny(detector, ssd_levels=["c5"]), num_classes=3).eval()
    assert len(model.anchor_generator.num_anchors_per_location()) == 5
    with torch.no_grad():
        assert set(model([torch.rand(3, 128, 128)])[0]) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("bad, match", [({"ssd_levels": ["c4"]}, "ending with c5"),
                                        ({"ssd_levels": ["c5", "c4"]}, "increasing"),
                                        ({"anchor_aspect_ratios": [[2]] * 6, "ssd_levels": ["c3", "c4", "c5"]}, "make 7")])
def test_bad_ssd_levels_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny("ssdlite", **bad)


def test_model_resizes_to_input_size_and_it_can_change():
    model = build_detector(tiny("ssdlite"), num_classes=3).eval()
    assert get_input_size(model) == 128
    seen = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        model([torch.rand(3, 200, 300)])
        set_input_size(model, 96)
        model([torch.rand(3, 200, 300)])
    hook.remove()
    assert seen == [(128, 128), (96, 96)]


def test_all_torchvision_backbones_build():
    for name in ("mobilenet_v2", "mobilenet_v3_large", "resnet18"):
        m = build_detector(make_model_config(detector="retinanet", backbone={"name": name}, input_size=64, fpn_channels=32),
                           num_classes=2)
        assert m.backbone.body.out_channels.keys() == {"c2", "c3", "c4", "c5"}


def test_unknown_backbone_names_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_detector(make_model_config(backbone={"name": "vgg99"}), num_classes=2)


def test_num_classes_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_classes is 5 but the data set has 3"):
        build_detector(tiny("ssdlite", num_classes=5), num_classes=3)


def _focal_batch():
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 60.0, 120.0, 126.0]]), "labels": torch.tensor([3, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


@pytest.mark.parametrize("detector", ["ssdlite", "ssd"])
def test_focal_ssd_loss_follows_aw_nas(detector):
    """Sigmoid focal loss over the object classes (background column untrained), IoU in [0.4, 0.5)
    ignored, RetinaNet's prior on the class logits; the loss vanishes for confident right logits."""
    from torchvision.ops import sigmoid_focal_loss

    from nasdet.models.ssd_focal import PRIOR_PROB, FocalSSD

    torch.manual_seed(0)
    model = build_detector(tiny(detector, ssd_loss="focal"), num_classes=4)
    assert isinstance(model, FocalSSD)
    images, targets = _focal_batch()
    model.train()
    t_images, t_targets = model.transform(images, targets)
    feats = list(model.backbone(t_images.tensors).values())
    out = model.head(feats)
    assert torch.allclose(torch.sigmoid(out["cls_logits"].median()), torch.tensor(PRIOR_PROB), rtol=0.3)
    anchors = model.anchor_generator(t_images, feats)
    from nasdet.models.families.base import match_anchors as _match

    matched = _match(model, t_targets, anchors)
    assert (matched[0] == -2).any() and (matched[0] >= 0).any() and (matched[1] == -1).all()
    loss = model.compute_loss(t_targets, out, anchors, matched)
    # the same loss by hand: one-hot targets on classes 1..K, ignored anchors dropped
    by_hand = 0.0
    for t, logits, m in zip(t_targets, out["cls_logits"], matched):
        onehot = torch.zeros_like(logits)
        onehot[m >= 0, t["labels"][m[m >= 0]]] = 1
        keep = m != -2
        by_hand = by_hand + sigmoid_focal_loss(logits[keep, 1:], onehot[keep, 1:], 0.25, 2.0, reduction="sum")
    n_pos = sum(int((m >= 0).sum()) for m in matched)
    assert torch.allclose(loss["classification"], by_hand / n_pos)
    # a background-column change alone does not move the loss; confident right logits make it ~0
    perfect = []
    for t, m, logits in zip(t_targets, matched, out["cls_logits"]):
        z = torch.full_like(logits, -20.0)
        z[m >= 0, t["labels"][m[m >= 0]]] = 20.0
        z[:, 0] = torch.randn(z.shape[0])
        perfect.append(z)
    near_zero = model.compute_loss(t_targets, dict(out, cls_logits=torch.stack(perfect)), anchors, matched)
    assert near_zero["classification"] < 1e-6
    assert loss["classification"] > 0.1


def test_focal_ssd_scores_are_per_class_sigmoids():
    from nasdet.models.ssd_focal import class_logit_convs

    torch.manual_seed(0)
    model = build_detector(tiny("ssdlite", ssd_loss="focal", score_thresh=0.2), num_classes=4).eval()
    x = [torch.rand(3, 128, 128)]
    captured = {}
    hook = model.head.register_forward_hook(lambda m, i, o: captured.update(o))
    with torch.no_grad():
        for last in class_logit_convs(model.head):  # make class 2 fire at a few anchors
            last.bias[2::5] = 3.0  # background column (0) and others stay at the prior
        out = model(x)[0]
    hook.remove()
    assert len(out["scores"]) > 0 and set(out["labels"].tolist()) <= {2}
    sig = torch.sigmoid(captured["cls_logits"][0, :, 2])
    assert out["scores"].max() <= sig.max() + 1e-6 and out["scores"].min() > 0.2


def test_ssd_loss_focal_is_for_ssd_only():
    with pytest.raises(ValueError, match="ssd_loss"):
        tiny("fcos", ssd_loss="focal")


def test_focal_ssd_exports_to_onnx_with_the_same_detections(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from nasdet.export import export_onnx
    from nasdet.models.ssd_focal import class_logit_convs

    torch.manual_seed(0)
    model = build_detector(tiny("ssdlite", ssd_loss="focal", score_thresh=0.02), num_classes=4).eval()
    with torch.no_grad():  # spread the scores so that the top detections are not ties
        for last in class_logit_convs(model.head):
            last.weight.mul_(30.0)
            last.bias.copy_(torch.randn(last.bias.shape) * 2 - 2)
    path = export_onnx(model, tmp_path / "focal.onnx")
    img = (torch.rand(3, 100, 90) * 255).to(torch.uint8)
    with torch.no_grad():
        ref = model([img.float() / 255.0])[0]
    boxes, scores, labels = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": img.numpy()})
    assert len(ref["scores"]) > 5 and len(scores) == len(ref["scores"])
    # equal scores may come in another order: compare the detections as sorted rows
    def rows(b, s, lb):
        r = np.column_stack([np.round(s, 4), lb, np.round(b, 2)])
        return r[np.lexsort(r.T[::-1])]

    ours = rows(boxes, scores, labels)
    np.testing.assert_allclose(ours, rows(*(ref[k].numpy() for k in ("boxes", "scores", "labels"))), atol=2e-2)
    assert labels.min() >= 1


@pytest.mark.parametrize("detector,model_keys", [("ssdlite", {}), ("retinanet", {}), ("fcos", {}), ("yolov3", {}),
                                                 ("faster_rcnn", {"variant": "v2", "rpn_post_nms_top_n_test": 50})])
def test_bn_recalibration_gives_the_whole_forwards_statistics(tiny_config, monkeypatch, detector, model_keys):
    """Recalibration runs only the dense part where it holds every BatchNorm (no decoding or NMS): the running
    statistics equal those of recalibrating through the whole eval forward. Faster R-CNN v2's box head has
    BatchNorm on pooled proposals, so it keeps the whole forward."""
    import copy

    from nasdet.data.build import build_datasets
    from nasdet.models.families import family_of
    from nasdet.train import bn

    cfg = tiny_config(detector, model=model_keys)
    calib = build_datasets(cfg, need=("train",))["train"].with_transforms(None)
    torch.manual_seed(0)
    model = build_detector(cfg.model, num_classes=calib.num_classes)
    assert family_of(model).dense_has_every_bn == (detector != "faster_rcnn")
    whole, start = copy.deepcopy(model), copy.deepcopy(model)
    bn.recalibrate_bn(model, calib, "cpu", batches=1, batch_size=2)
    monkeypatch.setattr(bn, "calibration_forward", lambda m: m)  # the model's own forward, decoding and NMS included
    bn.recalibrate_bn(whole, calib, "cpu", batches=1, batch_size=2)
    stats = [(n, b) for n, b in model.named_buffers() if "running_" in n]
    assert stats and not all(torch.equal(b, dict(start.named_buffers())[n]) for n, b in stats)
    for name, buf in stats:
        assert torch.equal(buf, dict(whole.named_buffers())[name]), name


def test_the_faster_rcnn_graph_runs_on_an_image_without_proposals(tiny_config, tmp_path):
    """A trained RPN proposes nothing on a blank image, and torchvision's box decoding (reshape(0, -1)) made the
    exported graph fail there in onnxruntime. The end-to-end graph adds one proposal of no area, whose box its own
    post-processing drops: the same detections elsewhere, none (and no error) on that image."""
    import nasdet.export
    from nasdet.data.build import build_datasets
    from nasdet.export import EndToEndDetector, check_parity, export_onnx
    from nasdet.models.cost import onnx_session

    cfg = tiny_config("faster_rcnn")
    val = build_datasets(cfg, need=("val",))["val"]
    torch.manual_seed(0)
    model = build_detector(cfg.model, num_classes=val.num_classes).eval()
    rpn_forward = type(model.rpn).forward

    def proposes_on_bright_images(self, images, features, targets=None):  # as a trained RPN on a blank image
        boxes, losses = rpn_forward(self, images, features, targets)
        keep = (images.tensors.mean() > -1.0).long() * boxes[0].shape[0]
        return [b[:keep] for b in boxes], losses

    model.rpn.forward = proposes_on_bright_images.__get__(model.rpn)
    images = [val[i][0] for i in range(2)]
    path = export_onnx(model, tmp_path / "frcnn.onnx", example=nasdet.export.tracing_example(model, images))
    check_parity(model, path, images, False, 1e-3, 1e-4, 1e-4, box_rtol=1e-4)
    blank = torch.zeros(3, 80, 90, dtype=torch.uint8)
    assert len(EndToEndDetector(model)(blank)[1]) == 0
    boxes, scores, labels = onnx_session(path).run(None, {"image": blank.numpy()})
    assert len(scores) == 0 and boxes.shape == (0, 4)
