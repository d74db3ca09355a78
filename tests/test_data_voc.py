"""Pascal VOC loading: tiny VOC2007 / VOC2012 folders written in tmp_path, success and bad-data cases."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from nasdet.data.dataset import DataError, to_coco_gt
from nasdet.data.voc import VOC_CLASSES, load_voc


def voc_xml(width, height, objects, size=True) -> str:
    """objects: ``(name, (xmin, ymin, xmax, ymax), difficult)``; difficult None omits the tag."""
    objs = []
    for name, (x1, y1, x2, y2), difficult in objects:
        diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{diff}"
                    f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    size_el = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><folder>VOC</folder><filename>x.jpg</filename>{size_el}{''.join(objs)}</annotation>"


def make_root(base: Path, year: str, images: dict, split: str = "train") -> Path:
    """images: name -> (width, height, objects)."""
    root = base / "VOCdevkit" / year
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (w, h, objects) in images.items():
        Image.new("RGB", (w, h), (120, 10, 200)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(w, h, objects))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
    return root


VOC07 = {
    "000005": (50, 40, [("chair", (11, 6, 30, 15), 0), ("person", (1, 1, 50, 40), 1)]),
    "000007": (30, 20, [("car", (5, 5, 5, 5), None), ("car", (2, 3, 31, 20), 0)]),  # 1-px box; clipped
    "000009": (20, 20, []),
}
VOC12 = {
    "2008_000001": (24, 16, [("dog", (3, 4, 10, 12), 0)]),
}


@pytest.fixture
def voc07(tmp_path):
    return make_root(tmp_path, "VOC2007", VOC07)


def test_voc_classes():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_load_success(voc07):
    ds = load_voc(voc07, "train")
    assert ds.classes == list(VOC_CLASSES) and ds.category_ids == list(range(1, 21))
    assert [r.image_id for r in ds.records] == [1, 2, 3]
    r5, r7, r9 = ds.records
    assert r5.file == voc07 / "JPEGImages" / "000005.jpg" and (r5.width, r5.height) == (50, 40)
    # 1-based inclusive -> 0-based XYXY: (x1 - 1, y1 - 1, x2, y2); the whole image is (0, 0, W, H)
    np.testing.assert_allclose(r5.boxes, [[10, 5, 30, 15], [0, 0, 50, 40]])
    assert r5.labels.tolist() == [VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("person") + 1]
    assert r5.iscrowd.tolist() == [0, 1]  # difficult -> iscrowd
    np.testing.assert_allclose(r7.boxes, [[4, 4, 5, 5], [1, 2, 30, 20]])  # xmax 31 on a 30-wide image: clipped
    assert r7.iscrowd.tolist() == [0, 0]  # missing <difficult> = 0
    assert r9.boxes.shape == (0, 4) and r9.labels.shape == (0,)

    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and tuple(image.shape) == (3, 40, 50)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and tuple(target["boxes"].canvas_size) == (40, 50)
    assert target["iscrowd"].tolist() == [0, 1] and target["image_id"] == 1


def test_a_split_file_with_a_byte_order_mark_lists_the_same_images(voc07):
    split = voc07 / "ImageSets" / "Main" / "train.txt"
    split.write_text("\ufeff" + split.read_text())
    assert [r.file.name for r in load_voc(voc07, "train").records] == ["000005.jpg", "000007.jpg", "000009.jpg"]


def test_the_xml_filename_names_a_png_or_upper_case_image(voc07):
    """CVAT / LabelImg write VOC sets whose images keep their own extension: `<filename>` names them."""
    (voc07 / "JPEGImages" / "000005.jpg").rename(voc07 / "JPEGImages" / "000005.png")
    (voc07 / "JPEGImages" / "000007.jpg").rename(voc07 / "JPEGImages" / "000007.JPG")
    for name, ext in (("000005", "png"), ("000007", "JPG")):
        xml = voc07 / "Annotations" / f"{name}.xml"
        xml.write_text(xml.read_text().replace("<filename>x.jpg</filename>", f"<filename>{name}.{ext}</filename>"))
    ds = load_voc(voc07, "train")
    assert [r.file.name for r in ds.records] == ["000005.png", "000007.JPG", "000009.jpg"]
    assert tuple(ds[0][0].shape) == (3, 40, 50)
    xml = voc07 / "Annotations" / "000009.xml"  # a <filename> naming another image is not followed
    xml.write_text(xml.read_text().replace("<filename>x.jpg</filename>", "<filename>000005.png</filename>"))
    assert load_voc(voc07, "train").records[2].file.name == "000009.jpg"


def test_an_unknown_class_with_the_default_classes_points_to_data_classes(voc07):
    from nasdet.errors import DataError

    (voc07 / "Annotations" / "000009.xml").write_text(voc_xml(20, 20, [("forklift", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match="unknown class name 'forklift'.*lists them in data.classes"):
        load_voc(voc07, "train")


def test_an_xml_with_a_default_namespace_reads_as_voc(voc07):
    """It said "no <size> element": every element name carried the namespace."""
    xml = voc07 / "Annotations" / "000005.xml"
    xml.write_text(xml.read_text().replace("<annotation>", '<annotation xmlns="http://example.com/voc">'))
    r5 = load_voc(voc07, "train").records[0]
    np.testing.assert_allclose(r5.boxes, [[10, 5, 30, 15], [0, 0, 50, 40]])


def test_multiple_roots_get_unique_ids(tmp_path):
    r07 = make_root(tmp_path, "VOC2007", VOC07, split="trainval")
    r12 = make_root(tmp_path, "VOC2012", VOC12, split="trainval")
    ds = load_voc([r07, r12], "trainval")
    assert [r.image_id for r in ds.records] == [1, 2, 3, 4]
    assert ds.records[3].file == r12 / "JPEGImages" / "2008_000001.jpg"
    assert "VOC2007" in ds.source and "VOC2012" in ds.source
    ds2 = load_voc([str(r07), str(r12)], ["trainval", "trainval"])
    assert [r.file for r in ds2.records] == [r.file for r in ds.records]
    with pytest.raises(DataError, match="2 roots but 3 splits"):
        load_voc([r07, r12], ["a", "b", "c"])
    with pytest.raises(DataError, match="already listed"):
        load_voc([r07, r07], "trainval")


def test_custom_classes(tmp_path):
    root = make_root(tmp_path, "VOC2007", {"a": (10, 10, [("cat", (1, 1, 5, 5), 0), ("dog", (2, 2, 6, 6), 0)])})
    ds = load_voc(root, "train", classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"] and ds.category_ids == [1, 2]
    assert ds.records[0].labels.tolist() == [2, 1]


def test_to_coco_gt_loads_in_pycocotools(voc07):
    from pycocotools.coco import COCO

    ds = load_voc(voc07, "train")
    api = COCO()
    api.dataset = to_coco_gt(ds)
    api.createIndex()
    assert sorted(api.getImgIds()) == [1, 2, 3]
    assert len(api.getAnnIds()) == 4 and len(api.getAnnIds(iscrowd=True)) == 1
    assert api.loadCats([15])[0]["name"] == "person"


def test_degenerate_boxes_dropped_with_one_warning(tmp_path):
    images = dict(VOC07)
    images["000010"] = (20, 20, [("cat", (8, 2, 6, 9), 0), ("cat", (2, 9, 5, 7), 0), ("cat", (2, 2, 9, 9), 0)])
    root = make_root(tmp_path, "VOC2007", images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_voc(root, "train")
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(user) == 1 and "2 degenerate" in str(user[0].message) and "VOC2007" in str(user[0].message)
    assert str(user[0].message).endswith(f"the first in {root / 'Annotations' / '000010.xml'}")  # (swapped corners)
    np.testing.assert_allclose(ds.records[3].boxes, [[1, 1, 9, 9]])


def test_stats_on_fixture(voc07):
    from nasdet.data.stats import dataset_stats

    s = dataset_stats(load_voc(voc07, "train"))
    assert (s["images"], s["boxes"], s["crowd_boxes"], s["images_without_boxes"]) == (3, 4, 1, 1)
    assert s["classes"]["car"] == {"id": 7, "boxes": 2, "crowd": 0, "images": 1}
    assert s["classes"]["person"] == {"id": 15, "boxes": 1, "crowd": 1, "images": 0}
    assert s["coco_area"] == {"small": 3, "medium": 0, "large": 0}
    # sides relative to the image: chair sqrt(200 / 2000) = 0.316,
    # cars sqrt(1 / 600) = 0.041 and sqrt(522 / 600) = 0.93
    assert s["relative_size"] == {"<4%": 0, "4-8%": 1, "8-16%": 0, "16-32%": 1, "32-64%": 0, ">=64%": 1}


def test_corrupt_image_raises_on_load(voc07):
    (voc07 / "JPEGImages" / "000007.jpg").write_bytes(b"\x00\x01 definitely not a jpeg")
    ds = load_voc(voc07, "train")
    with pytest.raises(DataError, match="000007.jpg"):
        ds[1]


def _write_xml(root: Path, name: str, text: str) -> None:
    (root / "Annotations" / f"{name}.xml").write_text(text)


BAD = {
    "unparsable xml": (lambda r: _write_xml(r, "000007", "<annotation><size>"), ["000007.xml", "parse"]),
    "missing size and image": (lambda r: (_write_xml(r, "000007", voc_xml(30, 20, [], size=False)),
                                          (r / "JPEGImages" / "000007.jpg").unlink()),
                               ["000007.xml has no <size>", "000007.jpg", "missing"]),
    "bad width": (lambda r: _write_xml(r, "000007", voc_xml("abc", 20, [])), ["000007.xml", "width"]),
    "unknown class": (
        lambda r: _write_xml(r, "000005", voc_xml(50, 40, [("chair", (1, 1, 5, 5), 0), ("unicorn", (1, 1, 5, 5), 0)])),
        ["000005.xml", "object #1", "unicorn", "aeroplane", "tvmonitor"]),
    "box outside": (
        lambda r: _write_xml(r, "000005", voc_xml(50, 40, [("chair", (1, 1, 52, 5), 0)])),
        ["000005.xml", "object #0", "chair", "52", "50x40"]),
    "missing bndbox coordinate": (
        lambda r: _write_xml(r, "000005", voc_xml(50, 40, [("chair", (1, 1, "", 5), 0)])),
        ["000005.xml", "object #0", "xmax"]),
    "missing xml": (lambda r: (r / "Annotations" / "000009.xml").unlink(), ["000009.xml"]),
    "missing split file": (lambda r: (r / "ImageSets" / "Main" / "train.txt").unlink(), ["train.txt"]),
    "missing image": (lambda r: (r / "JPEGImages" / "000009.jpg").unlink(), ["000009.jpg", "1 of 3"]),
    # a copy or download cut short: found when the set is opened, not when training first reads it
    "empty image": (lambda r: (r / "JPEGImages" / "000009.jpg").write_bytes(b""),
                    ["000009.jpg", "image id 3", "1 of 3", "empty (0 bytes)"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_voc_raises(voc07, case):
    break_it, expected = BAD[case]
    break_it(voc07)
    with pytest.raises(DataError) as err:
        load_voc(voc07, "train")
    msg = str(err.value)
    for s in expected:
        assert s in msg, (s, msg)


def test_a_missing_or_zero_size_is_the_images_own(voc07):
    """Some exporters leave <size> out, or write 0 when they do not know it: the image header has it."""
    _write_xml(voc07, "000007", voc_xml(30, 20, [("car", (2, 3, 31, 20), 0)], size=False))
    _write_xml(voc07, "000005", voc_xml(0, 0, [("chair", (11, 6, 30, 15), 0)]))
    with pytest.warns(UserWarning, match="2 annotation files have no <size>"):
        ds = load_voc(voc07, "train")
    assert [(r.width, r.height) for r in ds.records] == [(50, 40), (30, 20), (20, 20)]
    assert ds.records[1].boxes.tolist() == [[1.0, 2.0, 30.0, 20.0]]  # clipped to the image's 30 px
    assert ds[1][0].shape == (3, 20, 30)
    _write_xml(voc07, "000005", voc_xml(0, 40, []))  # one side given: a wrong file, not an unknown size
    with pytest.raises(DataError, match="000005.xml: <size>/<width> must be a positive integer"):
        load_voc(voc07, "train")


def test_check_files_false_skips_image_check(voc07):
    (voc07 / "JPEGImages" / "000009.jpg").unlink()
    assert len(load_voc(voc07, "train", check_files=False)) == 3


def test_unreadable_files_say_permission_denied_naming_the_file(voc07, monkeypatch):
    """Not Python's ``[Errno 13] Permission denied: '...'`` after the file's name (root reads any file, so the
    denial is simulated where the file is opened)."""
    import builtins

    real_open = builtins.open
    denied = {str(voc07 / "Annotations" / "000007.xml"), str(voc07 / "JPEGImages" / "000005.jpg")}

    def open_denying(file, *args, **kwargs):
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_denying)
    with pytest.raises(DataError) as err:
        load_voc(voc07, "train")
    assert str(err.value) == (f"{voc07 / 'Annotations' / '000007.xml'}: cannot read the annotation file: "
                              "permission denied (check its permissions)")
    denied.remove(str(voc07 / "Annotations" / "000007.xml"))
    ds = load_voc(voc07, "train")
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(err.value).endswith("000005.jpg (image id 1) cannot be read: permission denied (check its permissions)")
    assert "Errno" not in str(err.value)
