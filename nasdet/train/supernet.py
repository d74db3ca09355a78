"""Supernet pretraining: path sampling, progressive shrinking, multi-resolution, distillation.

Each step draws its subnets from a generator seeded by ``(seed, step)``: every DDP rank draws the same
subnets without communication, and a resumed run draws what the uninterrupted run would have.
Gradients of all subnets of a step accumulate before one optimizer step (OFA, BigNAS).
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from rich.text import Text

from ..errors import ConfigError, unreadable_reason
from ..files import why_not_a_file
from ..models.imports import (class_layer_keys, describe_weights, recorded_class_names, refuse_other_anchors,
                              rows_by_class_name)
from ..config import ExperimentConfig, ShrinkPhase, SupernetConfig, without_start_weights
from ..models.detectors import set_input_size, training_input_size
from ..models.supernet import INPUT_SIZE, set_detector_arch, supernet_body
from ..space.elastic import apply_channel_moves
from .bn import freeze_batchnorm_affine, preserved_bn_state, recalibrate_bn
from ..space import ArchError, SearchSpace
from . import dist
from .checkpoint import CheckpointError, backbone_start, files_by_content, load_model_weights, unfinished_at
from .distill import LossesWithLogits, adaptive_distillation_loss
from .evaluate import evaluate_detector
from .loop import RunSettings, Trainer
from .optim import build_scheduler, restart_optimizer_state
from .resume import NOT_TRAINING, TRAINING_SECTIONS, flatten


# -------------------------------------------------------------------------------- progressive shrinking
class ShrinkingSchedule:
    """Which values of each choice are open at an epoch: the last phase whose ``epoch`` has begun.

    A phase's keys are choice *kinds*, the last part of a choice name (``kernel`` matches
    ``backbone.stage1.block0.kernel``); kinds a phase does not name stay fully open.
    """

    def __init__(self, space: SearchSpace, phases: list[ShrinkPhase]):
        self.space = space
        self.phases = list(phases)
        kinds = {n.rsplit(".", 1)[-1] for n in space.names}
        self._spaces: list[SearchSpace] = []
        for phase in self.phases:
            allowed = {}
            for kind, values in phase.open.items():
                if kind not in kinds:
                    raise ArchError(f"supernet.schedule (epoch {phase.epoch}): no choice kind {kind!r} in the space; "
                                    f"kinds are {sorted(kinds)}")
                for name in space.names:
                    if name.rsplit(".", 1)[-1] == kind:
                        allowed[name] = [v for v in space[name] if v in values]
                        bad = [v for v in values if v not in space[name]]
                        if bad or not allowed[name]:
                            raise ArchError(f"supernet.schedule (epoch {phase.epoch}): {kind} values {values} are "
                                            f"not all among {list(space[name])} (choice {name})")
            self._spaces.append(space.restrict(allowed))

    def phase_at(self, epoch: int) -> ShrinkPhase | None:
        """The phase whose ``epoch`` has begun last (None before the first)."""
        return next((p for p in reversed(self.phases) if epoch >= p.epoch), None)

    def space_at(self, epoch: int) -> SearchSpace:
        current = self.space
        for phase, sub in zip(self.phases, self._spaces):
            if epoch >= phase.epoch:
                current = sub
        return current


def middle_arch(space: SearchSpace) -> dict:
    """The per-choice median value: a subnet between the smallest and the largest."""
    return {n: space[n][len(space[n]) // 2] for n in space.names}


def sample_step_archs(space: SearchSpace, rng: random.Random, rule: str, n_random: int = 2,
                      n_uniform: int = 1) -> list[dict]:
    """``uniform``: ``n_uniform`` subnets drawn uniformly (SPOS: one; OFA: 1, 2, 4 by phase). ``sandwich``: largest,
    smallest and ``n_random`` uniform subnets (BigNAS); the largest comes first so it can teach the others in place.
    While progressive shrinking leaves a single subnet open, it is trained once per step, not twice."""
    if rule == "uniform":
        return [space.sample(rng) for _ in range(n_uniform)]
    if rule == "sandwich":
        ends = [space.largest()] if space.largest() == space.smallest() else [space.largest(), space.smallest()]
        return [*ends, *(space.sample(rng) for _ in range(n_random))]
    raise ConfigError(f"supernet.sampling must be uniform or sandwich, got {rule!r}")


def sample_in_macs_bins(space: SearchSpace, rng: random.Random, macs_fn, lo: float, hi: float, bins: int,
                        max_tries: int = 500) -> dict:
    """SPOS's FLOPs-bin-uniform sampling: a bin of [lo, hi] uniformly, then uniform archs until one's
    ``macs_fn(arch)`` falls in it; after ``max_tries`` misses an unconstrained uniform arch (as SPOS)."""
    width = (hi - lo) / bins
    b = rng.randrange(bins)
    left, right = lo + b * width, lo + (b + 1) * width
    for _ in range(max_tries):
        arch = space.sample(rng)
        if left <= macs_fn(arch) <= right:
            return arch
    return space.sample(rng)


# ------------------------------------------------------------------------------------------ init
INIT_KEY = "supernet.init_from"
TEACHER_KEY = "supernet.distill.checkpoint"


@dataclass
class SupernetStart:
    """How ``supernet.init_from``'s class layers arrived (for the log): picked by name from the checkpoint's
    classes, started afresh (other classes), or kept by index from a file that records no class names."""

    checkpoint_classes: list[str] | None = None
    picked_classes: bool = False
    reinitialised: list[str] = field(default_factory=list)  # class-layer tensors left at the supernet's init
    unnamed_classes: bool = False


def _detector_of(model_section) -> str:
    """``<detector> on <backbone>`` of a config's (or a checkpoint's stored config's) ``model`` section."""
    if not isinstance(model_section, dict):
        return "an unrecorded detector"
    backbone = model_section.get("backbone")
    name = backbone.get("name") if isinstance(backbone, dict) else backbone
    return f"{model_section.get('detector', '?')} on {name}"


