"""Experiment configs: YAML validated by pydantic, ``--set a.b=value`` overrides, resolved copy in the work dir.

One experiment = one config + one work dir. Every section forbids unknown keys, so a typo is an error
naming the key path and the file, never a silently ignored setting.
"""
from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Discriminator, Field, PrivateAttr, Tag, TypeAdapter, ValidationError, field_validator, model_validator

from .errors import ArchError, ConfigError
from .models.config import BackboneConfig, BaseModelConfig, HeadConfig, Strict
from .models.families import BY_DETECTOR, DETECTORS, FAMILIES

__all__ = ["BackboneConfig", "BaseModelConfig", "ConfigError", "ExperimentConfig", "HeadConfig", "ModelConfig",
           "Strict", "load_config", "make_model_config", "validate_config"]

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def check_device(value: str) -> str:
    """A torch device name; a typo such as ``gpu`` is an error, not a silent run on the CPU."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"device {value!r} is not one of {DEVICES}")
    return value


# ----------------------------------------------------------------------------------------------- data
class SplitSource(Strict):
    """Where one split's images and annotations are. COCO: ``annotations`` + ``images``; VOC: ``root`` +
    ``split`` (or lists of both); YOLO: ``images`` (optional: default data.yaml's entry) + ``labels``."""

    annotations: Optional[str] = None  # COCO json
    images: Optional[str] = None  # COCO image folder; YOLO image folder or image list file
    root: Optional[Union[str, list[str]]] = None  # VOC year folder(s), e.g. VOCdevkit/VOC2007
    split: Optional[Union[str, list[str]]] = None  # VOC ImageSets/Main/<split>.txt
    labels: Optional[str] = None  # YOLO label folder mirroring `images`; default: images/ -> labels/ in the path


class AugmentConfig(Strict):
    hflip: float = Field(0.5, ge=0, le=1)
    photometric: float = Field(0.5, ge=0, le=1)  # probability of RandomPhotometricDistort
    zoom_out: float = Field(0.0, ge=0, le=1)  # SSD's expand; probability
    zoom_out_max: float = Field(4.0, ge=1)
    iou_crop: bool = False  # SSD's RandomIoUCrop
    # resize to the training resolution in the loader, before the colour ops (fewer pixels to distort; the
    # model's resize is then the identity); false: colour ops on the decoded image (nasdet.data.transforms)
    at_train_size: bool = True


class DataConfig(Strict):
    format: Literal["coco", "voc", "yolo"] = "coco"
    train: SplitSource = SplitSource()  # required for coco and voc; yolo: default data.yaml's train entry
    val: SplitSource = SplitSource()
    classes: Optional[list[str]] = None  # VOC class names; default: the 20 VOC classes
    data_yaml: Optional[str] = None  # YOLO: data.yaml with the class names (and optionally path/train/val)
    search_fraction: float = Field(0.0, ge=0, lt=1)  # held-out part of train used to score candidates
    split_seed: int = 0
    # data loader processes; auto: none on a CPU whose cores torch's threads take, several beside a GPU
    # (threads.loader_workers says why)
    num_workers: Union[Annotated[int, Field(ge=0)], Literal["auto"]] = "auto"
    # decoded images (training images: resized, with their boxes, when nothing random comes first) kept in each
    # process's memory, MiB (0 = decode every time): data.dataset.DecodedImages
    cache_mb: int = Field(1024, ge=0)
    augment: AugmentConfig = AugmentConfig()
    check_files: bool = True  # stat every image at start-up; COCO / VOC: read its header, size checked

    @model_validator(mode="after")
    def _sources_match_format(self):
        for name in ("train", "val"):
            src: SplitSource = getattr(self, name)
            if self.format == "coco" and (src.annotations is None or src.images is None):
                raise ValueError(f"data.{name}: format 'coco' needs both 'annotations' and 'images'")
            if self.format == "voc" and (src.root is None or src.split is None):
                raise ValueError(f"data.{name}: format 'voc' needs both 'root' and 'split'")
            if self.format == "yolo":
                other = [k for k in ("annotations", "root", "split") if getattr(src, k) is not None]
                if other:
                    raise ValueError(f"data.{name}: {other} are not YOLO keys (format 'yolo' takes 'images' and "
                                     "'labels', or neither to use data.yaml's entry; switching a config's format "
                                     f"with --set, clear the old keys: --set data.{name}={{}})")
                if src.labels is not None and src.images is None:
                    raise ValueError(f"data.{name}: 'labels' needs 'images' (the image folder it mirrors)")
            elif src.labels is not None:
                raise ValueError(f"data.{name}.labels applies to format 'yolo', not {self.format!r}")
        if self.format == "yolo":
            if self.data_yaml is None:
                raise ValueError("data: format 'yolo' needs 'data_yaml' (the data.yaml with the class names)")
            if self.classes is not None:
                raise ValueError("data.classes applies to format 'voc'; YOLO class names come from data.data_yaml")
        elif self.data_yaml is not None:
            raise ValueError(f"data.data_yaml applies to format 'yolo', not {self.format!r}")
        return self

    def folders(self) -> list[tuple[str, Path]]:
        """(config key, path) of every folder or file holding this data: no output may go there
        (``nasdet.user_data``). A COCO annotations file is named itself; YOLO entries of data.yaml come with their
        ``labels`` twins, and an image list with the folders of the images it names; then the folders that hold
        the splits (``_holding_folders``)."""
        found: list[tuple[str, Path]] = []
        splits: dict[str, list[tuple[Path, Path | None]]] = {}  # split -> (image folder, its annotations / labels)
        for name in ("train", "val"):
            src: SplitSource = getattr(self, name)
            for key in ("annotations", "images", "labels"):
                if getattr(src, key):
                    found.append((f"data.{name}.{key}", Path(getattr(src, key))))
            if self.format == "yolo" and src.images and Path(src.images).is_file():  # an image list
                from .data.yolo import listed_folders

                found += [(f"data.{name}.images ({Path(src.images).name})", f) for f in listed_folders(Path(src.images))]
            roots = [src.root] if isinstance(src.root, str) else src.root or []
            found += [(f"data.{name}.root", Path(r)) for r in roots]
            if self.format == "coco" and src.annotations and src.images:
                splits[f"data.{name}"] = [(Path(src.images), Path(src.annotations))]
            elif self.format == "voc":  # a year folder holds its images and annotations
                splits[f"data.{name}"] = [(Path(r), None) for r in roots]
            elif src.images and not Path(src.images).is_file():
                splits[f"data.{name}"] = [(Path(src.images), Path(src.labels) if src.labels else _labels_twin(Path(src.images)))]
        if self.format == "yolo" and self.data_yaml:
            from .data.yolo import listed_folders, read_data_yaml
            from .errors import DataError

            try:
                entries = read_data_yaml(self.data_yaml).splits
            except DataError:  # the stage that reads the data says what is wrong with it
                entries = {}
            for split, paths in entries.items():
                for p in paths:
                    found.append((f"{self.data_yaml} {split}", p))
                    if p.is_file():  # an image list: the folders of the images it names
                        found += [(f"{self.data_yaml} {split} ({p.name})", f) for f in listed_folders(p)]
                    twin = _labels_twin(p)
                    if twin is not None:  # labels mirror images (Ultralytics' rule)
                        found.append((f"{self.data_yaml} {split} labels", twin))
                    if not p.is_file() and f"data.{split}" not in splits:  # data.train.images comes first
                        splits.setdefault(f"{self.data_yaml} {split}", []).append((p, twin))
        return found + _holding_folders(splits)


def _labels_twin(images: Path) -> Path | None:
    """The YOLO label folder mirroring an image folder: its last ``images`` part replaced by ``labels``."""
    if "images" not in images.parts:
        return None
    i = len(images.parts) - 1 - images.parts[::-1].index("images")
    return Path(*images.parts[:i], "labels", *images.parts[i + 1:])


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.absolute()))


