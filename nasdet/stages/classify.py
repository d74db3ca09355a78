"""The classify stage (``nasdet classify``): ``model.backbone`` trained as an image classifier into ``classify/``.

DetNAS's steps 1 and 4. With ``classify.arch`` unset and a searchable backbone, the whole supernet
(DetNAS step 1: SPOS single-path sampling, FLOPs bins; OFA: progressive shrinking, distillation, all
per ``classify.supernet`` and the supernet trainer of ``nasdet pretrain``), evaluated per subnet
(largest / middle / smallest, BN recalibrated). With ``classify.arch``, that subnet alone, freshly
initialised (DetNAS step 4; from ``model.backbone.checkpoint``'s weights when one is set). A plain
backbone (mobilenet_v2, resnet50, ...) trains as it is.

Outputs in ``work_dir/classify/``: ``ckpt/last.pt`` (the classifier; rerun resumes from it),
``backbone.pt`` (the backbone alone, head dropped: ``model.backbone.checkpoint`` takes it as it is, a
supernet's for ``nasdet pretrain``, a subnet's for ``nasdet tune`` with ``tune.init: scratch``),
``metrics.json`` (top-1 / top-5 on val), ``log.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..config import (ExperimentConfig, config_to_dict, read_arch_file, save_run_record,
                      without_start_weights)
from ..data.imagefolder import (classification_eval_transforms, classification_train_transforms,
                                open_classification_splits)
from ..errors import ConfigError
from ..models.classifier import (BACKBONE_PREFIX, INPUT_SIZE, build_classifier, classifier_space,
                                 is_supernet_classifier, save_backbone_file)
from ..space import ArchError, prefix_arch, strip_prefix
from ..train import dist
from ..train.checkpoint import CheckpointError, backbone_start, load_checkpoint
from ..train.classify import ClassifierSupernetTrainer, ClassifierTrainer, load_classifier_teacher
from ..train.loop import RunSettings
from ..workdir import WorkDir, write_json
from .common import detnas_list_arch, finished_record, recipe_key, stage_api, start_note_of, with_train_recipe


def _arch_mapping(given: Any, cfg: ExperimentConfig) -> tuple[dict, str]:
    """``classify.arch`` as a mapping and where it came from: inline, an arch file (nasdet's
    ``{"arch": ...}`` or a plain mapping, JSON or YAML) or a published name (e.g. COCO-FPN-300M)."""
    if isinstance(given, dict):
        return dict(given), "inline"
    if isinstance(given, list):
        return detnas_list_arch(given, cfg, "classify.arch"), "inline"
    path = Path(given)
    if path.is_file():
        data = read_arch_file(path, "classify.arch")
        if isinstance(data, dict) and isinstance(data.get("arch"), dict):
            data = data["arch"]
        if isinstance(data, list):
            return detnas_list_arch(data, cfg, f"classify.arch file {path}"), str(path)
        if not isinstance(data, dict):
            raise ArchError(f"classify.arch file {path} does not hold a mapping of choices")
        return data, str(path)
    from ..models.backbones.shufflenet_published import PUBLISHED_ARCHS, published_arch

    if given in PUBLISHED_ARCHS:
        backbone, arch = published_arch(given)
        if backbone != cfg.model.backbone.name:
            raise ArchError(f"classify.arch {given!r} is an architecture of backbone {backbone!r}, but "
                            f"model.backbone.name is {cfg.model.backbone.name!r}")
        return dict(arch), f"published architecture {given}"
    raise ArchError(f"classify.arch {given!r} is neither an existing file nor a published architecture; "
                    f"published names: {sorted(PUBLISHED_ARCHS)}")


def backbone_arch(cfg: ExperimentConfig) -> tuple[dict | None, str | None]:
    """The backbone's choices of ``classify.arch`` (``backbone.``-prefixed or the backbone's own names; a
    detector arch's ``input_size`` is dropped: classification has its own), or (None, None)."""
    if cfg.classify.arch is None:
        return None, None
    arch, source = _arch_mapping(cfg.classify.arch, cfg)
    arch = {k: v for k, v in arch.items() if k != INPUT_SIZE}
    prefixed = strip_prefix(arch, BACKBONE_PREFIX)
    other = sorted(k for k in arch if not k.startswith(BACKBONE_PREFIX + "."))
    if prefixed and other:
        raise ArchError(f"classify.arch ({source}): {other[:3]} are not backbone choices (backbone.*)")
    return (prefixed or arch), source


