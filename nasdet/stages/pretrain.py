"""The pretrain stage (``nasdet pretrain``): the weight-sharing supernet trained into ``supernet/`` on the
training split minus the search split (sandwich rule, optional distillation, BN recalibrated per subnet
when its subnets are evaluated)."""
from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ..config import ExperimentConfig, save_config
from ..data.build import build_datasets
from ..models.cost import detector_macs
from ..models.supernet import build_supernet, export_detector
from ..train import dist
from ..train.supernet import SupernetTrainer, init_from_checkpoint, load_teacher
from ..workdir import SPACE_JSON, WorkDir, write_json
from .common import finished_record, recipe_key, subnets_table, with_train_recipe


def run_pretrain(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Train the weight-sharing supernet (``supernet/``) on the training split minus the search split."""
    console = console or Console()
    wd = WorkDir.of(cfg, work_dir)
    cfg = with_train_recipe(cfg, cfg.supernet.train)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    k = data["train"].num_classes
    model, space = build_supernet(cfg, k)
    out = wd.supernet
    out_dir = out.root
    resuming = out.has_checkpoint()
    if cfg.supernet.init_from and not resuming:
        init_from_checkpoint(model, cfg.supernet.init_from)
        if dist.is_main():
            console.print(f"initialised the supernet from {escape(cfg.supernet.init_from)}")
    teacher = load_teacher(cfg.supernet.distill.checkpoint, k) if cfg.supernet.distill.teacher == "checkpoint" else None
    trainer = SupernetTrainer.from_config(cfg, model, space, data["supernet_train"], data["val"], out_dir,
                              calib_set=data["supernet_train"].with_transforms(None), teacher=teacher, console=console,
                              recipe=recipe_key("supernet", cfg.supernet.train))
    if cfg.supernet.init_from:
        trainer.start_note = f"from {cfg.supernet.init_from}"
    trainer.prepare()  # a checkpoint of another space or model fails here, before anything is written
    if dist.is_main():
        save_config(cfg, wd.config)
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
                                 "checkpoint": str(out.checkpoint),
                                 "val": data["val"].source, "val_images": trainer.val_images})
        console.print(subnets_table(results, f"supernet: subnets on val ({trainer.val_images} images, BN recalibrated)"))
    return results
