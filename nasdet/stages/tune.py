"""The tune stage (``nasdet tune``): the found architecture as a standalone detector, trained and evaluated on val.

The arch comes from ``tune.arch`` (a file, an inline mapping or a published name) or, when unset, from
the search stage's ``work_dir/search/best_arch.json``. ``tune.init: supernet`` starts from the
supernet's weights for that arch (``export_detector``, BN statistics recalibrated on the training
set, as when the search scored it); ``scratch`` re-initialises the same static network. After a darts
(FAD) search the arch is the searched genotypes, ``{"head.genotype": ..}`` (``search/genotype.json`` or
``tune.arch``), trained from their init; the steps are the same. Training uses
the baseline's recipe (``train``) unless ``tune.train`` is set. Outputs in ``work_dir/tune/``:
``arch.json``, ``ckpt/last.pt`` (with the arch inside, so the model can be rebuilt from the
checkpoint alone), ``initial_metrics.json``, ``metrics.json``, ``log.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..config import ExperimentConfig, read_arch_file, run_without_start_weights, save_run_record
from ..errors import ResumeMismatch, StageOrderError
from ..data.build import build_datasets
from ..export import configured_postprocessing
from ..models.supernet import BACKBONE_PREFIX, INPUT_SIZE, build_supernet
from ..search.scorers import warn_model_drift
from ..space import ArchError, SearchSpace, load_arch, prefix_arch, save_arch
from ..train import dist
from ..train.bn import recalibrate_static
from ..train.checkpoint import (CheckpointError, backbone_start, file_sha256, is_supernet_checkpoint,
                               load_checkpoint, refuse_other_classes, unfinished_at)
from ..train.evaluate import evaluate_detector
from ..models.heads.fad import GENOTYPE_KEY, genotype_arch, with_genotype
from ..train.trained import TuneTrainer, build_tuned_model
from ..workdir import ARCH_JSON, GENOTYPE_JSON, INITIAL_METRICS, TUNE, WorkDir, write_json
from .common import (detnas_list_arch, finished_record, metrics_table, per_class_table, recipe_key, scored_val_set,
                     stage_api, start_note_of, with_train_recipe)


# ----------------------------------------------------------------------------------------- the arch
def _complete(arch: Mapping[str, Any], cfg: ExperimentConfig) -> dict:
    out = dict(arch)
    out.setdefault(INPUT_SIZE, cfg.model.input_size)
    return out


def _published(name: str, cfg: ExperimentConfig) -> dict | None:
    try:
        from ..models.backbones.shufflenet_published import PUBLISHED_ARCHS, published_arch
    except ImportError:  # no published archs in this installation
        return None
    if name not in PUBLISHED_ARCHS:
        return None
    backbone, arch = published_arch(name)
    if backbone != cfg.model.backbone.name:
        raise ArchError(f"tune.arch {name!r} is an architecture of backbone {backbone!r}, but model.backbone.name "
                        f"is {cfg.model.backbone.name!r}")
    return _complete(prefix_arch(arch, BACKBONE_PREFIX), cfg)


def resolve_tune_arch(cfg: ExperimentConfig, space: SearchSpace, work_dir: str | Path | None = None) -> tuple[dict, str]:
    """The arch to tune (validated against ``space``) and where it came from (named in a refusal too)."""
    arch, source = _tune_arch(cfg, space, work_dir)
    try:
        return space.validate(arch), source
    except ArchError as e:
        raise ArchError(f"{source}: {e}") from None


def _tune_arch(cfg: ExperimentConfig, space: SearchSpace, work_dir: str | Path | None) -> tuple[dict, str]:
    given = cfg.tune.arch
    if given is None and cfg.tune.searched_arch is not None:
        from ..models.backbones.mbv2_width import arch_from_enot

        if cfg.model.backbone.name != "mbv2_width":
            raise ArchError(f"tune.searched_arch (ENOT's per-block width indices) needs model.backbone.name "
                            f"mbv2_width, the MobileNetV2 width space; this config's backbone is "
                            f"{cfg.model.backbone.name!r}: give its arch as tune.arch instead")

        return _complete(arch_from_enot(space, cfg.tune.searched_arch), cfg), "tune.searched_arch"
    if given is None:
        wd = WorkDir.of(cfg, work_dir)
        path = wd.search.require(wd.best_arch.name, "architecture to tune",
                                 " or set tune.arch (a file, a mapping or a published name)")
        return load_arch(path, space), str(path)
    if isinstance(given, dict):
        return _complete(given, cfg), "tune.arch (inline)"
    if isinstance(given, list):
        return _complete(prefix_arch(detnas_list_arch(given, cfg, "tune.arch"), BACKBONE_PREFIX), cfg), \
            "tune.arch (inline)"
    path = Path(given)
    if path.is_file():
        data = read_arch_file(path, "tune.arch")
        if isinstance(data, dict) and "space_id" in data:
            return load_arch(path, space), str(path)  # written by nasdet: the space must match
        if isinstance(data, dict) and isinstance(data.get("arch"), dict):
            data = data["arch"]
        if isinstance(data, list):
            return _complete(prefix_arch(detnas_list_arch(data, cfg, f"tune.arch file {path}"), BACKBONE_PREFIX),
                             cfg), str(path)
        if not isinstance(data, dict):
            raise ArchError(f"tune.arch file {path} does not hold a mapping of choices")
        return _complete(data, cfg), str(path)
    arch = _published(given, cfg)
    if arch is not None:
        return arch, f"published architecture {given}"
    try:
        from ..models.backbones.shufflenet_published import PUBLISHED_ARCHS
        known = f"; published names: {sorted(PUBLISHED_ARCHS)}"
    except ImportError:
        known = ""
    raise ArchError(f"tune.arch {given!r} is neither an existing file nor a published architecture{known}")


def searched_arch_note(cfg: ExperimentConfig, space: SearchSpace, arch: Mapping[str, Any],
                       work_dir: str | Path | None = None) -> str | None:
    """A warning when ``tune.searched_arch`` (ENOT's tune configs carry one: the baseline's widths, or ENOT's
    example) is not the arch this work dir's search found: a tune after that search trained the config's arch
    without a word."""
    path = WorkDir.of(cfg, work_dir).best_arch
    if cfg.tune.searched_arch is None or cfg.tune.arch is not None or not path.is_file():
        return None
    try:
        found = load_arch(path, space)
    except (ArchError, OSError, ValueError):  # another space's search: not this tune's to compare with
        return None
    if dict(found) == dict(arch):
        return None
    size = f" at {found[INPUT_SIZE]} px" if INPUT_SIZE in found and found.get(INPUT_SIZE) != arch.get(INPUT_SIZE) else ""
    return (f"warning: tuning tune.searched_arch (the config's ENOT width indices), not the architecture{size} this "
            f"work dir's search found ({path}); --set tune.searched_arch=null tunes the search's")


def supernet_record(path: Path) -> dict[str, str]:
    """The supernet checkpoint a tune starts from, as the file it is: resolved path and sha256."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def _supernet_there(cfg: ExperimentConfig, work_dir: Path) -> bool:
    return Path(cfg.tune.supernet_checkpoint).is_file() if cfg.tune.supernet_checkpoint else \
        WorkDir.of(cfg, work_dir).supernet.has_checkpoint()


