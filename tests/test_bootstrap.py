"""The paired bootstrap of COCO AP over images (metrics/bootstrap.py)."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from nasdet.metrics import coco_evaluate
from nasdet.metrics.bootstrap import ImageMatches, bootstrap_samples, paired_bootstrap


def _gt(n_images: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 100, "height": 100})
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.05)})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _noisy_detections(gt: dict, seed: int, jitter: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:  # found, with a jittered box, sometimes with the wrong class
            x, y, w, h = a["bbox"]
            box = [x + rng.normal(0, jitter), y + rng.normal(0, jitter), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
            cat = a["category_id"] if rng.random() < 0.9 else 3 - a["category_id"]
            dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for im in gt["images"]:  # false positives
        for _ in range(rng.integers(0, 3)):
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": list(rng.uniform(0, 60, 2)) + list(rng.uniform(5, 30, 2)), "score": float(rng.random())})
    return dets


@pytest.mark.parametrize("seed", [0, 1])
def test_identity_sample_equals_pycocotools(seed):
    gt = _gt(30, seed)
    dets = _noisy_detections(gt, seed, jitter=3.0)
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    ref = coco_evaluate(gt, dets, backend="pycocotools")
    got = ImageMatches(gt, dets).metrics()
    assert gt == gt_before and dets == dets_before  # COCO's loaders add keys to copies, not to the caller's dicts
    assert got["AP"] == pytest.approx(ref["AP"], abs=1e-12)
    assert got["AP50"] == pytest.approx(ref["AP50"], abs=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_a_resample_equals_pycocotools_on_the_duplicated_images(tied):
    """A multiset of images scores as COCOeval scores a data set in which those images appear that often; also
    where detections of one image tie on score (there a resample sorts its own detections, as COCOeval does)."""
    gt = _gt(12, 3)
    dets = _noisy_detections(gt, 3, jitter=2.0)
    if tied:
        dets = [{**d, "score": round(d["score"], 1)} for d in dets]
    assert any(pooled.ties for pooled in ImageMatches(gt, dets)._pooled) == tied
    sample = [0, 0, 3, 5, 5, 5, 7, 11, 11, 2, 9, 9]
    images, anns, out = [], [], []
    for copy_no, i in enumerate(sorted(sample)):  # image i again under a fresh id, in the sample's sorted order
        old = gt["images"][i]["id"]
        images.append({"id": copy_no + 1, "width": 100, "height": 100})
        anns += [{**a, "id": len(anns) + j + 1, "image_id": copy_no + 1}
                 for j, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
        out += [{**d, "image_id": copy_no + 1} for d in dets if d["image_id"] == old]
    ref = coco_evaluate({**gt, "images": images, "annotations": anns}, out, backend="pycocotools")
    got = ImageMatches(gt, dets).metrics(sorted(sample))
    assert got["AP"] == pytest.approx(ref["AP"], abs=1e-12)
    assert got["AP50"] == pytest.approx(ref["AP50"], abs=1e-12)


def _one_box_gt(n: int) -> dict:
    return {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, n + 1)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
                             "iscrowd": 0} for i in range(1, n + 1)],
            "categories": [{"id": 1, "name": "a"}]}


def test_hand_computed_case():
    """Two images, one object each. A finds image 1's object exactly (score 0.9) and nothing in image 2;
    B finds both exactly (scores 0.8, 0.7). By hand, at every IoU threshold:
    - {1, 2}: A recall 1/2 at precision 1 -> AP = 51/101 (recall thresholds 0, .01, .., .50); B = 1.
    - {1, 1}: A finds both copies -> 1; B -> 1 (a tie).
    - {2, 2}: A finds nothing -> 0; B -> 1.
    Exhaustive resamples {1,1}, {1,2}, {2,1}, {2,2}: B beats A in 3 of 4 and ties in one -> P(B > A) = 7/8."""
    gt = _one_box_gt(2)
    a = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    b = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.8},
         {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.7}]
    ma, mb = ImageMatches(gt, a), ImageMatches(gt, b)
    assert ma.metrics()["AP"] == pytest.approx(51 / 101)
    assert ma.metrics([0, 0])["AP"] == pytest.approx(1.0)
    assert ma.metrics([1, 1])["AP"] == 0.0
    assert mb.metrics([1, 1])["AP"] == pytest.approx(1.0)
    samples = [list(s) for s in itertools.product([0, 1], repeat=2)]
    res = paired_bootstrap({"A": ma, "B": mb}, samples)
    assert res["winner"] == "B"
    assert res["candidates"]["A"]["p_winner_beats"] == pytest.approx(7 / 8)
    assert res["candidates"]["B"]["p_winner_beats"] is None
    assert res["candidates"]["B"]["low"] == res["candidates"]["B"]["high"] == pytest.approx(1.0)


def test_tied_scores_in_one_image_keep_cocoevals_order_on_a_resample():
    """Image 1 drawn twice, its hit x and its miss y at the same score: COCOeval orders x, y, x, y (its copies in
    turn), not x, x, y, y. By hand (2 objects): precision 1 up to recall 1/2, then 2/3 -> AP = (51 + 50 x 2/3) / 101;
    the other order would give 1."""
    gt = _one_box_gt(2)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.5}]
    twice = {**gt, "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2)],
             "annotations": [{**gt["annotations"][0], "id": i, "image_id": i} for i in (1, 2)]}
    ref = coco_evaluate(twice, [{**d, "image_id": i} for i in (1, 2) for d in dets], backend="pycocotools")
    got = ImageMatches(gt, dets).metrics([0, 0])
    assert ref["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-9)
    assert got["AP"] == pytest.approx(ref["AP"], abs=1e-12)


def test_no_detections_scores_zero_and_loses():
    gt = _one_box_gt(3)
    empty = ImageMatches(gt, [])
    assert empty.metrics() == {"AP": 0.0, "AP50": 0.0}
    good = ImageMatches(gt, [{"image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.5} for i in (1, 2, 3)])
    res = paired_bootstrap({"none": empty, "good": good}, bootstrap_samples(3, 50, seed=1))
    assert res["winner"] == "good" and res["candidates"]["none"]["p_winner_beats"] == 1.0


def test_close_candidates_are_not_distinguishable_and_far_ones_are():
    gt = _gt(60, 5)
    base = _noisy_detections(gt, 10, jitter=2.0)
    near = _noisy_detections(gt, 11, jitter=2.0)  # same quality, other noise
    far = _noisy_detections(gt, 12, jitter=12.0)  # much worse boxes
    samples = bootstrap_samples(60, 200, seed=0)
    m = {"base": ImageMatches(gt, base), "near": ImageMatches(gt, near), "far": ImageMatches(gt, far)}
    res = paired_bootstrap(m, samples)
    probs = {n: c["p_winner_beats"] for n, c in res["candidates"].items() if n != res["winner"]}
    assert probs["far"] > 0.99
    assert min(p for n, p in probs.items() if n != "far") < 0.95
    w = res["candidates"][res["winner"]]
    assert w["low"] <= w["point"] <= w["high"]


def test_resamples_without_a_box_are_left_out_of_the_interval():
    """A resample drawing only images without ground truth has no AP (COCOeval's -1): it was a value of the
    interval, which then read [-1.0000, ...] on a small split with an image without boxes."""
    gt = _one_box_gt(2)
    gt = {**gt, "annotations": [a for a in gt["annotations"] if a["image_id"] == 1]}  # image 2 holds no box
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    m = ImageMatches(gt, dets)
    assert m.metrics([1, 1])["AP"] == -1.0  # COCOeval's "undefined"
    samples = [list(s) for s in itertools.product([0, 1], repeat=2)]  # one of the four draws only image 2
    res = paired_bootstrap({"A": m, "B": ImageMatches(gt, [])}, samples)
    assert res["resamples"] == 3 and res["resamples_without_boxes"] == 1
    assert res["candidates"]["A"]["low"] >= 0 and res["candidates"]["B"]["low"] == 0.0
    assert res["candidates"]["B"]["p_winner_beats"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_true_positive_path_gives_the_cumulative_sums_figures_to_the_bit(seed):
    """Resamples without score ties inside an image take COCOeval's precision from the true positives alone (the
    report's 4000 resamples of the demo took 8 ms each through cumulative sums over every detection, 1.3 ms now);
    every resample, images drawn 0-4 times, crowd boxes ignored, gives the general path's AP and AP50 exactly."""
    gt = _gt(40, seed)
    m = ImageMatches(gt, _noisy_detections(gt, seed, jitter=3.0))
    assert not any(c.ties for c in m._pooled)
    general = copy.copy(m)
    general._pooled = [c._replace(ties=True) for c in m._pooled]  # the path that sorts each resample itself
    for sample in list(bootstrap_samples(40, 200, seed)) + [[0] * 40, [3, 3, 3, 3, 7], []]:
        assert m.metrics(sample) == general.metrics(sample)
