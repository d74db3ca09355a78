"""The training loop every stage uses (baseline, supernet pretraining, tuning).

Seeded, resumable (``ckpt/last.pt`` holds model, optimizer, scheduler, AMP scaler, step, epoch, position
in the epoch and RNG states), DDP when started under torchrun, AMP on CUDA, gradient clipping, a rich
progress bar and ``log.jsonl``. Subclasses change what one step trains by overriding ``before_step``
(e.g. activate a sampled subnet) or ``compute_loss`` (e.g. add distillation).
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from torch import nn

from ..config import EvalConfig, ExperimentConfig, TrainConfig, config_to_dict
from ..data.dataset import DetectionDataset, collate_detection
from ..data.imagefolder import ImageFolderSet
from ..threads import govern, loader_workers, set_torch_threads, wait_policy
from ..data.transforms import TrainTransforms, at_train_size, targets_to, to_model_input
from ..files import append_jsonl, remove_leftover_temporaries, trim_jsonl
from ..models.detectors import training_input_size
from ..progress import progress_bar
from ..signals import serve_through_sigterm
from . import dist
from .bn import one_value_per_channel_as
from .checkpoint import (BACKBONE_FILE_KEY, class_record, image_name_hashes, images_record, load_checkpoint,
                         load_model_weights, rng_state, save_checkpoint, set_rng_state)
from .evaluate import evaluate_detector
from .optim import build_optimizer, build_scheduler, clip_grad_norm
from .resume import NOT_TRAINING, TRAINING_SECTIONS, refuse_changed_run, resolved_paths
from ..errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from ..workdir import LAST_CKPT, LOG_FILE, WriterLock, checkpoint_in


class EpochSampler(torch.utils.data.Sampler):
    """Seeded permutation per epoch, sharded over ranks, that can start mid-epoch (for resume)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]  # pad so every rank has the same count
        mine = order[self.rank :: self.world]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class SizedBatchSampler(torch.utils.data.Sampler):
    """``sampler``'s indices in batches, each index paired with the image size its batch's step trains at
    (``DetectionDataset`` items ``(index, size)``): a multi-resolution supernet's loader then resizes each image
    once, straight to its step's size, as OFA's loader does (it draws each batch's size from the batch number),
    where one loader size for every step had the model resize the smaller steps' images a second time.
    ``sizes`` None: every batch at the transforms' own size. With ``seeds`` (``item_seeds``: the loader has
    worker processes) each item also carries the seed its augmentation draws from."""

    def __init__(self, batches: torch.utils.data.BatchSampler, sizes: list[int] | None,
                 seeds: list[list[int]] | None = None):
        self.batches, self.sizes, self.seeds = batches, sizes, seeds

    def __iter__(self):
        for j, batch in enumerate(self.batches):
            if j >= len(self):
                return
            size = self.sizes[j] if self.sizes is not None else None
            if self.seeds is None:
                yield [(i, size) for i in batch]
            else:
                yield [(i, size, seed) for i, seed in zip(batch, self.seeds[j])]

    def __len__(self) -> int:
        return len(self.batches) if self.sizes is None else min(len(self.batches), len(self.sizes))


def item_seeds(seed: int, rank: int, first_step: int, steps: int, batch_size: int) -> list[list[int]]:
    """The augmentation seed of each item of ``steps`` batches from step ``first_step``: a function of the run's
    seed, the process's rank, the step and the item's place in its batch. Worker processes drew from a stream
    seeded per worker at the start of each epoch's loader, so a run resumed mid-epoch augmented its next batches
    as the epoch's first ones, not as the uninterrupted run (whose main-process draws, ``num_workers`` 0, the
    checkpoint's RNG state restores)."""
    base = (seed * 1_000_003 + rank) * 0x9E3779B1
    return [[(base + (first_step + j) * 4099 + k) % 2**63 for k in range(batch_size)] for j in range(steps)]


