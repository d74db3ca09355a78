"""COCO json loading: a tiny fixture written in tmp_path, its successful load and every bad-data case."""
from __future__ import annotations

import copy
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from nasdet.data.coco import load_coco
from nasdet.data.dataset import DataError, collate_detection, to_coco_gt

# image id -> (file name, width, height); ids deliberately unsorted and non-contiguous
IMAGES = {10: ("a.jpg", 64, 48), 3: ("b.png", 32, 32), 7: ("c.jpg", 40, 30)}
# category ids unsorted: sorted order is 2 dog, 5 cat, 9 bird -> labels 1, 2, 3
CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "bird"}]


def base_json() -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in IMAGES.items()],
        "categories": copy.deepcopy(CATEGORIES),
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [0, 0, 64, 48], "iscrowd": 1},
            # within the 1 px tolerance: clipped to the image
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [-0.5, 1, 10, 10]},
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [30, 30, 2.8, 2.8], "iscrowd": 0},
        ],
    }


@pytest.fixture
def coco(tmp_path):
    """``(ann_file, image_dir, write)``: images on disk; ``write(data)`` (re)writes the json."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for f, w, h in IMAGES.values():
        Image.new("RGB", (w, h), (30, 60, 90)).save(image_dir / f)
    ann_file = tmp_path / "ann.json"

    def write(data) -> None:
        ann_file.write_text(json.dumps(data))

    write(base_json())
    return ann_file, image_dir, write


def test_load_success(coco):
    ann_file, image_dir, _ = coco
    ds = load_coco(ann_file, image_dir)
    assert ds.classes == ["dog", "cat", "bird"]
    assert ds.category_ids == [2, 5, 9]
    assert ds.num_classes == 3 and len(ds) == 3
    assert ds.source == str(ann_file)
    assert [r.image_id for r in ds.records] == [3, 7, 10]  # sorted by id
    r3, r7, r10 = ds.records
    assert (r10.width, r10.height, r10.file) == (64, 48, image_dir / "a.jpg")
    np.testing.assert_allclose(r10.boxes, [[10, 5, 30, 15], [0, 0, 64, 48]])
    assert r10.labels.tolist() == [2, 3] and r10.iscrowd.tolist() == [0, 1]
    np.testing.assert_allclose(r3.boxes, [[0, 1, 9.5, 11], [30, 30, 32, 32]])  # clipped
    assert r3.labels.tolist() == [1, 1] and r3.iscrowd.tolist() == [0, 0]
    # image without annotations kept, with zero-length arrays of the right shapes and dtypes
    assert r7.boxes.shape == (0, 4) and r7.boxes.dtype == np.float32
    assert r7.labels.shape == (0,) and r7.labels.dtype == np.int64 and r7.iscrowd.shape == (0,)


def test_getitem_and_collate(coco):
    ann_file, image_dir, _ = coco
    ds = load_coco(ann_file, image_dir)
    image, target = ds[2]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 48, 64)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert tuple(target["boxes"].canvas_size) == (48, 64)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert target["labels"].tolist() == [2, 3] and target["iscrowd"].tolist() == [0, 1]
    assert target["image_id"] == 10
    image, target = ds[1]
    assert tuple(image.shape) == (3, 30, 40) and target["boxes"].shape == (0, 4)
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [3, 7]


def test_to_coco_gt_loads_in_pycocotools(coco):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann_file, image_dir, _ = coco
    ds = load_coco(ann_file, image_dir)
    gt = to_coco_gt(ds)
    api = COCO()
    api.dataset = gt
    api.createIndex()
    assert sorted(api.getImgIds()) == [3, 7, 10]
    assert sorted(api.getCatIds()) == [2, 5, 9]
    assert len(api.getAnnIds()) == 4
    crowd = api.loadAnns(api.getAnnIds(imgIds=[10], iscrowd=True))
    assert [(a["category_id"], a["iscrowd"]) for a in crowd] == [(9, 1)]
    # perfect detections of the non-crowd boxes score AP 1 (crowd ignored)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if not a["iscrowd"]]
    ev = COCOeval(api, api.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 2]  # IoU .5, all recalls, all classes, area all, 100 dets
    valid = precision[precision > -1]
    assert valid.size and np.allclose(valid, 1.0)


def test_check_files_false_skips_missing_images(coco):
    ann_file, image_dir, _ = coco
    (image_dir / "a.jpg").unlink()
    ds = load_coco(ann_file, image_dir, check_files=False)
    assert len(ds) == 3
    with pytest.raises(DataError, match="a.jpg"):
        ds[2]


def test_degenerate_boxes_dropped_with_one_warning(coco):
    ann_file, image_dir, write = coco
    data = base_json()
    data["annotations"] += [
        {"id": 20, "image_id": 10, "category_id": 5, "bbox": [5, 5, 0, 10]},
        {"id": 21, "image_id": 10, "category_id": 5, "bbox": [5, 5, 10, -1]},
        {"id": 22, "image_id": 3, "category_id": 2, "bbox": [32.5, 3, 0.4, 4]},  # empty once clipped
    ]
    write(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_coco(ann_file, image_dir)
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1
    assert "3 degenerate" in str(user[0].message) and "ann.json" in str(user[0].message)
    assert sum(len(r.boxes) for r in ds.records) == 4


def test_no_warning_without_degenerate_boxes(coco):
    ann_file, image_dir, _ = coco
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_coco(ann_file, image_dir)


def test_corrupt_image_raises_on_load(coco):
    ann_file, image_dir, _ = coco
    (image_dir / "a.jpg").write_bytes(b"this is not an image at all")
    ds = load_coco(ann_file, image_dir)  # exists, so opening succeeds; decoding is lazy
    with pytest.raises(DataError) as err:
        ds[2]
    assert "a.jpg" in str(err.value) and "image id 10" in str(err.value)


def test_decoded_images_are_kept_within_budget_and_redecoded_when_the_file_changes(coco, monkeypatch):
    import os

    from nasdet.data.dataset import DECODED

    ann_file, image_dir, _ = coco
    ds = load_coco(ann_file, image_dir)
    monkeypatch.setattr(DECODED, "images", {})
    monkeypatch.setattr(DECODED, "used", 0)
    monkeypatch.setattr(DECODED, "budget", 0)
    first = ds.load_image(0)
    assert DECODED.images == {}  # off unless configured (build_datasets sets data.cache_mb)
    DECODED.configure(1)
    a = ds.load_image(0)
    assert len(DECODED.images) == 1 and DECODED.used == a.numel()
    a[:] = 0  # a caller changing its image does not change the cached one
    again = ds.load_image(0)
    assert torch.equal(again, first) and again.stride() == first.stride()
    # a file replaced on disk is decoded again: a corrupt replacement fails with its name
    path = image_dir / ds.records[0].file.name
    path.write_bytes(b"not an image")
    os.utime(path, ns=(1, 1))
    with pytest.raises(DataError, match=ds.records[0].file.name):
        ds.load_image(0)
    # the budget holds: nothing past it is kept
    monkeypatch.setattr(DECODED, "budget", DECODED.used + 10)
    ds.load_image(1)
    assert len(DECODED.images) == 1
    # a loader worker does not add (its additions would die with it)
    monkeypatch.setattr(DECODED, "budget", 1 << 20)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    ds.load_image(2)
    assert len(DECODED.images) == 1


def _mutate(fn):
    def apply():
        data = base_json()
        fn(data)
        return data
    return apply


def _set_ann(i, **kw):
    return _mutate(lambda d: d["annotations"][i].update(kw))


def _del_key(container, i, key):
    return _mutate(lambda d: d[container][i].pop(key))


BAD = {
    "missing images key": (_mutate(lambda d: d.pop("images")), ["'images'"]),
    "missing annotations key": (_mutate(lambda d: d.pop("annotations")), ["'annotations'"]),
    "categories not a list": (_mutate(lambda d: d.update(categories={"id": 1})), ["'categories'", "list"]),
    "top level not an object": (lambda: [1, 2], ["object"]),
    "empty images": (_mutate(lambda d: d.update(images=[])), ["no images"]),
    "empty categories": (_mutate(lambda d: d.update(categories=[])), ["no categories"]),
    "duplicate image id": (
        _mutate(lambda d: d["images"].append({"id": 10, "file_name": "a.jpg", "width": 64, "height": 48})),
        ["duplicate image id 10"]),
    # (an export that merged two annotation files): the copy trained its image's objects as background
    "one file under two ids": (
        _mutate(lambda d: d["images"].append({**d["images"][1], "id": 77})), ["image ids 3 and 77", "same file_name"]),
    "one file under two ids, another spelling": (
        _mutate(lambda d: d["images"].append({**d["images"][1], "id": 78, "file_name": "./" + d["images"][1]["file_name"]})),
        ["image ids 3 and 78"]),
    "unknown image id": (_set_ann(0, image_id=99), ["annotation id 1", "image_id 99"]),
    "unknown category id": (_set_ann(1, category_id=42), ["annotation id 2", "category_id 42", "[2, 5, 9]"]),
    "missing bbox": (_del_key("annotations", 2, "bbox"), ["annotation id 3", "bbox"]),
    "short bbox": (_set_ann(0, bbox=[1, 2, 3]), ["annotation id 1", "[1, 2, 3]"]),
    "non-numeric bbox": (_set_ann(0, bbox=[1, 2, "3", 4]), ["annotation id 1", "bbox"]),
    "missing width": (_del_key("images", 1, "width"), ["image id 3", "width"]),
    "missing height": (_del_key("images", 0, "height"), ["image id 10", "height"]),
    "box right of image": (_set_ann(0, bbox=[60, 0, 10, 10]), ["annotation id 1", "[60, 0, 10, 10]", "64x48"]),
    "box above image": (_set_ann(3, bbox=[0, -1.5, 4, 4]), ["annotation id 4", "32x32"]),
    "bad iscrowd": (_set_ann(0, iscrowd=2), ["annotation id 1", "iscrowd"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_json_raises(coco, case):
    ann_file, image_dir, write = coco
    make, expected = BAD[case]
    write(make())
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    msg = str(err.value)
    assert "ann.json" in msg
    for s in expected:
        assert s in msg, (s, msg)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        load_coco(tmp_path / "nope.json", tmp_path)


def test_invalid_json_names_position(coco):
    ann_file, image_dir, _ = coco
    ann_file.write_text('{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    msg = str(err.value)
    assert "ann.json" in msg and "line 2" in msg and "column" in msg


def test_missing_image_file(coco):
    ann_file, image_dir, _ = coco
    (image_dir / "c.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    msg = str(err.value)
    assert "ann.json" in msg and str(image_dir / "c.jpg") in msg and "image id 7" in msg
    assert "1 of 3" in msg


def test_many_missing_image_files_are_summarised(coco):
    ann_file, image_dir, write = coco
    data = base_json()
    data["images"] += [{"id": 100 + i, "file_name": f"gone{i}.jpg", "width": 8, "height": 8} for i in range(8)]
    write(data)
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    msg = str(err.value)
    assert "8 of 11" in msg and "gone0.jpg" in msg and "gone4.jpg" in msg and "and 3 more" in msg
    assert "gone5.jpg" not in msg


def test_empty_image_files_are_found_when_the_set_is_opened(coco):
    """A 0-byte image (a copy or download cut short) is named with its id at open, not after an epoch of
    training; a missing one is reported first."""
    ann_file, image_dir, _ = coco
    (image_dir / "c.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    msg = str(err.value)
    assert "ann.json" in msg and str(image_dir / "c.jpg") in msg and "image id 7" in msg
    assert "1 of 3 image files are empty (0 bytes)" in msg
    (image_dir / "b.png").unlink()
    with pytest.raises(DataError, match="1 of 3 image files are missing"):
        load_coco(ann_file, image_dir)
    assert len(load_coco(ann_file, image_dir, check_files=False)) == 3  # check_files: false skips both


def test_duplicate_annotation_id_is_an_error(coco):
    """pycocotools indexes annotations by id, so a second annotation with an id would silently replace the first."""
    ann_file, image_dir, write = coco
    data = base_json()
    data["annotations"][3]["id"] = 2
    write(data)
    with pytest.raises(DataError) as err:
        load_coco(ann_file, image_dir)
    assert "ann.json" in str(err.value) and "duplicate annotation id 2" in str(err.value)
    for ann in data["annotations"]:  # ids are optional: annotations without one are not duplicates
        del ann["id"]
    write(data)
    assert sum(len(r.boxes) for r in load_coco(ann_file, image_dir).records) == 4


def test_json_with_a_utf8_byte_order_mark_loads(coco):
    """Windows editors and some exporters start UTF-8 files with a BOM; the json is the same."""
    ann_file, image_dir, _ = coco
    plain = load_coco(ann_file, image_dir)
    ann_file.write_bytes(b"\xef\xbb\xbf" + ann_file.read_bytes())
    with_bom = load_coco(ann_file, image_dir)
    assert with_bom.classes == plain.classes and [r.image_id for r in with_bom.records] == [3, 7, 10]



def test_the_installed_nasdet_command_runs_main_which_installs_the_warning_format():
    """The console script ran the typer app directly, so `nasdet ...` (unlike `python -m nasdet`) printed
    Python's two-line warnings."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="nasdet")
    assert script.value == "nasdet.cli:main"


