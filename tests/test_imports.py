"""Trained detectors from torchvision as nasdet detectors: exact layouts (sizes against torchvision's own
models), function-preserving key mappings (raw head outputs and detections equal to torchvision's on the
same images), other class sets (class layers re-initialised) and foreign checkpoints (one line)."""
import re
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor

from conftest import randomize
from nasdet.config import make_model_config
from nasdet.errors import CheckpointError
from nasdet.models import build_detector
from nasdet.models.detectors import set_aspect_resize
from nasdet.models.imports import map_detector_weights, read_weights

SIZE = 128
R50_SIZE = 64  # P2-P7 of 16 .. 1 px


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


def trained_like(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters (fresh ones are identities, which would hide a swapped BN)."""
    return randomize(model).eval()


def set_torchvision_size(model: nn.Module, size: int) -> None:
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (size,), size, (size, size)


def imported(reference: nn.Module, cfg, num_classes: int, tmp_path=None, payload=lambda sd: sd) -> nn.Module:
    """``reference``'s weights (saved as torchvision does and read back, with ``tmp_path``) mapped into
    nasdet's detector of ``cfg``."""
    weights = payload(reference.state_dict())
    if tmp_path is not None:
        torch.save(weights, tmp_path / "reference.pth")
        weights = read_weights(tmp_path / "reference.pth")
    model = build_detector(cfg, num_classes=num_classes)
    mapped = map_detector_weights(model, weights, "reference.pth", cfg.detector)
    assert mapped.source_format == "torchvision" and mapped.reinitialised == []
    model.load_state_dict(mapped.state)
    return model.eval()


def assert_same_function(reference: nn.Module, model: nn.Module, raw=lambda m, x: m.head(list(m.backbone(x).values())),
                         size: int = SIZE):
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want, got = raw(reference, x), raw(model, x)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)
        images = [torch.rand(3, size, size), torch.rand(3, size - 20, size + 30)]
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


RETINANET = {"score_thresh": 0.01, "nms_thresh": 0.5, "detections_per_img": 300, "topk_candidates": 1000}
FASTER_RCNN = {"score_thresh": 0.0, "nms_thresh": 0.5, "detections_per_img": 100}
R50_DETECTORS = {  # torchvision builder: nasdet detector, the thresholds both get (+ variant), raw outputs
    "retinanet_resnet50_fpn": ("retinanet", RETINANET, None),
    "retinanet_resnet50_fpn_v2": ("retinanet", {**RETINANET, "variant": "v2"}, None),
    "fcos_resnet50_fpn": ("fcos", {"score_thresh": 0.05, "nms_thresh": 0.6, "detections_per_img": 100,
                                   "topk_candidates": 1000}, None),
    "fasterrcnn_resnet50_fpn": ("faster_rcnn", FASTER_RCNN, rpn_and_box_head),
    "fasterrcnn_resnet50_fpn_v2": ("faster_rcnn", {**FASTER_RCNN, "variant": "v2"}, rpn_and_box_head),
}