def _stream_of_record(state: dict) -> str | None:
    """The augmentation stream of a checkpoint written before it was recorded, from the loader workers its config
    asked for (a number: main-process draws at 0, each item seeded with workers); None for ``auto`` (unknown)."""
    workers = ((state.get("config") or {}).get("data") or {}).get("num_workers")
    if isinstance(workers, int) and not isinstance(workers, bool):
        return "item" if workers > 0 else "process"
    return None


def pretrained_note(backbone: str, name: str) -> str:
    """``model.backbone.pretrained`` as the torchvision weights it means and their file (``imagenet`` is
    ``DEFAULT``, which torchvision has moved between releases: the log says which, so the run can be redone)."""
    from pathlib import Path

    from ..models.backbones.pretrained import torchvision_weights

    try:
        weights = torchvision_weights(backbone, name)
    except Exception:  # noqa: BLE001 - an invalid name is refused with its own message where it is loaded
        return f"torchvision's {name} weights"
    alias = f"{name}: " if name.lower() == "imagenet" else ""
    return f"torchvision's {weights} weights ({alias}{Path(weights.url).name})"


def start_note_of(cfg: ExperimentConfig) -> str:
    """How a fresh training run of ``cfg``'s model starts (its backbone's weights), for the trainer's first log
    line and the stage's record."""
    b = cfg.model.backbone
    if b.pretrained:
        return f"backbone from {pretrained_note(b.name, b.pretrained)}"
    if b.checkpoint:
        return f"backbone from {b.checkpoint}"
    return "from scratch"


def resolve_device(pref: str) -> torch.device:
    dist.check_device_available(pref)
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


@dataclass(frozen=True)
class RunSettings:
    """What the training loop reads of a run's config, and nothing more: the recipe, how to evaluate, the
    seed, the data loader workers, and the config to store in each checkpoint (so the model can be rebuilt
    from the checkpoint alone; empty when there is none). ``RunSettings.of(cfg)`` slices a run's config."""

    train: TrainConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    num_workers: int | str = 0  # data.num_workers: a number or "auto"
    # where a fresh run's augmentation draws from (``Trainer.augment_stream``): "item" (each item seeded from its step),
    # "process" (the main process's generator: loading in the main process), "auto" (item with loader workers)
    augment_stream: str = "auto"
    record: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = "train"  # the config key of ``train``, for messages: ``supernet.train`` for a stage's own recipe

    @classmethod
    def of(cls, cfg: ExperimentConfig, recipe: str = "train") -> "RunSettings":
        return cls(train=cfg.train, eval=cfg.eval, seed=cfg.seed, num_workers=cfg.data.num_workers,
                   record=config_to_dict(cfg), recipe=recipe)


# what to look at when a set holds no box (YOLO's label rule is where it usually goes wrong)
CHECK_ANNOTATIONS = ("check its annotations (a YOLO set: each image's label file in the 'labels' folder beside its "
                     "'images' folder)")


def check_scored_val_set(val_set, n: int) -> None:
    """Refuse (DataError) a val set whose first ``n`` images, the ones scored, hold no box (its mAP is undefined)
    or one that is not an image: before training, or before an eval loads its checkpoint."""
    if not any(len(r.boxes) for r in val_set.records[:n]):
        raise DataError(f"val set {val_set.source} has no box in the {n} images it scores: its mAP is undefined; "
                        f"{CHECK_ANNOTATIONS}")
    val_set.check_images_open(n)


