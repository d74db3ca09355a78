"""Issue 16: fuzzing (hypothesis) of what users hand to nasdet: COCO json, VOC xml, YOLO labels and
data.yaml, config YAML and ``--set`` overrides, arch dicts and arch files. Every input either loads or
raises a ``NasdetError`` (one clear line in the CLI), never another exception from deep inside.

Inputs are mostly-valid documents with fields replaced by hostile values (wrong types, NaN, huge,
negative, empty, markup), which reach deeper than random bytes. Few examples per test (time budget).
"""
from __future__ import annotations

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from nasdet.config import load_config
from nasdet.errors import NasdetError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# values a field may take instead of the right one
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["", "[/x]", "[bold]", "1e999", "-0", "NaN", "0x10", "１２"]),
    st.lists(st.integers(-5, 100), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def maybe(valid, hostile=HOSTILE):
    """Mostly the valid value, sometimes a hostile one."""
    return st.one_of(valid, valid, valid, hostile)


def with_missing(fields: dict):
    """A dict strategy where each key may be absent."""
    return st.fixed_dictionaries({}, optional=fields)


def check_only_clear_errors(fn, *args, **kwargs):
    """Run ``fn``; a ``NasdetError`` is a clear error, anything else fails the test (with its traceback)."""
    try:
        return fn(*args, **kwargs)
    except NasdetError as e:
        assert str(e).strip(), "an error without a message"
        return None


# ------------------------------------------------------------------------------------------- COCO
COCO_IMAGE = with_missing({"id": maybe(st.integers(1, 4)), "width": maybe(st.integers(1, 64)),
                           "height": maybe(st.integers(1, 64)), "file_name": maybe(st.sampled_from(["a.jpg", "b.png"]))})
COCO_BBOX = maybe(st.lists(maybe(st.floats(-2, 70, allow_nan=False)), min_size=4, max_size=4))
COCO_ANN = with_missing({"id": maybe(st.integers(1, 9)), "image_id": maybe(st.integers(1, 4)),
                         "category_id": maybe(st.integers(1, 3)), "bbox": COCO_BBOX,
                         "iscrowd": maybe(st.integers(0, 1)), "area": HOSTILE})
COCO_CAT = with_missing({"id": maybe(st.integers(1, 3)), "name": maybe(st.sampled_from(["cat", "dog"]))})
COCO_DOC = maybe(with_missing({"images": maybe(st.lists(COCO_IMAGE, max_size=3)),
                               "annotations": maybe(st.lists(COCO_ANN, max_size=4)),
                               "categories": maybe(st.lists(COCO_CAT, max_size=3))}))


@FUZZ
@given(doc=COCO_DOC, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzz_coco_annotations(tmp_path, doc, raw):
    from nasdet.data.coco import load_coco
    from nasdet.data.dataset import to_coco_gt

    ann = tmp_path / "ann.json"
    ann.write_bytes(raw if raw is not None else json.dumps(doc).encode())  # NaN / Infinity as Python writes them
    ds = check_only_clear_errors(load_coco, ann, tmp_path, check_files=False)
    if ds is not None:
        gt = to_coco_gt(ds)  # what evaluation builds from it
        assert all(math.isfinite(v) for a in gt["annotations"] for v in a["bbox"])


# -------------------------------------------------------------------------------------------- VOC
def _xml_text(value) -> str:
    return "" if value is None else str(value)


VOC_OBJECT = with_missing({
    "name": maybe(st.sampled_from(["cat", "dog"])), "difficult": maybe(st.sampled_from(["0", "1"])),
    "bndbox": with_missing({k: maybe(st.integers(0, 60)) for k in ("xmin", "ymin", "xmax", "ymax")}),
})
VOC_DOC = with_missing({"size": with_missing({"width": maybe(st.integers(1, 60)), "height": maybe(st.integers(1, 60))}),
                        "object": st.lists(VOC_OBJECT, max_size=3)})


def _voc_xml(doc) -> str:
    parts = ["<annotation>"]
    if "size" in doc:
        parts.append("<size>" + "".join(f"<{k}>{_xml_text(v)}</{k}>" for k, v in doc["size"].items()) + "</size>")
    for obj in doc.get("object", []):
        inner = "".join(f"<{k}>{_xml_text(v)}</{k}>" for k, v in obj.items() if k != "bndbox")
        if "bndbox" in obj:
            inner += "<bndbox>" + "".join(f"<{k}>{_xml_text(v)}</{k}>" for k, v in obj["bndbox"].items()) + "</bndbox>"
        parts.append(f"<object>{inner}</object>")
    return "".join(parts) + "</annotation>"


@FUZZ
@given(doc=VOC_DOC, cut=st.one_of(st.none(), st.integers(0, 200)))
def test_fuzz_voc_annotations(tmp_path, doc, cut):
    from nasdet.data.voc import load_voc

    (tmp_path / "Annotations").mkdir(exist_ok=True)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("000001\n")
    text = _voc_xml(doc)
    (tmp_path / "Annotations" / "000001.xml").write_text(text if cut is None else text[:cut])  # cut: a truncated file
    check_only_clear_errors(load_voc, tmp_path, "train", classes=["cat", "dog"], check_files=False)


# ------------------------------------------------------------------------------------------- YOLO
YOLO_NUMBER = st.one_of(st.floats(-0.1, 1.1, allow_nan=False).map(lambda v: f"{v:.4f}"),
                        st.sampled_from(["nan", "inf", "-inf", "1e999", "", "x", "0x1", "1_0", "½"]))
YOLO_LINE = st.one_of(
    st.tuples(st.sampled_from(["0", "1", "2", "-1", "3", "1.0", "1.5", "x", "01"]),
              st.lists(YOLO_NUMBER, min_size=0, max_size=9)).map(lambda t: " ".join([t[0], *t[1]])),
    st.text(max_size=12))
YOLO_NAMES = maybe(st.sampled_from([["cat", "dog"], {0: "cat", 1: "dog"}]),
                   st.one_of(HOSTILE, st.dictionaries(st.integers(-1, 3), st.text(max_size=3), max_size=3)))


@FUZZ
@given(lines=st.lists(YOLO_LINE, max_size=4), names=YOLO_NAMES, extra=st.dictionaries(
    st.sampled_from(["path", "train", "val", "nc"]), HOSTILE, max_size=2))
def test_fuzz_yolo_labels_and_data_yaml(tmp_path, lines, names, extra):
    from nasdet.data.yolo import load_yolo

    image = tmp_path / "images" / "train" / "a.jpg"
    if not image.exists():
        image.parent.mkdir(parents=True)
        Image.new("RGB", (32, 24)).save(image)
    (tmp_path / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("\n".join(lines))
    data = {"path": ".", "train": "images/train", "val": "images/train", "names": names, **extra}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    check_only_clear_errors(load_yolo, tmp_path / "data.yaml", "train")


# ------------------------------------------------------------------------------------------ configs
def _schema_keys() -> list[str]:
    """Every key path of the config schema (sections and leaves)."""
    from pydantic import BaseModel

    from nasdet.config import ExperimentConfig

    out = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            out.append(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, prefix + name + ".")

    walk(ExperimentConfig, "")
    return out


KEYS = _schema_keys()
OVERRIDE_VALUE = st.one_of(
    st.sampled_from(["", "null", "~", "[]", "{}", "[1, 2]", "{a: 1}", "-1", "0", "1e999", ".nan", "true", "ssd/lite",
                     "[/x]", "[bold]x[/bold]", "!!python/object/apply:os.system [ls]", "&a x", "*a", "'", "\"",
                     "{a: [", "2: 3", "- x"]),
    st.integers(-10, 10_000).map(str), st.text(max_size=8))
OVERRIDE = st.one_of(st.tuples(st.sampled_from(KEYS), OVERRIDE_VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"),
                     st.text(max_size=12))


@pytest.fixture
def base_config(tmp_path):
    raw = {"name": "fuzz", "data": {"format": "coco", "train": {"annotations": "a.json", "images": "i"},
                                    "val": {"annotations": "a.json", "images": "i"}}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=3))
def test_fuzz_set_overrides(base_config, overrides):
    check_only_clear_errors(load_config, base_config, overrides)


YAML_TREE = st.recursive(HOSTILE, lambda c: st.dictionaries(st.sampled_from(KEYS[:40] + ["x", ""]), c, max_size=3)
                         | st.lists(c, max_size=3), max_leaves=8)


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(["name", "data", "model", "train", "search", "supernet", "tune", "seed"]),
                            YAML_TREE, max_size=4),
       text=st.one_of(st.none(), st.text(max_size=40),
                      st.sampled_from(["a: 1\na: 2\n", "train:\n  epochs: 1\ntrain: {}\n", "!!binary x", "[", "- - -",
                                       "data: &a {}\nmodel: *a\n", "\t", "a: !!python/name:os.system ''"])))
def test_fuzz_config_yaml(tmp_path, tree, text):
    path = tmp_path / "c.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(tree))
    check_only_clear_errors(load_config, path, [])


# -------------------------------------------------------------------------------------------- archs
def _space():
    from nasdet.space import SearchSpace

    return SearchSpace({"backbone.stage1.block0.kernel": (3, 5, 7), "backbone.stage1.depth": (2, 3),
                        "backbone.stage1.block0.expand": (3, 4, 6), "input_size": (64, 96)})


ARCH_VALUE = st.one_of(st.sampled_from([2, 3, 4, 5, 6, 7, 64, 96, 3.0, "3", True]), HOSTILE)
ARCH = st.dictionaries(st.one_of(st.sampled_from(list(_space().names)), st.text(max_size=8)), ARCH_VALUE, max_size=6)


@FUZZ
@given(arch=ARCH, wrap=st.sampled_from(["inline", "plain", "nasdet", "yaml", "cut"]), cut=st.integers(0, 80))
def test_fuzz_arch_dicts_and_arch_files(tmp_path, arch, wrap, cut):
    from nasdet.config import validate_config
    from nasdet.stages.tune import resolve_tune_arch

    space = _space()
    check_only_clear_errors(space.validate, arch)
    path = tmp_path / "arch.json"
    if wrap == "nasdet":
        path.write_text(json.dumps({"space_id": space.space_id, "arch": arch}))
    elif wrap == "yaml":
        path.write_text(yaml.safe_dump(arch))
    elif wrap == "cut":  # a truncated arch file
        path.write_text(json.dumps({"space_id": space.space_id, "arch": arch})[:cut])
    else:
        path.write_text(json.dumps(arch))
    given = {k: v for k, v in arch.items() if isinstance(k, str) and k} if wrap == "inline" else str(path)
    cfg = check_only_clear_errors(validate_config, {
        "data": {"format": "coco", "train": {"annotations": "a", "images": "i"}, "val": {"annotations": "a", "images": "i"}},
        "model": {"input_size": 96}, "tune": {"arch": given}})
    if cfg is not None:
        check_only_clear_errors(resolve_tune_arch, cfg, space, tmp_path)


# ------------------------------------------------------------------------------------------- models
def _raised_in_nasdet(err: BaseException) -> bool:
    """The innermost frame of ``err`` is nasdet code: a check of the user's value, not a crash in torch."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "/nasdet/" in frames[-1].filename.replace("\\", "/")


MODEL_COMMON = {
    "backbone": st.fixed_dictionaries({
        "name": st.sampled_from(["mobilenet_v3_small", "ofa_mbv3", "mbv2_elastic", "detnas_tiny", "resnet18",
                                 "mobilenet_v2", "no_such_net"]),
        "width_mult": st.sampled_from([0.1, 0.25, 1.0]), "norm": st.sampled_from(["bn", "frozen_bn"])}),
    "input_size": st.integers(32, 112)}
SSD_KEYS = {"ssd_levels": st.sampled_from([["c4", "c5"], ["c3", "c4", "c5"], ["c5"], ["c2", "c3", "c4", "c5"]]),
            "extra_channels": st.sampled_from([[64, 32, 32, 16], [1, 1, 1, 1]]),
            "anchor_ratio_range": st.sampled_from([[0.2, 0.95], [0.9, 0.1], [0.0, 1.0]])}
FPN_KEYS = {"fpn_channels": st.sampled_from([8, 32, 64])}
FAMILY_KEYS = {"ssd": SSD_KEYS, "ssdlite": SSD_KEYS, "retinanet": FPN_KEYS, "fcos": FPN_KEYS, "faster_rcnn": FPN_KEYS,
               "yolov3": {"neck_channels": st.sampled_from([[8, 8, 8], [32, 16, 16]])}}
# each family's own keys (the model section is a union on detector: another family's key is a config error)
MODEL = st.sampled_from(sorted(FAMILY_KEYS)).flatmap(
    lambda d: st.fixed_dictionaries({"detector": st.just(d), **MODEL_COMMON, **FAMILY_KEYS[d]}))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(model=MODEL, num_classes=st.integers(1, 3))
@example(model={"detector": "fcos", "backbone": {"name": "mobilenet_v3_small", "width_mult": 0.25, "norm": "bn"},
                "input_size": 64, "fpn_channels": 8}, num_classes=2)  # found by this test: GroupNorm(32) in torch
def test_fuzz_model_sections_build_and_run_or_fail_clearly(model, num_classes):
    """A model section that validates builds a detector that trains (batch 2) and detects, or fails with
    an error raised by nasdet's own checks (naming the key), not inside torch."""
    import torch

    from nasdet.config import validate_config
    from nasdet.models import build_detector

    raw = {"data": {"format": "coco", "train": {"annotations": "a", "images": "i"},
                    "val": {"annotations": "a", "images": "i"}}, "model": model}
    try:
        cfg = validate_config(raw, "fuzz")
        det = build_detector(cfg.model, num_classes=num_classes)
        det.train()
        target = {"boxes": torch.tensor([[4.0, 5.0, 30.0, 36.0]]), "labels": torch.tensor([1])}
        losses = det([torch.rand(3, 40, 48), torch.rand(3, 44, 40)], [target, target])
        assert all(torch.isfinite(v) for v in losses.values())
        det.eval()
        with torch.no_grad():
            det([torch.rand(3, 40, 48)])
    except NasdetError:
        pass
    except ValueError as e:  # the CLI prints these as one line too; they must come from nasdet's checks
        assert _raised_in_nasdet(e), f"{type(e).__name__} from inside torch for model {model}: {e}"
