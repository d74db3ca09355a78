import copy

import numpy as np
import pytest

from nasdet.metrics import coco_evaluate


def make_gt(rng, n_images=12, n_cats=3):
    images, anns = [], []
    aid = 1
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 200, "height": 160})
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 120), rng.uniform(0, 100)
            w, h = rng.uniform(4, 70), rng.uniform(4, 55)
            anns.append({"id": aid, "image_id": i, "category_id": int(rng.integers(1, n_cats + 1)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            aid += 1
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)]}


def test_perfect_predictions_score_one():
    gt = make_gt(np.random.default_rng(0))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    for backend in ("faster", "pycocotools"):
        m = coco_evaluate(gt, dets, backend=backend)
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_no_detections_is_zero():
    assert coco_evaluate(make_gt(np.random.default_rng(1)), [])["AP"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    gt = make_gt(rng)
    dets = []
    for a in gt["annotations"]:  # jittered true boxes, some wrong classes, plus random false positives
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 4, 4)
        dets.append({"image_id": a["image_id"], "category_id": int(a["category_id"] if rng.random() > 0.2 else rng.integers(1, 4)),
                     "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)], "score": float(rng.random())})
    for i in range(1, 13):
        for _ in range(3):
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [*rng.uniform(0, 120, 2).tolist(), *rng.uniform(5, 60, 2).tolist()], "score": float(rng.random())})
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    ours = coco_evaluate(gt, dets, backend="faster")
    ref = coco_evaluate(gt, dets, backend="pycocotools")
    assert 0.0 < ref["AP"] < 1.0
    # both backends add keys to the dicts they are given (area, id, ignore, ...): the caller's stay as they were
    assert gt == gt_before and dets == dets_before
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k


def test_crowd_boxes_are_ignored():
    gt = make_gt(np.random.default_rng(3))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    gt["annotations"][0]["iscrowd"] = 1  # a detection on an ignored box is neither TP nor FP
    assert coco_evaluate(gt, dets)["AP"] == pytest.approx(1.0)