def _holding_folders(splits: dict[str, list[tuple[Path, Path | None]]]) -> list[tuple[str, Path]]:
    """The folders around the splits' data that are the data set's too (no output may go into them either).

    A split's folder: the one that directly holds its image folder and its annotations file (COCO, as
    make-synthetic and many exports lay a split out) or label folder (YOLO's ``train/images`` +
    ``train/labels``); else its image folder (COCO's ``train2017``) or VOC year folder. The data set's root: the
    folder in which two or more of the splits' folders sit side by side (``shapes/`` holding ``train/`` and
    ``val/``, ``VOCdevkit/`` holding ``VOC2007/`` and ``VOC2012/``, ``coco/`` holding ``train2017/`` and
    ``val2017/``). A project root that holds the data set further down (``data/shapes/``) is neither, and a
    file system root or home folder is never taken for one (every folder under it would be refused)."""
    try:
        home = _absolute(Path.home())
    except (RuntimeError, KeyError):  # no home folder known
        home = None

    def holding(folder: Path) -> bool:
        return folder != folder.parent and folder != home

    found: list[tuple[str, Path]] = []
    folders: dict[Path, str] = {}  # the splits' folders -> the key naming the first split in it
    label_folders: dict[Path, str] = {}  # label folders in a tree of their own (Ultralytics' labels/train)
    trees: set[Path | None] = set()  # the folder holding images/ and labels/ trees, per split
    for key, pairs in splits.items():
        for images, beside in pairs:
            images = _absolute(images)
            holder = images.parent if beside is not None and _absolute(beside).parent == images.parent else None
            if holder is not None and holding(holder):
                what = "annotations file" if beside.suffix.lower() == ".json" else "label folder"
                found.append((f"{key}'s folder, holding its image folder and {what}", holder))
            folders.setdefault(holder or images, key)
            devkit = (holder or images).parent
            if devkit.name == "VOCdevkit" and holding(devkit):  # the VOC tarball's root, even with one year in it
                found.append(("the data set's root, VOCdevkit/", devkit))
            labels = _absolute(beside) if beside is not None and beside.suffix.lower() != ".json" else None
            if labels is not None and holder is None:  # images/train beside labels/train
                label_folders.setdefault(labels, key)
                trees.add(images.parent.parent if labels.parent.parent == images.parent.parent else None)
            else:
                trees.add(None)

    def side_by_side(held: dict[Path, str], what: str) -> None:
        parents = {f.parent for f in held}
        if len(held) >= 2 and len(parents) == 1 and holding(root := parents.pop()):
            found.append((f"{what}, holding {' and '.join(f'{f.name}/' for f in sorted(held))}", root))

    parallel = len(trees) == 1 and None not in trees  # every split as X/images/S + X/labels/S (Ultralytics)
    side_by_side(folders, "the root of the data set's image folders" if parallel else "the data set's root")
    side_by_side(label_folders, "the root of the data set's label folders")
    if parallel and holding(root := next(iter(trees))):
        images_tree = sorted({f.parent.name for f in folders})
        labels_tree = sorted({f.parent.name for f in label_folders})
        found.append((f"the data set's root, holding {' and '.join(f'{n}/' for n in images_tree + labels_tree)}", root))
    return found


# ---------------------------------------------------------------------------------------------- model
def _family_tag(raw: Any) -> Optional[str]:
    """The union member of a model section: its detector's family (``ssdlite`` when unset)."""
    detector = raw.get("detector", "ssdlite") if isinstance(raw, dict) else getattr(raw, "detector", None)
    if not isinstance(detector, str):  # None, a mapping, a list: "needs model.detector" (a dict was unhashable here)
        return None
    family = BY_DETECTOR.get(detector)
    return family.names[0] if family is not None else detector


# The model section: one member per detector family (nasdet.models.families), chosen by ``detector``; each
# member forbids the keys of the others, so ``ssd_levels`` on an FCOS config is an error naming it.
ModelConfig = Annotated[Union[tuple(Annotated[f.config, Tag(f.names[0])] for f in FAMILIES)],
                        Discriminator(_family_tag)]
_MODEL_CONFIG = TypeAdapter(ModelConfig)


def make_model_config(**raw: Any) -> BaseModelConfig:
    """The model section for ``raw`` keys (tests, benchmarks): the family's config, or ConfigError."""
    try:
        return _MODEL_CONFIG.validate_python(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "model config", prefix=("model",))) from None


# ---------------------------------------------------------------------------------------------- train
class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(4e-5, ge=0)
    norm_bias_decay: bool = False  # False: no weight decay on norm weights and biases


