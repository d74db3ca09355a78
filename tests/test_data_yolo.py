"""YOLO-format data (issue 17): data.yaml names and split entries, label parsing and every bad-data case,
the config and CLI paths, COCO -> YOLO conversion (same boxes, same mAP) and a pipeline on YOLO data."""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from nasdet.config import ConfigError, validate_config
from nasdet.data.coco import load_coco
from nasdet.data.dataset import DataError
from nasdet.data.yolo import label_file_for, load_yolo, read_data_yaml, write_yolo

# image (relative to images/train) -> size; labels/train mirrors it
IMAGES = {"a.jpg": (64, 48), "b.png": (32, 32), "sub/c.jpg": (40, 30)}
NAMES = {0: "dog", 1: "cat", 2: "bird"}
LABELS = {
    # a 0.5 x 0.25 box at the centre; a polygon (reduced to its box); a box 0.5 % over the left edge (clipped)
    "a.txt": "1 0.5 0.5 0.5 0.25\n\n2 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n0 0.095 0.5 0.2 0.2\n",
    "b.txt": "\ufeff",  # empty file (a byte-order mark only): no objects; sub/c.txt is missing: none either
}


def _write_set(root, names=NAMES, labels=LABELS, yaml_extra=None):
    for rel, (w, h) in IMAGES.items():
        f = root / "images" / "train" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (30, 60, 90)).save(f)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for name, text in labels.items():
        (root / "labels" / "train" / name).write_text(text)
    data = {"path": ".", "train": "images/train", "val": "images/train", "names": names, **(yaml_extra or {})}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


@pytest.fixture
def yolo(tmp_path):
    return _write_set(tmp_path)


def test_load_success(yolo):
    ds = load_yolo(yolo, "train")
    assert ds.classes == ["dog", "cat", "bird"] and ds.category_ids == [1, 2, 3]
    assert [r.file.name for r in ds.records] == ["a.jpg", "b.png", "c.jpg"] and [r.image_id for r in ds.records] == [1, 2, 3]
    a, b, c = ds.records
    assert (a.width, a.height, c.width, c.height) == (64, 48, 40, 30)
    np.testing.assert_allclose(a.boxes, [[16, 18, 48, 30], [6.4, 4.8, 19.2, 14.4], [0, 19.2, 12.48, 28.8]], atol=1e-4)
    assert a.labels.tolist() == [2, 3, 1] and a.iscrowd.tolist() == [0, 0, 0]
    assert b.boxes.shape == (0, 4) and c.boxes.shape == (0, 4) and c.labels.dtype == np.int64
    image, target = ds[0]
    assert tuple(image.shape) == (3, 48, 64) and target["labels"].tolist() == [2, 3, 1]


def test_label_paths_roboflow_layout_list_file_and_labels_folder(tmp_path):
    assert label_file_for(tmp_path / "images" / "train" / "x.jpg") == tmp_path / "labels" / "train" / "x.txt"
    # the last "images" folder is the one replaced; no "images" folder: the label sits next to the image
    assert label_file_for(tmp_path / "images" / "v" / "images" / "x.png") == tmp_path / "images" / "v" / "labels" / "x.txt"
    assert label_file_for(tmp_path / "pics" / "x.jpg") == tmp_path / "pics" / "x.txt"
    # Roboflow: data.yaml in the root with "../train/images", "../valid/images" (retried without "../")
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(root / split / "images" / "p.jpg")
        (root / split / "labels" / "p.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['thing']\n")
    ds = load_yolo(root / "data.yaml", "val")
    assert ds.records[0].file == root / "valid" / "images" / "p.jpg"
    np.testing.assert_allclose(ds.records[0].boxes, [[5, 2.5, 15, 7.5]])
    # a list file: paths relative to the list's folder, listed order kept
    (root / "list.txt").write_text("valid/images/p.jpg\ntrain/images/p.jpg\n")
    listed = load_yolo(root / "data.yaml", images=root / "list.txt")
    assert [r.file for r in listed.records] == [root / "valid" / "images" / "p.jpg", root / "train" / "images" / "p.jpg"]
    (root / "bom.txt").write_text("\ufeffvalid/images/p.jpg\r\n")  # as Windows Notepad saves it
    assert [r.file for r in load_yolo(root / "data.yaml", images=root / "bom.txt").records] == \
        [root / "valid" / "images" / "p.jpg"]
    # an explicit labels folder mirroring the image folder
    (root / "ann").mkdir()
    (root / "ann" / "p.txt").write_text("0 0.25 0.5 0.5 1\n")
    ds = load_yolo(root / "data.yaml", images=root / "train" / "images", labels=root / "ann")
    np.testing.assert_allclose(ds.records[0].boxes, [[0, 0, 10, 10]])