def test_the_cli_prints_nasdets_warnings_as_one_line_and_a_librarys_as_python_does(coco, monkeypatch):
    """`nasdet` installs ``show_warning``: a warning about the user's data is one ``warning:`` line like an error,
    not Python's two lines quoting nasdet's own source; a library's warning keeps Python's format."""
    import io
    import types

    import nasdet.cli as cli
    from nasdet.data.build import load_split

    ann_file, image_dir, write = coco
    data = base_json()
    data["annotations"][0]["bbox"] = [10, 5, 0, 10]
    write(data)
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(
        format="coco", check_files=True, train=types.SimpleNamespace(annotations=ann_file, images=image_dir)))
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(cli, "app", lambda **kwargs: None)
        cli.main()  # what `nasdet ...` runs first
        assert warnings.showwarning is cli.show_warning
        monkeypatch.setattr(sys, "stderr", out)
        load_split(cfg, "train")  # warns from nasdet/data/build.py (stacklevel 3)
        warnings.warn("a library's\n  note", UserWarning)  # from this file: not nasdet's
    text = out.getvalue().splitlines()
    aid, iid = data["annotations"][0]["id"], data["annotations"][0]["image_id"]
    assert text[0] == (f"warning: {ann_file}: dropped 1 degenerate box (zero or negative width or height: swapped "
                       f"corners, a point), the first in annotation id {aid} (image id {iid}, bbox [10, 5, 0, 10])")
    assert text[1].startswith(__file__) and "UserWarning: a library's" in text[1], text
