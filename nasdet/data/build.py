"""The data sets of a config: parsed, validated, split into the parts each stage uses."""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..config import ExperimentConfig
from ..errors import ConfigError, DataError
from .coco import load_coco
from .dataset import DECODED, DetectionDataset
from .split import split_train_search
from .transforms import build_train_transforms
from .voc import VOC_CLASSES, load_voc
from .yolo import load_yolo


def load_split(cfg: ExperimentConfig, which: str) -> DetectionDataset:
    """The ``train`` or ``val`` data set of the config, parsed and validated (no transforms)."""
    src = getattr(cfg.data, which)
    if cfg.data.format == "coco":
        return load_coco(src.annotations, src.images, check_files=cfg.data.check_files)
    if cfg.data.format == "yolo":
        return load_yolo(cfg.data.data_yaml, which, images=src.images, labels=src.labels)
    return load_voc(src.root, src.split, classes=cfg.data.classes or VOC_CLASSES, check_files=cfg.data.check_files)


def build_datasets(cfg: ExperimentConfig, need: tuple[str, ...] = ("train", "val")) -> dict[str, DetectionDataset]:
    """``train`` (all training images, augmented), ``supernet_train`` / ``search`` (the split of train by
    ``data.search_fraction``: the search part is held out from supernet training and scores candidates)
    and ``val`` (reports the final model; never used by search)."""
    out: dict[str, DetectionDataset] = {}
    DECODED.configure(cfg.data.cache_mb)
    if any(n in need for n in ("train", "supernet_train", "search")):
        full = load_split(cfg, "train")
        train_tf = build_train_transforms(cfg.data.augment)
        out["train"] = full.with_transforms(train_tf)
        train_idx, search_idx = split_train_search(len(full), cfg.data.search_fraction, cfg.data.split_seed)
        if search_idx and len(train_idx) < 2:
            raise ConfigError(
                f"data.search_fraction: {cfg.data.search_fraction} leaves {len(train_idx)} of {len(full)} training "
                f"images ({full.source}) to train the supernet on, {len(search_idx)} held out to score candidates: "
                "the supernet needs at least 2 (BatchNorm trains on more than one value per channel); lower "
                "data.search_fraction (e.g. 0.2) or add training images")
        out["supernet_train"] = full.subset(train_idx).with_transforms(train_tf)
        out["search"] = full.subset(search_idx).with_transforms(None)
    if "val" in need:
        out["val"] = load_split(cfg, "val")
        if "train" in out:
            check_same_classes(out["train"], out["val"])
            warn_about_the_splits(out["train"], out["val"])
    return out


_WARNED: set[tuple[str, str]] = set()  # each pair of splits once per process (every stage builds them)


def check_same_classes(train: DetectionDataset, val: DetectionDataset) -> None:
    """DataError when train and val name other classes (or another order): every training command refuses them,
    and `nasdet data stats`, the command that validates a set, says so too (it passed them silently)."""
    if val.classes != train.classes:
        raise DataError(f"train ({train.source}) and val ({val.source}) have different classes: "
                        f"{train.classes} vs {val.classes}")


def warn_about_the_splits(train: DetectionDataset, val: DetectionDataset) -> None:
    """Warn when val is not a held-out set (it shares image files with train: a Roboflow-style ``val:
    train/images``) and for a class without a training box that val holds: its AP is 0 in every val figure."""
    if (train.source, val.source) in _WARNED:
        return
    _WARNED.add((train.source, val.source))
    trained = {os.path.normpath(os.path.abspath(r.file)) for r in train.records}
    shared = sum(os.path.normpath(os.path.abspath(r.file)) in trained for r in val.records)
    if shared:
        warnings.warn(f"val set {val.source} shares {shared} of its {len(val.records)} images with the training set "
                      f"{train.source}: its mAP is not a held-out figure", stacklevel=3)

    def boxes_per_class(ds: DetectionDataset) -> np.ndarray:
        counts = np.zeros(len(ds.classes) + 1, dtype=np.int64)
        for r in ds.records:
            np.add.at(counts, r.labels[r.iscrowd == 0], 1)
        return counts[1:]

    in_train, in_val = boxes_per_class(train), boxes_per_class(val)
    missing = [f"{name!r} ({n} in val)" for name, t, n in zip(train.classes, in_train, in_val) if t == 0 and n > 0]
    if missing:
        warnings.warn(f"the training set {train.source} has no box of {', '.join(missing)}: the detector cannot "
                      "learn it, and its AP of 0 is averaged into every val figure", stacklevel=3)
    unused = [repr(name) for name, t, n in zip(train.classes, in_train, in_val) if t == 0 and n == 0]
    if unused:  # e.g. the supercategory a Roboflow COCO export lists as category 0
        warnings.warn(f"class(es) {', '.join(unused)} of {train.source} have no box in train or val: the detector "
                      "gets an output for each all the same (and export/classes.json names it); drop the category "
                      "if it is not one", stacklevel=3)