def test_image_search_follows_linked_folders_and_skips_hidden_files(tmp_path):
    """As Ultralytics' glob: a symlinked subfolder's images count; macOS `._x.jpg` and `.ipynb_checkpoints/`
    do not (the first failed as a corrupt image, the second was added as an unlabelled one)."""
    yaml_file = _write_set(tmp_path / "set")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "images").mkdir(parents=True)
    (elsewhere / "labels").mkdir()
    Image.new("RGB", (20, 20)).save(elsewhere / "images" / "d.jpg")
    (elsewhere / "labels" / "d.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "set" / "images" / "train" / "linked").symlink_to(elsewhere / "images", target_is_directory=True)
    (tmp_path / "set" / "labels" / "train" / "linked").symlink_to(elsewhere / "labels", target_is_directory=True)
    (tmp_path / "set" / "images" / "train" / "loop").symlink_to(tmp_path / "set" / "images", target_is_directory=True)
    (tmp_path / "set" / "images" / "train" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    hidden = tmp_path / "set" / "images" / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (20, 20)).save(hidden / "a-checkpoint.jpg")
    ds = load_yolo(yaml_file, "train")
    assert sorted(r.file.name for r in ds.records) == ["a.jpg", "b.png", "c.jpg", "d.jpg"]
    d = next(r for r in ds.records if r.file.name == "d.jpg")
    np.testing.assert_allclose(d.boxes, [[5, 5, 15, 15]])


@pytest.mark.parametrize("names, match", [
    (["dog", "cat", "bird"], None),
    ({"0": "dog", "1": "cat", "2": "bird"}, None),
    ([], "'names' is empty"),
    (None, "no 'names'"),
    ({0: "dog", 2: "cat"}, "without gaps"),
    (["dog", "dog"], "duplicate class names"),
    ("dog", "must be a list"),
    (["dog", None], "class 1 has no name"),
])
def test_data_yaml_names(tmp_path, names, match):
    f = tmp_path / "data.yaml"
    f.write_text(yaml.safe_dump({"train": "images", "names": names} if names is not None else {"train": "images"}))
    if match is None:
        assert read_data_yaml(f).names == ["dog", "cat", "bird"]
    else:
        with pytest.raises(DataError, match=match) as e:
            read_data_yaml(f)
        assert str(f) in str(e.value)


def test_data_yaml_file_errors(tmp_path):
    f = tmp_path / "data.yaml"
    with pytest.raises(DataError, match="does not exist"):
        read_data_yaml(f)
    f.write_text("names: [a, b\n")
    with pytest.raises(DataError, match="not valid YAML"):
        read_data_yaml(f)
    f.write_text("nc: 3\nnames: [a, b]\n")
    with pytest.raises(DataError, match="nc is 3 but 'names' lists 2"):
        read_data_yaml(f)
    f.write_text("nc: '2'\nnames: [a, b]\n")  # quoted by some exporters: the number it says
    assert read_data_yaml(f).names == ["a", "b"]
    f.write_text("names: [a, b]\n")
    with pytest.raises(DataError, match="no 'val' entry"):
        load_yolo(f, "val")
    with pytest.raises(DataError, match="is a folder; data.data_yaml names the data.yaml file in it"):
        read_data_yaml(tmp_path)


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """Relative data paths are taken from the current folder: a run from another folder said only "does not
    exist"."""
    from nasdet.data.coco import load_coco

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"data/data.yaml: data.yaml does not exist \(a relative path, taken from "
                                        rf"the current folder {tmp_path}\)"):
        read_data_yaml("data/data.yaml")
    with pytest.raises(DataError, match=rf"taken from the current folder {tmp_path}"):
        load_coco("data/train.json", "data/images")
    from nasdet.data.voc import load_voc

    with pytest.raises(DataError, match=rf"the root data/VOC2007 does not exist \(a relative path, taken from the "
                                        rf"current folder {tmp_path}\)"):
        load_voc("data/VOC2007", "train", classes=["cat"])
    with pytest.raises(DataError) as e:
        read_data_yaml(tmp_path / "nowhere.yaml")
    assert "current folder" not in str(e.value)  # an absolute path needs no hint


