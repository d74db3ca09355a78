"""Trained models back from their checkpoints: a trained detector, a supernet subnet (static export),
a tuned subnet (its arch travels in the checkpoint), and the trainer of a static subnet that records it."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..config import ExperimentConfig, run_without_start_weights, without_start_weights
from ..errors import ConfigError
from ..models import build_detector
from ..models.classifier import read_subnet_file
from ..models.families import family_named, family_of
from ..models.heads.fad import is_genotype_arch, with_genotype
from ..models.supernet import BACKBONE_PREFIX, build_supernet, detector_space, export_detector, has_supernet_body
from ..space import ArchError, SearchSpace, strip_prefix
from ..space.elastic import he_fout_init
from .checkpoint import (CheckpointError, is_supernet_checkpoint, load_checkpoint, load_model_weights,
                         nasdet_checkpoint_kind, refuse_other_classes)
from .loop import Trainer


# what to do when a checkpoint's classes are not the data's (refuse_other_classes)
OTHER_CLASSES_HINT = "use data with its classes in its order (data.classes, the data.yaml's names, the COCO categories)"


def load_trained_model(cfg: ExperimentConfig, ckpt: str | Path, num_classes: int,
                       classes: list[str] | None = None, static: bool = True) -> torch.nn.Module:
    """The detector of a ``nasdet train`` checkpoint, built from the model section recorded in it (so a
    baseline trained with ``pipeline.baseline_backbone`` rebuilds right), else from ``cfg``. With the data's
    ``classes``, one recorded otherwise is refused (its labels would name other classes). A detector on a
    supernet backbone (a baseline of a config without ``pipeline.baseline_backbone``, e.g. DetNAS's: it
    trains the space's default subnet) comes back as that subnet made static (``static``): what it computes,
    with its own parameters, not every choice block's (its params were counted with the unused choices: 4.18 M
    for a 3.07 M network, "the found model has 73 % of its parameters" for the very same arch)."""
    state = load_checkpoint(ckpt)
    if classes is not None:
        refuse_other_classes(ckpt, state, classes, "checkpoint", OTHER_CLASSES_HINT)
    model_cfg = _recorded_model(cfg, state, ckpt)
    # every weight comes from the checkpoint: the backbone's start (ImageNet file, backbone checkpoint) is not read
    # again (an eval or export on another machine, or with the torch cache cleared, asked for the ImageNet file)
    model = build_detector(without_start_weights(model_cfg), num_classes=num_classes)
    load_model_weights(model, state, source=str(ckpt))
    _with_run_postprocessing(model, model_cfg, cfg)
    return default_subnet(model)[0] if static and has_supernet_body(model) else model


def _recorded_model(cfg: ExperimentConfig, state: dict, ckpt: str | Path):
    """The model section a checkpoint records (the config it was trained with), else ``cfg.model``."""
    from ..config import validate_config

    if isinstance(state.get("config"), dict):
        try:
            return validate_config(state["config"], f"{ckpt} (config)").model
        except ConfigError:
            pass  # written by another nasdet version: fall back to the given config
    return cfg.model


def _with_run_postprocessing(model: nn.Module, model_cfg, cfg: ExperimentConfig) -> None:
    """The thresholds and counts of this run (model.score_thresh, ...) on a model built from a checkpoint's own model
    section, not those it was trained with: an eval, a search's baseline score or an export with `--set
    model.score_thresh=0.3` used the checkpoint's 0.01."""
    family = family_of(model)
    if model_cfg is not cfg.model and family is family_named(cfg.model.detector):
        family.set_postprocessing(model, cfg.model)


def default_subnet(model: nn.Module, input_sizes=None) -> tuple[nn.Module, dict]:
    """The default arch of a detector on a supernet backbone (its space of ``input_sizes``) as a static detector,
    and that arch."""
    space = detector_space(model, input_sizes)
    arch = space.default()
    return export_detector(model, arch, space), arch


def with_backbone_checkpoint(cfg: ExperimentConfig, path: str | Path | None) -> ExperimentConfig:
    """``cfg`` with ``model.backbone.checkpoint`` replaced (None: the backbone starts from its init)."""
    backbone = cfg.model.backbone.model_copy(update={"checkpoint": None if path is None else str(path)})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": backbone})})


def build_static_model(cfg: ExperimentConfig, num_classes: int, arch: Mapping[str, Any],
                       supernet_ckpt: str | Path | None = None) -> tuple[nn.Module, SearchSpace]:
    """``export_detector(arch)`` of the config's supernet: with the supernet checkpoint's weights if
    given (refused if it belongs to another space), else freshly initialised except the backbone when
    ``model.backbone.pretrained`` / ``checkpoint`` is set: torchvision's or a file's weights, a supernet's
    backbone (its subnet ``arch``) or the backbone file ``nasdet classify`` wrote for this very subnet (DetNAS
    step 5 starts from step 4's weights)."""
    backbone_ckpt = cfg.model.backbone.checkpoint if supernet_ckpt is None else None
    subnet = read_subnet_file(backbone_ckpt) if backbone_ckpt else None
    named = cfg.model.backbone.checkpoint
    if supernet_ckpt is not None and named and _is_subnet_file(named):
        # DetNAS step 5 with the config's tune.init: supernet left on: step 4's weights are not used, say so
        warnings.warn(f"model.backbone.checkpoint {named} holds one subnet's backbone (`nasdet classify`'s, or a "
                      f"searched DetNAS network); this tune starts "
                      f"from the supernet's weights ({supernet_ckpt}) and does not use it (tune.init: scratch starts "
                      "from it)", stacklevel=2)
    if supernet_ckpt is not None:  # every weight comes from it: no ImageNet file to read (or download)
        cfg = run_without_start_weights(cfg)
    elif subnet is not None:  # the subnet file decides
        cfg = with_backbone_checkpoint(cfg, None)
    model, space = build_supernet(cfg, num_classes)
    arch = space.validate(arch)
    if supernet_ckpt is not None:
        state = load_checkpoint(supernet_ckpt, space_id=space.space_id)
        not_supernet = (f"supernet checkpoint {supernet_ckpt} is not a supernet's: it is "
                        f"{nasdet_checkpoint_kind(state) or 'a detector checkpoint that records no search space'}"
                        "; tune starts from the pretrain stage's supernet/ckpt/last.pt (tune.supernet_checkpoint)")
        if (state.get("extra") or {}).get("arch") is not None:  # a tuned subnet (of the largest arch it would load)
            raise CheckpointError(not_supernet)
        try:
            load_model_weights(model, state, source=str(supernet_ckpt))
        except CheckpointError as e:
            if is_supernet_checkpoint(state):  # a supernet, of another config
                raise
            raise CheckpointError(f"{not_supernet} ({e})") from None
    static = export_detector(model, arch, space)
    if supernet_ckpt is None:
        body = static.backbone.body
        keep = (cfg.model.backbone.pretrained or backbone_ckpt) and subnet is None
        inherited = {k: v.clone() for k, v in body.state_dict().items()} if keep else None
        # scratch: the backbone's own init (he_fout, OFA's), not the largest weights' slices; the neck and heads keep
        # the family's (this supernet is freshly built: torchvision's head init, the focal prior bias of -4.6, which
        # he_fout zeroed: a first classification loss ~300x the baseline's)
        he_fout_init(body)
        if subnet is not None:
            _load_subnet_backbone(body, subnet, strip_prefix(arch, BACKBONE_PREFIX), backbone_ckpt)
        elif inherited is not None:
            body.load_state_dict(inherited)
    return static, space


def _is_subnet_file(path: str) -> bool:
    """``path`` is a subnet's backbone.pt from ``nasdet classify`` (unreadable or gone: not one; a tune from the
    supernet does not read it)."""
    try:
        return Path(path).is_file() and read_subnet_file(path) is not None
    except CheckpointError:
        return False


def _load_subnet_backbone(body: nn.Module, subnet: tuple[dict, dict], arch: Mapping[str, Any], path: str) -> None:
    state, trained_arch, what = subnet
    if dict(trained_arch) != dict(arch):
        differ = sorted(k for k in set(arch) | set(trained_arch) if arch.get(k) != trained_arch.get(k))
        raise CheckpointError(f"model.backbone.checkpoint {path} holds one subnet's backbone (`nasdet classify`'s, or "
                              f"a searched DetNAS network), which differs from the arch to build in {len(differ)} "
                              f"choice(s) (e.g. {[(k, trained_arch.get(k), arch.get(k)) for k in differ[:3]]}: (choice, "
                              "file, arch)); tune.arch must be the file's")
    if what == "detnas_network":
        layouts = {m.layout for m in body.modules() if hasattr(m, "layout") and isinstance(m.layout, str)}
        if layouts - {"spos"}:  # the same tensors, another channel split: another function
            raise CheckpointError(f"model.backbone.checkpoint {path} is a searched DetNAS network, whose units split "
                                  f"channels as model.backbone.layout spos does (channel_shuffle2), not "
                                  f"{', '.join(sorted(layouts - {'spos'}))}: set model.backbone.layout: spos")
    load_model_weights(body, state, source=f"model.backbone.checkpoint {path}")


def build_tuned_model(cfg: ExperimentConfig, num_classes: int, arch: Mapping[str, Any],
                      supernet_ckpt: str | Path | None = None) -> nn.Module:
    """The detector of an arch the tune stage trains: FAD genotypes (``{"head.genotype": ..}``) in the
    config's FCOS / RetinaNet head, freshly initialised (a darts search has no supernet to inherit from);
    else the supernet's static subnet (``build_static_model``)."""
    if is_genotype_arch(arch):
        return build_detector(with_genotype(cfg.model, arch), num_classes=num_classes)
    return build_static_model(cfg, num_classes, arch, supernet_ckpt)[0]


def load_tuned_model(path: str | Path, cfg: ExperimentConfig, num_classes: int,
                     classes: list[str] | None = None) -> tuple[nn.Module, dict | None]:
    """A tuned model from its checkpoint and its arch (stored in it): a supernet subnet or FAD genotypes. With the
    data's ``classes``, one recorded otherwise is refused."""
    state = load_checkpoint(path)
    if classes is not None:
        refuse_other_classes(path, state, classes, "checkpoint", OTHER_CLASSES_HINT)
    arch = (state.get("extra") or {}).get("arch")
    stored_head = ((state.get("config") or {}).get("model") or {}).get("head") or {}
    if arch is None and stored_head.get("genotype") is not None:  # tuned by nasdet before genotypes were archs
        return load_trained_model(cfg, path, num_classes), None
    if arch is None:
        raise CheckpointError(f"{path} has no architecture inside: it was not written by `nasdet tune`")
    if is_genotype_arch(arch):  # FAD: the head (cell_channels, num_cells, ...) as it was tuned, like its genotypes
        model_cfg = _recorded_model(cfg, state, path)
        model = build_detector(with_genotype(without_start_weights(model_cfg), arch), num_classes=num_classes)
        load_model_weights(model, state, source=str(path))
        _with_run_postprocessing(model, model_cfg, cfg)
        return model, arch
    try:  # every weight comes from the checkpoint: none of the backbone's start weights to read
        model = build_tuned_model(run_without_start_weights(cfg), num_classes, arch)
    except ArchError:
        raise CheckpointError(_other_space(path, state, arch, cfg, num_classes)) from None
    except ConfigError as e:  # this config's backbone has no search space (a detector's config, not the tune's)
        raise CheckpointError(f"{path} is {nasdet_checkpoint_kind(state)}; this config's model has no search space "
                              f"to build it in ({e})") from None
    load_model_weights(model, state, source=str(path))
    return model, arch


def _other_space(path, state: dict, arch: Mapping[str, Any], cfg: ExperimentConfig, num_classes: int) -> str:
    """A short line for a tuned arch that is not of this config's space: both space ids, a few names."""
    from ..config import validate_config

    space = build_supernet(run_without_start_weights(cfg), num_classes)[1]
    theirs = state.get("space_id")
    if theirs is None and isinstance(state.get("config"), dict):  # tuned before tune checkpoints kept their space
        try:
            theirs = build_supernet(run_without_start_weights(validate_config(state["config"], f"{path} (config)")),
                                    num_classes)[1].space_id
        except Exception:  # written by another nasdet version: the id stays unknown
            pass
    only_theirs = [n for n in arch if n not in space.names][:3]
    only_ours = [n for n in space.names if n not in arch][:3]
    other_values = [f"{n}={arch[n]!r}" for n in space.names if n in arch and not space.is_valid(
        {**space.default(), n: arch[n]})][:3]
    differ = "; ".join(part for part in (
        only_theirs and f"only in the checkpoint: {', '.join(only_theirs)}",
        only_ours and f"only in this config's: {', '.join(only_ours)}",
        other_values and f"values not in this config's choices: {', '.join(other_values)}") if part)
    return (f"tuned checkpoint {path} is an arch of search space {theirs or 'unknown'}, this config's space is "
            f"{space.space_id} ({differ}): use the config it was tuned with, or tune again")


def load_checkpoint_model(cfg: ExperimentConfig, ckpt: str | Path, num_classes: int,
                          detector_cfg: ExperimentConfig | None = None,
                          classes: list[str] | None = None) -> tuple[nn.Module, dict]:
    """The model of any nasdet checkpoint (for ``eval`` / ``cost --ckpt``) and what it holds: a tuned subnet
    (its arch inside: ``{"tuned_arch": arch}``), a supernet's default subnet as the static detector
    ``export_detector`` makes of it (``{"supernet_subnet": arch}``: its MACs, params and latency are the
    subnet's, not the elastic supernet's), else a trained detector (``{}``, built as ``load_trained_model``
    with ``detector_cfg``, default ``cfg``). With the data's ``classes``, one recorded otherwise is refused."""
    state = load_checkpoint(ckpt)
    if classes is not None:
        refuse_other_classes(ckpt, state, classes, "checkpoint", OTHER_CLASSES_HINT)
    if (state.get("extra") or {}).get("arch") is not None:
        model, arch = load_tuned_model(ckpt, cfg, num_classes)
        return model, {"tuned_arch": arch}
    model = load_trained_model(detector_cfg or cfg, ckpt, num_classes, static=False)
    if not has_supernet_body(model):
        return model, {}
    if state.get("space_id") is None:  # a detector trained on a supernet backbone's default subnet (DetNAS's baseline)
        static, arch = default_subnet(model)
        return static, {"trained_subnet": arch}
    static, arch = default_subnet(model, ((state.get("config") or {}).get("supernet") or {}).get("input_sizes"))
    return static, {"supernet_subnet": arch}


class TuneTrainer(Trainer):
    """The baseline's trainer on the model of a tuned arch; the arch, and the supernet checkpoint its weights
    came from (``supernet``: path and sha256), travel in every checkpoint."""

    def __init__(self, *args, arch: Mapping[str, Any], supernet: Mapping[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.arch = dict(arch)
        self.supernet = dict(supernet) if supernet else None

    def extra_state(self) -> dict:
        return {"arch": self.arch, **({"supernet": self.supernet} if self.supernet else {})}

    def load_extra_state(self, state: dict) -> None:
        self.supernet = state.get("supernet", self.supernet)