def supernet_checkpoint(cfg: ExperimentConfig, work_dir: str | Path | None = None) -> Path:
    if not cfg.tune.supernet_checkpoint:
        return WorkDir.of(cfg, work_dir).supernet.require_checkpoint(hint=", or set tune.init: scratch")
    path = Path(cfg.tune.supernet_checkpoint)
    if not path.is_file():
        raise CheckpointError(f"tune.supernet_checkpoint {path} does not exist; or set tune.init: scratch")
    return path


def resolve_genotype_arch(cfg: ExperimentConfig, work_dir: str | Path | None = None) -> tuple[dict, str]:
    """After a darts (FAD) search, the genotypes to train as an arch (``{"head.genotype": ..}``) and their
    source: ``tune.arch`` (a genotype.log / genotype.json, a published name such as fad_paper, or that arch
    inline) or the search's ``search/genotype.json``."""
    given = cfg.tune.arch
    if isinstance(given, dict):
        if GENOTYPE_KEY not in given or len(given) != 1:
            raise ArchError(f"tune.arch: after a darts search it names genotypes (a genotype.log / genotype.json "
                            f"file, a published name such as fad_paper, or {{{GENOTYPE_KEY}: ..}}), "
                            f"not a mapping of choices")
        return genotype_arch(given[GENOTYPE_KEY], f"tune.arch {GENOTYPE_KEY}"), "tune.arch (inline)"
    if given is None:
        search = WorkDir.of(cfg, work_dir).search
        given = str(search.require(GENOTYPE_JSON, "genotype to tune", " with search.strategy: darts, or set tune.arch"))
        unfinished_search(search.checkpoint, given)
    return genotype_arch(given), str(given)