@pytest.mark.parametrize("builder", list(R50_DETECTORS))
def test_resnet50_fpn_import_is_function_preserving(builder):
    detector, thresholds, raw = R50_DETECTORS[builder]
    reference = getattr(torchvision.models.detection, builder)(weights=None, weights_backbone=None, num_classes=4)
    trained_like(reference)
    if detector == "faster_rcnn":  # random BN statistics blow features up: keep the decoded boxes inside the image
        reference.roi_heads.box_predictor.bbox_pred.weight.data.mul_(1e-3)
    set_torchvision_size(reference, R50_SIZE)
    target = reference.roi_heads if detector == "faster_rcnn" else reference  # where torchvision keeps them
    for k, v in thresholds.items():
        if k != "variant":
            setattr(target, k, v)
    cfg = make_model_config(detector=detector, backbone={"name": "resnet50"}, input_size=R50_SIZE, **thresholds)
    model = imported(reference, cfg, 3, payload=frozen_bn_state)
    assert_same_function(reference, model, **({"raw": raw} if raw else {}), size=R50_SIZE)
    # evaluated as torchvision tests it (aspect kept: shorter side min_size, longer at most max_size; nasdet eval
    # --keep-aspect): the same detections on non-square images, which the square input_size resizes otherwise
    reference.transform.min_size, reference.transform.max_size, reference.transform.fixed_size = (R50_SIZE,), 80, None
    set_aspect_resize(model, R50_SIZE, 80)
    images = [torch.rand(3, 70, 120), torch.rand(3, 100, 60)]
    with torch.no_grad():
        want, got = reference(images), model(images)
    for w, g in zip(want, got):
        assert len(w["boxes"]) > 0 and torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], w["scores"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- the baseline of a run, classes
def saved(model: nn.Module, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def test_torchvision_checkpoint_becomes_the_baseline(tiny_config, tmp_path):
    """pipeline.baseline_checkpoint: mapped, written as baseline/ckpt/last.pt in nasdet's format, evaluated on
    val; a rerun with the same file is skipped; nasdet's own readers rebuild it with torchvision's function."""
    from rich.console import Console

    from nasdet.stages.baseline import run_baseline
    from nasdet.train.trained import load_trained_model
    from nasdet.workdir import WorkDir

    reference = trained_like(torchvision_ssdlite(9))  # the shapes set's 8 classes + background
    path = saved(reference, tmp_path / "ssdlite.pth")
    cfg = tiny_config("ssdlite", model={"layout": "torchvision", "extra_channels": [512, 256, 256, 128],
                                        "backbone": {"name": "mobilenet_v3_large", "width_mult": 1.0, "reduced_tail": True}},
                      pipeline={"baseline_checkpoint": path}, eval={"max_images": 3})
    out = WorkDir.of(cfg).baseline
    # stopped during its evaluation (minutes on COCO): nothing is left, so any rerun imports again (the checkpoint
    # written before it was taken for a training under way: "written for None total steps ... changed")
    import nasdet.stages.baseline

    def stopped(*a, **k):
        raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nasdet.stages.baseline, "evaluate_detector", stopped)
        with pytest.raises(KeyboardInterrupt):
            run_baseline(cfg)
    assert not out.checkpoint.exists() and not out.metrics.exists()
    metrics = run_baseline(cfg)
    record = __import__("json").loads(out.metrics.read_text())
    assert record["imported_from"]["format"] == "torchvision" and record["step"] == 0 and "AP" in metrics
    assert record["val_images"] == 3  # eval.max_images, as every other stage scores (it scored all 8)
    model = load_trained_model(cfg, out.checkpoint, 8).eval()
    set_torchvision_size(reference, 96)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.head(list(model.backbone(x).values()))["cls_logits"],
                                   reference.head(list(reference.backbone(x).values()))["cls_logits"], atol=1e-5, rtol=0)
    before = out.checkpoint.stat().st_mtime_ns
    assert run_baseline(cfg) == metrics and out.checkpoint.stat().st_mtime_ns == before
    # rerun without the key that imported it (`nasdet train CONFIG` alone): the imported baseline is the stage's
    plain = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": None})})
    assert run_baseline(plain) == metrics and out.checkpoint.stat().st_mtime_ns == before
    # another eval.max_images: evaluated again on that many images (its record said 3), not imported again
    for run in (cfg, plain):
        for n, images in ((None, 8), (3, 3)):
            again = run.model_copy(update={"eval": run.eval.model_copy(update={"max_images": n})})
            console = Console(record=True, width=400)
            rescored = run_baseline(again, console=console)
            assert __import__("json").loads(out.metrics.read_text())["val_images"] == images
            assert f"evaluated again on {images} val images" in console.export_text()
            assert out.checkpoint.stat().st_mtime_ns == before
    assert rescored == metrics  # the same weights on the same 3 images
    # another file over it would lose it: refused, nothing written
    from nasdet.errors import ConfigError

    other = saved(trained_like(torchvision_ssdlite(9)), tmp_path / "other.pth")
    again = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": other})})
    with pytest.raises(ConfigError, match=f"already holds a baseline imported from {path}.*another work dir"):
        run_baseline(again)
    assert out.checkpoint.stat().st_mtime_ns == before
    # over a trained baseline (a record without imported_from): refused as well
    record.pop("imported_from")
    out.metrics.write_text(__import__("json").dumps(record))
    with pytest.raises(ConfigError, match="already holds a trained baseline"):
        run_baseline(cfg)
    assert out.checkpoint.stat().st_mtime_ns == before


def test_other_classes_keep_all_but_the_class_layers():
    """A COCO-trained ssdlite320 (91 torchvision labels) for an 8-class run: every tensor but the
    classification 1x1 convs comes from it; those keep the new model's own initialisation and are named."""
    from nasdet.models.imports.torchvision_detection import torchvision_keys

    reference = trained_like(torchvision_ssdlite(91))
    model = build_detector(ssdlite_config(), num_classes=8)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    mapped = map_detector_weights(model, reference.state_dict(), "coco.pth", "ssdlite")
    assert mapped.reinitialised == [f"head.classification_head.module_list.{i}.1" for i in range(6)]
    rename = torchvision_keys(model)
    theirs = {rename(k): v for k, v in reference.state_dict().items()}
    for k, v in mapped.state.items():
        new = any(k.startswith(name + ".") for name in mapped.reinitialised)
        assert torch.equal(v, fresh[k] if new else theirs[k]), k
    assert sum(not torch.equal(v, fresh[k]) for k, v in mapped.state.items()) > 300  # not the fresh model


def assert_logits_are_columns(model, state: dict, reference, columns: list[int]) -> None:
    """``model`` with ``state`` gives, on a random image, the ``columns`` of ``reference``'s class logits."""
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        want = reference.head(list(reference.backbone(x).values()))["cls_logits"][..., columns]
        torch.testing.assert_close(model.head(list(model.backbone(x).values()))["cls_logits"], want, atol=1e-5, rtol=0)


COCO_CLASSES = [(1, "person"), (3, "car"), (18, "dog"), (90, "toothbrush")]  # category ids as in COCO's json


