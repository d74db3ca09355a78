"""The stages behind the CLI as Python functions: data sets, train, eval, cost, in one work dir.

``work_dir/config.yaml`` is the resolved config that ran; each stage writes under its own folder
(``baseline/ckpt/last.pt``, ``baseline/metrics.json``, ``baseline/cost.json``, ``baseline/log.jsonl``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import ExperimentConfig, save_config
from .data.coco import load_coco
from .data.dataset import DetectionDataset
from .data.split import split_train_search
from .data.transforms import build_train_transforms
from .data.voc import VOC_CLASSES, load_voc
from .data.yolo import load_yolo
from .errors import DataError
from .files import write_json_atomic
from .metrics import COCO_METRIC_NAMES
from .models import build_detector, get_input_size
from .search.cost import detector_macs, detector_params, measure_latency, measure_latency_onnx
from .train import dist
from .train.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .train.evaluate import evaluate_detector
from .train.loop import Trainer, resolve_device

BASELINE = "baseline"
SUPERNET = "supernet"


def with_train_recipe(cfg: ExperimentConfig, train) -> ExperimentConfig:
    """``cfg`` with its ``train`` section replaced by a stage's own recipe (``supernet.train``,
    ``tune.train``) when one is given."""
    return cfg if train is None else cfg.model_copy(update={"train": train})


def work_dir_of(cfg: ExperimentConfig, override: str | Path | None = None) -> Path:
    return Path(override) if override else Path(cfg.work_dir)


def write_json(path: Path, obj) -> None:
    write_json_atomic(path, obj)


# ------------------------------------------------------------------------------------------- data
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
    if any(n in need for n in ("train", "supernet_train", "search")):
        full = load_split(cfg, "train")
        train_tf = build_train_transforms(cfg.data.augment)
        out["train"] = full.with_transforms(train_tf)
        train_idx, search_idx = split_train_search(len(full), cfg.data.search_fraction, cfg.data.split_seed)
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


# ------------------------------------------------------------------------------------------ tables
def metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    names = [n for n in COCO_METRIC_NAMES[:6] if n in metrics]
    for n in names:
        table.add_column(n, justify="right")
    table.add_row(*[f"{metrics[n]:.4f}" if metrics[n] >= 0 else "n/a" for n in names])
    return table


def cost_table(cost: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("input", "MACs total", "MACs backbone+neck", "params total", "params backbone+neck", "latency median",
                "latency p90", "onnxruntime (no NMS)"):
        table.add_column(col, justify="right")
    lat = cost.get("latency", {})
    ort_lat = cost.get("latency_onnxruntime", {})
    table.add_row(
        f"{cost['input_size']}x{cost['input_size']}", f"{cost['macs']['total'] / 1e6:.1f} M",
        f"{cost['macs']['backbone'] / 1e6:.1f} M", f"{cost['params']['total'] / 1e6:.3f} M",
        f"{cost['params']['backbone'] / 1e6:.3f} M",
        f"{lat['median_ms']:.2f} ms ({lat['device']}, {lat['threads']} thr)" if lat else "-",
        f"{lat['p90_ms']:.2f} ms" if lat else "-",
        f"{ort_lat['median_ms']:.2f} ms" if ort_lat else "-",
    )
    return table


# ------------------------------------------------------------------------------------------- stages
def _completed(out_dir: Path, trainer: Trainer, cfg: ExperimentConfig) -> dict | None:
    """The saved result of a stage whose training already reached its last step, else None."""
    metrics_path = out_dir / "metrics.json"
    if metrics_path.is_file() and (out_dir / "ckpt" / "last.pt").is_file():
        done = json.loads(metrics_path.read_text())
        if done.get("step") == min(trainer.total_steps, cfg.train.max_steps or trainer.total_steps):
            return done
    return None


def baseline_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config the baseline trains with: ``model.backbone.name`` replaced by
    ``pipeline.baseline_backbone`` when set (e.g. torchvision's mobilenet_v2 for an mbv2_elastic space)."""
    name = cfg.pipeline.baseline_backbone
    if name is None:
        return cfg
    model = cfg.model.model_copy(update={"backbone": cfg.model.backbone.model_copy(update={"name": name})})
    return cfg.model_copy(update={"model": model})


