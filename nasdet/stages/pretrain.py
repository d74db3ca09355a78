"""The pretrain stage (``nasdet pretrain``): the weight-sharing supernet trained into ``supernet/`` on the
training split minus the search split (sandwich rule, optional distillation, BN recalibrated per subnet
when its subnets are evaluated)."""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ..config import ExperimentConfig, run_without_start_weights, save_run_record
from ..data.build import build_datasets
from ..errors import StageOrderError
from ..models.cost import detector_macs
from ..models.supernet import build_supernet, export_detector
from ..train import dist
from ..train.supernet import SupernetStart, SupernetTrainer, init_from_checkpoint, load_teacher, start_files
from ..train.trained import with_backbone_checkpoint
from ..workdir import SPACE_JSON, WorkDir, write_json
from .common import finished_record, recipe_key, stage_api, start_note_of, subnets_table, with_train_recipe


def pretrain_config(cfg: ExperimentConfig, wd: WorkDir) -> ExperimentConfig:
    """What the supernet starts from, as ``nasdet pipeline`` and ``nasdet pretrain`` alike read it. ENOT: the
    baseline's weights (``pipeline.init_supernet_from_baseline``); DetNAS: its backbone from the
    classification-trained supernet (``pipeline.classify``). A missing start is an error naming the key and
    the stage to run, unless the supernet resumes (it started from it already)."""
    fresh = not wd.supernet.has_checkpoint()
    if cfg.pipeline.classify:
        if fresh and not wd.classified_backbone.is_file():
            raise StageOrderError(f"pipeline.classify: the supernet starts from {wd.classified_backbone}, which does "
                                  f"not exist: run the classify stage first (`nasdet classify`)")
        cfg = with_backbone_checkpoint(cfg, wd.classified_backbone)
    if not (cfg.pipeline.init_supernet_from_baseline and cfg.pipeline.baseline):
        return cfg
    if fresh and not wd.baseline.has_checkpoint():
        raise wd.baseline.missing(f"pipeline.init_supernet_from_baseline: the supernet starts from the baseline, "
                                  f"but {wd.baseline.checkpoint} does not exist")
    sn = cfg.supernet.model_copy(update={"init_from": str(wd.baseline.checkpoint)})
    return cfg.model_copy(update={"supernet": sn})


def supernet_start_note(cfg: ExperimentConfig) -> str:
    """Where the supernet's weights start (``cfg`` as ``pretrain_config`` returns it), for the log and the record
    that report.md reads."""
    if cfg.supernet.init_from and cfg.pipeline.init_supernet_from_baseline and cfg.pipeline.baseline:
        return f"from the baseline's weights, {cfg.supernet.init_from}"
    if cfg.supernet.init_from:
        unread = cfg.model.backbone.checkpoint
        return f"from supernet.init_from {cfg.supernet.init_from}" + (
            f" (model.backbone.checkpoint {unread} not read: every backbone weight is that detector's)" if unread else "")
    if cfg.pipeline.classify:
        return f"backbone from `nasdet classify`'s {cfg.model.backbone.checkpoint}"
    return start_note_of(cfg)


def _say_init(console: Console, path: str, start: SupernetStart, classes: list[str]) -> None:
    """The log lines of ``supernet.init_from``: the file, and how its class layers arrived."""
    named = start.checkpoint_classes
    console.print(f"initialised the supernet from {escape(path)}"
                  + (f"; the rows of the data's {len(classes)} classes picked by name from its {len(named or [])}"
                     if start.picked_classes else ""), soft_wrap=True)
    if start.reinitialised:
        layers = sorted({k.rsplit(".", 1)[0] for k in start.reinitialised})
        console.print(f"its classes ({', '.join(named) if named else 'not recorded'}) are not the data's "
                      f"({', '.join(classes)}): its class layers start afresh ({', '.join(layers)})", soft_wrap=True)
    if start.unnamed_classes:
        console.print(f"[yellow]warning:[/] {escape(path)} records no class names (written before nasdet kept them): "
                      f"its class layers are kept as they are, label k as the data's k-th class "
                      f"({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}); if it was trained on other "
                      "classes or another order, the supernet starts mislabelling them", soft_wrap=True)


@stage_api
def run_pretrain(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Train the weight-sharing supernet (``supernet/``) on the training split minus the search split,
    starting from what ``pretrain_config`` says."""
    wd = WorkDir.of(cfg, work_dir)
    cfg = pretrain_config(cfg, wd)
    cfg = with_train_recipe(cfg, cfg.supernet.train)
    dist.init_distributed(cfg.train.device)  # before the start is said: once, on rank 0
    console = dist.main_console(console or Console())
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    data["search"].check_unopened_images()  # (the trainer checks its own images; these would stop the search)
    k = data["train"].num_classes
    out = wd.supernet
    out_dir = out.root
    resuming = out.has_checkpoint()
    # resumed (or finished), every weight is in its checkpoint: no start file to read, or to need any more; from
    # init_from, every backbone weight is that detector's (the rest is the supernet's own init either way)
    model, space = build_supernet(run_without_start_weights(cfg) if resuming or cfg.supernet.init_from else cfg, k)
    classes = data["train"].classes
    if cfg.supernet.init_from and not resuming:
        start = init_from_checkpoint(model, cfg.supernet.init_from, classes, cfg.model)
        if dist.is_main():
            _say_init(console, cfg.supernet.init_from, start, classes)
    teacher, teacher_note = (load_teacher(cfg.supernet.distill.checkpoint, classes)
                             if cfg.supernet.distill.teacher == "checkpoint" else (None, None))
    trainer = SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], data["val"], out_dir,
                              calib_set=data["supernet_train"].with_transforms(None), teacher=teacher, console=console,
                              recipe=recipe_key("supernet", cfg.supernet.train))
    trainer.start_note = supernet_start_note(cfg) + (f"; {teacher_note}" if teacher_note else "")
    trainer.check_teacher_anchors(cfg.supernet.distill.checkpoint)
    trainer.starts = start_files(cfg)
    trainer.prepare()  # (a rerun whose start file changed since is refused here)  # a checkpoint of another space or model fails here, before anything is written
    if dist.is_main():
        save_run_record(cfg, wd.config)
        write_json(out / SPACE_JSON, {"space_id": space.space_id, "choices": space.to_dict()})
    done = finished_record(out, trainer.final_step, console, "train again",
                           lambda d: subnets_table(d["subnets"], "supernet: subnets on val"))
    if done is not None:
        return done["subnets"]
    results = trainer.run()
    if dist.is_main():
        for r in results.values():
            r["macs"] = detector_macs(export_detector(model, r["arch"], space), backbone=False)["total"]
        write_json(out.metrics, {"subnets": results, "step": trainer.step, "space_id": space.space_id,
                                 "checkpoint": str(out.checkpoint), "start": trainer.start_note,
                                 "val": data["val"].source, "val_images": trainer.val_images})
        console.print(subnets_table(results, f"supernet: subnets on val ({trainer.val_images} images, BN recalibrated)"))
    return results