def test_coco_classes_keep_their_rows_of_torchvisions_91_labels():
    """A run on COCO classes (ids and names as COCO's) takes each class's own rows of a COCO-trained head."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from nasdet.models.imports import coco_rows

    reference = trained_like(torchvision_ssdlite(91))
    model = build_detector(ssdlite_config(), num_classes=len(COCO_CLASSES))
    mapped = map_detector_weights(model, reference.state_dict(), "coco.pth", "ssdlite", classes=COCO_CLASSES)
    assert mapped.coco_labels and mapped.reinitialised == [] and mapped.picked_classes is False  # it said "picked by name"
    columns = [0] + [i for i, _ in COCO_CLASSES]
    assert_logits_are_columns(model, mapped.state, reference, columns)
    # Faster R-CNN's box deltas are 4 rows per class
    coco, ours = FastRCNNPredictor(16, 91), FastRCNNPredictor(16, 1 + len(COCO_CLASSES))
    ids = [i for i, _ in COCO_CLASSES]
    ours.load_state_dict({k: coco_rows(v, ids, 4 if k.startswith("bbox_pred") else 1) for k, v in coco.state_dict().items()})
    feats = torch.randn(3, 16)
    (s0, b0), (s1, b1) = coco(feats), ours(feats)
    torch.testing.assert_close(s1, s0[:, columns])
    torch.testing.assert_close(b1, b0.view(3, 91, 4)[:, columns].reshape(3, -1))
    other = map_detector_weights(model, reference.state_dict(), "coco.pth", "ssdlite", classes=[(1, "circle")] * 4)
    assert not other.coco_labels and len(other.reinitialised) == 6


def test_torchvision_labels_at_gapped_category_ids_keep_their_rows():
    """torchvision's references train on a COCO file's category ids as labels (num_classes = largest id + 1): a
    user's set with ids 4, 7, .., 25 (a CVAT export, a subset of a taxonomy) gives a 26-label head whose rows of
    each class are at its id. The import threw those trained layers away ("its classes are not the data's")."""
    classes = [(3 * k + 1, f"shape{k}") for k in range(1, 9)]  # ids 4, 7, .., 25
    reference = trained_like(torchvision_ssdlite(26))
    model = build_detector(ssdlite_config(), num_classes=len(classes))
    mapped = map_detector_weights(model, reference.state_dict(), "mine.pth", "ssdlite", classes=classes)
    assert mapped.category_id_labels and mapped.reinitialised == [] and not mapped.coco_labels
    assert_logits_are_columns(model, mapped.state, reference, [0] + [i for i, _ in classes])
    # a head of another label count is not taken for it
    other = map_detector_weights(model, trained_like(torchvision_ssdlite(30)).state_dict(), "other.pth", "ssdlite",
                                 classes=classes)
    assert not other.category_id_labels and len(other.reinitialised) == 6


def test_baseline_of_other_classes_is_fine_tuned(tiny_config, tmp_path, capsys):
    """The stage says which layers start afresh and trains the baseline from the checkpoint (a nasdet
    checkpoint of 90 classes here: the same path as torchvision's, on a model small enough to train)."""
    from rich.console import Console

    from nasdet.stages.baseline import run_baseline
    from nasdet.workdir import WorkDir

    cfg = tiny_config("ssdlite", train={"max_steps": 2})
    coco = randomize(build_detector(cfg.model, num_classes=90))
    torch.save({"model": coco.state_dict()}, tmp_path / "coco.pt")
    cfg = tiny_config("ssdlite", train={"max_steps": 2}, pipeline={"baseline_checkpoint": str(tmp_path / "coco.pt")})
    run_baseline(cfg, console=Console(width=400))
    said = capsys.readouterr().out
    assert "re-initialised head.classification_head.module_list.0.1" in said and "fine-tuning" in said
    out = WorkDir.of(cfg).baseline
    record = __import__("json").loads(out.metrics.read_text())
    assert record["step"] == 2 and record["imported_from"]["format"] == "nasdet" and record["val_images"] == 8
    # rerun with eval.max_images: the fine-tuned weights are evaluated again on 3 images, not trained again
    before = out.checkpoint.stat().st_mtime_ns
    run_baseline(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_images": 3})}),
                 console=Console(width=400))
    assert "evaluated again on 3 val images (its record had 8" in capsys.readouterr().out
    again = __import__("json").loads(out.metrics.read_text())
    assert again["val_images"] == 3 and again["step"] == 2 and out.checkpoint.stat().st_mtime_ns == before
    # the fine-tune is a training like any other: a longer max_steps continues it, a changed recipe is refused
    # (a rerun said "imported" and kept step 2 for both)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 3})})
    run_baseline(longer, console=Console(width=400))
    assert "resumed at step 2" in capsys.readouterr().out
    record = __import__("json").loads(out.metrics.read_text())
    assert record["step"] == 3 and record["imported_from"]["format"] == "nasdet"
    from nasdet.errors import ResumeMismatch

    other_lr = longer.model_copy(update={"train": longer.train.model_copy(update={
        "optimizer": longer.train.optimizer.model_copy(update={"lr": 0.5})})})
    with pytest.raises(ResumeMismatch, match="train.optimizer.lr"):
        run_baseline(other_lr, console=Console(width=400))


def test_an_interrupted_fine_tune_of_an_import_resumes_from_any_folder(tiny_config, tmp_path, monkeypatch):
    """The import's fine-tune, stopped, was recognised by its file's path resolved from the current folder: given
    relative (as README's commands do) and continued from another folder, or given absolute, it was refused as "a
    baseline whose training is under way" (delete it, said the message). Its start is recorded by content now;
    another file at that path is still refused."""
    from rich.console import Console

    from nasdet.errors import ConfigError
    from nasdet.stages.baseline import run_baseline
    from nasdet.workdir import WorkDir

    quiet = Console(file=__import__("io").StringIO())
    cfg = tiny_config("ssdlite", train={"max_steps": 2, "ckpt_every_steps": 1})
    torch.save({"model": randomize(build_detector(cfg.model, num_classes=90)).state_dict()}, tmp_path / "coco.pt")
    monkeypatch.chdir(tmp_path)

    def importing(path):
        return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": path})})
    run_baseline(importing("coco.pt"), console=quiet)
    out = WorkDir.of(cfg).baseline
    out.metrics.unlink()  # as if stopped after its last checkpoint
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_baseline(importing(str(tmp_path / "coco.pt")), console=quiet)["AP"] >= 0
    assert out.metrics.is_file()
    # the file moved away since: every rerun of the same command stopped ("does not exist"); the stage holds it all
    (tmp_path / "coco.pt").rename(tmp_path / "moved.pt")
    said = Console(file=__import__("io").StringIO(), width=400)
    assert run_baseline(importing(str(tmp_path / "coco.pt")), console=said)["AP"] >= 0
    assert "is not there; " in said.file.getvalue() and "holds its import: going on from it" in said.file.getvalue()
    out.metrics.unlink()  # its fine-tune under way: resumed, and its record still says what it came from
    run_baseline(importing(str(tmp_path / "coco.pt")), console=quiet)
    assert __import__("json").loads(out.metrics.read_text())["imported_from"]["format"] == "nasdet"
    (tmp_path / "moved.pt").rename(tmp_path / "coco.pt")
    out.metrics.unlink()
    torch.save({"model": randomize(build_detector(cfg.model, num_classes=90), seed=1).state_dict()}, tmp_path / "coco.pt")
    with pytest.raises(ConfigError, match="already holds a baseline whose training is under way"):
        run_baseline(importing(str(tmp_path / "coco.pt")), console=quiet)


def test_a_backbone_file_trained_again_is_another_start(tiny_config, tmp_path):
    """A baseline (or a tune from scratch: DetNAS step 5) started from model.backbone.checkpoint resumed silently
    after that file was written again (step 4 rerun): only the supernet compared its start file's bytes."""
    from rich.console import Console

    from nasdet.config import BackboneConfig
    from nasdet.models.backbones import build_backbone
    from nasdet.stages.common import train_detector

    quiet = Console(file=__import__("io").StringIO())
    start = tmp_path / "backbone.pt"
    backbone = {"name": "mobilenet_v3_small", "width_mult": 0.5}
    torch.save(randomize(build_backbone(BackboneConfig(**backbone))).state_dict(), start)
    cfg = tiny_config("ssdlite", model={"backbone": {**backbone, "checkpoint": str(start)}},
                      train={"max_steps": 1, "ckpt_every_steps": 1})
    train_detector(cfg, None, "own", console=quiet)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 2})})
    torch.save(randomize(build_backbone(BackboneConfig(**backbone)), seed=1).state_dict(), start)
    with pytest.raises(CheckpointError, match=r"was trained from model.backbone.checkpoint .*backbone.pt .*another "
                                              r"file or one trained again since: delete .*own to train from it"):
        train_detector(longer, None, "own", console=quiet)