def run_train(cfg: ExperimentConfig, work_dir: str | Path | None = None, stage: str = BASELINE,
              console: Console | None = None) -> dict:
    """Train the config's detector on the whole training set; resume if ``<stage>/ckpt/last.pt`` exists.
    The baseline stage trains ``baseline_config(cfg)``."""
    console = console or Console()
    wd = work_dir_of(cfg, work_dir)
    if stage == BASELINE:
        cfg = baseline_config(cfg)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    model = build_detector(cfg.model, num_classes=data["train"].num_classes)
    out_dir = wd / stage
    trainer = Trainer(cfg, model, data["train"], data["val"], out_dir, console=console)
    trainer.prepare()  # a checkpoint that does not fit fails here, before anything is written
    if dist.is_main():
        save_config(cfg, wd / "config.yaml")
    done = _completed(out_dir, trainer, cfg)
    if done is not None:
        if dist.is_main():
            console.print(f"[green]{escape(str(out_dir))} is complete[/] (step {done['step']}); delete it to train again")
            console.print(metrics_table(done["metrics"], f"{stage}: val mAP"))
        return done["metrics"]
    metrics = trainer.run()
    if dist.is_main():
        write_json(out_dir / "metrics.json", {"metrics": metrics, "step": trainer.step,
                                              "checkpoint": str(out_dir / "ckpt" / "last.pt"),
                                              "val": data["val"].source, "val_images": len(data["val"])})
        console.print(metrics_table(metrics, f"{stage}: val mAP ({len(data['val'])} images)"))
    return metrics


