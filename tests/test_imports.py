"""Trained detectors from torchvision as nasdet detectors: exact layouts (sizes against torchvision's own
models), function-preserving key mappings (raw head outputs and detections equal to torchvision's on the
same images), other class sets (class layers re-initialised) and foreign checkpoints (one line)."""
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor

from nasdet.config import make_model_config
from nasdet.errors import CheckpointError
from nasdet.models import build_detector
from nasdet.models.imports import map_detector_weights, read_weights

SIZE = 128


def ssdlite_config(reduced_tail=True, **kw):
    """ssdlite320's layout, thresholds and top-k (torchvision's builder defaults)."""
    kw = {"input_size": SIZE, "score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300,
          "topk_candidates": 300, **kw}
    return make_model_config(detector="ssdlite", layout="torchvision",
                             backbone={"name": "mobilenet_v3_large", "reduced_tail": reduced_tail}, **kw)


def torchvision_ssdlite(num_classes: int, reduced_tail: bool = True) -> nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large, built by torchvision (random weights, nothing downloaded);
    the full tail is what its builder makes with an ImageNet backbone, assembled from its own parts."""
    if reduced_tail:
        return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=num_classes)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    net = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
    backbone = _mobilenet_extractor(net, 6, norm)
    anchors = torchvision.models.detection.anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    channels = torchvision.models.detection._utils.retrieve_out_channels(backbone, (320, 320))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes, norm)
    return SSD(backbone, anchors, (320, 320), num_classes, head=head, score_thresh=0.001, nms_thresh=0.55,
               detections_per_img=300, topk_candidates=300, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (fresh ones are identities, which would hide a swapped BN)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def set_torchvision_size(model: nn.Module, size: int) -> None:
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (size,), size, (size, size)


def imported(reference: nn.Module, cfg, num_classes: int, tmp_path, payload=lambda sd: sd) -> nn.Module:
    """``reference``'s weights saved as torchvision does, read and mapped into nasdet's detector of ``cfg``."""
    path = tmp_path / "reference.pth"
    torch.save(payload(reference.state_dict()), path)
    model = build_detector(cfg, num_classes=num_classes)
    mapped = map_detector_weights(model, read_weights(path), str(path), cfg.detector)
    assert mapped.source_format == "torchvision" and mapped.reinitialised == []
    model.load_state_dict(mapped.state)
    return model.eval()


def assert_same_function(reference: nn.Module, model: nn.Module, raw=lambda m, x: m.head(list(m.backbone(x).values()))):
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want, got = raw(reference, x), raw(model, x)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)
        images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 100, 150)]
        want_det, got_det = reference(images), model(images)
    for w, g in zip(want_det, got_det):
        assert len(w["boxes"]) > 0
        assert torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], w["scores"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ SSDLite
def test_ssdlite_torchvision_layout_is_ssdlite320_exactly():
    """Params, tensors and shapes equal torchvision's ssdlite320_mobilenet_v3_large (91 COCO labels:
    3,440,060 params, its published num_params); nasdet's default layout is the larger one of the demos."""
    reference = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=91)
    ours = build_detector(ssdlite_config(input_size=320), num_classes=90)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(reference) == 3_440_060
    shapes = lambda m: sorted(tuple(v.shape) for v in m.state_dict().values())  # noqa: E731
    assert shapes(ours) == shapes(reference)
    assert ours.transform.image_mean == reference.transform.image_mean == [0.5] * 3
    default = build_detector(make_model_config(detector="ssdlite"), num_classes=90)
    assert count(default) > 1.4 * count(reference)


@pytest.mark.parametrize("reduced_tail", [True, False])
def test_ssdlite320_import_is_function_preserving(tmp_path, reduced_tail):
    reference = trained_like(torchvision_ssdlite(4, reduced_tail))
    set_torchvision_size(reference, SIZE)
    model = imported(reference, ssdlite_config(reduced_tail), 3, tmp_path,
                     payload=lambda sd: {"model": sd, "args": __import__("argparse").Namespace(epochs=3)})
    assert_same_function(reference, model)


# -------------------------------------------------------------------------------- ResNet-50 FPN detectors
def frozen_bn_state(sd):
    """As torchvision's references save a detector trained from an ImageNet backbone (FrozenBatchNorm2d)."""
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def rpn_and_box_head(m, x):
    feats = list(m.backbone(x).values())
    objectness, deltas = m.rpn.head(feats)
    pooled = torch.randn(5, m.backbone.out_channels, 7, 7, generator=torch.Generator().manual_seed(2))
    scores, boxes = m.roi_heads.box_predictor(m.roi_heads.box_head(pooled))
    return {"feats": torch.cat([f.flatten() for f in feats]), "objectness": torch.cat([o.flatten() for o in objectness]),
            "deltas": torch.cat([d.flatten() for d in deltas]), "scores": scores, "boxes": boxes}


R50_DETECTORS = {  # torchvision builder, nasdet detector, the thresholds both get, raw outputs
    "retinanet_resnet50_fpn": ("retinanet", {"score_thresh": 0.01, "nms_thresh": 0.5, "detections_per_img": 300,
                                             "topk_candidates": 1000}, None),
    "fcos_resnet50_fpn": ("fcos", {"score_thresh": 0.05, "nms_thresh": 0.6, "detections_per_img": 100,
                                   "topk_candidates": 1000}, None),
    "fasterrcnn_resnet50_fpn": ("faster_rcnn", {"score_thresh": 0.0, "nms_thresh": 0.5, "detections_per_img": 100},
                                rpn_and_box_head),
}


@pytest.mark.parametrize("builder", list(R50_DETECTORS))
def test_resnet50_fpn_import_is_function_preserving(tmp_path, builder):
    detector, thresholds, raw = R50_DETECTORS[builder]
    reference = getattr(torchvision.models.detection, builder)(weights=None, weights_backbone=None, num_classes=4)
    trained_like(reference)
    set_torchvision_size(reference, SIZE)
    target = reference.roi_heads if detector == "faster_rcnn" else reference  # where torchvision keeps them
    for k, v in thresholds.items():
        setattr(target, k, v)
    cfg = make_model_config(detector=detector, backbone={"name": "resnet50"}, input_size=SIZE, **thresholds)
    model = imported(reference, cfg, 3, tmp_path, payload=frozen_bn_state)
    if raw is None:
        assert_same_function(reference, model)
    else:
        assert_same_function(reference, model, raw)