@pytest.mark.parametrize("line, match", [
    ("1 0.5 0.5 0.2", "malformed line '1 0.5 0.5 0.2'.*got 4 fields"),
    ("1 0.5 0.5 0.2 0.2 0.3", "malformed line"),
    ("1 0.5 x 0.2 0.2", "not all fields are numbers"),
    ("1 0.5 nan 0.2 0.2", "not finite"),
    ("3 0.5 0.5 0.2 0.2", "class index 3 is not among the 3 classes"),
    ("-1 0.5 0.5 0.2 0.2", "class index -1"),
    ("1.5 0.5 0.5 0.2 0.2", "class index 1.5"),
    ("1 0.5 0.5 1.2 0.2", r"not normalised: outside \[0, 1\]"),
    ("1 12 20 4 4", "not normalised"),
    ("1 0.05 0.5 0.3 0.2", r"box \(x1, y1, x2, y2\) = \(-0.1, 0.4, 0.2, 0.6\) lies outside the image"),
])
def test_bad_label_line_names_file_and_line(tmp_path, line, match):
    data_yaml = _write_set(tmp_path, labels={"a.txt": "0 0.5 0.5 0.1 0.1\n\n" + line + "\n"})
    with pytest.raises(DataError, match=match) as e:
        load_yolo(data_yaml, "train")
    assert f"{tmp_path / 'labels' / 'train' / 'a.txt'}:3:" in str(e.value)


def test_degenerate_boxes_dropped_with_one_warning(tmp_path):
    data_yaml = _write_set(tmp_path, labels={"a.txt": "0 0.5 0.5 0 0.1\n1 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 0\n"})
    with pytest.warns(UserWarning, match=r"dropped 2 degenerate boxes .* the first in .*a\.txt") as said:
        ds = load_yolo(data_yaml, "train")
    assert str(tmp_path / "labels" / "train" / "a.txt") in str(said[0].message)  # the file to fix
    assert ds.records[0].labels.tolist() == [2]


