"""What a deployer needs to decode nasdet's ONNX files: the raw export record's ``decode`` block alone (numpy, and
torchvision's NMS) turns the raw file's outputs and anchors into the end-to-end file's detections, for every
family with a raw file; every file carries the post-processing it bakes in and the class map in its ONNX metadata
(the INT8 file too), and the record states them; Faster R-CNN's raw file, which no dense output decodes, is
refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from rich.console import Console

from conftest import randomize

QUIET = Console(quiet=True)


def _random_detector(cfg, num_classes: int):
    """A detector whose heads give spread-out scores (random weights, randomised BN, noisy head)."""
    from nasdet.models import build_detector

    torch.manual_seed(0)
    model = randomize(build_detector(cfg.model, num_classes=num_classes))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _baseline(tiny_config, detector: str, trained: dict | None = None, **model):
    """A config whose work dir holds a baseline checkpoint of random weights (made with ``trained`` model keys)."""
    from nasdet.config import config_to_dict
    from nasdet.data.build import build_datasets
    from nasdet.train.checkpoint import save_checkpoint

    sections = {"export": {"check_images": 1, "int8": False}, "cost": {"warmup": 0, "runs": 1, "threads": 1}}
    cfg = tiny_config(detector, model=model, **sections)
    made = tiny_config(detector, model={**model, **(trained or {})}, **sections)
    val = build_datasets(cfg, need=("val",))["val"]
    save_checkpoint({"model": _random_detector(made, val.num_classes).state_dict(), "config": config_to_dict(made),
                     "step": 0}, Path(cfg.work_dir) / "baseline" / "ckpt" / "last.pt")
    return cfg, val


# ------------------------------------------------------------------------- a decoder that reads the block only
def _sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) of a very negative logit: inf, and 1 / inf = 0 is right
        return 1.0 / (1.0 + np.exp(-x))


def _boxes(coding: dict, reg: np.ndarray, anchors: np.ndarray, strides: np.ndarray | None = None) -> np.ndarray:
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    if coding["coder"] == "deltas":
        d = reg / np.asarray(coding["weights"], dtype=np.float32)
        dw, dh = np.minimum(d[:, 2], coding["max_dw_dh"]), np.minimum(d[:, 3], coding["max_dw_dh"])
        px, py, pw, ph = cx + d[:, 0] * w, cy + d[:, 1] * h, w * np.exp(dw), h * np.exp(dh)
        return np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)
    if coding["coder"] == "ltrb":
        if coding["normalize_by_size"]:
            reg = reg * np.stack([w, h, w, h], 1)
        return np.stack([cx - reg[:, 0], cy - reg[:, 1], cx + reg[:, 2], cy + reg[:, 3]], 1)
    assert coding["coder"] == "yolo"
    px, py = cx + (_sigmoid(reg[:, 0]) - 0.5) * strides, cy + (_sigmoid(reg[:, 1]) - 0.5) * strides
    pw, ph = w * np.exp(reg[:, 2]), h * np.exp(reg[:, 3])
    return np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def _candidates(block: dict, outputs: dict, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels) before NMS, at the network input's size."""
    sc, cand, coding = block["scores"], block["candidates"], block["boxes"]
    levels = np.cumsum([0, *block["anchors"]["levels"]])
    if coding["coder"] == "yolo":
        a = block["anchors_per_location"]
        rows = np.concatenate([o[0].reshape(a, -1, *o.shape[2:]).transpose(2, 3, 0, 1).reshape(-1, o.shape[1] // a)
                               for o in (outputs[n] for n in block["outputs"])])
        strides = np.concatenate([np.full(n, s, np.float32) for n, s in zip(block["anchors"]["levels"], block["strides"])])
        picked = []
        for lo, hi in zip(levels[:-1], levels[1:]):
            conf = _sigmoid(rows[lo:hi, sc["objectness_column"]])
            keep = np.where(conf >= sc["objectness_at_least"])[0]
            picked.append(lo + keep[_top(conf[keep], cand["top_k"])])
        picked = np.concatenate(picked)
        conf = _sigmoid(rows[picked, sc["objectness_column"]])
        c0, c1 = sc["class_columns"]
        prob = _sigmoid(rows[picked, c0:c1 + 1])
        row, col = np.where(prob > sc["class_prob_above"])
        boxes = _boxes(coding, rows[picked, :4], anchors[picked], strides[picked])
        return boxes[row], prob[row, col] * conf[row], col + c0 - 4
    logits = outputs[sc["output"]][0]
    if sc["activation"] == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
    else:
        p = _sigmoid(logits)
    if sc.get("times_sigmoid_of"):
        p = p * _sigmoid(outputs[sc["times_sigmoid_of"]][0])
    if sc.get("sqrt"):
        p = np.sqrt(p)
    c0, c1 = sc["columns"]
    p = p[:, c0:c1 + 1]
    boxes = _boxes(coding, outputs["bbox_regression"][0], anchors)
    if coding["clip_to_input"]:
        boxes = np.clip(boxes, 0, block["input_size"])
    pairs = []  # (anchor, column) of the candidates
    if cand["top_k_per"] == "class":
        for c in range(p.shape[1]):
            keep = np.where(p[:, c] > cand["score_above"])[0]
            pairs += [(i, c) for i in keep[_top(p[keep, c], cand["top_k"])]]
    else:
        spans = zip(levels[:-1], levels[1:]) if cand["top_k_per"] == "level" else [(0, len(p))]
        for lo, hi in spans:
            flat = p[lo:hi].reshape(-1)
            keep = np.where(flat > cand["score_above"])[0]
            pairs += [(lo + j // p.shape[1], j % p.shape[1]) for j in keep[_top(flat[keep], cand["top_k"])]]
    rows, cols = (np.asarray([q[i] for q in pairs], dtype=np.int64) for i in (0, 1))
    return boxes[rows], p[rows, cols], cols + c0


def decode_raw(block: dict, outputs: dict, anchors: np.ndarray, image_hw: tuple[int, int]) -> dict:
    """The end-to-end detections from a raw file's ``outputs`` (by name) and its anchors, following ``block``."""
    from torchvision.ops import batched_nms

    boxes, scores, labels = _candidates(block, outputs, anchors)
    if block["boxes"]["drop_empty_before_nms"]:
        keep = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    nms = block["nms"]
    assert nms["per_class"]
    keep = batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
                       torch.from_numpy(labels), nms["iou_thresh"]).numpy()[:block["detections_per_img"]]
    s, (h, w) = block["input_size"], image_hw
    return {"boxes": boxes[keep] * np.array([w / s, h / s, w / s, h / s], dtype=np.float32),
            "scores": scores[keep], "labels": labels[keep]}


def _run(path: Path, image: np.ndarray) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": image})))


def assert_same_detections(got: dict, want: dict, n: int = 15) -> None:
    """The same count; the top ``n`` of ``want`` each found in ``got`` (label, score, box), ties aside."""
    assert len(want["scores"]) > 3, "the check needs detections"
    assert len(got["scores"]) == len(want["scores"])
    np.testing.assert_allclose(np.sort(got["scores"])[::-1][:n], want["scores"][:n], atol=1e-4)
    for box, score, label in zip(want["boxes"][:n], want["scores"][:n], want["labels"][:n]):
        if (np.abs(want["scores"] - score) <= 1e-4).sum() > 1:
            continue  # a near tie: NMS may keep either box
        hit = (np.abs(got["scores"] - score) <= 1e-4) & (got["labels"] == label) & \
              (np.abs(got["boxes"] - box).max(1) <= 1e-2)
        assert hit.any(), (box, score, label)


def _check_decodes(block: dict, raw_path: Path, e2e_path: Path, image: torch.Tensor) -> None:
    anchors = np.load(raw_path.with_name(block["anchors"]["file"]) if "file" in block["anchors"]
                      else raw_path.with_suffix(".anchors.npy"))
    assert list(anchors.shape) == block["anchors"]["shape"]
    img = image.numpy()
    want = _run(e2e_path, img)
    assert_same_detections(decode_raw(block, _run(raw_path, img), anchors, img.shape[1:]), want)


# ------------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("detector, model", [("ssdlite", {"ssd_loss": "focal"}), ("fcos", {})])
def test_raw_record_decodes_to_the_end_to_end_detections(tiny_config, detector, model):
    from nasdet.export import onnx_metadata
    from nasdet.stages.export import current_export, run_export
    from nasdet.workdir import WorkDir

    cfg, val = _baseline(tiny_config, detector, score_thresh=0.05, detections_per_img=50, **model)
    e2e = run_export(cfg, source="baseline", console=QUIET)
    raw = run_export(cfg, source="baseline", raw=True, console=QUIET)
    block = raw["decode"]
    # the record alone: read back from the file, as a deployer would
    assert json.loads(json.dumps(block)) == json.loads(Path(cfg.work_dir, "export", "baseline_raw.json").read_text())["decode"]
    image = val[5][0][:, :80, :72].contiguous()  # not square, not the input size
    _check_decodes(block, Path(raw["onnx"]), Path(e2e["onnx"]), image)
    # what the blocks say is the model's: the focal SSD's sigmoid without the background, torchvision's box coders
    if detector == "ssdlite":
        assert block["scores"]["activation"] == "sigmoid" and block["scores"]["columns"][0] == 1
        assert block["boxes"]["weights"] == [10.0, 10.0, 5.0, 5.0]
    else:
        assert block["scores"]["times_sigmoid_of"] == "bbox_ctrness" and block["boxes"]["coder"] == "ltrb"
    baked = {"score_thresh": 0.05, "nms_thresh": 0.5, "detections_per_img": 50,
             "topk_candidates": cfg.model.topk_candidates}
    assert e2e["postprocessing"] == raw["postprocessing"] == baked
    # each file says the same without nasdet
    for rec in (e2e, raw):
        meta = onnx_metadata(rec["onnx"])
        assert json.loads(meta["postprocessing"]) == baked and json.loads(meta["input_size"]) == 96
        assert json.loads(meta["classes"]) == json.loads(Path(cfg.work_dir, "export", "classes.json").read_text())
    assert json.loads(onnx_metadata(raw["onnx"])["decode"]) == block and "decode" not in onnx_metadata(e2e["onnx"])
    # the metadata is no setting: the record stays current for a rerun
    assert current_export(cfg, WorkDir(cfg.work_dir), "baseline", QUIET) is not None


@pytest.mark.parametrize("detector, model", [("ssdlite", {}), ("retinanet", {}), ("yolov3", {}),
                                             ("ssdlite", {"layout": "mmdetection", "ssd_loss": "focal"}),
                                             ("ssdlite", {"layout": "enot", "extra_channels": [32, 16]})])
def test_decode_block_of_every_family(tiny_config, tmp_path, detector, model):
    """The other families and variants, from ``raw_decoding`` and two files (no export stage: faster)."""
    from nasdet.export import export_onnx, raw_decoding

    # YOLOv3's priors (objectness ~0.02, classes 0.01) keep a random head's scores low
    keys = {"score_thresh": 0.003, "conf_thresh": 0.003} if detector == "yolov3" else {"score_thresh": 0.05}
    cfg = tiny_config(detector, model={**keys, **model})
    net = _random_detector(cfg, 9)
    block = raw_decoding(net)
    e2e, raw = export_onnx(net, tmp_path / "e2e.onnx"), export_onnx(net, tmp_path / "raw.onnx", raw=True)
    _check_decodes(block, raw, e2e, (torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8))
    softmax = detector == "ssdlite" and model.get("ssd_loss", "hard_negative") == "hard_negative"
    assert block["scores"].get("activation") == ("softmax" if softmax else "sigmoid")
    assert block["boxes"]["drop_empty_before_nms"] == (model.get("layout") == "mmdetection")  # (enot: 2.16's)
    if detector == "retinanet":
        assert block["boxes"]["weights"] == [1.0, 1.0, 1.0, 1.0]


def test_a_baseline_exports_with_the_runs_post_processing(tiny_config):
    """A baseline rebuilt from its checkpoint kept the thresholds it was trained with: the file baked in 0.01 while
    the export's settings said 0.3 (and a rerun "exported again" with the same old value)."""
    from nasdet.export import onnx_metadata
    from nasdet.stages.export import run_export

    cfg, val = _baseline(tiny_config, "ssdlite", trained={"score_thresh": 0.01}, score_thresh=0.3, ssd_loss="focal")
    from nasdet.errors import ConfigError

    with pytest.raises(ConfigError, match="export source must be tune or baseline, got 'tuned'"):
        run_export(cfg, source="tuned", console=QUIET)  # (it exported the baseline as export/tuned.onnx)
    assert not list(Path(cfg.work_dir).glob("export/tuned*"))
    rec = run_export(cfg, source="baseline", console=QUIET)
    assert rec["settings"]["model"]["score_thresh"] == rec["postprocessing"]["score_thresh"] == 0.3
    assert json.loads(onnx_metadata(rec["onnx"])["postprocessing"])["score_thresh"] == 0.3
    scores = _run(Path(rec["onnx"]), val[0][0].numpy())["scores"]
    assert len(scores) == 0 or scores.min() > 0.3
    # the same for every stage that rebuilds the baseline (eval, the search's baseline score)
    from nasdet.train.trained import load_trained_model

    model = load_trained_model(cfg, Path(cfg.work_dir) / "baseline" / "ckpt" / "last.pt", val.num_classes)
    assert model.score_thresh == 0.3


def test_int8_file_keeps_the_metadata(tiny_config, tmp_path):
    from nasdet.export import export_onnx, onnx_metadata
    from nasdet.quantize import network_scopes, quantize_detector

    net = _random_detector(tiny_config("ssdlite", model={"input_size": 64}), 9)
    meta = {"postprocessing": json.dumps({"score_thresh": 0.05}), "classes": json.dumps({"1": {"name": "a"}})}
    path = export_onnx(net, tmp_path / "f.onnx", metadata=meta)
    images = [(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8) for i in range(2)]
    quantize_detector(path, tmp_path / "q.onnx", images, network_scopes(net))
    quantized = onnx_metadata(tmp_path / "q.onnx")  # onnxruntime adds its own keys (onnx.quant.pre_process)
    assert onnx_metadata(path) == {k: quantized.get(k) for k in meta} == meta


def test_raw_export_of_faster_rcnn_is_refused(tiny_config):
    from nasdet.errors import ConfigError
    from nasdet.stages.export import run_export

    cfg = tiny_config("faster_rcnn")
    with pytest.raises(ConfigError, match="export --raw: detector faster_rcnn has no raw outputs to decode: .*drop --raw"):
        run_export(cfg, source="baseline", raw=True, console=QUIET)
    assert not (Path(cfg.work_dir) / "export").exists()