def subnets_table(results: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("subnet", "input", "AP", "AP50", "AP75", "MACs"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        m = r["metrics"]
        macs = f"{r['macs'] / 1e6:.1f} M" if "macs" in r else "-"
        table.add_row(name, str(r["arch"].get("input_size", "")), f"{m['AP']:.4f}", f"{m['AP50']:.4f}",
                      f"{m['AP75']:.4f}", macs)
    return table


def build_supernet(cfg: ExperimentConfig, num_classes: int):
    """The detector supernet of the config and its search space (backbone choices + input_size)."""
    from .models.supernet import detector_space

    model = build_detector(cfg.model, num_classes=num_classes)
    return model, detector_space(model, cfg.supernet.input_sizes)


def run_pretrain(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None) -> dict:
    """Train the weight-sharing supernet (``supernet/``) on the training split minus the search split."""
    from .models.supernet import export_detector
    from .train.supernet import SupernetTrainer, init_from_checkpoint, load_teacher

    console = console or Console()
    wd = work_dir_of(cfg, work_dir)
    cfg = with_train_recipe(cfg, cfg.supernet.train)
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg)
    k = data["train"].num_classes
    model, space = build_supernet(cfg, k)
    out_dir = wd / SUPERNET
    resuming = (out_dir / "ckpt" / "last.pt").is_file()
    if cfg.supernet.init_from and not resuming:
        init_from_checkpoint(model, cfg.supernet.init_from)
        if dist.is_main():
            console.print(f"initialised the supernet from {cfg.supernet.init_from}")
    teacher = load_teacher(cfg.supernet.distill.checkpoint, k) if cfg.supernet.distill.teacher == "checkpoint" else None
    trainer = SupernetTrainer(cfg, model, space, data["supernet_train"], data["val"], out_dir,
                              calib_set=data["supernet_train"].with_transforms(None), teacher=teacher, console=console)
    if cfg.supernet.init_from:
        trainer.start_note = f"from {cfg.supernet.init_from}"
    trainer.prepare()  # a checkpoint of another space or model fails here, before anything is written
    if dist.is_main():
        save_config(cfg, wd / "config.yaml")
        write_json(out_dir / "space.json", {"space_id": space.space_id, "choices": space.to_dict()})
    done = _completed(out_dir, trainer, cfg)
    if done is not None:
        if dist.is_main():
            console.print(f"[green]{escape(str(out_dir))} is complete[/] (step {done['step']}); delete it to train again")
            console.print(subnets_table(done["subnets"], "supernet: subnets on val"))
        return done["subnets"]
    results = trainer.run()
    if dist.is_main():
        for r in results.values():
            r["macs"] = detector_macs(export_detector(model, r["arch"], space))["total"]
        write_json(out_dir / "metrics.json", {"subnets": results, "step": trainer.step, "space_id": space.space_id,
                                              "checkpoint": str(out_dir / "ckpt" / "last.pt"),
                                              "val": data["val"].source, "val_images": len(data["val"])})
        console.print(subnets_table(results, f"supernet: subnets on val ({len(data['val'])} images, BN recalibrated)"))
    return results


def load_trained_model(cfg: ExperimentConfig, ckpt: str | Path, num_classes: int) -> torch.nn.Module:
    """The detector of a ``nasdet train`` checkpoint, built from the model section recorded in it (so a
    baseline trained with ``pipeline.baseline_backbone`` rebuilds right), else from ``cfg``."""
    from .config import ConfigError, validate_config

    state = load_checkpoint(ckpt)
    model_cfg = cfg.model
    if isinstance(state.get("config"), dict):
        try:
            model_cfg = validate_config(state["config"], f"{ckpt} (config)").model
        except ConfigError:
            pass  # written by another nasdet version: fall back to the given config
    model = build_detector(model_cfg, num_classes=num_classes)
    load_model_weights(model, state, source=str(ckpt))
    return model


def default_checkpoint(cfg: ExperimentConfig, work_dir: str | Path | None, stage: str = BASELINE) -> Path:
    path = work_dir_of(cfg, work_dir) / stage / "ckpt" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: run `nasdet train` first, or pass --ckpt")
    return path


def run_eval(cfg: ExperimentConfig, work_dir: str | Path | None = None, ckpt: str | Path | None = None,
             console: Console | None = None) -> dict:
    """COCO metrics of a checkpoint on the val set, written where ``eval_record_path`` says."""
    console = console or Console()
    given = ckpt is not None
    ckpt = Path(ckpt) if given else default_checkpoint(cfg, work_dir)
    val = build_datasets(cfg, need=("val",))["val"]
    model = load_trained_model(cfg, ckpt, val.num_classes)
    device = resolve_device(cfg.train.device)
    model.to(device)
    if cfg.eval.max_images:
        val = val.subset(range(min(cfg.eval.max_images, len(val))))
    metrics = evaluate_detector(model, val, device, cfg.eval.batch_size, cfg.data.num_workers)
    if metrics is None:
        return {}
    out = eval_record_path(cfg, work_dir, ckpt, given)
    write_json(out, {"metrics": metrics, "checkpoint": str(ckpt), "val": val.source, "val_images": len(val),
                     "step": load_checkpoint(ckpt).get("step")})
    console.print(metrics_table(metrics, f"val mAP of {ckpt} ({len(val)} images)"))
    console.print(f"metrics -> {escape(str(out))}")
    return metrics


def eval_record_path(cfg: ExperimentConfig, work_dir: str | Path | None, ckpt: Path, given: bool) -> Path:
    """Where ``nasdet eval`` writes: the baseline's own ``metrics.json`` when it re-evaluates the baseline
    by default; for a checkpoint given with --ckpt, ``eval/<stage>_<name>_metrics.json``, never a stage's
    own record (the report reads the baseline's; pretrain reads the supernet's)."""
    if not given:
        return ckpt.parent.parent / "metrics.json"
    name = f"{ckpt.parent.parent.name}_{ckpt.stem}" if ckpt.parent.name == "ckpt" else ckpt.stem
    return work_dir_of(cfg, work_dir) / "eval" / f"{name}_metrics.json"


def run_cost(cfg: ExperimentConfig, work_dir: str | Path | None = None, ckpt: str | Path | None = None,
             latency: bool = True, console: Console | None = None) -> dict:
    """MACs, params and latency of the config's detector (trained weights if a checkpoint exists,
    so NMS sees a realistic number of boxes)."""
    console = console or Console()
    wd = work_dir_of(cfg, work_dir)
    cfg = baseline_config(cfg)
    num_classes = cfg.model.num_classes
    if num_classes is None:
        num_classes = load_split(cfg, "val").num_classes
    path = Path(ckpt) if ckpt else wd / BASELINE / "ckpt" / "last.pt"
    if path.is_file():
        model = load_trained_model(cfg, path, num_classes)
    elif ckpt:
        raise CheckpointError(f"checkpoint {path} does not exist")
    else:
        model = build_detector(cfg.model, num_classes=num_classes)
    model.eval()
    result = {"input_size": get_input_size(model), "macs": detector_macs(model), "params": detector_params(model),
              "detector": cfg.model.detector, "backbone": cfg.model.backbone.name,
              "weights": str(path) if path.is_file() else "random"}
    if latency:
        c = cfg.cost
        result["latency"] = measure_latency(model, device=c.device, warmup=c.warmup, runs=c.runs, threads=c.threads)
        if c.onnxruntime:
            result["latency_onnxruntime"] = measure_latency_onnx(model, warmup=c.warmup, runs=c.runs, threads=c.threads)
    write_json((wd / BASELINE if not ckpt else path.parent.parent) / "cost.json", result)
    console.print(cost_table(result, f"cost of {cfg.model.detector} / {cfg.model.backbone.name}"))
    return result
