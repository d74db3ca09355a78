"""The data sets of a config: parsed, validated, split into the parts each stage uses."""
from __future__ import annotations

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
        if "train" in out and out["val"].classes != out["train"].classes:
            raise DataError(
                f"train ({out['train'].source}) and val ({out['val'].source}) have different classes: "
                f"{out['train'].classes} vs {out['val'].classes}"
            )
    return out