class StopAfterStep:
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM while a single process trains: the step under way ends, the
    trainer saves ``last.pt`` and stops (``asked`` names the signal), so a rerun continues from that step; before,
    every step since the last ``ckpt_every_steps`` checkpoint was lost (up to 2000 in the DetNAS recipes). A
    second signal stops at once. Not under torchrun (``enabled`` False): every rank would have to stop at the
    same step to save, so there a signal stops as before and the last checkpoint is where the rerun starts."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.asked: str | None = None
        self.immediate = False  # set while nothing is under way that the signal should wait for (a search's proposal)
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.asked is not None or self.immediate:
            self.asked = self.asked or signal.Signals(signum).name
            raise KeyboardInterrupt
        self.asked = signal.Signals(signum).name

    def __enter__(self) -> "StopAfterStep":
        if self.enabled:
            # (a DataLoader worker sets its own: serve_through_sigterm)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def backbone_parameters_unreached(model: nn.Module, size: int) -> list[str]:
    """Names of the backbone parameters no output of its forward depends on: YOLOv3's MobileNetV2 keeps its last
    1x1 conv (read by no level), a detector on a DetNAS supernet backbone trains its default path only. DDP
    without ``find_unused_parameters`` fails at the second step on them. One eval-mode forward of a blank image
    (no BatchNorm statistic or random stream touched), gradients taken with ``autograd.grad`` (no ``.grad`` set)."""
    body = getattr(model, "backbone", None)
    if not isinstance(body, nn.Module):
        return []
    named = [(n, p) for n, p in body.named_parameters() if p.requires_grad]
    if not named:
        return []
    device = named[0][1].device
    was = body.training
    body.eval()
    try:
        out = body(torch.zeros(1, 3, size, size, device=device))
        outputs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
        reached = [t for t in outputs if torch.is_tensor(t) and t.requires_grad]
        if not reached:
            return []
        grads = torch.autograd.grad(sum(t.float().sum() for t in reached), [p for _, p in named], allow_unused=True)
    finally:
        body.train(was)
    return [n for (n, _), g in zip(named, grads) if g is None]