class SchedulerConfig(Strict):
    name: Literal["cosine", "step", "linear", "constant"] = "cosine"  # linear: 1 - step / total (SPOS)
    warmup_steps: int = Field(500, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    milestones: list[float] = [0.67, 0.89]  # step schedule: fractions of total steps
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor, as a fraction of lr


class TrainConfig(Strict):
    epochs: int = Field(12, gt=0)
    batch_size: int = Field(16, gt=0)  # per process (per GPU under torchrun)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    grad_clip: Optional[float] = Field(10.0, gt=0)  # max global grad norm; null = off
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ckpt_every_steps: int = Field(500, gt=0)
    keep_epoch_ckpts: bool = False  # also keep ckpt/epoch_N.pt
    eval_every_epochs: int = Field(0, ge=0)  # 0 = only at the end
    log_every_steps: int = Field(20, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)  # stop early (smoke tests); schedule still spans all epochs
    threads: Optional[int] = Field(None, gt=0)  # torch CPU threads
    # weights and activations in NHWC: CPU training steps of the demo's MobileNetV2 SSDLite 1.5x faster
    # (benchmarks/README.md, "channels_last"); the same numbers up to float rounding
    channels_last: bool = True

    _device = field_validator("device")(check_device)


# ------------------------------------------------------------------------------------------- supernet
class ShrinkPhase(Strict):
    """From ``epoch`` on (0-based), choices whose name ends with a key of ``open`` (``kernel``, ``expand``,
    ``depth``, ``input_size``, ...) may take only the listed values (progressive shrinking)."""

    epoch: int = Field(ge=0)
    open: dict[str, list[Union[int, float, str]]]
    # uniform sampling: subnets per step in this phase, their gradients accumulated (OFA's dynamic_batch_size: 1 in
    # the elastic-kernel phase, 2 in depth, 4 in expand); default supernet.uniform_samples
    samples: Optional[int] = Field(None, gt=0)
    # a phase of its own learning rate starts as OFA runs each phase, a training of its own: the optimizer's
    # state forgotten, the recipe's scheduler again from this lr (warm-up of warmup_epochs, then its decay over
    # the epochs up to the next phase with an lr, or the training's end); OFA: 3e-2 / 2.5e-3 / 7.5e-3 per GPU
    lr: Optional[float] = Field(None, gt=0)
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _warmup_with_lr(self):
        if self.warmup_epochs and self.lr is None:
            raise ValueError(f"supernet.schedule (epoch {self.epoch}): warmup_epochs warms a phase's own lr up; "
                             "set this phase's lr too, or leave warmup_epochs out (train.scheduler warms up the "
                             "training's start)")
        return self


class DistillConfig(Strict):
    teacher: Literal["none", "largest", "checkpoint"] = "none"  # largest = in-place, from the supernet itself
    checkpoint: Optional[str] = None  # teacher = checkpoint: a nasdet checkpoint of a detector (frozen)
    loss: Literal["adaptive", "kl"] = "adaptive"  # adaptive: Tang et al. 2019 as aw_nas; kl: plain binary KL
    coef: float = Field(0.1, ge=0)
    temperature: float = Field(2.0, gt=0)
    beta: float = Field(1.5, ge=0)
    gamma: float = Field(1.0, gt=0)
    start_epoch: int = Field(0, ge=0)  # distillation is off before this epoch (aw_nas: 80)

    @model_validator(mode="after")
    def _checkpoint_given(self):
        if self.teacher == "checkpoint" and not self.checkpoint:
            raise ValueError("supernet.distill.teacher 'checkpoint' needs supernet.distill.checkpoint")
        return self


class MacsBins(Strict):
    """SPOS's FLOPs-bin-uniform path sampling: each step picks one of ``bins`` equal MACs intervals of
    [min, max] uniformly, then draws uniform archs until one's backbone MACs (at ``input_size``, from
    the backbone's lookup table, ``arch_macs``) fall in it; after ``max_tries`` misses, any uniform arch."""

    min: float = Field(ge=0)
    max: float = Field(gt=0)
    bins: int = Field(7, gt=0)
    input_size: int = Field(224, ge=32)  # DetNAS and SPOS count FLOPs at 224 x 224
    max_tries: int = Field(500, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.max <= self.min:
            raise ValueError(f"macs_bins.max ({self.max}) must be above macs_bins.min ({self.min})")
        return self


class SupernetConfig(Strict):
    sampling: Literal["uniform", "sandwich"] = "uniform"  # uniform: SPOS, one path per step
    uniform_samples: int = Field(1, gt=0)  # uniform: subnets per step, gradients accumulated (OFA: 1 / 2 / 4 by phase)
    macs_bins: Optional[MacsBins] = None  # uniform sampling only: SPOS's FLOPs bins (backbones with arch_macs)
    sandwich_random: int = Field(2, ge=0)  # sandwich: largest + smallest + this many random subnets
    input_sizes: Optional[list[int]] = None  # resolution choices of the space (default: [model.input_size])
    multi_resolution: bool = False  # ENOT multi-resolution pretrain: each step at a size drawn from input_sizes
    schedule: list[ShrinkPhase] = []  # progressive shrinking; empty: every choice open from the start
    init_from: Optional[str] = None  # a `nasdet train` checkpoint of the matching standard detector
    distill: DistillConfig = DistillConfig()
    recalib_batches: int = Field(10, gt=0)  # BN recalibration batches when a subnet is evaluated
    # false: every BatchNorm's gamma / beta stays as it starts (loaded, or 1 / 0), its running statistics still
    # move: DetNAS's COCO supernet fine-tuning (its gradient hook never re-enables its SyncBN's), and from 1 / 0
    # SPOS's ImageNet supernet (BN affine=False)
    train_norm_affine: bool = True
    report_archs: list[Literal["largest", "middle", "smallest"]] = ["largest", "middle", "smallest"]
    train: Optional[TrainConfig] = None  # the pretraining recipe; default: the top-level train section

    @field_validator("input_sizes")
    @classmethod
    def _sizes(cls, v):
        if v is not None and (not v or any(s < 32 for s in v)):
            raise ValueError(f"input_sizes must be a non-empty list of sizes >= 32, got {v}")
        return v

    @model_validator(mode="after")
    def _samples_are_uniform(self):
        if self.sampling != "uniform" and (self.uniform_samples != 1 or any(p.samples for p in self.schedule)):
            raise ValueError(f"supernet.uniform_samples and a schedule phase's samples set how many uniform subnets a "
                             f"step trains (OFA's 1 / 2 / 4): supernet.sampling {self.sampling} trains its own "
                             "(largest, smallest and sandwich_random); set sampling: uniform, or drop them")
        return self

    @field_validator("schedule")
    @classmethod
    def _ordered(cls, v):
        epochs = [p.epoch for p in v]
        if epochs != sorted(epochs) or len(set(epochs)) != len(epochs):
            raise ValueError(f"schedule phases must have increasing epochs, got {epochs}")
        return v


class EvalConfig(Strict):
    batch_size: int = Field(8, gt=0)
    max_images: Optional[int] = Field(None, gt=0)  # evaluate on the first N val images (quick checks)


class CostConfig(Strict):
    device: str = "cpu"  # cpu | cuda | cuda:N | mps: a timing names its device

    @field_validator("device")
    @classmethod
    def _timed_device(cls, v: str) -> str:
        if v == "auto":
            raise ValueError("cost.device names the device latency is timed on: cpu, cuda, cuda:N or mps, not 'auto'")
        return check_device(v)
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, gt=0)
    threads: Optional[int] = Field(None, gt=0)  # CPU threads while timing; default: torch's
    onnxruntime: bool = True  # also time the dense part (no NMS) in onnxruntime on CPU
    # how a search candidate's latency is taken: torch (timed on `device`), onnxruntime (end-to-end ONNX
    # on CPU, as deployed), onnxruntime_int8 (the same file quantized to INT8, as `nasdet export --int8`
    # writes it) or lut (OFA's per-block lookup table, timed once per device, then summed)
    latency: Literal["torch", "onnxruntime", "onnxruntime_int8", "lut"] = "torch"
    lut: Optional[str] = None  # lookup table file; default work_dir/search/latency_lut.json
    lut_precision: Literal["float", "int8"] = "float"  # lut: blocks timed in torch, or quantized in onnxruntime
    int8_calibration_images: int = Field(4, gt=0)  # onnxruntime_int8 / int8 lut: images per quantized candidate

    @model_validator(mode="after")
    def _precision_of_the_table(self):
        if self.lut_precision != "float" and self.latency != "lut":
            raise ValueError(f"cost.lut_precision {self.lut_precision} applies to cost.latency lut, not "
                             f"{self.latency} (INT8 measured: cost.latency onnxruntime_int8)")
        return self

    @property
    def int8(self) -> bool:
        """Search latency is INT8 onnxruntime latency (measured or from the INT8 table)."""
        return self.latency == "onnxruntime_int8" or (self.latency == "lut" and self.lut_precision == "int8")


class BudgetConfig(Strict):
    """An upper bound on one cost of the candidate: MACs, params (counted) or latency in ms (measured)."""

    metric: Literal["macs", "params", "latency"]
    max: float = Field(gt=0)


class DartsConfig(Strict):
    """``search.strategy: darts`` (FAD): bi-level DARTS of the head's alphas on two halves of the train split.

    Each step: an Adam step of the alphas on a batch of one half, then an SGD step (clipped) of the
    weights on a batch of the other. Defaults: FAD's search recipe (pt.darts' alpha optimiser; SGD lr
    0.004, wd 1e-4, clip 20; warm-up 500 steps from 1/3, lr x0.1 at 12.5k of 17.5k steps).
    """

    epochs: int = Field(12, gt=0)  # passes over the weight half
    batch_size: int = Field(4, gt=0)
    order: Literal["first", "second"] = "first"  # second: unrolled step, finite-difference Hessian term
    lr: float = Field(0.004, gt=0)  # SGD on the weights
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)  # not on norms and biases
    scheduler: SchedulerConfig = SchedulerConfig(name="step", warmup_steps=500, warmup_factor=1 / 3, milestones=[0.714])
    grad_clip: Optional[float] = Field(20.0, gt=0)  # max global norm of the weight gradients
    alpha_lr: float = Field(3e-4, gt=0)  # Adam on the alphas
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    max_steps: Optional[int] = Field(None, gt=0)  # stop early (smoke tests); the schedule still spans all epochs
    ckpt_every_steps: int = Field(500, gt=0)  # also at the end of every epoch
    log_every_steps: int = Field(20, gt=0)


