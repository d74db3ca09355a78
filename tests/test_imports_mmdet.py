"""MMDetection checkpoints as nasdet detectors: state_dicts with exactly the keys and shapes of MMDetection's
ssdlite_mobilenetv2, yolov3_mobilenetv2, retinanet_r50_fpn and ENOT's ssd_mnv2 (tests/fixtures/mmdetection/, random values)
map into nasdet's detector with every key used once; the imported detector computes MMDetection's raw head
outputs (tests/mmdet_reference.py: its modules as functions of its state_dict) and, where the two test paths
agree, its detections; anchors equal; class sets (its meta's class names) and foreign files."""
import json
import re
from pathlib import Path

import pytest
import torch

import mmdet_reference as ref
from nasdet.config import make_model_config
from nasdet.errors import CheckpointError
from nasdet.models import build_detector
from nasdet.models.families import family_of
from nasdet.models.imports import map_detector_weights, read_checkpoint
from nasdet.models.imports.torchvision_detection import COCO_LABELS

FIXTURES = Path(__file__).parent / "fixtures" / "mmdetection"
COCO80 = [c for c in COCO_LABELS if c not in ("__background__", "N/A")]  # MMDetection's CocoDataset classes
SSD_ANCHORS = {"enot_ssd_mnv2": 15}  # per location (ssdlite_mobilenetv2: 6)
CLASS_ROWS = {r"bbox_head\.cls_convs\.\d+\.1\..*": lambda k: 6 * (k + 1),
              r"bbox_head\.convs_pred\..*": lambda k: 3 * (5 + k), r"bbox_head\.retina_cls\..*": lambda k: 9 * k}
# nasdet configs with MMDetection's test_cfg where nasdet has the knob
SSDLITE = dict(detector="ssdlite", layout="mmdetection", backbone={"name": "mobilenet_v2"}, input_size=320,
               score_thresh=0.02, nms_thresh=0.45, detections_per_img=200, topk_candidates=1000)
# yolov3: MMDetection 3.x keeps the top nms_pre (1000) (anchor, class) pairs of all scales after its thresholds,
# nasdet (as MMDetection 2.x) the top topk_candidates anchors per scale by objectness: with more candidates
# than anchors per scale nasdet cuts nothing, and the two agree while fewer than 1000 pairs pass (checked)
YOLOV3 = dict(detector="yolov3", layout="mmdetection", backbone={"name": "mobilenet_v2"}, conf_thresh=0.005,
              score_thresh=0.05, nms_thresh=0.45, detections_per_img=100, topk_candidates=10_000)
ENOT = dict(detector="ssdlite", layout="enot", backbone={"name": "mobilenet_v2"}, input_size=320, score_thresh=0.02,
            nms_thresh=0.45, detections_per_img=200, topk_candidates=1000)  # its test_cfg
RETINANET = dict(detector="retinanet", variant="mmdetection", backbone={"name": "resnet50"}, input_size=64,
                 score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, topk_candidates=1000)