def test_a_nasdet_checkpoint_of_other_class_names_starts_the_class_layers_afresh(tiny_config, tmp_path, capsys):
    """nasdet's checkpoints record their classes (id, name): one of the same count but other names had its class
    rows kept by index, so every detection of those classes was mislabelled (two swapped: now each keeps its own
    rows; one renamed: the class layers start afresh); a checkpoint without the record is kept by index, with a
    warning."""
    from rich.console import Console

    from nasdet.data.build import build_datasets
    from nasdet.stages.baseline import run_baseline
    from nasdet.train.checkpoint import load_checkpoint
    from nasdet.workdir import WorkDir

    cfg = tiny_config("ssdlite", train={"max_steps": 1})
    val = build_datasets(cfg, need=("val",))["val"]
    weights = randomize(build_detector(cfg.model, num_classes=val.num_classes)).state_dict()
    own = [[i, n] for i, n in zip(val.category_ids, val.classes)]
    swapped = [[own[0][0], own[1][1]], [own[1][0], own[0][1]], *own[2:]]
    renamed = [[own[0][0], "not a class of the data"], *own[1:]]
    for name, classes in (("swapped", swapped), ("renamed", renamed), ("unnamed", None), ("same", own)):
        torch.save({"model": weights, **({"classes": classes} if classes else {})}, tmp_path / f"{name}.pt")
        run = tiny_config("ssdlite", train={"max_steps": 1}, work_dir=str(tmp_path / name),
                          pipeline={"baseline_checkpoint": str(tmp_path / f"{name}.pt")})
        run_baseline(run, console=Console(width=400))
        said, out = " ".join(capsys.readouterr().out.split()), WorkDir.of(run).baseline
        record = __import__("json").loads(out.metrics.read_text())
        assert ("re-initialised head.classification_head" in said) == (name == "renamed"), said
        assert ("picked by name" in said) == (name == "swapped"), said
        assert ("records no class names" in said) == (name == "unnamed"), said
        assert record["step"] == (1 if name == "renamed" else 0)  # fine-tuned for the new class layers
        assert load_checkpoint(out.checkpoint)["classes"] == own  # the stage's checkpoint records the data's