class GradientConfig(Strict):
    """``search.strategy: gradient``: ENOT's search, architecture probabilities trained on the search split
    under a hard cost limit (``search.budget``; ENOT's ``EnotFixedLatencySearchOptimizer(max_latency_value)``).

    Per choice a vector of logits (softmax = probabilities). Each step samples ``samples`` archs (one path
    each, as ProxylessNAS's binary gates: memory of one subnet), takes their detection loss on one search
    batch with the supernet's weights fixed, and moves the logits along the REINFORCE estimate of the
    loss gradient (ProxylessNAS ``rl_update_step``) plus the exact gradient of a penalty on the expected
    cost that is zero under the limit and grows above it. Defaults: ENOT's ssd_mnv2_search.py
    (20 epochs, batch 20, SGD lr 1.0, momentum 0.9, no weight decay); RAdam lr 0.01 is its tutorials'.
    """

    epochs: int = Field(20, gt=0)  # passes over the search split (per resolution step with search_resolution)
    batch_size: int = Field(20, gt=0)
    optimizer: Literal["sgd", "radam"] = "sgd"
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    samples: int = Field(2, gt=0)  # archs per batch; >= 2: each one's baseline is the others' mean loss
    baseline_decay: float = Field(0.9, ge=0, lt=1)  # samples == 1: moving-average baseline of the loss
    penalty: float = Field(10.0, gt=0)  # weight of max(0, E[cost] / limit - 1)
    search_resolution: bool = False  # ENOT search_with_resolution: one search per input_size, keep the best
    score_every_epoch: bool = False  # also score (BN-recalibrated AP) each epoch's most probable arch
    max_steps: Optional[int] = Field(None, gt=0)  # per resolution step; stop early (smoke tests)


class SearchConfig(Strict):
    """``nasdet search``: candidates scored on the supernet (BN recalibrated, mAP on the search split).

    Evolution defaults follow DetNAS (population 50, top-10 parents, gene mutation 0.1 (to another value: DetNAS's
    redraw among 4 ops with p 0.1 is 0.075 here), 20 mutation +
    20 crossover + 10 random children per generation); generations = num_candidates / population.
    """

    # darts: FAD, see search.darts; gradient: ENOT's search, see search.gradient
    strategy: Literal["evolution", "nsga2", "random", "darts", "gradient"] = "evolution"
    # what a candidate is scored by: the trained supernet (AP on the search split), or a zero-cost proxy of
    # the subnet at its scratch init (no supernet needed; see `nasdet diagnose` for when one is worth it)
    scorer: Literal["supernet", "grad_norm", "synflow", "mae_det"] = "supernet"
    budget: Optional[BudgetConfig] = None
    cost_metric: Literal["macs", "params", "latency"] = "macs"  # Pareto / table cost when no budget is set
    num_candidates: int = Field(1000, gt=0)  # scored candidates in the study, all workers together
    population: int = Field(50, gt=1)  # evolution generation size; NSGA-II population
    parents: int = Field(10, gt=0)  # evolution: top-k parents
    mutation_prob: float = Field(0.1, gt=0, le=1)  # per-choice mutation probability
    mutation: float = Field(0.4, ge=0, le=1)  # evolution: share of a generation made by mutation
    crossover: float = Field(0.4, ge=0, le=1)  # evolution: share made by crossover (the rest: uniform random)
    # evolution: scored = each child's operator drawn by the shares, its parents the best scored so far (workers
    # share one study); generation = parents fixed at the generation's start, the shares counted (DetNAS / SPOS)
    parents_from: Literal["scored", "generation"] = "scored"
    include_extremes: bool = True  # score the smallest and (if under budget) the largest subnet first
    recalib_batches: int = Field(20, gt=0)  # BN recalibration batches per candidate
    batch_size: int = Field(8, gt=0)
    max_images: Optional[int] = Field(None, gt=0)  # score on the first N images of the search split
    # where candidates are scored: the held-out part of train (data.search_fraction), or val (more images, but
    # then val no longer reports the found model without bias)
    score_on: Literal["search", "val"] = "search"
    # the search's confidence: the top N candidates' AP bootstrapped over the split's images (0: off)
    confidence_top: int = Field(5, ge=0)
    confidence_resamples: int = Field(1000, gt=0)
    resolution_tolerance: Optional[int] = Field(None, ge=0)  # |input_size - model.input_size| bound
    storage: Optional[str] = None  # optuna storage URL or journal file; default work_dir/search/study.journal
    # database storages: a running trial records a heartbeat this often; silent for twice as long = its worker
    # died (on any host), the trial is failed and its arch scored again
    heartbeat_seconds: int = Field(60, gt=0)
    study_name: Optional[str] = None  # default: "<name>-<strategy>"
    seed: int = 0
    top_k: int = Field(10, gt=0)  # rows of the summary table
    darts: DartsConfig = DartsConfig()
    gradient: GradientConfig = GradientConfig()

    @model_validator(mode="after")
    def _shares(self):
        if self.strategy == "gradient" and self.budget is None:
            raise ValueError("search.strategy gradient needs search.budget (the hard limit, ENOT's max_latency_value)")
        if self.mutation + self.crossover > 1:
            raise ValueError(f"search.mutation + search.crossover must be <= 1, got {self.mutation} + {self.crossover}")
        # only evolution takes parents (an NSGA-II population of 4 was refused for the default's 10)
        if self.parents > self.population and (self.strategy == "evolution" or "parents" in self.model_fields_set):
            raise ValueError(f"search.parents ({self.parents}) must be <= search.population ({self.population})")
        if self.strategy in ("darts", "gradient") and self.scorer != "supernet":
            raise ValueError(f"search.scorer {self.scorer!r} applies to evolution, nsga2 and random, not to "
                             f"search.strategy {self.strategy!r}")
        return self