def test_a_box_past_the_border_within_the_tolerance_is_clipped_not_dropped(tmp_path, monkeypatch):
    """0.01 of a 640 px image is 6.4 px: edges 3.8 and 2.9 px past the border are kept, clipped (as Ultralytics
    does); they were dropped as "degenerate" (a pixel was the most the box check took)."""
    import sys
    import warnings

    monkeypatch.setattr(sys.modules[__name__], "IMAGES", {"a.jpg": (640, 480)})
    data_yaml = _write_set(tmp_path, labels={"a.txt": "1 0.996 0.5 0.02 0.1\n0 0.5 0.004 0.1 0.02\n"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_yolo(data_yaml, "train")
    assert ds.records[0].labels.tolist() == [2, 1]
    assert ds.records[0].boxes.flatten().tolist() == pytest.approx([631.04, 216, 640, 264, 288, 0, 352, 6.72], abs=1e-3)


def test_duplicate_label_lines_dropped_with_one_warning(tmp_path):
    """As Ultralytics: a line repeating an earlier one of its file is one object, not two."""
    data_yaml = _write_set(tmp_path, labels={"a.txt": "1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n",
                                             "b.txt": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.warns(UserWarning, match=r"dropped 1 duplicate label line\(s\) .*a.txt\), as Ultralytics does"):
        ds = load_yolo(data_yaml, "train")
    assert ds.records[0].labels.tolist() == [2, 1] and ds.records[1].labels.tolist() == [2]


def test_two_images_sharing_a_label_file_are_warned_about(tmp_path):
    data_yaml = _write_set(tmp_path)
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "train" / "a.png")  # beside a.jpg: both read a.txt
    with pytest.warns(UserWarning, match=r"1 label file\(s\) serve more than one image \(e.g. .*a.txt for a.jpg, "
                                         r"a.png\)"):
        ds = load_yolo(data_yaml, "train")
    assert len(ds) == 4


def test_missing_or_bad_images(tmp_path):
    data_yaml = _write_set(tmp_path)
    with pytest.raises(DataError, match="image folder or list .*nowhere does not exist"):
        load_yolo(data_yaml, images=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_yolo(data_yaml, images=tmp_path / "empty")
    (tmp_path / "list.txt").write_text("images/train/a.jpg\nimages/train/gone.jpg\n")
    with pytest.raises(DataError, match=r"1 of 2 listed images are missing: .*gone.jpg \(line 2\)"):
        load_yolo(data_yaml, images=tmp_path / "list.txt")
    # a label file whose image is gone: a warning naming it (its objects cannot be loaded)
    (tmp_path / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "train" / "classes.txt").write_text("dog\ncat\nbird\n")  # LabelImg's: not a label
    with pytest.warns(UserWarning, match=r"1 label file\(s\) have no image and are not loaded: .*gone.txt$"):
        assert len(load_yolo(data_yaml, "train")) == 3
    (tmp_path / "images" / "train" / "b.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="b.png cannot be opened"):
        load_yolo(data_yaml, "train")
    with pytest.raises(DataError, match="labels folder .*ann does not exist"):
        load_yolo(data_yaml, images=tmp_path / "images" / "train", labels=tmp_path / "ann")


def test_config_schema_and_dataset_factory(tmp_path, yolo):
    from nasdet.data.build import build_datasets

    base = {"format": "yolo", "data_yaml": str(yolo), "num_workers": 0}
    cfg = validate_config({"data": base}, "t")
    sets = build_datasets(cfg)
    assert len(sets["train"]) == 3 and sets["val"].classes == ["dog", "cat", "bird"]
    cfg = validate_config({"data": {**base, "val": {"images": str(tmp_path / "images" / "train" / "sub")}}}, "t")
    assert [r.file.name for r in build_datasets(cfg, ("val",))["val"].records] == ["c.jpg"]
    for data, match in [
        ({"format": "yolo"}, "needs 'data_yaml'"),
        ({**base, "classes": ["a"]}, "data.classes applies to format 'voc'"),
        ({**base, "train": {"annotations": "x.json", "images": "x"}}, r"data.train: \['annotations'\] are not YOLO keys .*clear the old keys: --set data.train=\{\}"),
        ({**base, "train": {"labels": "l"}}, "'labels' needs 'images'"),
        ({"format": "coco", "data_yaml": "d.yaml", "train": {"annotations": "a", "images": "i"},
          "val": {"annotations": "a", "images": "i"}}, "data.data_yaml applies to format 'yolo'"),
        ({"format": "coco", "train": {"annotations": "a", "images": "i", "labels": "l"},
          "val": {"annotations": "a", "images": "i"}}, "data.train.labels applies to format 'yolo'"),
        ({"format": "coco"}, "data.train: format 'coco' needs"),
    ]:
        with pytest.raises(ConfigError, match=match):
            validate_config({"data": data}, "t")


def test_write_yolo_leaves_out_crowd_and_refuses_clashing_names(tmp_path):
    import json

    img_dir = tmp_path / "coco"
    (img_dir / "x").mkdir(parents=True)
    for f in ("p.jpg", "x/p.png"):
        Image.new("RGB", (40, 20)).save(img_dir / f)
    coco = {"images": [{"id": 1, "file_name": "p.jpg", "width": 40, "height": 20}],
            "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [4, 2, 20, 10]},
                            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 20], "iscrowd": 1}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    ds = load_coco(tmp_path / "a.json", img_dir)
    with pytest.warns(UserWarning, match="left out 1 crowd"):
        data_yaml = write_yolo({"train": ds}, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "labels" / "p.txt").read_text() == "1 0.350000 0.350000 0.500000 0.500000\n"
    back = load_yolo(data_yaml, "train")
    assert back.classes == ["a", "b"] and back.records[0].labels.tolist() == [2]
    np.testing.assert_allclose(back.records[0].boxes, [[4, 2, 24, 12]], atol=1e-4)
    coco["images"].append({"id": 2, "file_name": "x/p.png", "width": 40, "height": 20})
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="two images named p"):
        write_yolo({"train": load_coco(tmp_path / "a.json", img_dir)}, tmp_path / "out2")
    # an annotated size that is not the image's: the labels would be normalised by it (silently wrong boxes)
    coco["images"] = [{"id": 1, "file_name": "p.jpg", "width": 80, "height": 40}]
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"p.jpg \(image id 1\) is 40x20 but the annotations say 80x40"):
        write_yolo({"train": load_coco(tmp_path / "a.json", img_dir)}, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


# ------------------------------------------------------------------------------- COCO vs its YOLO copy
class PixelKeyedDetector(nn.Module):
    """A deterministic stand-in detector: its output depends only on the image pixels (looked up by their
    hash), here the ground truth jittered plus one false positive per image, so its mAP is neither 0 nor 1
    and moves with every ground-truth box."""

    def __init__(self, dataset):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = {}
        for i, rec in enumerate(dataset.records):
            boxes = torch.from_numpy(rec.boxes.copy())
            boxes = boxes + torch.randn(boxes.shape, generator=g) * 0.06 * (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            fp = torch.tensor([[0.0, 0.0, rec.width / 3, rec.height / 3]])
            self.table[self._key(dataset.load_image(i))] = {
                "boxes": torch.cat([boxes, fp]), "labels": torch.cat([torch.from_numpy(rec.labels), torch.tensor([1])]),
                "scores": torch.rand(len(boxes) + 1, generator=g)}

    @staticmethod
    def _key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()

    def forward(self, images):
        # the evaluator hands over float images in [0, 1]
        return [{k: v.clone() for k, v in self.table[self._key((im * 255).round())].items()} for im in images]


def test_coco_and_its_yolo_conversion_give_the_same_boxes_and_map(shapes_dir, tmp_path, tiny_config):
    from nasdet.models import build_detector
    from nasdet.train.evaluate import evaluate_detector

    coco = {s: load_coco(shapes_dir / s / "annotations.json", shapes_dir / s / "images") for s in ("train", "val")}
    data_yaml = write_yolo(coco, tmp_path / "yolo")
    for split, ds in coco.items():
        back = load_yolo(data_yaml, split)
        assert back.classes == ds.classes and len(back) == len(ds)
        by_name = {r.file.name: r for r in back.records}
        for rec in ds.records:
            other = by_name[rec.file.name]
            assert (other.width, other.height) == (rec.width, rec.height)
            assert other.labels.tolist() == rec.labels.tolist()
            np.testing.assert_allclose(other.boxes, rec.boxes, atol=1e-3)
    val_yolo = load_yolo(data_yaml, "val")
    oracle = PixelKeyedDetector(coco["val"])
    m_coco = evaluate_detector(oracle, coco["val"], torch.device("cpu"))
    m_yolo = evaluate_detector(oracle, val_yolo, torch.device("cpu"))
    assert 0.2 < m_coco["AP"] < 0.95
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert m_yolo[k] == pytest.approx(m_coco[k], abs=1e-6), k
    # one real (untrained) detector: identical images -> identical detections -> same metrics
    torch.manual_seed(0)
    model = build_detector(tiny_config().model, num_classes=8)
    m_coco = evaluate_detector(model, coco["val"], torch.device("cpu"))
    m_yolo = evaluate_detector(model, val_yolo, torch.device("cpu"))
    for k in ("AP", "AP50", "AR100"):
        assert m_yolo[k] == pytest.approx(m_coco[k], abs=1e-6), k


def test_make_synthetic_yolo_then_pipeline_on_yolo_data(shapes_dir, tmp_path):
    """`nasdet data make-synthetic --format yolo` writes labels + data.yaml beside the COCO files, and
    `nasdet pipeline` runs pretrain, search, tune, export and the report on the YOLO-format set (the
    baseline stage, the same training code as tune, is left out to keep the test within seconds)."""
    from typer.testing import CliRunner

    from nasdet.cli import app
    from test_tune_export_pipeline import _pipeline_raw

    runner = CliRunner()
    out = tmp_path / "shapes"
    res = runner.invoke(app, ["data", "make-synthetic", str(out), "--train", "12", "--val", "4", "--size", "64",
                              "--workers", "1", "--format", "yolo"])
    assert res.exit_code == 0, res.output
    assert (out / "data.yaml").is_file() and len(list((out / "train" / "labels").glob("*.txt"))) == 12
    assert load_yolo(out / "data.yaml", "val").classes == load_coco(out / "val" / "annotations.json",
                                                                    out / "val" / "images").classes
    res = runner.invoke(app, ["data", "make-synthetic", str(out), "--train", "12", "--val", "4", "--size", "64",
                              "--format", "yolov5"])
    assert res.exit_code == 2 and "--format must be coco, yolo or imagefolder" in res.output

    raw = _pipeline_raw(shapes_dir, tmp_path / "work")
    raw["data"] = {**raw["data"], "format": "yolo", "data_yaml": str(out / "data.yaml"), "train": {}, "val": {}}
    raw["search"].update(num_candidates=2)
    raw["train"].update(max_steps=1)
    raw["pipeline"] = {"baseline": False}
    config = tmp_path / "yolo.yaml"
    config.write_text(yaml.safe_dump(raw))
    res = runner.invoke(app, ["pipeline", str(config)])
    assert res.exit_code == 0, res.output
    wd = tmp_path / "work"
    for name in ("supernet/ckpt/last.pt", "search/best_arch.json", "tune/metrics.json",
                 "export/tune.onnx", "report.md"):
        assert (wd / name).is_file(), name
    assert str(out / "data.yaml") in (wd / "report.md").read_text()
    # a bad label line stops the pipeline at start-up with one error line naming the file and line
    (out / "train" / "labels" / "000003.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    res = runner.invoke(app, ["pipeline", str(config), "--work-dir", str(tmp_path / "work2")])
    assert res.exit_code == 2 and "000003.txt:1: class index 9" in res.output.replace("\n", "")


def test_to_yolo_cli_converts_a_config(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from nasdet.cli import app
    from nasdet.config import config_to_dict

    cfg = tiny_config()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no crowd boxes in the shapes set: nothing left out
        res = CliRunner().invoke(app, ["data", "to-yolo", str(path), str(tmp_path / "y")])
    assert res.exit_code == 0, res.output
    spec = read_data_yaml(tmp_path / "y" / "data.yaml")
    assert spec.names == ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent"]
    assert len(load_yolo(tmp_path / "y" / "data.yaml", "train")) == 24



def test_exif_rotated_jpeg_labels_and_pixels_in_the_upright_frame(tmp_path):
    """A phone photo stored 64x48 with EXIF orientation 6 is shown (and read) 48x64 upright; its label is
    normalised in that upright frame (as Ultralytics reads it), so the record's size and the pixels agree."""
    root = _write_set(tmp_path, labels={"a.txt": "0 0.5 0.25 0.5 0.25\n"})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.new("RGB", (64, 48), (30, 60, 90)).save(tmp_path / "images" / "train" / "a.jpg", exif=exif)
    with pytest.warns(UserWarning, match="upright"):
        ds = load_yolo(root, "train")
    a = ds.records[0]
    assert (a.width, a.height) == (48, 64)
    np.testing.assert_allclose(a.boxes, [[12, 8, 36, 24]], atol=1e-4)
    image, _ = ds[0]  # no size mismatch: the loader applies the same rotation
    assert tuple(image.shape) == (3, 64, 48)