# ------------------------------------------------------------------------------------ foreign checkpoints
@pytest.mark.parametrize("what, make, found", [
    ("classification", lambda: torchvision.models.mobilenet_v3_large(weights=None).state_dict(), "a classification network"),
    ("detector", lambda: torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None,
                                                                       num_classes=9).state_dict(), "fcos_resnet50_fpn"),
    ("mobilenet frcnn", lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=9).state_dict(),
     "fasterrcnn_mobilenet_v3_large_fpn (or _320_fpn) layout ("),
    ("width", lambda: build_detector(make_model_config(detector="ssdlite", layout="torchvision", backbone={
        "name": "mobilenet_v3_large", "width_mult": 0.5, "reduced_tail": True}), num_classes=8).state_dict(), "in the checkpoint but"),
    ("not a state_dict", lambda: {"epoch": 3}, "holds no state_dict of tensors"),
])
def test_foreign_checkpoint_is_one_line(tmp_path, what, make, found):
    path = tmp_path / "foreign.pth"
    torch.save(make(), path)
    model = build_detector(ssdlite_config(), num_classes=8)
    with pytest.raises(CheckpointError) as e:
        map_detector_weights(model, read_weights(path), str(path), "ssdlite (layout torchvision)")
    message = str(e.value)
    assert found in message and str(path) in message and "\n" not in message
    # which torchvision files nasdet imports, for one of another torchvision detector
    assert ("; nasdet imports torchvision's ssdlite320" in message) == (what == "mobilenet frcnn"), message


def test_checkpoint_errors_name_the_key_a_folder_and_the_settings_of_a_known_layout(tmp_path, monkeypatch):
    """A folder given as a checkpoint was said not to exist; pipeline.baseline_checkpoint's errors said only
    "checkpoint X"; torchvision's ssdlite320 into a nasdet-layout config was recognised but not how to set it."""
    from nasdet.models.backbones import load_backbone_checkpoint
    from nasdet.models.backbones.pretrained import load_torchvision_imagenet, torchvision_weights, torchvision_weights_file
    from nasdet.models.imports import read_checkpoint

    for load, key in ((lambda p: read_checkpoint(p, "pipeline.baseline_checkpoint"), "pipeline.baseline_checkpoint"),
                      (lambda p: load_backbone_checkpoint(nn.Linear(1, 1), p), "model.backbone.checkpoint")):
        with pytest.raises(CheckpointError, match=f"^{key} {tmp_path} is a folder, not a file$"):
            load(tmp_path)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(CheckpointError, match=f"^{key} ck.pth does not exist \\(a relative path, read from {tmp_path}\\)$"):
            load("ck.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=f"^pipeline.baseline_checkpoint {tmp_path / 'cut.pth'} cannot be read"):
        read_checkpoint(tmp_path / "cut.pth", "pipeline.baseline_checkpoint")
    # a folder where torchvision's cached file should be: not "the download failed"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision_weights("mobilenet_v3_large", "imagenet")
    torchvision_weights_file(weights).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is a folder where torchvision's file should be"):
        load_torchvision_imagenet(weights)
    path = saved(torchvision_ssdlite(9), tmp_path / "ssdlite320.pth")
    model = build_detector(make_model_config(detector="ssdlite", backbone={"name": "mobilenet_v3_large"}), num_classes=8)
    with pytest.raises(CheckpointError, match="model.layout: torchvision, model.backbone: {name: mobilenet_v3_large, "
                                              "width_mult: 1.0, reduced_tail: true}"):
        map_detector_weights(model, read_weights(path), path, "ssdlite")


def test_checkpoint_with_nan_weights_or_a_ddp_prefix(tmp_path):
    """A checkpoint with non-finite weights (a diverged training's last one) was imported silently and scored 0
    AP; a state_dict saved from a DDP wrapper (keys under ``module.``) was not recognised; and a file holding no
    tensors was named by its inner key ('state_dict ...') instead of the config key."""
    from nasdet.models.imports import read_checkpoint

    state = torchvision_ssdlite(9).state_dict()
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    weights, _ = read_checkpoint(tmp_path / "ddp.pth", "pipeline.baseline_checkpoint")
    assert list(weights) == list(state) and all(torch.equal(weights[k], v) for k, v in state.items())
    for prefix in ("_orig_mod.", "module._orig_mod.", "_orig_mod.module."):  # torch.compile's wrapper (QA: refused as 476 unknown keys)
        torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "compiled.pth")
        weights, _ = read_checkpoint(tmp_path / "compiled.pth", "pipeline.baseline_checkpoint")
        assert list(weights) == list(state)
    broken = dict(state)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    broken[name] = broken[name].clone()
    broken[name][0] = float("nan")
    torch.save({"model": broken}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=f"^pipeline.baseline_checkpoint {tmp_path / 'nan.pth'} has non-finite "
                                              f"weights \\(NaN or inf\\) in 1 tensors, e.g. \\['{re.escape(name)}'\\]"):
        read_checkpoint(tmp_path / "nan.pth", "pipeline.baseline_checkpoint")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match="^pipeline.baseline_checkpoint .*nothing.pth holds no state_dict"):
        read_checkpoint(tmp_path / "nothing.pth", "pipeline.baseline_checkpoint")