class DiagnoseConfig(Strict):
    """``nasdet diagnose``: do the supernet (and cheaper rankers) rank archs as they rank trained alone?

    ``archs`` archs spread over the space's MACs range (smallest and largest always in, the rest nearest to
    evenly spaced MACs among ``pool`` seeded uniform draws) are scored as the search scores them, by each
    zero-cost proxy, and trained alone with one short shared recipe: the top-level ``train`` section with
    ``epochs`` (and ``max_steps``), from scratch and/or from the supernet's weights (``init``).

    The default target is one epoch tuned from the supernet's weights: on the demos one CPU epoch from
    scratch leaves every arch at AP 0.0000-0.0004 (noise), one epoch from the supernet spreads them over
    0.025-0.074 (benchmarks/README.md). ``noise_check`` trains the plan's middle arch a second time (seed
    + 1): when the two seeds' variance is at least ``noise_share`` of the variance over the archs, the
    target is noise and every tau says nothing.
    """

    archs: int = Field(12, ge=3)  # K
    pool: int = Field(100, gt=0)  # uniform draws the K are stratified from (only costed)
    seed: int = 0
    epochs: int = Field(1, gt=0)  # the short shared recipe's epochs
    max_steps: Optional[int] = Field(None, gt=0)  # stop each stand-alone training early
    init: list[Literal["scratch", "supernet"]] = ["supernet"]  # scratch: (also) trained from a fresh init
    target: Literal["scratch", "supernet"] = "supernet"  # which stand-alone AP the rankers are judged against
    noise_check: bool = True  # one more training: the middle arch's target again with seed + 1
    noise_share: float = Field(0.5, gt=0)  # noise when the seeds' variance >= this share of the variance over archs
    metric: Literal["AP", "AP50"] = "AP"  # of the supernet score and of the stand-alone model on val
    proxies: list[Literal["grad_norm", "synflow", "mae_det"]] = ["grad_norm", "synflow", "mae_det"]
    proxy_batch_size: int = Field(8, gt=0)  # grad_norm's batch (training images, no augmentation)
    top_k: int = Field(3, gt=0)  # top-k overlap (undefined with top_k >= archs: the top k are then all of them)
    bootstrap: int = Field(1000, ge=100)  # resamples of the 90 % intervals

    @model_validator(mode="after")
    def _target_trained(self):
        if not self.init or len(set(self.init)) != len(self.init):
            raise ValueError(f"diagnose.init must list scratch and/or supernet once each, got {self.init}")
        if self.target not in self.init:
            raise ValueError(f"diagnose.target {self.target!r} is not trained: add it to diagnose.init {self.init}")
        return self  # (diagnose.pool >= the archs: checked with pipeline.diagnose, which replaces diagnose.archs)


class TuneConfig(Strict):
    """``nasdet tune``: train the found architecture as a standalone detector and evaluate it on val.

    By default with the baseline's recipe (the top-level ``train`` section): the fair comparison
    ENOT and DetNAS insist on. ``tune.train`` overrides it.
    """

    # a JSON/YAML arch file, an inline mapping, or a published name (e.g. COCO-FPN-300M); detnas_*: also DetNAS's
    # flat list of ops (inline or in the file); default: the search stage's work_dir/search/best_arch.json
    arch: Optional[Union[str, dict[str, Any], list[int]]] = None
    # ENOT's searched_arch: one index per block into (1.0, 0.5, 0.33, 0.17, 0.08, 0.0) (mbv2_width); with
    # tune.arch unset; the input size is model.input_size
    searched_arch: Optional[list[int]] = None
    init: Literal["supernet", "scratch"] = "supernet"  # inherit the supernet's weights (export(arch)) or re-initialise
    supernet_checkpoint: Optional[str] = None  # default: work_dir/supernet/ckpt/last.pt
    recalib_batches: int = Field(20, ge=0)  # BN statistics of the inherited weights, recalibrated before training
    eval_initial: bool = True  # evaluate the inherited weights on val before training (tune/initial_metrics.json)
    train: Optional[TrainConfig] = None  # default: the top-level train section
    # quantization-aware tuning (nasdet.train.qat) when `export --int8`'s post-training quantization loses
    # more than qat_max_drop AP on val: the tuned model fine-tuned fake-quantized, then quantized again
    qat: bool = False
    qat_max_drop: float = 0.01  # AP (0..1); negative: always
    qat_steps: int = Field(300, gt=0)
    qat_lr: float = Field(1e-4, gt=0)  # SGD, momentum 0.9, BN frozen

    @model_validator(mode="after")
    def _one_arch(self):
        if self.arch is not None and self.searched_arch is not None:
            raise ValueError("set tune.arch or tune.searched_arch, not both")
        return self