class Trainer:
    """Train ``model`` on ``train_set`` per ``settings.train``; checkpoints and logs go to ``out_dir``."""

    find_unused_parameters = False  # supernets set True: only the sampled path has gradients
    # the config a resume must keep (train/resume.py); a supernet adds its own section
    resume_sections: tuple[str, ...] = TRAINING_SECTIONS
    resume_ignores: frozenset[str] = NOT_TRAINING
    start_note = "from scratch"  # how a fresh (not resumed) run starts, for the log line

    def __init__(self, settings: RunSettings, model: nn.Module, train_set: DetectionDataset,
                 val_set: DetectionDataset | None, out_dir: str | Path, console: Console | None = None,
                 space_id: str | None = None):
        if not isinstance(settings, RunSettings):
            raise TypeError(f"Trainer takes RunSettings (RunSettings.of(cfg) slices a run's config), "
                            f"not {type(settings).__name__}")
        self.settings = settings
        self.tcfg = settings.train
        self.out_dir = Path(out_dir)
        self.ckpt_dir = checkpoint_in(self.out_dir).parent
        self.console = console or Console()
        self.space_id = space_id
        self.device, self.rank, self.world = dist.init_distributed(self.tcfg.device)
        self.threads = set_torch_threads(self.tcfg.threads)
        self.train_set, self.val_set = train_set, val_set
        if len(train_set) == 0:
            raise DataError(f"training set {train_set.source} has no images")

        self.model = model.to(self.device)
        if isinstance(train_set.transforms, TrainTransforms):  # the loader resizes to the resolution trained at
            self.train_set = at_train_size(train_set, self.train_resolution())
        if self.tcfg.channels_last:  # in place: parameters keep their identity, only their strides change
            self.model.to(memory_format=torch.channels_last)
        if self.world > 1 and self.device.type == "cuda":
            # CPU SyncBN is refused by DDP (see references/ecosystem.md), so only on CUDA.
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ddp_model = self.wrap_for_training(self.model)
        if self.world > 1:
            unreached = [] if self.find_unused_parameters else backbone_parameters_unreached(self.model, self.train_resolution())
            if unreached and dist.is_main():
                self.console.print(f"DDP looks for unused parameters each step: {len(unreached)} backbone parameters "
                                   f"get no gradient (e.g. {unreached[0]})")
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters or bool(unreached),
            )

        bs = self.tcfg.batch_size
        self.sampler = EpochSampler(len(train_set), settings.seed, self.rank, self.world)
        self.steps_per_epoch = max(self.sampler.per_rank // bs, 1)
        self.total_steps = self.steps_per_epoch * self.tcfg.epochs
        # listed once: walking the module tree for them each step took ~1 ms of a demo step's gradient clip
        self.params = list(self.model.parameters())
        self.optimizer = build_optimizer(self.model, self.tcfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.tcfg.scheduler, self.total_steps)
        self.use_amp = self.tcfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._resumed: bool | None = None
        self.lock = WriterLock(self.out_dir)
        self._resume_rng: dict | None = None
        self.augment_stream: str | None = None  # set by the first loader, or by the checkpoint resumed

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *args, recipe: str = "train", **kwargs) -> "Trainer":
        """The trainer of a run's config: ``cls(RunSettings.of(cfg, recipe), *args, **kwargs)``."""
        return cls(RunSettings.of(cfg, recipe), *args, **kwargs)

    # ----------------------------------------------------------------------------- hooks for stages
    def wrap_for_training(self, model: nn.Module) -> nn.Module:
        """The module whose forward computes the training losses (DDP wraps this one)."""
        return model

    def train_resolution(self) -> int:
        """The largest input size a training step resizes images to (the loader resizes to it)."""
        return training_input_size(self.model)

    def step_image_sizes(self, first_step: int, count: int) -> list[int] | None:
        """The image size of each of ``count`` steps from ``first_step`` when steps train at different sizes
        (the loader then resizes each batch to its step's); None: every step at ``train_resolution``."""
        return None

    def before_step(self, step: int) -> None:
        """Called before each step (supernets activate a sampled subnet here)."""

    def compute_loss(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.ddp_model(images, targets)

    def extra_state(self) -> dict:
        """Stage-specific state to checkpoint (plain tensors/containers)."""
        return {}

    collate = staticmethod(collate_detection)  # how the loader batches items (classification stacks them)

    def to_device(self, images, targets) -> tuple[list[torch.Tensor], list[dict]]:
        """A loader batch as the model's training forward takes it, on the device."""
        return to_model_input(images, self.device), targets_to(targets, self.device)

    def check_train_set(self) -> None:
        """Warn about a training set the model cannot learn from (called once, on the main process)."""
        if not any((r.iscrowd == 0).any() for r in self.train_set.records):
            self.console.print(Text(
                f"warning: training set {self.train_set.source} has no annotations (no box in its "
                f"{len(self.train_set)} images): the detector will learn to find nothing; {CHECK_ANNOTATIONS}",
                style="yellow"), soft_wrap=True)

    def check_val_set(self) -> None:
        """Refuse, before training, a val set whose scored images hold no box (its mAP is undefined) or one
        that is not an image: these errors used to come after the last step (every rank checks, so none waits
        for another)."""
        if self.val_set is None or not self.val_images:
            return
        check_scored_val_set(self.val_set, self.val_images)

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "processes": dist.world_size(),  # the batch is per process: another count is another schedule
            "rng": rng_state(),
            "augment_stream": self.augment_stream,
            "config": dict(self.settings.record),
            "paths": resolved_paths(self.settings.record),
            "space_id": self.space_id,
            "classes": class_record(self.train_set),
            **self._images_trained_on(),
            "extra": {**self.extra_state(), **({"starts": self.starts} if self.starts else {})},
        }

    def _images_trained_on(self) -> dict:
        """The checkpoint's record of the training images (and a supernet's name hashes, which the search checks
        its split against), computed once: the set does not change while a run trains, and a checkpoint is saved
        every ckpt_every_steps (hashing COCO's 118k names each time)."""
        if not hasattr(self, "_trained_on"):
            self._trained_on = {"train_images": images_record(self.train_set)}
            if self.space_id is not None and hasattr(self.train_set, "records"):  # a supernet's
                self._trained_on["train_image_hashes"] = image_name_hashes(self.train_set)
        return self._trained_on

    def stop_saved(self, stop: "StopAfterStep") -> None:
        """Save ``last.pt`` at the step reached, say so, and stop (``StopAfterStep`` was asked)."""
        self.save()
        self.console.print(f"{stop.asked}: stopped after step {self.step}, saved in "
                           f"{escape(str(self.ckpt_dir / LAST_CKPT))}; the same command continues from it (a second "
                           "signal stops at once, losing the steps since the last checkpoint)")
        raise KeyboardInterrupt

    def save(self, name: str = LAST_CKPT) -> None:
        # every rank's random streams (its own: Faster R-CNN's RPN / RoI samplers draw a data-dependent count from
        # them): with rank 0's alone, each rank of a resumed torchrun run went on with rank 0's, and the run with
        # other proposals than the uninterrupted one (290 of 342 weights apart)
        streams = dist.all_gather_objects(rng_state()) if self.world > 1 else None
        if dist.is_main():
            state = self.state_dict()
            if streams is not None:
                state["rng_per_rank"] = streams
            save_checkpoint(state, self.ckpt_dir / name)
        dist.barrier()

    @property
    def final_step(self) -> int:
        """The step training stops at (``train.max_steps`` cuts it short); a stage whose record reached it is done."""
        return min(self.total_steps, self.tcfg.max_steps or self.total_steps)

    def prepare(self) -> bool:
        """Take the stage folder's writer lock (under torchrun: rank 0) and resume from ``ckpt/last.pt`` if
        there is one (once); errors before anything is written. ``run`` releases the lock."""
        if self._resumed is None:
            if dist.is_main():
                self.lock.acquire()
                remove_leftover_temporaries(self.ckpt_dir)  # a checkpoint half-written by a killed run
            try:
                self._resumed = self.try_resume()
            except BaseException:
                self.lock.release()
                raise
        return self._resumed

    # the files the weights started from, {config key: {path, sha256}} (``files_by_content``): kept in every
    # checkpoint and compared on a rerun, since a start file is read only at a fresh start (a backbone.pt trained
    # again, another file at the path: the run started from other weights)
    starts: dict | None = None

    def resume_ignored(self, state: dict) -> frozenset[str]:
        """The config keys a resume onto checkpoint ``state`` does not compare (``resume_ignores``)."""
        # a backbone file recorded in both runs' starts is compared by its bytes (_check_starts), not its path:
        # `nasdet classify`'s backbone.pt of a work dir moved or renamed since is the same start
        key = BACKBONE_FILE_KEY
        both = key in (self.starts or {}) and key in ((state.get("extra") or {}).get("starts") or {})
        return frozenset(self.resume_ignores) | ({key} if both else set())

    def _check_starts(self, was: dict | None) -> None:
        """Refuse a resume whose start files (``starts``) are other bytes than the checkpoint's run started from;
        keep the checkpoint's record of them (a start file gone since is no longer needed)."""
        if not was:
            return
        for key, now in (self.starts or {}).items():
            before = was.get(key)
            if before and before.get("sha256") != now["sha256"]:
                raise CheckpointError(
                    f"{checkpoint_in(self.out_dir)} was trained from {key} {before.get('path')} (sha256 "
                    f"{str(before.get('sha256'))[:12]}); that start is now {now['path']} (sha256 {now['sha256'][:12]}), "
                    f"another file or one trained again since: delete {self.out_dir} to train from it")
        self.starts = was

    def try_resume(self) -> bool:
        path = checkpoint_in(self.out_dir)
        if not path.is_file():
            if dist.is_main():  # a run killed before its first checkpoint: its steps are logged again from 1
                trim_jsonl(self.out_dir / LOG_FILE, "step", 0)
            return False
        state = load_checkpoint(path, space_id=self.space_id)
        refuse_changed_run(path, state.get("config"), self.settings.record, self.resume_sections,
                           self.resume_ignored(state), state.get("paths"), self.settings.recipe)
        then, now = state.get("train_images"), self._images_trained_on()["train_images"]
        if then and now and then != now and state.get("step", 0) < (state.get("total_steps") or 0):
            # (another order or set of images with the same step count resumed silently, and the checkpoint then
            # recorded the new set: the supernet's search split check passed on images it had trained on)
            raise CheckpointError(
                f"{path} was training on {then['count']} images, and the training set now gives {now['count']} other "
                "ones (images added, removed, renamed or reordered since, or another data.search_fraction / "
                "split_seed): a resumed run would not train as the interrupted one did; restore the training set, or "
                "delete the checkpoint to train from the start")
        load_model_weights(self.model, state, source=str(path))
        if state.get("total_steps") != self.total_steps:
            was = state.get("processes")
            saved_final = min(state.get("total_steps") or 0, self.tcfg.max_steps or state.get("total_steps") or 0)
            if was is not None and was != dist.world_size() and state.get("total_steps") and state["step"] >= saved_final:
                # finished under another process count (torchrun): done, as README's recipes rely on (a one-process
                # `nasdet pipeline` after torchrun stages); its schedule ended there, nothing is trained further
                self.total_steps = state["total_steps"]
                return self._resume_from(state)
            if was is not None and was != dist.world_size():
                raise CheckpointError(
                    f"{path} was written by {was} process(es) (train.batch_size per process), this run has "
                    f"{dist.world_size()}: {state.get('total_steps')} total steps against {self.total_steps}; rerun "
                    f"with {was} process(es) (torchrun --nproc_per_node {was}), or a new work dir")
            raise CheckpointError(
                f"{path} was written for {state.get('total_steps')} total steps, this config gives {self.total_steps} "
                "(epochs, batch size, data or number of processes changed); use a new work dir or delete the checkpoint"
            )
        return self._resume_from(state)

    def _resume_from(self, state: dict) -> bool:
        """The optimizer, schedule, step and random streams of a checkpoint whose weights are loaded."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        per_rank = state.get("rng_per_rank")
        # this rank's own streams (a checkpoint of another process count is refused before, or finished)
        self._resume_rng = per_rank[self.rank] if per_rank and len(per_rank) == self.world else state["rng"]
        set_rng_state(self._resume_rng)  # (again when run() starts: a stage may seed between prepare() and run())
        self.augment_stream = state.get("augment_stream") or _stream_of_record(state)
        self._check_starts((state.get("extra") or {}).get("starts"))
        self.load_extra_state(state.get("extra", {}))
        if dist.is_main():  # the steps logged after the checkpoint before a kill are logged again
            trim_jsonl(self.out_dir / LOG_FILE, "step", self.step)
        return True

    # ------------------------------------------------------------------------------------- logging
    def log(self, record: dict) -> None:
        if dist.is_main():
            append_jsonl(self.out_dir / LOG_FILE, record)

    # ---------------------------------------------------------------------------------------- run
    def _loader(self) -> torch.utils.data.DataLoader:
        # The loader's own generator: creating an iterator draws a seed from it, and a draw from the global
        # one would shift the augmentations of a run resumed mid-epoch away from the uninterrupted run's.
        bs = self.tcfg.batch_size
        # drop_last: no last batch of one image (BatchNorm needs two)
        batches = torch.utils.data.BatchSampler(self.sampler, bs, drop_last=self.sampler.per_rank >= bs)
        # batch j of this loader is step self.step + j (a resumed epoch starts at its next batch)
        sizes = self.step_image_sizes(self.step, len(batches)) \
            if isinstance(self.train_set.transforms, TrainTransforms) else None
        workers = loader_workers(self.settings.num_workers, self.device)
        seedable = isinstance(self.train_set, (DetectionDataset, ImageFolderSet))
        if self.augment_stream is None:  # a fresh run (or a checkpoint from before the record)
            chosen = self.settings.augment_stream
            self.augment_stream = chosen if chosen != "auto" else "item" if workers and seedable else "process"
        elif self.augment_stream == "process" and workers:
            # a run that started loading in the main process draws from that process's stream to its end: resumed
            # with loader workers (data.num_workers or its auto on another core share) it trained otherwise
            workers = 0
            if not getattr(self, "_stream_said", False) and dist.is_main():
                self.console.print("loading in the main process, as this run started (data.num_workers "
                                   f"{self.settings.num_workers} would start worker processes): its augmentation "
                                   "draws from the main process's random stream")
                self._stream_said = True
        seeds = item_seeds(self.settings.seed, self.rank, self.step, len(batches), bs) \
            if self.augment_stream == "item" and seedable else None
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=batches if sizes is None and seeds is None else SizedBatchSampler(batches, sizes, seeds),
            generator=torch.Generator().manual_seed(self.settings.seed * 1_000_003 + self.epoch),
            num_workers=workers, collate_fn=self.collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            worker_init_fn=serve_through_sigterm if workers else None,
        )

    def train_step(self, images, targets) -> dict[str, float]:
        """One optimizer step: ``forward_backward`` (one or several subnets), clip, step, schedule."""
        images, targets = self.to_device(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        with one_value_per_channel_as(self._batch_of_one):
            stats = self.forward_backward(images, targets)
        if self.tcfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            clip_grad_norm(self.params, self.tcfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return stats

    def _batch_of_one(self, shape: str) -> Exception:
        key, bs = f"{self.settings.recipe}.batch_size", self.tcfg.batch_size
        why = ("BatchNorm in training needs more than one value per channel, which one image on a 1x1 feature map "
               f"does not give at this input size (BatchNorm input {shape})")
        if bs == 1:
            return ConfigError(f"{key}: 1: {why}; set {key} to 2 or more (torchvision's detection references train "
                               "with 2 images per GPU)")
        return DataError(f"training set {self.train_set.source} has {len(self.train_set)} image(s), "
                         f"{self.sampler.per_rank} per process, so a batch holds 1 image ({key} {bs}): {why}; "
                         "add training images")

    def forward_backward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, float]:
        with self.autocast():
            losses = self.compute_loss(images, targets)
        return self.backward(losses)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp)

    def backward(self, losses: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
        """Backward of the summed ``losses`` (gradients accumulate); stops on a non-finite loss."""
        loss = sum(losses.values())
        finite = torch.isfinite(loss.detach()).float()
        if dist.world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            terms = {k: float(v.detach()) for k, v in losses.items()}
            raise TrainingDiverged(
                f"loss is not finite at step {self.step} (epoch {self.epoch}){' ' + prefix if prefix else ''}: {terms}. "
                f"The last good checkpoint {self.ckpt_dir / 'last.pt'} is kept; lower train.optimizer.lr, "
                "raise train.scheduler.warmup_steps or set train.grad_clip, then rerun to resume from it."
            )
        self.scaler.scale(loss).backward()
        out = {prefix + k: float(v.detach()) for k, v in losses.items()}
        out[prefix + "loss"] = float(loss.detach())
        return out

    def describe_metrics(self, metrics: dict) -> str:
        return f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}"

    @property
    def val_images(self) -> int:
        """How many val images ``evaluate`` scores (``eval.max_images`` caps them): what a record must state."""
        n = len(self.val_set) if self.val_set is not None else 0
        return min(n, self.settings.eval.max_images) if self.settings.eval.max_images else n

    def scored_val(self):
        """The ``val_images`` images ``evaluate`` scores: the first ones."""
        return self.val_set.subset(range(self.val_images))

    def evaluate(self) -> dict | None:
        """Val metrics with per-class AP (``metrics.json`` shows which class drags the mean; it costs nothing
        beside COCOeval's run)."""
        if self.val_set is None:
            return None
        val, e = self.scored_val(), self.settings.eval
        return evaluate_detector(self.model, val, self.device, e.batch_size, self.settings.num_workers, per_class=True)

    def evaluate_as_saved(self) -> dict | None:
        """``evaluate`` of the model a checkpoint holds: rank 0's BatchNorm statistics on every rank first (the
        evaluation is sharded over the ranks; without SyncBatchNorm, on CPU, each rank's forwards updated its own
        statistics, and half the val images were scored with rank 1's, which no checkpoint holds)."""
        dist.broadcast_buffers(self.model)
        return self.evaluate()

    def run(self) -> dict:
        """Train to the end (resuming from ``ckpt/last.pt`` if present); returns the final val metrics."""
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict:
        torch.manual_seed(self.settings.seed)
        self.check_val_set()
        if isinstance(self.train_set, DetectionDataset):  # every rank: none waits for another
            self.train_set.check_unopened_images()
        resumed = self.prepare()
        if resumed:  # the random streams where the interrupted run left them (augmentations continue as they would have)
            set_rng_state(self._resume_rng)
        limit = self.final_step
        if dist.is_main():
            what = f"resumed at step {self.step}" if resumed else escape(self.start_note)  # may name a path
            self.console.print(
                f"[bold]train[/] {escape(str(self.out_dir))}: {len(self.train_set)} images, {self.steps_per_epoch} "
                f"steps/epoch x {self.tcfg.epochs} epochs, batch {self.tcfg.batch_size} x {self.world} process(es) on "
                f"{self.device}, {what}"
            )
            if self.device.type == "cpu":
                self.console.print(f"threads: up to {self.threads} torch threads, fewer while other processes take "
                                   f"this machine's cores; {wait_policy()}", soft_wrap=True)
            self.check_train_set()
        progress = progress_bar(
            self.console, TextColumn("[bold blue]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not dist.is_main(),
            label=f"train {self.out_dir.name} step", every=self.tcfg.log_every_steps,
            fields=lambda f: f"epoch {f['epoch']}, loss {f['loss']:.3f}, {f['ips']:.1f} img/s",
        )
        self.model.train()
        t_log, n_img_log = time.perf_counter(), 0
        ema_loss = None
        with progress, StopAfterStep(self.world == 1) as stop:
            task = progress.add_task("", total=limit, completed=self.step, epoch=self.epoch, loss=float("nan"), ips=0.0)
            while self.step < limit and self.epoch < self.tcfg.epochs:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch * self.tcfg.batch_size)
                batches = iter(self._loader())
                while True:
                    try:
                        images, targets = next(batches)
                    except StopIteration:
                        break
                    except Exception:
                        if stop.asked is None:
                            raise
                        self.stop_saved(stop)  # its workers took the Ctrl-C too: no batch comes
                    govern()
                    self.before_step(self.step)
                    stats = self.train_step(images, targets)
                    self.step += 1
                    self.batch_in_epoch += 1
                    n_img_log += len(images) * self.world
                    ema_loss = stats["loss"] if ema_loss is None else 0.9 * ema_loss + 0.1 * stats["loss"]
                    if self.step % self.tcfg.log_every_steps == 0 or self.step == limit:
                        dt = time.perf_counter() - t_log
                        ips = n_img_log / max(dt, 1e-9)
                        self.log({"step": self.step, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                                  "img_per_s": round(ips, 2), "threads": torch.get_num_threads(), "time": round(time.time(), 1), **{k: round(v, 5) for k, v in stats.items()}})
                        progress.update(task, ips=ips)
                        t_log, n_img_log = time.perf_counter(), 0
                    progress.update(task, completed=self.step, epoch=self.epoch, loss=ema_loss)
                    if stop.asked:
                        self.stop_saved(stop)
                    if self.step % self.tcfg.ckpt_every_steps == 0:
                        self.save()
                    if self.step >= limit:
                        break
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if self.tcfg.keep_epoch_ckpts:
                        self.save(f"epoch_{self.epoch}.pt")
                    if self.tcfg.eval_every_epochs and self.epoch % self.tcfg.eval_every_epochs == 0 \
                            and self.epoch < self.tcfg.epochs:
                        metrics = self.evaluate_as_saved()
                        if metrics is not None:
                            self.log({"step": self.step, "epoch": self.epoch, "eval": metrics})
                            self.console.print(f"epoch {self.epoch}: {self.describe_metrics(metrics)}")
        self.save()
        metrics = self.evaluate_as_saved()
        if metrics is not None:
            self.log({"step": self.step, "epoch": self.epoch, "eval": metrics})
        return metrics or {}
