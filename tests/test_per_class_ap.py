"""Per-class AP (``coco_evaluate(per_class=True)``): read from the same COCOeval run as the summary, equal to a
run on each category alone, null for a class without val boxes; in metrics.json, eval's table and the report."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from rich.console import Console

from nasdet.metrics import COCO_METRIC_NAMES, coco_evaluate

BACKENDS = ("faster", "pycocotools")


def _cocoeval(backend: str):
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval


def run_cocoeval(gt: dict, dets: list[dict], backend: str, cat_ids: list[int] | None = None):
    """COCOeval as ``coco_evaluate`` ran it before per-class AP (optionally on ``cat_ids`` alone)."""
    COCO, COCOeval = _cocoeval(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def random_set(seed: int):
    """Random gt of 5 categories listed out of id order (label order is not id order): category 4 has no box,
    category 5 only crowd boxes; jittered, mislabelled and random detections, some of categories 4 and 5."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"class{c}"} for c in (3, 1, 5, 2, 4)]
    images, anns, aid = [], [], 1
    for i in range(1, 11):
        images.append({"id": i, "width": 200, "height": 160})
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = *rng.uniform(0, 110, 2), *rng.uniform(4, 60, 2)
            c = int(rng.choice([1, 2, 3, 5]))
            anns.append({"id": aid, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(c == 5 or rng.random() < 0.15)})
            aid += 1
    dets = []
    for a in anns:
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 4, 4)
        c = a["category_id"] if rng.random() > 0.2 else int(rng.integers(1, 6))
        dets.append({"image_id": a["image_id"], "category_id": c, "score": float(rng.random()),
                     "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)]})
    for i in range(1, 11):
        dets.append({"image_id": i, "category_id": int(rng.integers(1, 6)), "score": float(rng.random()),
                     "bbox": [*rng.uniform(0, 120, 2).tolist(), *rng.uniform(5, 60, 2).tolist()]})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def hand_made():
    """a: two boxes found exactly (AP 1); b: one box, missed (AP 0); c: no box, a detection (no AP); d: one
    crowd (difficult) box, detected (no AP: COCOeval counts no box of it)."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "c"}, {"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                         {"id": 4, "name": "d"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30], "area": 900, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
              {"id": 4, "image_id": 2, "category_id": 4, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 1}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30], "score": 0.8},
            {"image_id": 2, "category_id": 3, "bbox": [40, 40, 10, 10], "score": 0.7},
            {"image_id": 2, "category_id": 4, "bbox": [60, 60, 20, 20], "score": 0.6}]
    return gt, dets


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_made_per_class(backend):
    gt, dets = hand_made()
    m = coco_evaluate(gt, dets, backend=backend, per_class=True)
    assert list(m["per_class"]) == ["c", "a", "b", "d"]  # the categories' (label) order, not their ids'
    assert m["per_class"] == {"c": {"AP": None, "AP50": None, "gt_boxes": 0},
                              "a": {"AP": 1.0, "AP50": 1.0, "gt_boxes": 2},
                              "b": {"AP": 0.0, "AP50": 0.0, "gt_boxes": 1},
                              "d": {"AP": None, "AP50": None, "gt_boxes": 0}}
    assert m["AP"] == pytest.approx(0.5) and m["AP50"] == pytest.approx(0.5)  # a and b only
    json.dumps(m, allow_nan=False)  # null, never NaN: a rerun's record compares equal to the first's
    assert m == coco_evaluate(gt, copy.deepcopy(dets), backend=backend, per_class=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_is_the_summary_of_a_single_category_run(backend, seed):
    gt, dets = random_set(seed)
    m = coco_evaluate(gt, dets, backend=backend, per_class=True)
    assert list(m["per_class"]) == [f"class{c}" for c in (3, 1, 5, 2, 4)]
    for cat in gt["categories"]:
        alone = run_cocoeval(gt, dets, backend, cat_ids=[cat["id"]]).stats
        got = m["per_class"][cat["name"]]
        if cat["id"] in (4, 5):  # no box, only crowd boxes: COCOeval's -1, reported as no AP
            assert alone[0] == alone[1] == -1 and got == {"AP": None, "AP50": None, "gt_boxes": 0}
        else:
            assert (got["AP"], got["AP50"]) == (alone[0], alone[1]), cat  # to the bit
            assert 0.0 < got["AP"] < 1.0
    # the summary AP is the mean of the classes with val boxes
    scored = [c["AP"] for c in m["per_class"].values() if c["AP"] is not None]
    assert m["AP"] == pytest.approx(float(np.mean(scored)), abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_summary_unchanged_to_the_bit(backend):
    gt, dets = random_set(2)
    with_classes = coco_evaluate(gt, dets, backend=backend, per_class=True)
    plain = coco_evaluate(gt, dets, backend=backend)
    assert "per_class" not in plain and set(plain) == set(COCO_METRIC_NAMES)  # the search's scoring: as before
    assert {k: v for k, v in with_classes.items() if k != "per_class"} == plain
    before = run_cocoeval(gt, dets, backend).stats  # the code path as it was: COCOeval's stats, nothing else
    assert plain == {k: float(v) for k, v in zip(COCO_METRIC_NAMES, np.asarray(before, dtype=np.float64))}


def test_gt_boxes_are_the_boxes_cocoeval_counts():
    gt, dets = random_set(3)
    ev = run_cocoeval(gt, dets, "pycocotools")
    all_areas = ev.params.areaRng[ev.params.areaRngLbl.index("all")]
    counted = {c: 0 for c in ev.params.catIds}
    for e in ev.evalImgs:
        if e is not None and e["aRng"] == all_areas:
            counted[e["category_id"]] += int((np.asarray(e["gtIgnore"]) == 0).sum())
    m = coco_evaluate(gt, dets, per_class=True)
    assert {c["id"]: m["per_class"][c["name"]]["gt_boxes"] for c in gt["categories"]} == counted
    assert counted[4] == counted[5] == 0 and sum(counted.values()) > 10


def test_no_detections_per_class():
    gt, _ = hand_made()
    m = coco_evaluate(gt, [], per_class=True)
    assert m["AP"] == 0.0 and m["per_class"]["a"] == {"AP": 0.0, "AP50": 0.0, "gt_boxes": 2}
    assert m["per_class"]["c"] == m["per_class"]["d"] == {"AP": None, "AP50": None, "gt_boxes": 0}


def test_tables_show_no_val_boxes_and_skip_the_nested_entry():
    from nasdet.stages.baseline import per_class_table
    from nasdet.stages.common import metrics_table

    gt, dets = hand_made()
    m = coco_evaluate(gt, dets, per_class=True)
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(metrics_table(m, "val mAP"))  # the summary table: the per-class entry is not a column
    console.print(per_class_table(m["per_class"], "per-class AP"))
    text = console.export_text()
    assert "per_class" not in text and "0.5000" in text
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]] for line in text.splitlines()
            if line.count("│") >= 5 and line.split("│")[1].strip() in "abcd"}
    assert rows == {"c": ["no val boxes", "no val boxes", "0"], "a": ["1.0000", "1.0000", "2"],
                    "b": ["0.0000", "0.0000", "1"], "d": ["no val boxes", "no val boxes", "0"]}
    assert "-1" not in text and "mean of these over the 2 classes with val boxes" in " ".join(text.split())


def test_report_lists_per_class_only_like_for_like(tmp_path):
    from nasdet.stages.report import per_class_lines

    gt, dets = hand_made()
    base = {"metrics": coco_evaluate(gt, dets, per_class=True), "val": str(tmp_path / "val.json"), "val_images": 2}
    found = {**base, "metrics": coco_evaluate(gt, dets[1:], per_class=True)}
    lines = per_class_lines(base, found)
    assert lines[2].startswith("| class | val boxes | AP baseline | AP found")
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:-1]}
    ap_a = found["metrics"]["per_class"]["a"]["AP"]  # one of its two boxes found
    assert 0 < ap_a < 1 and row["a"][:4] == ["2", "1.0000", f"{ap_a:.4f}", f"{ap_a - 1:+.4f}"]
    assert row["c"][:4] == ["0", "-", "-", "-"] and row["b"][:4] == ["1", "0.0000", "0.0000", "+0.0000"]
    assert per_class_lines(base, {**found, "val_images": 1}) == []  # other images: not compared
    assert per_class_lines(base, {**found, "val": str(tmp_path / "other.json")}) == []
    assert per_class_lines(base, {**found, "metrics": {"AP": 0.1, "AP50": 0.2}}) == []  # an older record
    assert per_class_lines({}, found) == []  # no baseline


def test_stats_say_the_images_column_counts_non_difficult_boxes():
    from nasdet.data.dataset import DetectionDataset, ImageRecord
    from nasdet.data.stats import dataset_stats, stats_tables

    rec = ImageRecord(image_id=1, file="a.jpg", width=50, height=50, boxes=np.array([[0, 0, 10, 10]], np.float32),
                      labels=np.array([1], np.int64), iscrowd=np.array([1], np.int64))
    stats = dataset_stats(DetectionDataset([rec], ["a"], [1], source="x"))
    assert stats["classes"]["a"]["images"] == 0  # its one box is difficult
    console = Console(file=io.StringIO(), width=200, record=True)
    for t in stats_tables(stats, "val: x"):
        console.print(t)
    assert "images*: those with a non-crowd / non-difficult box of the class" in console.export_text()


def test_train_and_eval_write_per_class(tiny_config):
    """End to end: the baseline's metrics.json holds per-class AP in label order with the val boxes (2 val
    images: some classes have none), its summary as evaluate_detector gives it alone; `nasdet eval` prints the
    per-class table and records the same figures; the training's end prints that table too."""
    import torch

    from nasdet.data.build import build_datasets
    from nasdet.data.dataset import to_coco_gt
    from nasdet.stages.baseline import run_baseline, run_eval
    from nasdet.train.evaluate import evaluate_detector
    from nasdet.train.trained import load_trained_model
    from nasdet.workdir import WorkDir

    cfg = tiny_config(train={"epochs": 1, "max_steps": 1}, eval={"max_images": 2})
    trained = Console(file=io.StringIO(), width=200, record=True)
    metrics = run_baseline(cfg, console=trained)
    wd = WorkDir.of(cfg)
    record = json.loads(wd.baseline.metrics.read_text())
    val = build_datasets(cfg, need=("val",))["val"]
    scored = val.first(2)
    per_class = record["metrics"]["per_class"]
    assert record["metrics"] == metrics and list(per_class) == list(val.classes)
    counts = {}
    for a in to_coco_gt(scored)["annotations"]:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + (not a["iscrowd"])
    assert [c["gt_boxes"] for c in per_class.values()] == [counts.get(int(c), 0) for c in val.category_ids]
    assert all((c["AP"] is None) == (c["gt_boxes"] == 0) for c in per_class.values())
    said = trained.export_text()  # the training's own end says which class drags the mean, as eval does
    assert "baseline: per-class AP" in said and "no val boxes" in said and val.classes[0] in said
    assert any(c["AP"] is None for c in per_class.values()) and any(c["AP"] is not None for c in per_class.values())
    model = load_trained_model(cfg, wd.baseline.checkpoint, val.num_classes)
    alone = evaluate_detector(model, scored, torch.device("cpu"), cfg.eval.batch_size)
    assert alone == {k: v for k, v in metrics.items() if k != "per_class"}
    console = Console(file=io.StringIO(), width=200, record=True)
    assert run_eval(cfg, console=console) == metrics  # the same weights, the same images: nothing flips
    text = console.export_text()
    assert "per-class AP of" in text and "no val boxes" in text and val.classes[0] in text
    assert json.loads((wd.eval.root / "baseline_last_metrics.json").read_text())["metrics"] == metrics