class ClassifyConfig(Strict):
    """``nasdet classify``: ``model.backbone`` trained as an image classifier on an ImageFolder tree
    (``<root>/train/<class>/*.jpg``, ``<root>/val/<class>/*.jpg``: ImageNet's layout), with the head of its
    reference network (nasdet.models.classifier). DetNAS step 1 (``arch`` unset: the whole supernet, its
    paths sampled per ``supernet``: SPOS uniform or FLOPs bins, OFA progressive shrinking and
    distillation) or step 4 (``arch``: one subnet, trained alone from scratch). Writes
    ``classify/backbone.pt`` for ``model.backbone.checkpoint``. Defaults: SPOS's ImageNet recipe
    (label smoothing 0.1, dropout 0.1, RandomResizedCrop 224, flip, ColorJitter 0.4)."""

    root: str  # the folder holding train/ and val/
    train_split: str = "train"
    val_split: str = "val"
    # one subnet: a mapping of choices (backbone.* or the backbone's own names) or an arch file
    # (search/best_arch.json, tune/arch.json); its input_size is ignored (classification uses input_size)
    arch: Optional[Union[str, dict[str, Any], list[int]]] = None
    input_size: int = Field(224, ge=32)  # training crop; evaluation: resize to input_size / 0.875, centre crop
    dropout: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    min_scale: float = Field(0.08, gt=0, le=1)  # RandomResizedCrop's smallest area fraction
    hflip: float = Field(0.5, ge=0, le=1)
    color_jitter: float = Field(0.4, ge=0)  # brightness, contrast and saturation
    # data loader processes (a number or auto); default data.num_workers
    num_workers: Optional[Union[Annotated[int, Field(ge=0)], Literal["auto"]]] = None
    supernet: SupernetConfig = SupernetConfig()  # path sampling of the supernet (arch unset)
    train: Optional[TrainConfig] = None  # the recipe; default: the top-level train section

    @model_validator(mode="after")
    def _classification_keys(self):
        detection_only = [k for k in ("train", "init_from") if getattr(self.supernet, k) is not None]
        if detection_only:
            raise ValueError(f"classify.supernet.{detection_only[0]} does not apply to classification "
                             "(the recipe is classify.train)")
        if self.arch is not None and (self.supernet.schedule or self.supernet.distill.teacher != "none"):
            raise ValueError("classify.arch trains one subnet: classify.supernet.schedule / distill apply to the "
                             "supernet (leave classify.arch unset)")
        if self.supernet.distill.teacher != "none" and self.supernet.distill.loss == "adaptive":
            raise ValueError("classify.supernet.distill.loss: 'adaptive' is the detection loss (positive anchors); "
                             "a classifier distils with OFA's soft-target cross-entropy: set loss: kl")
        return self


class ExportConfig(Strict):
    """``nasdet export``: ONNX end to end (resize, normalise, decode, NMS inside) or raw head outputs."""

    source: Literal["tune", "baseline"] = "tune"  # which trained model to export
    opset: int = Field(17, ge=11)
    check_images: int = Field(8, ge=1)  # val images the onnxruntime-vs-torch parity check runs on
    box_atol: float = Field(1e-3, gt=0)  # px, matched boxes
    # plus this fraction of the box's size (its longer side): a box is its anchor or proposal scaled by decoded
    # regression outputs, so their float32 rounding (raw_atol 1e-4) moves it in proportion to its size; a tuned
    # SSDLite's boxes differed by 1.01e-3 px on 2 threads and 9.6e-4 on 1 (the same checkpoint failed or passed)
    box_rtol: float = Field(1e-4, ge=0)
    score_atol: float = Field(1e-4, gt=0)
    raw_atol: float = Field(1e-4, gt=0)
    # plus this fraction of the torch value, at least of the output's root mean square: float32 rounding grows with
    # a trained net's logits (torch.onnx's own verification uses rtol 1e-3; a logit of 4.7 of a FAD head differed by
    # 5.7e-4 between the two runtimes) and with the values a small one is computed from
    raw_rtol: float = Field(1e-3, ge=0)
    # INT8 (nasdet.quantize): onnxruntime static quantization of the network (QDQ, per-channel int8 weights,
    # uint8 activations), pre/post-processing and NMS kept float; mAP of both files through onnxruntime
    int8: bool = False
    calibration_images: int = Field(32, gt=0)  # training images of the run the activation ranges come from
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"

    @model_validator(mode="after")
    def _int8_opset(self):
        # 13 = nasdet.quantize.INT8_MIN_OPSET (not imported here: it would pull onnx/torch into config loading)
        if self.int8 and self.opset < 13:
            raise ValueError(f"export.opset {self.opset} is too old for export.int8: true (per-channel INT8 "
                             "weights need export.opset >= 13)")
        return self


class PipelineConfig(Strict):
    """``nasdet pipeline``: baseline -> pretrain -> search -> tune -> export -> report."""

    baseline: bool = True  # train the baseline first (same recipe as tune: the fair comparison)
    # backbone of the baseline; default: the supernet's default subnet (mbv2_elastic: torchvision's
    # MobileNetV2; ofa_mbv3: its largest subnet). E.g. mobilenet_v2 for an mbv2_elastic supernet.
    baseline_backbone: Optional[str] = None
    init_supernet_from_baseline: bool = False  # ENOT: pretrain starts from the baseline checkpoint
    # ENOT's baseline_ckpt: your trained detector (nasdet's or torchvision's checkpoint) is the baseline,
    # mapped into model's detector and evaluated, not trained; fine-tuned when its classes are not the data's
    baseline_checkpoint: Optional[str] = None
    export: bool = True
    classify: bool = False  # DetNAS step 1 first: `nasdet classify` (supernet), then pretrain from its backbone
    # K > 0: after the search, `nasdet diagnose` on K archs (the `diagnose` section's recipe, diagnose.archs
    # replaced by K); its tau table goes into report.md. Cost: K trainings of the diagnose recipe (x2 with
    # diagnose.init [scratch, supernet]) + 1 for diagnose.noise_check
    diagnose: int = Field(0, ge=0)

    @field_validator("diagnose")
    @classmethod
    def _diagnose_archs(cls, k: int) -> int:
        if 0 < k < 3:
            raise ValueError(f"pipeline.diagnose is the number of archs (0: off), at least 3 for a rank correlation, got {k}")
        return k

    @model_validator(mode="after")
    def _checkpoint_is_baseline(self):
        if self.baseline_checkpoint is not None and not self.baseline:
            raise ValueError("pipeline.baseline_checkpoint is the baseline: it needs pipeline.baseline: true")
        if self.classify and self.init_supernet_from_baseline:
            # the supernet would be built from classify's backbone, then overwritten by the baseline's weights
            raise ValueError("pipeline.classify and pipeline.init_supernet_from_baseline both give the supernet its "
                             "starting weights (the classification-trained backbone, the baseline detector); the "
                             "second would overwrite the first: choose one")
        return self


class ReportConfig(Strict):
    """The pipeline's report. ``controls``: beside the found arch, the baseline's own arch (the space's default
    subnet) and ``controls_seeds`` random archs of the same cost (within ``controls_tolerance`` of the found
    arch's cost in the budget's metric, under the budget) are taken from the same supernet and tuned with the
    same recipe, so that the report can tell architecture from training."""

    controls: bool = False
    controls_seeds: int = Field(1, ge=1)  # random archs at the found arch's cost (several give a spread)
    controls_tolerance: float = Field(0.03, gt=0, lt=1)  # relative cost gap allowed for a random control
    # uniform draws costed per random control before taking the nearest (at most search/controls.py's EDGE_DRAWS,
    # 100, when the found arch is at the space's cost edge, where no draw comes near)
    controls_draws: int = Field(1000, gt=0)
    # resamples of the paired bootstrap over val images of each AP difference the report states (0: none); each
    # model's detections are computed again for it (seconds on the demo), and kept while the checkpoints are
    bootstrap: int = Field(1000, ge=0)