def read_detector_checkpoint(path: str, key: str) -> dict:
    """A nasdet detector checkpoint (``{"model": state_dict, "config": ..}``) named by config key ``key``; anything
    else is one error line saying what the file is and where such a file belongs."""
    if why := why_not_a_file(Path(path)):
        raise CheckpointError(f"{key} {path} {why}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{key} {path} cannot be read: {unreadable_reason(e, path)}") from e
    weights = state.get("state_dict", state.get("model")) if isinstance(state, dict) else None
    looks = describe_weights(weights) if isinstance(weights, dict) and weights else ""
    if looks.startswith("an MMDetection"):  # its own {"meta", "state_dict"}, or mmdetection-enot's {"model", ..}
        raise CheckpointError(
            f"{key} {path} is {looks}, a detector of another library: it becomes nasdet's as the run's baseline "
            "(pipeline.baseline_checkpoint: that file, with pipeline.init_supernet_from_baseline: true to start the "
            "supernet from it, as ENOT's pretrain starts from its baseline_ckpt; README: Start from your trained "
            "detector)")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state
    if isinstance(state, dict) and state.get("written_by") == "nasdet classify":
        what = (f"`nasdet classify`'s backbone file of {state.get('backbone')}: a backbone's weights, which "
                "model.backbone.checkpoint takes (or pipeline.classify)")
    elif isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        what = f"a plain state_dict of {describe_weights(state)}, not a nasdet detector checkpoint"
        what += ("; a teacher is a trained nasdet detector (e.g. `nasdet train`'s baseline/ckpt/last.pt)"
                 if key == TEACHER_KEY else "; a backbone's or a classification network's weights (e.g. "
                 "torchvision's ImageNet file) belong in model.backbone.checkpoint, or model.backbone.pretrained: imagenet")
    else:
        what = "not a nasdet detector checkpoint (no 'model' state_dict)"
    raise CheckpointError(f"{key} {path} is {what}")