def accuracy_table(rows: dict[str, dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("subnet", "input", "top-1", "top-5", "val loss"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        m = r["metrics"]
        table.add_row(name, str(r.get("input_size", "")), f"{m['top1']:.4f}", f"{m['top5']:.4f}", f"{m['loss']:.3f}")
    return table


def _table_of(record: dict) -> Table:
    rows = record.get("subnets") or {record["mode"]: {"metrics": record["metrics"], "input_size": record["input_size"]}}
    return accuracy_table({n: {**r, "input_size": r.get("arch", {}).get(INPUT_SIZE, r.get("input_size"))}
                           for n, r in rows.items()}, f"classify: top-1 / top-5 on val ({record['val_images']} images)")


@stage_api
def run_classify(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Train ``model.backbone`` as a classifier (supernet or one subnet) into ``classify/``; returns its record."""
    console = console or Console()
    c = cfg.classify
    if c is None:
        raise ConfigError("nasdet classify needs a classify section (classify.root: the folder with train/<class>/ "
                          "and val/<class>/ images)")
    wd = WorkDir.of(cfg, work_dir)
    out = wd.classify
    tcfg = with_train_recipe(cfg, c.train)
    torch.manual_seed(cfg.seed)
    sets = open_classification_splits(c.root, c.train_split, c.val_split)
    eval_tf = classification_eval_transforms(c.input_size)
    train_set = sets["train"].with_transforms(
        classification_train_transforms(c.input_size, c.min_scale, c.hflip, c.color_jitter))
    val_set = sets["val"].with_transforms(eval_tf)
    k = sets["train"].num_classes

    arch, source = backbone_arch(cfg)
    # resumed (or finished), every weight is in its checkpoint: no start file to read, or to need any more
    backbone = without_start_weights(cfg.model).backbone if out.has_checkpoint() else cfg.model.backbone
    try:
        model = build_classifier(backbone, k, c.input_size, c.dropout, c.label_smoothing, arch=arch)
    except ArchError as e:
        raise ArchError(f"classify.arch ({source}): {e}") from None
    settings = RunSettings(train=tcfg.train, eval=cfg.eval, seed=cfg.seed,
                           num_workers=c.num_workers if c.num_workers is not None else cfg.data.num_workers,
                           record=config_to_dict(tcfg), recipe=recipe_key("classify", c.train))
    supernet = arch is None and is_supernet_classifier(model)
    record_arch = {**prefix_arch(arch, BACKBONE_PREFIX), INPUT_SIZE: c.input_size} if arch is not None else None
    if out.has_checkpoint():  # a subnet's weights are not a supernet's, nor another subnet's
        saved = (load_checkpoint(out.checkpoint).get("extra") or {}).get("arch")
        if saved != record_arch:
            has = "the supernet" if saved is None else "a subnet" if record_arch is None else "another subnet"
            wants = source or ("the supernet" if supernet else "the whole backbone")
            raise CheckpointError(f"{out.checkpoint} trains {has}, not {wants}; delete the classify folder to train "
                                  "this one")
    if supernet:
        mode, space = "supernet", classifier_space(model, c.supernet.input_sizes or [c.input_size])
        d = c.supernet.distill
        teacher = load_classifier_teacher(d.checkpoint, k) if d.teacher == "checkpoint" else None
        trainer = ClassifierSupernetTrainer(settings, model, space, train_set, val_set, out.root, supernet=c.supernet,
                                            input_size=c.input_size, calib_set=sets["train"].with_transforms(eval_tf),
                                            teacher=teacher, console=console)
    else:
        mode, space = ("subnet" if arch is not None else "backbone"), None
        trainer = ClassifierTrainer(settings, model, train_set, val_set, out.root, console=console, arch=record_arch)
    if arch is not None and cfg.model.backbone.checkpoint:
        trainer.start_note = f"subnet from {cfg.model.backbone.checkpoint}"
    else:  # build_classifier loaded model.backbone.checkpoint / pretrained
        trainer.start_note = start_note_of(cfg)
    if model.head_start:  # a released supernet's ImageNet head: the layers that fit it, and what starts afresh
        trainer.start_note += f"; {model.head_start}"
    trainer.starts = backbone_start(cfg)  # by its bytes
    trainer.prepare()  # a checkpoint of another space or model fails here, before anything is written
    if dist.is_main():
        save_run_record(cfg, wd.config)
        console.print(f"classify: {mode}" + (f" {source}" if source else f" {cfg.model.backbone.name}") +
                      f", {k} classes, {len(train_set)} train / {len(val_set)} val images at {c.input_size} px")
    done = finished_record(out, trainer.final_step, console, "train again", _table_of)
    if done is not None:
        return done
    metrics = trainer.run()
    record = {"mode": mode, "backbone": cfg.model.backbone.name, "step": trainer.step, "input_size": c.input_size,
              "checkpoint": str(out.checkpoint), "backbone_checkpoint": str(wd.classified_backbone),
              "start": trainer.start_note,
              "classes": sets["train"].classes, "val": val_set.source, "val_images": trainer.val_images}
    if supernet:
        record.update(subnets=metrics, space_id=space.space_id)
    else:
        record.update(metrics=metrics, arch=record_arch, arch_source=source)
    if dist.is_main():
        save_backbone_file(wd.classified_backbone, model, cfg.model.backbone.name, arch,
                           model.backbone.search_space().space_id if supernet else None, sets["train"].classes)
        write_json(out.metrics, record)  # last: a complete record means backbone.pt is there
        console.print(_table_of(record))
        console.print(f"classify: backbone written to {wd.classified_backbone} (model.backbone.checkpoint)")
    return record