class ExperimentConfig(Strict):
    name: str = "experiment"
    work_dir: str = "runs/experiment"
    seed: int = 0
    data: DataConfig
    model: ModelConfig = Field(default_factory=lambda: make_model_config(detector="ssdlite"))
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    cost: CostConfig = CostConfig()
    supernet: SupernetConfig = SupernetConfig()
    search: SearchConfig = SearchConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    tune: TuneConfig = TuneConfig()
    export: ExportConfig = ExportConfig()
    pipeline: PipelineConfig = PipelineConfig()
    classify: Optional[ClassifyConfig] = None
    report: ReportConfig = ReportConfig()
    _source: Optional[str] = PrivateAttr(default=None)  # the config file it was loaded from (load_config)

    def __eq__(self, other: object) -> bool:  # the same settings, wherever each was read from
        if not isinstance(other, ExperimentConfig):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def data_folders(self) -> list[tuple[str, Path]]:
        """(config key, path) of every data set this run reads: ``data`` and the image folder of
        ``classify.root``. No output of the run may go into them (``nasdet.user_data``)."""
        found = self.data.folders()
        if self.classify is not None:
            found.append(("classify.root", Path(self.classify.root)))
        return found

    @model_validator(mode="after")
    def _pipeline_diagnose(self):
        k = self.pipeline.diagnose
        if k and k > self.diagnose.pool:
            raise ValueError(f"pipeline.diagnose ({k}) must be <= diagnose.pool ({self.diagnose.pool})")
        if not k and self.diagnose.archs > self.diagnose.pool:  # (pipeline.diagnose: the default 12 was refused)
            raise ValueError(f"diagnose.pool ({self.diagnose.pool}) must be >= diagnose.archs ({self.diagnose.archs})")
        if self.cost.int8 and self.export.opset < 13:  # (13: nasdet.quantize.INT8_MIN_OPSET) before any training
            raise ValueError(f"export.opset {self.export.opset} is too old for the INT8 file an INT8 latency budget "
                             f"(cost.latency {self.cost.latency}) exports: per-channel INT8 weights need "
                             "export.opset >= 13")
        head = getattr(self.model, "head", None)
        if self.search.strategy == "darts" and head is not None and head.cell_channels == 32 \
                and self.model.input_size <= 128:  # (model.head.genotype's check: the towers come from the search)
            raise ValueError(f"model.head.cell_channels 32 with model.input_size {self.model.input_size}: the searched "
                             "towers' GroupNorm(32) on the 1x1 P7 map normalises single values (zero outputs in the "
                             "search; export and cost of the tuned model fail on one image); use cell_channels >= 64 "
                             "or input_size > 128")
        if k and self.search.strategy == "darts":
            raise ValueError("pipeline.diagnose ranks the subnets of a trained supernet: search.strategy darts (FAD) "
                             "trains none; set pipeline.diagnose: 0")
        self._schedules_within_training()
        if self.supernet.multi_resolution and getattr(self.model, "multiscale_sizes", None):
            # YOLOv3's forward resizes each training batch to a multiscale size, over the step's drawn resolution:
            # the resolutions the search picks from were never trained, and nothing said so
            raise ValueError(f"supernet.multi_resolution trains each step at one of supernet.input_sizes, and "
                             f"model.multiscale_sizes {self.model.multiscale_sizes} would resize every training batch "
                             "to one of its own instead: set model.multiscale_sizes: null (or multi_resolution: false)")
        if self.pipeline.classify and self.supernet.init_from:
            # (as with pipeline.init_supernet_from_baseline) the classify stage's work would be thrown away unsaid
            raise ValueError(f"pipeline.classify and supernet.init_from ({self.supernet.init_from}) both give the "
                             "supernet its starting weights (the classification-trained backbone, that detector); "
                             "the second would overwrite the first: choose one")
        return self


    def _schedules_within_training(self) -> None:
        """A progressive-shrinking phase (or distillation) that starts when the training has ended: its values were
        never trained, yet the pretrain reported them ("smallest") and the search scored them (a 500-epoch recipe
        shortened with --set train.epochs=2, phases left at 80..400)."""
        sections = [("supernet", self.supernet, "supernet.train" if self.supernet.train else "train",
                     self.supernet.train or self.train)]
        if self.classify is not None and self.classify.arch is None:
            sections.append(("classify.supernet", self.classify.supernet,
                             "classify.train" if self.classify.train else "train", self.classify.train or self.train))
        for key, sup, recipe_key, recipe in sections:
            late = [p.epoch for p in sup.schedule if p.epoch >= recipe.epochs]
            restarts = [p for p in sup.schedule if p.lr is not None]
            for p, nxt in zip(restarts, [*(q.epoch for q in restarts[1:]), recipe.epochs]):
                if p.warmup_epochs and p.epoch + p.warmup_epochs >= nxt and p.epoch < recipe.epochs:
                    raise ValueError(f"{key}.schedule: the phase at epoch {p.epoch} warms its lr up over "
                                     f"{p.warmup_epochs} epochs, and its lr runs only to epoch {nxt} (the next phase "
                                     f"with an lr, or {recipe_key}.epochs): it would never reach lr {p.lr}; shorten "
                                     "warmup_epochs")
            if late:
                raise ValueError(f"{key}.schedule: the phase(s) at epoch {', '.join(map(str, late))} start when the "
                                 f"training has ended ({recipe_key}.epochs {recipe.epochs}; epochs count from 0): their "
                                 "values would never be trained, yet the search would score them; scale the phases' "
                                 f"epochs with the training, or train longer (a quick run: {recipe_key}.max_steps cuts "
                                 "it short and keeps the schedule, and says what it leaves untrained)")
            d = sup.distill
            if d.teacher != "none" and d.start_epoch >= recipe.epochs:
                raise ValueError(f"{key}.distill.start_epoch {d.start_epoch} is at or after the training's end "
                                 f"({recipe_key}.epochs {recipe.epochs}): the supernet would never be distilled; lower "
                                 f"it, or set {key}.distill.teacher: none")


# ------------------------------------------------------------------------------------------ load/save
def _family_keys(key: str) -> list[str]:
    return sorted(name for f in FAMILIES if key in f.config.model_fields for name in f.names)