def unfinished_search(ckpt: Path, genotypes: str) -> None:
    """Refuse the genotypes of a darts search that stopped before the end its run planned (killed): they
    are an earlier epoch's, not the search's answer. Given as ``tune.arch`` they are taken as they are."""
    if not ckpt.is_file():  # written by hand or by another tool: nothing says how far the search got
        return
    unfinished = unfinished_at(load_checkpoint(ckpt), ("search", "darts", "max_steps"))
    if unfinished is not None:
        raise StageOrderError(f"the darts search stopped at step {unfinished[0]} of {unfinished[1]} ({ckpt}): "
                              f"{genotypes} holds an earlier epoch's genotypes; rerun `nasdet search` to finish it, "
                              f"or set tune.arch: {genotypes} to tune them as they are")


@stage_api
def run_tune(cfg: ExperimentConfig, work_dir: str | Path | None = None, console: Console | None = None,
             stage: str = TUNE) -> dict:
    """Train the found architecture (resuming from ``<stage>/ckpt/last.pt``); returns val metrics and more.
    ``stage`` names the output folder (benchmarks tune other archs beside the found one).

    The arch is a subnet of the supernet or, after a darts (FAD) search, the searched genotypes
    (``{"head.genotype": ..}``): the same steps for both, except that genotypes have no supernet to inherit
    weights from, so their towers train from their init (as FAD's)."""
    console = console or Console()
    wd = WorkDir.of(cfg, work_dir)
    tcfg = with_train_recipe(cfg, cfg.tune.train)
    torch.manual_seed(cfg.seed)
    data = build_datasets(tcfg)
    k = data["train"].num_classes
    out = wd.stage(stage)
    genotypes = cfg.search.strategy == "darts"
    if genotypes:
        space = None
        arch, source = resolve_genotype_arch(cfg, wd.root)
        tcfg = tcfg.model_copy(update={"model": with_genotype(tcfg.model, arch)})  # the checkpoint rebuilds alone
    else:
        _, space = build_supernet(run_without_start_weights(cfg), k)  # only the space: no ImageNet file to read
        arch, source = resolve_tune_arch(cfg, space, wd.root)
    resuming = out.has_checkpoint()
    init = "scratch" if genotypes else cfg.tune.init
    # the supernet checkpoint the weights come from, as a file: a retrained supernet is another start
    supernet = None
    if init == "supernet" and not (resuming and not _supernet_there(cfg, wd.root)):  # a finished tune outlives it
        supernet = supernet_record(supernet_checkpoint(cfg, wd.root))
    if resuming:
        held = load_checkpoint(out.checkpoint)
        extra = held.get("extra", {})
        was_init = ((held.get("config") or {}).get("tune") or {}).get("init")
        if not genotypes and was_init is not None and was_init != cfg.tune.init:
            # its weights started otherwise: resumed (or a finished one re-scored) it would be recorded as the other
            raise ResumeMismatch(f"{out.checkpoint} was tuned with another config (tune.init: {was_init} -> "
                                 f"{cfg.tune.init}); delete {out.root} to tune from {cfg.tune.init}, or set "
                                 f"tune.init: {was_init} (or another work_dir) to keep it")
        saved = extra.get("arch")
        if saved is not None and dict(saved) != dict(arch):
            raise CheckpointError(f"{out.checkpoint} tunes {'other genotypes' if genotypes else 'another architecture'} "
                                  f"than {source}; delete the tune folder to tune the new one")
        was = extra.get("supernet")
        if supernet is not None and was and was.get("sha256") != supernet["sha256"]:
            raise CheckpointError(f"{out.checkpoint} was tuned from another supernet checkpoint ({was.get('path')}, "
                                  f"sha256 {str(was.get('sha256'))[:12]}) than {supernet['path']} (sha256 "
                                  f"{supernet['sha256'][:12]}), retrained since: delete {out.root} to tune from it")
    if genotypes and cfg.tune.init == "supernet" and dist.is_main():
        console.print("tune: a darts search has no supernet; the searched towers train from their init (as FAD)")
    sn_ckpt = supernet_checkpoint(cfg, wd.root) if init == "supernet" and not resuming else None
    if sn_ckpt is not None:
        sn_state = load_checkpoint(sn_ckpt)
        refuse_other_classes(sn_ckpt, sn_state, data["train"].classes, "tune.supernet_checkpoint"
                             if cfg.tune.supernet_checkpoint else "the supernet", "tune from a supernet trained on "
                             "this data (nasdet pretrain), or set tune.init: scratch")
        if dist.is_main() and is_supernet_checkpoint(sn_state):  # (another kind is refused next, naming it)
            warn_model_drift(sn_state, cfg, f"the supernet {sn_ckpt}", "tunes", console)
    # resumed (or finished), every weight is in its checkpoint: no start file to read, or to need any more
    model = build_tuned_model(run_without_start_weights(cfg) if resuming else cfg, k, arch, sn_ckpt)
    device, _, _ = dist.init_distributed(tcfg.train.device)  # before is_main(): under torchrun only rank 0 writes
    initial = None
    if sn_ckpt is not None:  # every rank: the same recalibration, and the eval is sharded over the ranks
        model.to(device)
        if cfg.tune.recalib_batches:
            recalibrate_static(model, data["train"].with_transforms(None), device, cfg.tune.recalib_batches,
                               tcfg.eval.batch_size, tcfg.data.num_workers, cfg.seed)
        if cfg.tune.eval_initial:
            val = scored_val_set(cfg, data["val"])
            initial = evaluate_detector(model, val, device, cfg.eval.batch_size, cfg.data.num_workers, per_class=True)
            if dist.is_main():
                write_json(out / INITIAL_METRICS, {"metrics": initial, "supernet": str(sn_ckpt), "arch_source": source,
                                                    "val": val.source, "val_images": len(val),
                                                    "postprocessing": configured_postprocessing(cfg.model)})
                console.print(metrics_table(initial, f"tune: inherited weights before training ({len(val)} val images)"))
    if dist.is_main():
        if space is not None:
            save_arch(out / ARCH_JSON, arch, space)
        else:
            write_json(out / ARCH_JSON, {"arch": arch, "source": source})
        console.print(f"tune: arch from {escape(str(source))}, init {init}" + (f" ({escape(str(sn_ckpt))})" if sn_ckpt else ""))
        if space is not None and (note := searched_arch_note(cfg, space, arch, wd.root)):
            console.print(Text(note), soft_wrap=True)
    trainer = TuneTrainer.from_config(tcfg, model, data["train"], data["val"], out.root, console=console, arch=arch,
                                      supernet=supernet,
                                      recipe=recipe_key("tune", cfg.tune.train),
                                      space_id=space.space_id if space is not None else None)
    trainer.start_note = f"from the supernet's weights ({sn_ckpt})" if sn_ckpt is not None else start_note_of(cfg)
    if init == "scratch":  # the backbone file it starts from (DetNAS step 5: step 4's backbone.pt), by its bytes
        trainer.starts = backbone_start(cfg)
    trainer.prepare()
    if dist.is_main() and stage == TUNE:  # the run's config.yaml: not a control's (its config is in its checkpoint)
        save_run_record(cfg, wd.config)
    done = finished_record(out, trainer.final_step, console, "tune again", lambda d: metrics_table(d["metrics"], "tune: val mAP"),
                           trainer, configured_postprocessing(tcfg.model))
    if done is not None:
        return done
    metrics = trainer.run()
    # what the report's controls are checked against: the same init, supernet and recipe as the found arch
    result = {"metrics": metrics, "step": trainer.step, "arch": arch, "arch_source": source, "init": init,
              "supernet": (trainer.supernet or {}).get("path"),
              "supernet_sha256": (trainer.supernet or {}).get("sha256"),
              "recipe": tcfg.train.model_dump(mode="json"), "checkpoint": str(out.checkpoint),
              "val": data["val"].source, "val_images": trainer.val_images,
              # what else the weights depend on (a control tuned otherwise is not like for like)
              "recalib_batches": cfg.tune.recalib_batches if init == "supernet" else None, "seed": cfg.seed,
              "augment": tcfg.data.augment.model_dump(mode="json"), "postprocessing": configured_postprocessing(tcfg.model),
              "processes": dist.world_size()}
    if genotypes:
        result["genotype"] = arch[GENOTYPE_KEY]
    if dist.is_main():
        write_json(out.metrics, result)
        console.print(metrics_table(metrics, f"tune: val mAP ({trainer.val_images} images)"))
        if metrics.get("per_class"):
            console.print(per_class_table(metrics["per_class"], "tune: per-class AP"))
    return result


def baseline_checkpoint(cfg: ExperimentConfig, work_dir: str | Path | None = None) -> Path:
    return WorkDir.of(cfg, work_dir).baseline.require_checkpoint()