def test_export_normalises_as_the_detector():
    """ssdlite320's layout scales inputs to [-1, 1]: the exported graph's preprocessing is the model's own."""
    from nasdet.export import EndToEndDetector

    model = trained_like(build_detector(ssdlite_config(score_thresh=0.2), num_classes=3))
    img = (torch.rand(3, 90, 120) * 255).to(torch.uint8)
    with torch.no_grad():
        boxes, scores, labels = EndToEndDetector(model)(img)
        own = model([img.float() / 255.0])[0]
    assert len(scores) > 0
    torch.testing.assert_close(scores, own["scores"], atol=1e-4, rtol=0)
    assert torch.equal(labels, own["labels"])


# -------------------------------------------------------------------------- MMDetection's ssdlite_mobilenetv2
def mmdet_ssdlite_mobilenetv2_layers(size: int = 320, num_classes: int = 80):
    """Convs of MMDetection's ssdlite_mobilenetv2 (configs/ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py),
    written from its config and modules, not from nasdet's: MobileNetV2 with out_indices (4, 7) (the 96-channel
    stage, stride 16, and conv2 to 1280); SSDNeck with use_depthwise: per extra level a 1x1 ConvModule to
    out // 2, then a DepthwiseSeparableConvModule (3x3 stride 2 depthwise, 1x1 to out), BN and ReLU6 everywhere
    (mmdet/models/necks/ssd_neck.py); SSDHead with use_depthwise: per level a 3x3 depthwise ConvModule and a
    1x1 conv with bias to 6 priors x (K + 1) or x 4 (mmdet/models/dense_heads/ssd_head.py; 6 = 2 + 2 x the
    ratios [2, 3] of its SSDAnchorGenerator). (cin, cout, kernel, groups, out side, bias, bn)."""
    layers, h = [(3, 32, 3, 1, size // 2, False, True)], size // 2
    cin = 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                       [6, 320, 1, 1]]:
        for i in range(n):
            mid = int(round(cin * t))
            if t != 1:
                layers.append((cin, mid, 1, 1, h, False, True))
            h //= s if i == 0 else 1
            layers += [(mid, mid, 3, mid, h, False, True), (mid, c, 1, 1, h, False, True)]
            cin = c
    layers.append((320, 1280, 1, 1, h, False, True))  # conv2
    sides = [size // 16, size // 32]
    chans = [96, 1280]
    for out in (512, 256, 256, 128):
        side = (sides[-1] + 1) // 2  # 3x3, stride 2, padding 1
        layers += [(chans[-1], out // 2, 1, 1, sides[-1], False, True), (out // 2, out // 2, 3, out // 2, side, False, True),
                   (out // 2, out, 1, 1, side, False, True)]
        chans.append(out)
        sides.append(side)
    for c, side in zip(chans, sides):
        for outputs in (6 * (num_classes + 1), 6 * 4):
            layers += [(c, c, 3, c, side, False, True), (c, outputs, 1, 1, side, True, False)]
    return layers


def test_sizes_equal_mmdetection_ssdlite_mobilenetv2():
    """ENOT's SSD-MobileNetV2 is MMDetection's ssdlite_mobilenetv2: nasdet's ssdlite (its own layout) on
    mobilenet_v2 has its params and MACs at 320 px (MMDetection publishes neither: configs/ssd/metafile.yml)."""
    from nasdet.models.cost import detector_macs, detector_params

    layers = mmdet_ssdlite_mobilenetv2_layers()
    params = sum(ci // g * co * k * k + co * bias + 2 * co * bn for ci, co, k, g, _, bias, bn in layers)
    macs = sum(ci // g * co * k * k * side * side for ci, co, k, g, side, _, _ in layers)
    model = build_detector(make_model_config(detector="ssdlite", backbone={"name": "mobilenet_v2"}, input_size=320),
                           num_classes=80)
    assert detector_params(model)["total"] == params
    assert detector_macs(model)["total"] == macs


@pytest.mark.parametrize("backbone", [{"name": "resnet18"}, {"name": "mbv2_width", "width_mult": 0.25},
                                      {"name": "mobilenet_v2", "width_mult": 0.5}])
def test_torchvision_layout_needs_a_static_mobilenet(backbone):
    """README listed mobilenet_v2 as taking the layout, and its error too: both say MobileNetV3 now."""
    from nasdet.errors import ConfigError

    with pytest.raises(ConfigError, match="model.layout torchvision taps inside a MobileNetV3 block.*not "
                                          "mobilenet_v3_large / mobilenet_v3_small \\(on mobilenet_v2"):
        build_detector(make_model_config(detector="ssdlite", layout="torchvision", backbone=backbone), num_classes=3)


def test_layout_and_reduced_tail_are_checked():
    from nasdet.errors import ConfigError

    with pytest.raises(ConfigError, match="layout torchvision is ssdlite320's"):
        make_model_config(detector="ssd", layout="torchvision")
    with pytest.raises(ConfigError, match="reduced_tail is MobileNetV3's option, not 'resnet18'"):
        build_detector(make_model_config(detector="ssdlite", backbone={"name": "resnet18", "reduced_tail": True}),
                       num_classes=3)


def test_imported_baseline_initialises_the_supernet(tiny_config, tmp_path):
    """ENOT's start: a trained MobileNetV2 SSDLite (a file from elsewhere) becomes the baseline, and the
    mbv2_elastic supernet starts from it (pipeline.init_supernet_from_baseline): its default subnet then
    computes what the imported detector computes."""
    from nasdet.models.supernet import build_supernet, set_detector_arch
    from nasdet.stages.baseline import run_baseline
    from nasdet.train.supernet import init_from_checkpoint
    from nasdet.workdir import WorkDir

    user = tiny_config("ssdlite", model={"backbone": {"name": "mobilenet_v2", "width_mult": 0.25}})
    trained = trained_like(build_detector(user.model, num_classes=8))
    torch.save({"model": trained.state_dict()}, tmp_path / "user.pt")
    cfg = tiny_config("ssdlite", model={"backbone": {"name": "mbv2_elastic", "width_mult": 0.25}},
                      pipeline={"baseline_backbone": "mobilenet_v2", "init_supernet_from_baseline": True,
                                "baseline_checkpoint": str(tmp_path / "user.pt")})
    run_baseline(cfg)
    supernet, space = build_supernet(cfg, 8)
    init_from_checkpoint(supernet, str(WorkDir.of(cfg).baseline.checkpoint))
    set_detector_arch(supernet, space.default(), space)
    supernet.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        want = trained.head(list(trained.backbone(x).values()))
        got = supernet.head(list(supernet.backbone(x).values()))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("detector", ["ssdlite", "retinanet", "fcos", "faster_rcnn", "yolov3"])
def test_a_nasdet_checkpoint_keeps_each_named_class_s_rows(detector):
    """nasdet's checkpoints name their classes: a run on some of them, in any order, keeps each class's own rows
    (background first, YOLOv3's five box outputs per anchor before them), so its outputs for a class are the
    checkpoint's for that class."""
    cfg = make_model_config(detector=detector, backbone={"name": "mobilenet_v3_small", "width_mult": 0.5},
                            input_size=64)
    trained = randomize(build_detector(cfg, num_classes=3)).eval()
    run = [(7, "c"), (9, "a")]  # of the checkpoint's a, b, c: two, the other way round
    model = build_detector(cfg, num_classes=2).eval()
    imported = map_detector_weights(model, trained.state_dict(), "ck.pt", detector, classes=run,
                                    checkpoint_classes=["a", "b", "c"])
    assert imported.picked_classes and imported.reinitialised == []
    model.load_state_dict(imported.state)
    labels = [0, 3, 1]  # background, c, a among the checkpoint's labels
    torch.manual_seed(0)
    with torch.no_grad():
        if detector == "faster_rcnn":
            x = torch.randn(5, trained.roi_heads.box_predictor.cls_score.in_features)
            (s0, b0), (s1, b1) = trained.roi_heads.box_predictor(x), model.roi_heads.box_predictor(x)
            torch.testing.assert_close(s1, s0[:, labels])
            torch.testing.assert_close(b1, b0.view(5, 4, 4)[:, labels].reshape(5, -1))
        elif detector == "yolov3":
            for p0, p1 in zip(trained.head.preds, model.head.preds):
                x = torch.randn(1, p0.in_channels, 4, 4)  # no background column: c, a are columns 2, 0
                o0, o1 = p0(x).view(1, -1, 5 + 3, 4, 4), p1(x).view(1, -1, 5 + 2, 4, 4)
                torch.testing.assert_close(o1, torch.cat([o0[:, :, :5], o0[:, :, [5 + 2, 5 + 0]]], 2))
        else:
            x = torch.rand(1, 3, 64, 64)
            f0, f1 = trained.backbone(x), model.backbone(x)
            f0, f1 = (list(f.values()) if isinstance(f, dict) else f for f in (f0, f1))
            c0, c1 = trained.head(f0)["cls_logits"], model.head(f1)["cls_logits"]
            torch.testing.assert_close(c1, c0[..., labels])


def test_a_foreign_detector_file_given_where_a_nasdet_checkpoint_goes_says_how_to_import_it(tmp_path):
    """`nasdet eval --ckpt` of a torchvision references' file said "holds Python objects other than tensors ...
    save a plain state_dict", and of that plain state_dict "not a nasdet checkpoint": advice in a circle."""
    import argparse

    from nasdet.train.checkpoint import load_checkpoint

    state = torchvision_ssdlite(9).state_dict()
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "references.pth")
    for name in ("bare.pth", "references.pth"):
        with pytest.raises(CheckpointError, match="pipeline.baseline_checkpoint=FILE"):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("kind", ["reduced_tail", "variant"])
def test_a_file_of_the_other_tail_or_variant_names_the_setting(tiny_config, tmp_path, kind):
    """torchvision's ssdlite320 with an ImageNet backbone (full tail) into the README table's reduced-tail config,
    or a retinanet_resnet50_fpn_v2 file into variant v1: the error said "another width, backbone or layout?" and
    never the setting the table tells apart."""
    from nasdet.stages.baseline import run_baseline

    if kind == "reduced_tail":
        path = saved(torchvision_ssdlite(9, reduced_tail=False), tmp_path / "full_tail.pth")
        model = {"layout": "torchvision", "extra_channels": [512, 256, 256, 128],
                 "backbone": {"name": "mobilenet_v3_large", "width_mult": 1.0, "reduced_tail": True}}
        cfg, fits = tiny_config("ssdlite", model=model), "model.backbone.reduced_tail: false"
    else:
        path = saved(torchvision.models.detection.retinanet_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=9), tmp_path / "retina_v2.pth")
        cfg = tiny_config("retinanet", model={"backbone": {"name": "resnet50"}, "fpn_channels": 256})
        fits = "model.variant: v2"
    cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_checkpoint": path})})
    with pytest.raises(CheckpointError, match=f"the file fits with {fits}$"):
        run_baseline(cfg)


def test_a_nasdet_checkpoint_trained_with_other_anchors_is_refused(tmp_path):
    """A YOLOv3 trained with mmdet_320's anchors imported into a config with mmdet_416's loaded (the same shapes) and
    decoded every box against the other anchors, without a word (qa_recipes #5); SSD's default boxes likewise."""
    from nasdet.models.imports import read_checkpoint_and_model, refuse_other_anchors

    path = tmp_path / "last.pt"
    torch.save({"model": {"head.w": torch.zeros(2)},
                "config": {"model": {"detector": "yolov3", "anchors": "mmdet_320", "input_size": 320}}}, path)
    state, _, recorded = read_checkpoint_and_model(path)
    assert list(state) == ["head.w"] and recorded["anchors"] == "mmdet_320"
    refuse_other_anchors(recorded, {"detector": "yolov3", "anchors": "mmdet_320", "input_size": 416}, "the file")
    with pytest.raises(CheckpointError, match=r"the file was trained with other anchors \(model.anchors 'mmdet_320' "
                                              r"in the file, 'mmdet_416' here\).* set model.anchors: 'mmdet_320'"):
        refuse_other_anchors(recorded, {"detector": "yolov3", "anchors": "mmdet_416"}, "the file")
    ssd = {"detector": "ssdlite", "anchor_ratio_range": [0.2, 0.95], "anchor_aspect_ratios": None, "layout": "nasdet",
           "ssd_levels": ["c4", "c5"], "extra_channels": [64, 32, 32, 16]}
    refuse_other_anchors(ssd, {**ssd, "anchor_ratio_range": (0.2, 0.95)}, "f")  # a tuple is the list
    with pytest.raises(CheckpointError, match="anchor_ratio_range"):
        refuse_other_anchors(ssd, {**ssd, "anchor_ratio_range": (0.1, 0.9)}, "f")
    # MMDetection's anchor generator (model.layout): as many boxes, other ones (qa_s32 #5)
    with pytest.raises(CheckpointError, match="model.layout 'nasdet' in the file, 'mmdetection' here"):
        refuse_other_anchors(ssd, {**ssd, "layout": "mmdetection"}, "f")
    refuse_other_anchors(ssd, {**ssd, "anchor_aspect_ratios": [[2, 3]] * 6}, "f")  # SSDLite's default, written out
    with pytest.raises(CheckpointError, match="anchor_aspect_ratios"):
        refuse_other_anchors(ssd, {**ssd, "anchor_aspect_ratios": [[2]] * 6}, "f")
    torch.save({"w": torch.zeros(1)}, path)
    assert read_checkpoint_and_model(path)[2] is None  # a plain state_dict records no model