def mmdet_state(name: str, num_classes: int = 80, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the fixture's keys and shapes (class layers resized to ``num_classes``), scaled so
    activations stay O(1); class biases as MMDetection's init (few detections, as a trained model)."""
    shapes = json.loads((FIXTURES / f"{name}.json").read_text())["shapes"]
    anchors = SSD_ANCHORS.get(name, 6)
    rows_of = {**CLASS_ROWS, r"bbox_head\.cls_convs\.\d+\.1\..*": lambda k: anchors * (k + 1)}
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    out = {}
    for k, shape in shapes.items():
        rows = next((f for pattern, f in rows_of.items() if re.fullmatch(pattern, k)), None)
        shape = [rows(num_classes), *shape[1:]] if rows else shape
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(100)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            out[k] = rand(shape) + 0.5
        elif k.endswith("running_mean") or k.endswith(".bias"):
            out[k] = (rand(shape) - 0.5) * 0.2
        else:
            out[k] = torch.randn(shape, generator=g) / torch.tensor(shape[1:]).prod().sqrt()
    for k, v in out.items():
        if re.fullmatch(r"bbox_head\.cls_convs\.\d+\.1\.bias", k):
            v.view(anchors, -1)[:, -1] += 5.0  # background (last in MMDetection)
        elif k.startswith("bbox_head.convs_pred"):  # class logits that vary over the image
            if k.endswith(".bias"):
                v.view(3, -1)[:, 5:] -= 5.0
            else:
                v *= 5.0
        elif k == "bbox_head.retina_cls.bias":
            v -= 4.6
    return out


def saved(state, path, classes=COCO80, version=3):
    meta = {"dataset_meta": {"classes": tuple(classes)}} if version == 3 else {"CLASSES": tuple(classes)}
    torch.save({"meta": {**meta, "epoch": 12}, "state_dict": state}, path)
    return path


def imported(state, cfg_kw, num_classes=80, classes=None, checkpoint_classes=None):
    model = build_detector(make_model_config(**cfg_kw), num_classes=num_classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    mapped = map_detector_weights(model, state, "mmdet.pth", cfg_kw["detector"], classes=classes,
                                  checkpoint_classes=checkpoint_classes)
    model.load_state_dict(mapped.state)
    return model.eval(), mapped, fresh


def every_key_used_once(state, mapped, fresh):
    """The mapping is one-to-one and sets every tensor of nasdet's model (no fresh value left)."""
    assert mapped.source_format == "mmdetection" and mapped.reinitialised == []
    assert len(mapped.state) == len(state) and set(mapped.state) == set(fresh)
    values = {id(v) for v in state.values()}
    kept = [k for k, v in mapped.state.items() if id(v) in values or not torch.equal(v, fresh[k])]
    assert len(kept) == len(fresh)


def run_both(model, reference_forward, state, size: int):
    """On one normalised image: MMDetection's raw outputs, nasdet's head outputs and nasdet's detections."""
    x = normalised(size)
    with torch.no_grad():
        return reference_forward(state, x), model.head(list(model.backbone(x).values())), family_of(model).detect(model, x)


def same_raw_outputs(out, cls_scores, bbox_preds, anchors, theirs, ours) -> list[int]:
    """torchvision's head outputs (N, anchors, C) against MMDetection's per level (N, A * C, H, W), level by
    level; ``theirs`` / ``ours`` put the class columns in one order. -> anchors per level."""
    per_level = [c.shape[-2] * c.shape[-1] * anchors for c in cls_scores]
    for got_cls, got_reg, cls, reg in zip(out["cls_logits"].split(per_level, 1),
                                          out["bbox_regression"].split(per_level, 1), cls_scores, bbox_preds):
        cls = cls.permute(0, 2, 3, 1).reshape(1, got_cls.shape[1], -1)
        torch.testing.assert_close(ours(got_cls), theirs(cls), atol=1e-5, rtol=0)
        torch.testing.assert_close(got_reg, reg.permute(0, 2, 3, 1).reshape(1, -1, 4), atol=1e-5, rtol=0)
    return per_level


def normalised(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def same_detections(got, want):
    assert len(want["boxes"]) > 0
    assert torch.equal(got["labels"], want["labels"] + 1)  # nasdet's labels: 1..K (0 = background)
    torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["scores"], want["scores"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ ssdlite_mobilenetv2
def test_ssdlite_mobilenetv2_import_is_function_preserving(tmp_path):
    state = mmdet_state("ssdlite_mobilenetv2")
    weights, classes = read_checkpoint(saved(state, tmp_path / "ssdlite.pth"))
    assert classes == COCO80
    model, mapped, fresh = imported(weights, SSDLITE, 80)
    every_key_used_once(state, mapped, fresh)
    (cls_scores, bbox_preds), out, got_dets = run_both(model, ref.ssdlite_forward, state, 320)
    per_level = same_raw_outputs(out, cls_scores, bbox_preds, 6, lambda cls: torch.cat([cls[..., -1:], cls[..., :-1]], -1),
                                 lambda got: got)  # background: last in MMDetection, first in torchvision's SSD
    anchors = ref.ssd_anchors((320, 320), [c.shape[-2:] for c in cls_scores])
    want = ref.dense_predict(cls_scores, bbox_preds, anchors, (320, 320), softmax=True, stds=[0.1, 0.1, 0.2, 0.2],
                             score_thr=0.02, nms_pre=1000, nms_iou=0.45, max_per_img=200)
    # where MMDetection's and torchvision's test paths differ (top-k per level over (anchor, class) pairs vs
    # per class over levels), neither cuts here
    probs = out["cls_logits"][0].softmax(-1)[:, 1:]
    assert max(int((p > 0.02).sum()) for p in probs.split(per_level)) < 1000 and int((probs > 0.02).sum(0).max()) < 1000
    same_detections(got_dets, want)


def test_enot_ssd_mnv2_import_is_function_preserving(tmp_path):
    """ENOT's baseline_ckpt (an MMDetection 2.x file of its ssd_mnv2, VOC's 20 classes) as nasdet's layout enot."""
    voc = [f"class{i}" for i in range(20)]
    state = mmdet_state("enot_ssd_mnv2", num_classes=20)
    for k, v in state.items():  # a surer background: few pairs above the score threshold, as a trained model
        if re.fullmatch(r"bbox_head\.cls_convs\.\d+\.1\.bias", k):
            v.view(15, -1)[:, -1] += 2.5
    weights, classes = read_checkpoint(saved(state, tmp_path / "enot.pth", voc, version=2))
    assert classes == voc
    model, mapped, fresh = imported(weights, ENOT, 20)
    every_key_used_once(state, mapped, fresh)
    (cls_scores, bbox_preds), out, got_dets = run_both(model, ref.enot_ssd_forward, state, 320)
    per_level = same_raw_outputs(out, cls_scores, bbox_preds, 15, lambda cls: torch.cat([cls[..., -1:], cls[..., :-1]], -1),
                                 lambda got: got)
    sizes = [c.shape[-2:] for c in cls_scores]
    assert [tuple(s) for s in sizes] == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    anchors = ref.retinanet_anchors(sizes, ratios=(1.0, 0.5, 2.0, 0.6666, 1.5))
    torch.testing.assert_close(torch.cat(model.anchor_generator.level_anchors(sizes, (320, 320))), torch.cat(anchors),
                               atol=1e-4, rtol=0)
    want = ref.dense_predict_v2(cls_scores, bbox_preds, anchors, (320, 320), stds=[0.1, 0.1, 0.2, 0.2],
                                score_thr=0.02, nms_pre=1000, nms_iou=0.45, max_per_img=200)  # MMDetection 2.16's
    probs = out["cls_logits"][0].softmax(-1)[:, 1:]  # neither test path's top-k cuts here (see ssdlite above)
    assert max(int((p > 0.02).sum()) for p in probs.split(per_level)) < 1000 and int((probs > 0.02).sum(0).max()) < 1000
    same_detections(got_dets, want)


def test_an_mmdet_file_without_class_names_is_kept_by_index_and_said():
    """mmdetection-enot's own loop saves {"epoch", "model", ..} with no meta: the class rows were kept by index
    without a word."""
    state = mmdet_state("enot_ssd_mnv2", num_classes=3)
    run = [(1, "a"), (2, "b"), (3, "c")]
    for names, unnamed in ((None, True), (["a", "b", "c"], False)):
        _, mapped, _ = imported(state, ENOT, 3, classes=run, checkpoint_classes=names)
        assert mapped.unnamed_classes == unnamed and mapped.reinitialised == []
    with pytest.raises(CheckpointError, match=r"set model.detector: ssdlite, model.layout: enot, model.backbone: "
                                              r"\{name: mobilenet_v2"):
        imported(state, {**ENOT, "backbone": {"name": "mobilenet_v3_large"}}, 3)
    with pytest.raises(CheckpointError, match="model.layout: mmdetection.*ssdlite_mobilenetv2_import_coco.yaml"):
        imported(mmdet_state("ssdlite_mobilenetv2", num_classes=3), ENOT, 3)


def test_mmdet_anchors_are_mmdetections():
    """ssdlite_mobilenetv2's SSDAnchorGenerator (sizes, ratios, order, centres at 320 px) and RetinaNet's
    AnchorGenerator (float octave scales, unrounded, centred on cells) equal MMDetection's."""
    from torchvision.models.detection.image_list import ImageList

    from nasdet.models.mmdet_layout import mmdet_retinanet_anchors, mmdet_ssdlite_anchors

    def ours(generator, size, sizes):
        maps = [torch.zeros(1, 1, h, w) for h, w in sizes]
        return generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]

    sizes = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    ssd = mmdet_ssdlite_anchors()
    assert ssd.num_anchors_per_location() == [6] * 6
    torch.testing.assert_close(ours(ssd, 320, sizes), torch.cat(ref.ssd_anchors((320, 320), sizes)).float(), atol=1e-3, rtol=0)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    torch.testing.assert_close(ours(mmdet_retinanet_anchors(), 64, sizes), torch.cat(ref.retinanet_anchors(sizes)).float(),
                               atol=1e-3, rtol=0)
    model = build_detector(make_model_config(**YOLOV3, input_size=416, anchors="mmdet_416"), num_classes=80)
    maps = [torch.zeros(1, 1, 416 // s, 416 // s) for s in (32, 16, 8)]
    torch.testing.assert_close(model.anchors_for(maps)[0],
                               torch.cat(ref.yolo_anchors([m.shape[-2:] for m in maps], ref.YOLO_BASE_SIZES[416])).float())


# ------------------------------------------------------------------------------------- yolov3_mobilenetv2
@pytest.mark.parametrize("size", [320, 416])
def test_yolov3_mobilenetv2_import_is_function_preserving(size):
    """The 320 and 416 px configs hold the same tensors; their anchors differ (``anchors: mmdet_<size>``).
    The raw outputs are checked at a small input, detections at the config's."""
    state = mmdet_state("yolov3_mobilenetv2")
    model, mapped, fresh = imported(state, {**YOLOV3, "input_size": size, "anchors": f"mmdet_{size}"}, 80)
    every_key_used_once(state, mapped, fresh)
    x = normalised(size)
    with torch.no_grad():
        want_maps = ref.yolov3_forward(state, x)
        got_maps = model.head(list(model.backbone(x).values()))
        got = family_of(model).detect(model, x)
    for g, w in zip(got_maps, want_maps):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    want, candidates = ref.yolov3_predict(want_maps, ref.YOLO_BASE_SIZES[size])
    assert candidates < 1000  # MMDetection 3.x: top 1000 (anchor, class) pairs; nasdet: 1000 per scale by objectness
    same_detections(got, want)


# -------------------------------------------------------------------------------------- retinanet_r50_fpn
@pytest.fixture(scope="module")
def retinanet():
    """The file's one ResNet-50 build, imported from a random retinanet_r50_fpn state_dict."""
    state = mmdet_state("retinanet_r50_fpn")
    model, mapped, fresh = imported(state, RETINANET, 80)
    return state, model, mapped, fresh


def test_retinanet_r50_fpn_import_is_function_preserving(retinanet):
    state, model, mapped, fresh = retinanet
    every_key_used_once(state, mapped, fresh)
    (cls_scores, bbox_preds), out, got = run_both(model, ref.retinanet_forward, state, 64)
    same_raw_outputs(out, cls_scores, bbox_preds, 9, lambda cls: cls, lambda got: got[..., 1:])
    assert bool((out["cls_logits"][..., 0].sigmoid() == 0).all())  # torchvision's background column: never scored
    anchors = ref.retinanet_anchors([c.shape[-2:] for c in cls_scores])
    want = ref.dense_predict(cls_scores, bbox_preds, anchors, (64, 64), softmax=False, stds=[1.0] * 4,
                             score_thr=0.05, nms_pre=1000, nms_iou=0.5, max_per_img=100)
    same_detections(got, want)


# ------------------------------------------------------------------------------------------- class sets
RUN_CLASSES = [(1, "person"), (3, "car"), (18, "dog")]


@pytest.mark.parametrize("name, cfg_kw, lead", [("ssdlite_mobilenetv2", SSDLITE, 1),
                                                ("yolov3_mobilenetv2", {**YOLOV3, "input_size": 320}, 5)])
def test_run_classes_among_the_checkpoints_keep_their_rows(name, cfg_kw, lead):
    """A run on some of the checkpoint's classes (by name) takes each one's rows of the class layers."""
    state = mmdet_state(name)
    model, mapped, _ = imported(state, cfg_kw, len(RUN_CLASSES), RUN_CLASSES, COCO80)
    assert mapped.picked_classes and mapped.reinitialised == []
    columns = [*range(lead), *(lead + COCO80.index(n) for _, n in RUN_CLASSES)]
    x = normalised(96)
    with torch.no_grad():
        got = model.head(list(model.backbone(x).values()))
        if name.startswith("yolo"):
            for g, w in zip(got, ref.yolov3_forward(state, x)):
                w = w.view(1, 3, 85, *w.shape[-2:])[:, :, columns]
                torch.testing.assert_close(g, w.reshape(g.shape), atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(got["cls_logits"], ssdlite_class_logits(state, x)[..., columns], atol=1e-5, rtol=0)


def test_other_classes_start_the_class_layers_afresh(retinanet):
    """Other class names, even as many as the checkpoint's, re-initialise the class layers only (said)."""
    state, _, _, _ = retinanet
    others = [(i + 1, f"part{i}") for i in range(80)]
    model = build_detector(make_model_config(**RETINANET), num_classes=80)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    mapped = map_detector_weights(model, state, "mmdet.pth", "retinanet", classes=others, checkpoint_classes=COCO80)
    assert mapped.reinitialised == ["head.classification_head.cls_logits"] and not mapped.picked_classes
    for k, v in mapped.state.items():
        assert torch.equal(v, fresh[k]) == k.startswith("head.classification_head.cls_logits."), k


# ----------------------------------------------------------------------------------- the baseline of a run
def ssdlite_class_logits(state, x, forward=ref.ssdlite_forward, anchors=6):
    """MMDetection's ssdlite class outputs of all levels as torchvision's SSD orders them (background first)."""
    w = torch.cat([c.permute(0, 2, 3, 1).reshape(1, -1, c.shape[1] // anchors) for c in forward(state, x)[0]], 1)
    return torch.cat([w[..., -1:], w[..., :-1]], -1)


def enot_class_logits(state, x):
    return ssdlite_class_logits(state, x, ref.enot_ssd_forward, 15)


START_FROM = {  # MMDetection model: the run's model keys, its raw outputs and MMDetection's, as one tensor
    "ssdlite_mobilenetv2": ({"detector": "ssdlite", "extra_channels": [512, 256, 256, 128]},
                            lambda out: out["cls_logits"], ssdlite_class_logits),
    "enot_ssd_mnv2": ({"detector": "ssdlite", "layout": "enot", "extra_channels": [512, 256]}, lambda out: out["cls_logits"],
                      lambda state, x: enot_class_logits(state, x)),
    "yolov3_mobilenetv2": ({"detector": "yolov3", "neck_channels": [96] * 3, "head_channels": [96] * 3},
                           lambda out: torch.cat([o.flatten() for o in out]),
                           lambda state, x: torch.cat([o.flatten() for o in ref.yolov3_forward(state, x)])),
}


@pytest.mark.parametrize("name", list(START_FROM))
def test_mmdet_checkpoint_becomes_the_baseline_and_starts_the_supernet(tiny_config, tmp_path, name):
    """ENOT's start from MMDetection's detector: a 2.x file trained on the run's classes (meta CLASSES) is
    mapped, written as baseline/ckpt/last.pt and evaluated; nasdet's reader rebuilds MMDetection's function,
    and the mbv2_elastic supernet's default subnet starts as it."""
    from nasdet.data.synthetic import SHAPE_CLASSES
    from nasdet.models.supernet import build_supernet, set_detector_arch
    from nasdet.stages.baseline import run_baseline
    from nasdet.stages.common import baseline_config
    from nasdet.train.supernet import init_from_checkpoint
    from nasdet.train.trained import load_trained_model
    from nasdet.workdir import WorkDir

    model_keys, raw, reference = START_FROM[name]
    state = mmdet_state(name, num_classes=len(SHAPE_CLASSES))
    path = saved(state, tmp_path / "mmdet.pth", SHAPE_CLASSES, version=2)
    model_keys = {"layout": "mmdetection", **model_keys, "backbone": {"name": "mbv2_elastic", "width_mult": 1.0}}
    cfg = tiny_config(model_keys.pop("detector"), model=model_keys,
                      pipeline={"baseline_backbone": "mobilenet_v2", "init_supernet_from_baseline": True,
                                "baseline_checkpoint": str(path)})
    metrics = run_baseline(cfg)
    out = WorkDir.of(cfg).baseline
    record = json.loads(out.metrics.read_text())
    assert record["imported_from"]["format"] == "mmdetection" and record["step"] == 0 and "AP" in metrics
    baseline = load_trained_model(baseline_config(cfg), out.checkpoint, len(SHAPE_CLASSES)).eval()
    supernet, space = build_supernet(cfg, len(SHAPE_CLASSES))
    init_from_checkpoint(supernet, str(out.checkpoint))
    set_detector_arch(supernet, space.default(), space)
    x = normalised(96)
    with torch.no_grad():
        want = reference(state, x)
        for model, atol in ((baseline, 1e-5), (supernet.eval(), 1e-4)):  # the supernet's 1x1 sums run in slices
            torch.testing.assert_close(raw(model.head(list(model.backbone(x).values()))), want, atol=atol, rtol=1e-4)


# ------------------------------------------------------------------------------------ foreign checkpoints
@pytest.mark.parametrize("state, cfg_kw, found", [
    (lambda: mmdet_state("yolov3_mobilenetv2"), SSDLITE, "an MMDetection yolov3 on MobileNetV2"),
    (lambda: mmdet_state("ssdlite_mobilenetv2"), {**SSDLITE, "layout": "nasdet"}, "set model.layout: mmdetection"),
    (lambda: mmdet_state("enot_ssd_mnv2"), SSDLITE, "looks like an MMDetection ssd_mnv2 of ENOT (SSDHead, depthwise; "
     "SSDNeck of full 3x3 convs) on MobileNetV2"),
    (lambda: mmdet_state("enot_ssd_mnv2"), {**SSDLITE, "layout": "nasdet"}, "set model.detector: ssdlite, model.layout: enot"),
    (lambda: mmdet_state("ssdlite_mobilenetv2"), ENOT, "an MMDetection ssdlite (SSDHead, depthwise) on MobileNetV2"),
    (lambda: mmdet_state("yolov3_mobilenetv2"), {**YOLOV3, "layout": "nasdet", "input_size": 320},
     "set model.layout: mmdetection (its LeakyReLU backbone)"),
    (lambda: {k: v for k, v in mmdet_state("ssdlite_mobilenetv2").items() if "extra_layers.3" not in k}, SSDLITE,
     "missing, e.g. ['backbone.extras.3.0.weight'"),
    # a ResNet's backbone.conv1.weight met MobileNetV2's conv1 rule: a traceback (qa_recipes #4)
    (lambda: mmdet_state("retinanet_r50_fpn"), SSDLITE, "an MMDetection retinanet on ResNet"),
])
def test_foreign_mmdet_checkpoint_is_one_line(state, cfg_kw, found):
    model = build_detector(make_model_config(**cfg_kw), num_classes=80)
    with pytest.raises(CheckpointError) as e:
        map_detector_weights(model, state(), "mmdet.pth", "the config's detector")
    assert found in str(e.value) and "mmdet.pth" in str(e.value) and "\n" not in str(e.value)