def _format_errors(err: ValidationError, source: str, prefix: tuple = ()) -> str:
    lines = [f"invalid config {source}:"]
    tags = {f.names[0] for f in FAMILIES}
    for e in err.errors():
        loc = (*prefix, *e["loc"])
        if len(loc) > 2 and loc[0] == "model" and loc[1] in tags:  # the union member's tag: not a key
            loc = (loc[0], *loc[2:])
        path = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "union_tag_invalid":
            lines.append(f"  {path}.detector: unknown detector {e['ctx']['tag']!r} (one of {', '.join(DETECTORS)})")
        elif e["type"] == "union_tag_not_found":  # `model.detector: null`, or `model: 3` (pydantic's words named no key)
            got = e.get("input")
            what, shown = ("model.detector", got.get("detector")) if isinstance(got, dict) else ("a mapping", got)
            lines.append(f"  {path}: needs {what}, its detector one of {', '.join(DETECTORS)} (got {shown!r})")
        elif e["type"] == "extra_forbidden":
            owners = _family_keys(str(loc[-1])) if loc[0] == "model" and len(loc) == 2 else []
            hint = f" (a key of detector {' or '.join(owners)})" if owners else ""
            lines.append(f"  {path}: unknown key (not in the schema){hint}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            lines.append(f"  {path}: {msg}{got_s}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


# sections whose ``train`` recipe defaults to the top-level ``train`` when unset
RECIPE_SECTIONS = ("supernet", "tune", "classify")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        parts, value = parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None and i == 1 and p == "train" and parts[0] in RECIPE_SECTIONS and len(parts) > 2:
                # `--set tune.train.max_steps=6` on a config without tune.train changes one key of the recipe the
                # stage trains with, the top-level train; starting from {} gave the built-in defaults' recipe
                top = raw.get("train")
                nxt = node[p] = copy.deepcopy(top) if isinstance(top, dict) else {}
            elif nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML requires unique keys, PyYAML would
    silently keep the last (a second ``epochs:`` or ``train:`` section overriding the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if seen is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (also on line {seen}; YAML keeps only one: remove or "
                        "merge them)", key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely (no tags that build Python objects), refusing duplicate keys. Errors become one
    ConfigError naming ``source``, the problem and its line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None


def load_config(path: str | Path, overrides: list[str] | str | None = None) -> ExperimentConfig:
    """Read, override and validate a config. Errors name the file and the key path. ``overrides``: ``--set``'s
    ``"key.sub=value"`` strings (one may be given alone)."""
    path = Path(path).expanduser()
    if isinstance(overrides, str):  # (a str was read as its characters: "--set 't': expected key.path=value")
        overrides = [overrides] if overrides.strip() else []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                          "save it as UTF-8") from None
    raw = load_yaml(text, f"config {path}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(raw).__name__}")
    raw = expand_home(apply_overrides(raw, overrides or []))
    cfg = validate_config(raw, str(path))
    cfg._source = str(path.absolute())  # the file it is after a chdir too (a notebook's): never rewritten
    return cfg


def expand_home(node: Any) -> Any:
    """Every string that starts with ``~/`` (or is ``~``) as the home folder it names: Python's paths take
    ``~`` literally, so ``work_dir: ~/runs`` made a folder named ``~`` in the current one."""
    if isinstance(node, dict):
        return {k: expand_home(v) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_home(v) for v in node]
    if isinstance(node, str) and (node == "~" or node.startswith("~/")):
        return os.path.expanduser(node)
    return node


def validate_config(raw: dict, source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def as_config(cfg: Any) -> ExperimentConfig:
    """A stage's config: an ``ExperimentConfig`` as it is, a plain mapping (a YAML file's keys) validated as
    ``validate_config`` does; anything else a ``ConfigError`` naming what it got."""
    if isinstance(cfg, ExperimentConfig):
        return cfg
    if isinstance(cfg, dict):
        return validate_config(copy.deepcopy(cfg))
    raise ConfigError(f"a stage takes a config from nasdet.config.load_config(path, overrides) or a dict of its keys, "
                      f"got {type(cfg).__name__}")


def takes_config(stage):
    """The decorated stage function (first argument: the config) also takes a plain dict of the config's keys."""
    @functools.wraps(stage)
    def call(cfg, *args, **kwargs):
        return stage(as_config(cfg), *args, **kwargs)
    return call


def without_start_weights(model_cfg):
    """``model_cfg`` (a ModelConfig) without the backbone's start weights (``pretrained``, ``checkpoint``): for a
    model whose every weight is then loaded from a checkpoint, or whose weights do not matter (its space, its
    cost): building it reads no ImageNet file (nor downloads one) and needs no backbone file that is gone."""
    backbone = model_cfg.backbone.model_copy(update={"checkpoint": None, "pretrained": None})
    return model_cfg.model_copy(update={"backbone": backbone})


def run_without_start_weights(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` whose model is ``without_start_weights``."""
    return cfg.model_copy(update={"model": without_start_weights(cfg.model)})


def config_to_dict(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config (after overrides)."""
    from .files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# The first line of the run record ``WORK_DIR/config.yaml``: a file there without it is not nasdet's to rewrite.
RUN_RECORD_HEADER = "# nasdet's record of the config this run used (after --set, in this work dir); rewritten by nasdet"


def _is_run_record(path: Path) -> bool:
    """``path`` is a run record nasdet wrote: its header, or (written before the header) exactly the resolved
    dump of itself. A config a user keeps in the work dir (comments, defaults left out) is neither."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if text.startswith(RUN_RECORD_HEADER):
        return True
    try:
        raw = yaml.safe_load(text)
        return isinstance(raw, dict) and yaml.safe_dump(config_to_dict(validate_config(raw, str(path))),
                                                        sort_keys=False) == text
    except Exception:  # not YAML, not a config: not ours
        return False


def save_run_record(cfg: ExperimentConfig, path: Path) -> Path:
    """Write the record of what ran, ``path`` (``WORK_DIR/config.yaml``), with ``work_dir`` the folder it is in
    (``--work-dir`` overrides the config's). A file already there that nasdet did not write (the user's own
    config kept in its run folder, another tool's) is left as it is and the record goes to
    ``config.nasdet.yaml`` beside it, and so does a record when it is the config this run was given (rerun
    from its record with ``--set``: the file is not rewritten under the user). Returns the record's path."""
    from .files import write_text_atomic

    raw = config_to_dict(cfg)
    if Path(raw["work_dir"]).resolve() != path.parent.resolve():
        raw["work_dir"] = str(path.parent)
    text = RUN_RECORD_HEADER + "\n" + yaml.safe_dump(raw, sort_keys=False)
    if path.exists():
        given = cfg._source is not None and Path(cfg._source).exists() and path.samefile(cfg._source)
        if given and path.read_text(encoding="utf-8", errors="replace") == text:
            return path  # the record run again as it is
        if given or not _is_run_record(path):  # nasdet never rewrites the config it was given
            path = path.with_name("config.nasdet.yaml")
    write_text_atomic(path, text)
    return path


def read_arch_file(path: Path, key: str) -> Any:
    """The content of the arch file ``path`` given as ``key`` (e.g. ``tune.arch``), JSON or YAML (a superset of
    JSON: a truncated JSON file is reported from the YAML parser); unreadable is one ``ArchError`` line."""
    import json

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ArchError(f"{key} file {path} cannot be read: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return load_yaml(text, f"{key} file {path}")
