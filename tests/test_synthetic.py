"""The embedded synthetic shapes data set: valid COCO, sane boxes, varied content, deterministic."""
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from nasdet.data.synthetic import SHAPE_CLASSES, make_synthetic


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "a"
    calls = []
    paths = make_synthetic(out, n_train=12, n_val=4, size=96, seed=0, workers=1,
                           progress=lambda done, total: calls.append((done, total)))
    return out, paths, calls


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A larger sample (small images, fast) for statistics over the content."""
    out = tmp_path_factory.mktemp("syn_sample")
    paths = make_synthetic(out, n_train=48, n_val=0, size=64, seed=3, workers=1)
    return json.loads(paths["train"].read_text())


def test_layout_and_valid_coco(small_set):
    from pycocotools.coco import COCO

    out, paths, calls = small_set
    assert paths == {"train": out / "train" / "annotations.json", "val": out / "val" / "annotations.json"}
    for split, n in (("train", 12), ("val", 4)):
        coco = COCO(str(paths[split]))
        assert sorted(coco.getImgIds()) == list(range(1, n + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert len(coco.getAnnIds()) >= n
        data = json.loads(paths[split].read_text())
        ann_ids = [a["id"] for a in data["annotations"]]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        for a in data["annotations"]:
            assert a["iscrowd"] == 0 and a["area"] > 0 and 1 <= a["category_id"] <= len(SHAPE_CLASSES)
        assert sorted(p.name for p in (out / split / "images").iterdir()) == sorted(i["file_name"] for i in data["images"])
    assert len(SHAPE_CLASSES) >= 6
    # progress: from 0 to the total, in order.
    assert calls[0] == (0, 16) and calls[-1] == (16, 16)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_images_decode_at_recorded_size_and_boxes_inside(small_set):
    out, paths, _ = small_set
    heights = set()
    for split in ("train", "val"):
        data = json.loads(paths[split].read_text())
        sizes = {}
        for im in data["images"]:
            with Image.open(out / split / "images" / im["file_name"]) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size == (im["width"], im["height"])
                img.load()
            assert im["width"] == 96 and 72 <= im["height"] <= 96
            heights.add(im["height"])
            sizes[im["id"]] = (im["width"], im["height"])
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            iw, ih = sizes[a["image_id"]]
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= iw and y + h <= ih
            assert a["area"] <= w * h
    assert len(heights) > 1  # not all the same shape


def test_content_statistics(sample):
    anns, images = sample["annotations"], sample["images"]
    assert len({a["category_id"] for a in anns}) >= 6
    per_image = Counter(a["image_id"] for a in anns)
    assert len(per_image) == len(images)  # every image has at least one object
    assert 2.5 <= len(anns) / len(images) <= 5.5
    assert max(per_image.values()) >= 5
    width = {i["id"]: i["width"] for i in images}
    frac = np.array([max(a["bbox"][2], a["bbox"][3]) / width[a["image_id"]] for a in anns])
    assert frac.min() < 0.12 and frac.max() > 0.4
    assert np.mean(frac < 0.2) > 0.3  # small objects are common


def test_colour_is_not_the_class(tmp_path):
    paths = make_synthetic(tmp_path, n_train=40, n_val=0, size=64, seed=5, workers=1)
    data = json.loads(paths["train"].read_text())
    solid = {i + 1 for i, n in enumerate(SHAPE_CLASSES) if n in ("circle", "square", "hexagon", "star", "cross")}
    means = {}
    for im in data["images"]:
        arr = np.asarray(Image.open(tmp_path / "train" / "images" / im["file_name"]), dtype=np.float32)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            if a["image_id"] == im["id"] and a["category_id"] in solid and min(w, h) >= 8:  # box centre on the shape
                c = arr[y + h // 2 - 1:y + h // 2 + 2, x + w // 2 - 1:x + w // 2 + 2].reshape(-1, 3).mean(0)
                means.setdefault(a["category_id"], []).append(c)
    spreads = [np.std(np.array(v), axis=0).mean() for v in means.values() if len(v) >= 4]
    assert len(spreads) >= 3 and min(spreads) > 25  # each class comes in many colours


def test_deterministic_independent_of_workers(small_set, tmp_path):
    out, _, _ = small_set
    make_synthetic(tmp_path / "b", n_train=12, n_val=4, size=96, seed=0, workers=2)
    a, b = _files(out), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)  # json and image bytes


def test_seeds_and_splits_differ(small_set, tmp_path):
    out, paths, _ = small_set
    other = make_synthetic(tmp_path / "c", n_train=12, n_val=4, size=96, seed=1, workers=1)
    assert paths["train"].read_bytes() != other["train"].read_bytes()
    assert (out / "train/images/000001.jpg").read_bytes() != (tmp_path / "c/train/images/000001.jpg").read_bytes()
    train = json.loads(paths["train"].read_text())
    val = json.loads(paths["val"].read_text())
    boxes = lambda d, i: sorted((a["category_id"], *a["bbox"]) for a in d["annotations"] if a["image_id"] == i)
    for i in range(1, 5):
        assert (out / f"train/images/{i:06d}.jpg").read_bytes() != (out / f"val/images/{i:06d}.jpg").read_bytes()
        assert boxes(train, i) != boxes(val, i)


def test_killed_run_leaves_no_annotations(tmp_path):
    make_synthetic(tmp_path, n_train=3, n_val=1, size=64, seed=0, workers=1)
    assert (tmp_path / "train" / "annotations.json").is_file()

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, n_train=3, n_val=1, size=64, seed=1, workers=1, progress=stop)
    # The stale (seed 0) annotations are gone: the half-rewritten folder does not look complete.
    assert not (tmp_path / "train" / "annotations.json").exists()
    assert not (tmp_path / "val" / "annotations.json").exists()
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_rerun_writes_new_image_files_so_hard_linked_copies_keep_theirs(tmp_path):
    """``nasdet data to-yolo`` hard-links the images: a rerun of make-synthetic that rewrote an image in place gave
    the YOLO set the new pixels under its old labels (qa_docs #1)."""
    import os

    make_synthetic(tmp_path / "s", n_train=2, n_val=1, size=64, seed=0, workers=1)
    image = next((tmp_path / "s" / "train" / "images").iterdir())
    os.link(image, tmp_path / "linked.jpg")
    before = (tmp_path / "linked.jpg").read_bytes()
    make_synthetic(tmp_path / "s", n_train=2, n_val=1, size=64, seed=7, workers=1)
    assert image.read_bytes() != before and (tmp_path / "linked.jpg").read_bytes() == before


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"size": 8}, {"n_train": -2}, {"workers": 0}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, **{"n_train": 2, "n_val": 1, "size": 64, **kwargs})