def init_from_checkpoint(model: nn.Module, path: str, classes: list[str] | None = None,
                         model_cfg=None) -> SupernetStart:
    """Load a ``nasdet train`` checkpoint of the matching standard detector into the supernet.

    Neck and head keys load as they are; the backbone loads directly when its keys match, or through
    the body's ``load_standard_state_dict`` (standard network -> default subnet). With the run's class names
    ``classes``, the class layers follow the checkpoint's recorded ``classes`` as the baseline import does:
    rows picked by name when the run's classes are among them, else left at the supernet's init (said in the
    returned record); a file that records none is kept by index. Any other key or shape that does not fit is
    an error naming ``supernet.init_from``, and the detectors of file and config (``model_cfg``).
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{INIT_KEY} {path} does not exist: train that model first "
                              "(`nasdet train` with the matching standard backbone, or with this supernet's "
                              "backbone to train its default subnet)")
    checkpoint = read_detector_checkpoint(path, INIT_KEY)
    state = checkpoint["model"]
    body = supernet_body(model)
    prefix = "backbone.body."
    body_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    class_keys = set(class_layer_keys(model, own)) if classes is not None else set()
    missing = sorted(set(own) - set(rest))
    unexpected = sorted(set(rest) - set(own))
    shapes = sorted(k for k in set(own) & set(rest) if own[k].shape != rest[k].shape)
    other_count = [k for k in shapes if k in class_keys]  # another class count: handled below
    shapes = [k for k in shapes if k not in class_keys]
    if missing or unexpected or shapes:
        def few(keys):
            return f"{len(keys)} (e.g. {keys[:4]})"
        stored = (checkpoint.get("config") or {}).get("model")
        which = ""
        if model_cfg is not None and isinstance(stored, dict):
            now = model_cfg.model_dump(mode="json")
            which = f": it holds {_detector_of(stored)} (its stored config), this config builds {_detector_of(now)}"
            # the settings that differ, besides the backbone's name (a standard network into its supernet is the
            # normal case): e.g. another width_mult
            was, new = flatten(stored), flatten(now)
            differ = [f"model.{k} {was[k]} -> {new[k]}" for k in sorted(set(was) & set(new))
                      if was[k] != new[k] and k != "backbone.name"]
            if differ:
                which += f" ({', '.join(differ[:4])})"
        raise CheckpointError(
            f"{INIT_KEY} {path} does not fit this supernet outside the backbone{which}: missing {few(missing)}, "
            f"unexpected {few(unexpected)}, shape mismatch {few(shapes)}"
        )
    if model_cfg is not None:  # the same tensors decoded against other anchors: another detector (qa_recipes #5)
        refuse_other_anchors((checkpoint.get("config") or {}).get("model"), model_cfg.model_dump(mode="json"),
                             f"{INIT_KEY} {path}")
    unfinished = unfinished_at(checkpoint)  # (ENOT's multi-resolution step starts from a supernet still training)
    if unfinished is not None:
        warnings.warn(f"{INIT_KEY} {path} was saved at step {unfinished[0]} of {unfinished[1]}: its training has not "
                      "finished (killed, or still running)", stacklevel=2)
    start = SupernetStart(checkpoint_classes=recorded_class_names(checkpoint))
    if classes is not None:
        named = start.checkpoint_classes
        if named is not None and named != list(classes):
            rows = rows_by_class_name(model, rest, sorted(class_keys), named, list(classes))
            if rows is not None:
                rest, start.picked_classes = {**rest, **rows}, True
            else:
                start.reinitialised = sorted(class_keys)
        elif named is None and other_count:
            start.reinitialised = sorted(class_keys)
        elif named is None:
            start.unnamed_classes = True
        rest = {k: v for k, v in rest.items() if k not in start.reinitialised}
    body_keys = set(body.state_dict())
    if set(body_state) == body_keys and all(body.state_dict()[k].shape == v.shape for k, v in body_state.items()):
        body.load_state_dict(body_state)
    elif hasattr(body, "load_standard_state_dict"):
        try:
            body.load_standard_state_dict(body_state)
        except ValueError as e:
            raise CheckpointError(f"{INIT_KEY} {path}: backbone does not fit the supernet: {e}") from None
    else:
        raise CheckpointError(f"{INIT_KEY} {path}: backbone keys do not match {type(body).__name__} and it cannot "
                              "load a standard network's weights")
    with torch.no_grad():
        for k, v in rest.items():
            model.state_dict()[k].copy_(v)
    return start


def load_teacher(path: str, classes: list[str]) -> tuple[nn.Module, str]:
    """A frozen detector from a nasdet checkpoint (its own config says how to build it) whose class outputs are
    the run's ``classes``: a teacher trained on more classes gives the rows of these, picked by name from the
    classes it records; one of other classes is refused. Returns it and a note for the log."""
    from ..config import validate_config
    from ..models import build_detector

    state = read_detector_checkpoint(path, TEACHER_KEY)
    if "config" not in state:
        raise CheckpointError(f"{TEACHER_KEY} {path} has no config: it was not written by nasdet")
    cfg = validate_config(state["config"], f"{path} (config)")
    named, names = recorded_class_names(state), list(classes)
    teacher = build_detector(without_start_weights(cfg.model), num_classes=len(names))  # every weight is the file's
    weights, note = state["model"], f"distilling from teacher {path}"
    if named is not None and named != names:
        rows = rows_by_class_name(teacher, weights, class_layer_keys(teacher, weights), named, names)
        if rows is None:
            raise CheckpointError(f"{TEACHER_KEY} {path} was trained on other classes than the data's: it records "
                                  f"{len(named)} {named}, the data has {len(names)} {names}; its class outputs would "
                                  "teach the wrong classes: give a teacher trained on these classes (or on more)")
        weights, note = {**weights, **rows}, f"{note}, its rows of the data's {len(names)} classes picked by name"
    elif named is None:
        note += " (records no class names: its label k teaches the data's k-th class)"
    load_model_weights(teacher, weights, f"{TEACHER_KEY} {path} (the data has {len(names)} classes)")
    if state.get("space_id") is not None:  # a supernet checkpoint teaches with its largest subnet
        body = supernet_body(teacher)
        body.set_arch(body.search_space().largest())
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, note


def start_files(cfg: ExperimentConfig) -> dict:
    """The files a supernet's weights start from (``pretrain_config``'s config: the backbone file, the detector
    of ``supernet.init_from``, the distillation teacher), as {config key: {path (resolved), sha256}}; a file
    that is gone (a resumed run needs it no more) is left out. With ``supernet.init_from`` the backbone file is not
    read (every backbone weight is that detector's): not a start (rewriting it refused the resume)."""
    named = {INIT_KEY: cfg.supernet.init_from,
             TEACHER_KEY: cfg.supernet.distill.checkpoint if cfg.supernet.distill.teacher == "checkpoint" else None}
    return {**({} if cfg.supernet.init_from else backbone_start(cfg)), **files_by_content(named)}


# --------------------------------------------------------------------------------------- trainer
class SupernetTrainer(Trainer):
    """``Trainer`` whose step trains sampled subnets of a detector supernet.

    What is specific to the model (activating an arch, the distillation loss, scoring a subnet) sits in the
    methods under "the model's side"; a classifier supernet (``nasdet classify``) overrides only those."""

    find_unused_parameters = True  # only the sampled path gets gradients
    supernet_key = "supernet"  # the config section ``supernet`` is (classify's: classify.supernet)
    # its split of train and its sampling recipe shape the weights too; its recipe is already `train`, and
    # init_from only applies to a fresh start
    resume_sections = (*TRAINING_SECTIONS, "supernet")
    resume_ignores = (NOT_TRAINING - {"data.search_fraction", "data.split_seed"}) | {
        "supernet.train", "supernet.init_from", "supernet.recalib_batches", "supernet.report_archs"}

    def __init__(self, settings: RunSettings, model: nn.Module, space: SearchSpace, train_set, val_set, out_dir, *,
                 supernet: SupernetConfig, input_size: int, calib_set=None, teacher: nn.Module | None = None,
                 console=None):
        self.scfg = supernet
        self.input_size = input_size  # the subnets' size when a step does not draw one (multi_resolution off)
        if INPUT_SIZE in space and input_size not in space[INPUT_SIZE]:  # else it fails after training, at eval
            raise ConfigError(f"model.input_size {input_size} is not one of supernet.input_sizes "
                              f"{list(space[INPUT_SIZE])}: the supernet trains and reports its subnets at "
                              f"model.input_size; add it to supernet.input_sizes or set it to one of them")
        self.space = space
        self.distill_on = self.scfg.distill.teacher != "none"
        frozen_norms = 0 if self.scfg.train_norm_affine else freeze_batchnorm_affine(model)  # before the optimizer
        super().__init__(settings, model, train_set, val_set, out_dir, console=console, space_id=space.space_id)
        if dist.world_size() > 1:  # a sliced elastic weight's gradient is contiguous, its parameter channels_last:
            # DDP copies it into its bucket and says so once per rank in four raw lines; expected, not the user's
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.schedule = ShrinkingSchedule(space, self.scfg.schedule)
        base_lr = self.tcfg.optimizer.lr
        self.lr_phases = {p.epoch: p for p in self.scfg.schedule if p.lr is not None}
        if self.lr_phases:
            # a phase from the first epoch keeps the training's warm-up (train.scheduler.warmup_steps) unless it sets
            # its own: its lr replaced the recipe's, and the warm-up was dropped without a word (qa_s32)
            self.scheduler = build_scheduler(self.optimizer, self.tcfg.scheduler, self.total_steps, [
                (e * self.steps_per_epoch, p.lr / base_lr,
                 p.warmup_epochs * self.steps_per_epoch if p.warmup_epochs or e else self.tcfg.scheduler.warmup_steps)
                for e, p in self.lr_phases.items()])
        last = self.scfg.schedule[-1].epoch if self.scfg.schedule else 0
        if self.tcfg.max_steps and self.tcfg.max_steps <= last * self.steps_per_epoch and dist.is_main():
            # (phases past the epochs are refused with the config; max_steps, a quick run's, is only said)
            self.console.print(Text(
                f"warning: {self.settings.recipe}.max_steps {self.tcfg.max_steps} stops before the schedule's phase "
                f"at epoch {last} (step {last * self.steps_per_epoch}): the values it opens are not trained here, "
                "and a search on this supernet scores them untrained", style="yellow"), soft_wrap=True)
        self.calib_set = calib_set if calib_set is not None else train_set
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_losses = self.with_logits(self.teacher) if self.teacher is not None else None
        self.last_archs: list[dict] = []
        self.arch_macs = self._macs_bins_cost() if self.scfg.macs_bins is not None else None
        if not self.scfg.train_norm_affine and dist.is_main():
            self.console.print(f"{frozen_norms} BatchNorm layers keep their gamma / beta ({self.supernet_key}."
                               "train_norm_affine false); their running statistics train", soft_wrap=True)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *args, recipe: str = "train", **kwargs) -> "SupernetTrainer":
        """The supernet trainer of a run's config (its ``supernet`` section and ``model.input_size``)."""
        return cls(RunSettings.of(cfg, recipe), *args, supernet=cfg.supernet, input_size=cfg.model.input_size, **kwargs)

    def _macs_bins_cost(self):
        """arch -> backbone MACs at ``macs_bins.input_size`` from the backbone's lookup table."""
        from ..models.supernet import BACKBONE_PREFIX
        from ..space import strip_prefix

        if self.scfg.sampling != "uniform":
            raise ConfigError("supernet.macs_bins filters uniform sampling (SPOS); set supernet.sampling: uniform")
        body = self.body()
        if not hasattr(body, "arch_macs"):
            raise ConfigError(f"supernet.macs_bins needs a backbone with a MACs lookup table (arch_macs), "
                             f"{type(body).__name__} has none: use a detnas_* backbone or drop macs_bins")
        b = self.scfg.macs_bins
        size = b.input_size
        if hasattr(body, "macs_table"):  # a bin no arch reaches: its steps drew max_tries archs, then any (qa_detnas #7)
            stem, table = body.macs_table(size)
            lo, hi = stem + sum(min(r) for r in table), stem + sum(max(r) for r in table)
            width = (b.max - b.min) / b.bins
            empty = [(b.min + i * width, b.min + (i + 1) * width) for i in range(b.bins)
                     if b.min + (i + 1) * width < lo or b.min + i * width > hi]
            if empty:
                shown = ", ".join(f"{x / 1e6:.1f}-{y / 1e6:.1f} M" for x, y in empty[:3])
                raise ConfigError(f"supernet.macs_bins: {len(empty)} of its {b.bins} bins ({shown}) lie outside the "
                                  f"space's backbone MACs at {size} px, {lo / 1e6:.1f}-{hi / 1e6:.1f} M: no arch falls in "
                                  "them, and each step that picks one draws any arch after max_tries misses; set "
                                  "macs_bins.min / max within that range (classify: classify.supernet.macs_bins)")
        return lambda arch: body.arch_macs(strip_prefix(arch, BACKBONE_PREFIX), size)

    def wrap_for_training(self, model: nn.Module) -> nn.Module:
        return self.with_logits(model) if self.distill_on else model

    def train_resolution(self) -> int:
        sizes = self.space[INPUT_SIZE] if self.scfg.multi_resolution else [self.input_size]
        return max(training_input_size(self.model, s) for s in sizes)

    def step_image_sizes(self, first_step: int, count: int) -> list[int] | None:
        if not self.scfg.multi_resolution:
            return None
        return [training_input_size(self.model, self.step_archs(step, self.epoch)[0][INPUT_SIZE])
                for step in range(first_step, first_step + count)]

    def before_step(self, step: int) -> None:
        super().before_step(step)
        if self.batch_in_epoch == 0 and self.epoch > 0:  # (a run resumed mid-epoch did it before its checkpoint)
            self.reorganize_if_expand_opens(self.epoch)
            self.restart_if_phase_sets_lr(self.epoch)

    def restart_if_phase_sets_lr(self, epoch: int) -> None:
        """A phase with its own lr starts as OFA's progressive shrinking starts each phase, a run of its own that
        loads the weights only: the optimizer's state (momentum, Adam's moments) is forgotten (the schedule's
        restart is the scheduler's, from __init__)."""
        phase = self.lr_phases.get(epoch)
        if phase is None:
            return
        restart_optimizer_state(self.optimizer)
        if dist.is_main():
            warm = f", warmed up over {phase.warmup_epochs} epochs" if phase.warmup_epochs else ""
            self.console.print(f"epoch {epoch}: the phase's own lr {phase.lr:g}{warm}, the scheduler started again "
                               "and the optimizer's state forgotten (OFA: each phase a training of its own)")

    def reorganize_if_expand_opens(self, epoch: int) -> None:
        """When the schedule's phase at ``epoch`` opens a smaller expand ratio, sort every block's middle channels by
        importance, the widths trained so far keeping theirs, as OFA's progressive shrinking does at the start of
        each elastic-expand phase (``re_organize_middle_weights``): the new ratio's prefix then holds the most
        important channels (it held arbitrary ones, e.g. ranks 100, 25, 126 of 144 first). The optimizer's state
        follows its parameters."""
        before, now = self.schedule.space_at(epoch - 1), self.schedule.space_at(epoch)
        names = [n for n in now.names if n.rsplit(".", 1)[-1] == "expand"]
        opened = sorted({v for n in names for v in now[n] if v not in before[n]})
        body = self.body()
        if not opened or not hasattr(body, "middle_channel_moves"):
            return
        trained = sorted({v for n in names for v in before[n]})
        apply_channel_moves(body.middle_channel_moves(trained), self.optimizer)
        if dist.is_main():
            self.console.print(f"epoch {epoch}: expand {', '.join(map(str, opened))} opens: each block's middle "
                               f"channels sorted by importance (OFA), expand {', '.join(map(str, trained))} keeping "
                               "theirs")

    # ------------------------------------------------------------------------------ the model's side
    def body(self) -> nn.Module:
        """The backbone supernet inside the model."""
        return supernet_body(self.model)

    def activate(self, model: nn.Module, arch: dict) -> None:
        """Activate ``arch`` (backbone choices and input size) in ``model``."""
        set_detector_arch(model, arch)

    def resize_teacher(self, size: int) -> None:
        set_input_size(self.teacher, size)

    def check_teacher_anchors(self, source: str) -> None:
        """Refuse (CheckpointError) a checkpoint teacher whose anchors are not the student's: the distillation
        compares logits anchor by anchor, so another count failed mid-run on a tensor shape and other boxes of
        the same count (another ``anchor_ratio_range``) distilled against the wrong ones without a word. One
        training forward of both on the first two training images (no augmentation; BN statistics kept) tells:
        the same anchor count and the same anchors matched to their boxes. ``source``: the teacher file."""
        if self.teacher is None:
            return
        plain = self.train_set.with_transforms(None)
        images, targets = self.to_device(*zip(*[plain[i] for i in range(min(2, len(plain)))]))  # (BN: 2 values)
        self.resize_teacher(self.input_size)
        with torch.no_grad(), preserved_bn_state(self.model):
            _, t_logits, t_pos = self.teacher_losses(images, targets)
            _, s_logits, s_pos = self.with_logits(self.model)(images, targets)
        if t_logits.shape[1] != s_logits.shape[1] or not torch.equal(t_pos, s_pos):
            what = (f"{t_logits.shape[1]} anchors per image, the supernet {s_logits.shape[1]}"
                    if t_logits.shape[1] != s_logits.shape[1] else
                    f"as many anchors as the supernet but other boxes ({int(t_pos.sum())} and {int(s_pos.sum())} "
                    "match an image's objects, not the same ones)")
            raise CheckpointError(f"{TEACHER_KEY} {source}: its detector has {what} at {self.input_size} px: the "
                                  "distillation compares logits anchor by anchor; train the teacher with this run's "
                                  "anchor settings (model.ssd_levels, anchor sizes and ratios, input size)")

    def with_logits(self, model: nn.Module) -> nn.Module:
        """``model`` whose training forward returns ``(losses, logits, positives)`` for distillation."""
        return LossesWithLogits(model)

    def distill_loss(self, logits, teacher_logits, positives) -> torch.Tensor:
        d = self.scfg.distill
        return adaptive_distillation_loss(logits, teacher_logits, positives, d.temperature, d.beta, d.gamma,
                                          adaptive=d.loss == "adaptive")

    def score(self, val) -> dict:
        """Metrics of the active subnet on ``val``."""
        return evaluate_detector(self.model, val, self.device, self.settings.eval.batch_size, self.settings.num_workers)

    def step_rng(self, step: int) -> random.Random:
        return random.Random(f"{self.settings.seed}-{step}")

    def step_archs(self, step: int, epoch: int) -> list[dict]:
        """The subnets (with their common input size) step ``step`` trains."""
        space = self.schedule.space_at(epoch)
        rng = self.step_rng(step)
        phase = self.schedule.phase_at(epoch)
        n_uniform = phase.samples if phase is not None and phase.samples else self.scfg.uniform_samples
        if self.arch_macs is not None:
            b = self.scfg.macs_bins
            archs = [sample_in_macs_bins(space, rng, self.arch_macs, b.min, b.max, b.bins, b.max_tries)
                     for _ in range(n_uniform)]
        else:
            archs = sample_step_archs(space, rng, self.scfg.sampling, self.scfg.sandwich_random, n_uniform)
        if self.scfg.multi_resolution:
            size = rng.choice(space[INPUT_SIZE])
        else:
            size = self.input_size
        unique: list[dict] = []
        for a in archs:  # one input size per step can make the sampled subnets coincide
            a = {**a, INPUT_SIZE: size}
            if a not in unique:
                unique.append(a)
        return unique

    def forward_backward(self, images, targets) -> dict[str, float]:
        archs = self.step_archs(self.step, self.epoch)
        self.last_archs = archs
        d = self.scfg.distill
        distill_now = self.distill_on and self.epoch >= d.start_epoch and d.coef > 0
        teacher_logits = None
        size = archs[0][INPUT_SIZE]
        if distill_now and d.teacher == "checkpoint":
            self.resize_teacher(size)
            with torch.no_grad(), self.autocast():
                _, teacher_logits, _ = self.teacher_losses(images, targets)
        elif distill_now and d.teacher == "largest" and archs[0] != self.largest_at(self.epoch, size):
            self.activate(self.model, self.largest_at(self.epoch, size))
            with torch.no_grad(), self.autocast():
                _, teacher_logits, _ = self.ddp_model(images, targets)

        stats: dict[str, float] = {}
        for i, arch in enumerate(archs):
            self.activate(self.model, arch)
            with self.autocast():
                out = self.ddp_model(images, targets)
            if self.distill_on:
                losses, logits, positives = out
                is_teacher = d.teacher == "largest" and arch == self.largest_at(self.epoch, size)
                if distill_now and teacher_logits is not None and not is_teacher:
                    losses = {**losses, "distill": d.coef * self.distill_loss(logits, teacher_logits, positives)}
                if distill_now and is_teacher and d.teacher == "largest":
                    teacher_logits = logits.detach()
            else:
                losses = out
            sub = self.backward(losses, prefix=f"s{i}/" if len(archs) > 1 else "")
            for k, v in sub.items():
                stats[k] = v
        if len(archs) > 1:
            stats["loss"] = sum(v for k, v in stats.items() if k.endswith("/loss"))
        return stats

    def largest_at(self, epoch: int, size: int) -> dict:
        return {**self.schedule.space_at(epoch).largest(), INPUT_SIZE: size}

    # ------------------------------------------------------------------------------- evaluation
    def report_archs(self) -> dict[str, dict]:
        space = self.schedule.space_at(self.epoch)
        size = self.input_size
        named = {"largest": space.largest(), "middle": middle_arch(space), "smallest": space.smallest()}
        return {n: {**named[n], INPUT_SIZE: size} for n in self.scfg.report_archs}

    def evaluate(self) -> dict | None:
        """Metrics (``score``) of the largest / middle / smallest subnet on val, each after BN recalibration;
        the supernet's BN statistics are restored afterwards."""
        if self.val_set is None:
            return None
        val, e = self.scored_val(), self.settings.eval
        results = {}
        for name, arch in self.report_archs().items():
            with preserved_bn_state(self.model):
                self.activate(self.model, arch)
                recalibrate_bn(self.model, self.calib_set, self.device, self.scfg.recalib_batches,
                               e.batch_size, seed=self.settings.seed)
                metrics = self.score(val)
            if dist.is_main():
                results[name] = {"arch": arch, "metrics": metrics}
        return results if dist.is_main() else None

    def describe_metrics(self, metrics: Mapping) -> str:
        return "  ".join(f"{n} AP50 {r['metrics']['AP50']:.3f}" for n, r in metrics.items())
