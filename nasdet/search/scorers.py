"""What scoring candidates needs, for the search stage and ``nasdet diagnose``: the trained supernet of a
work dir with the scorer ``nasdet search`` uses, or (``search.scorer: <proxy>``) the untrained supernet
with a zero-cost proxy as the scorer."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from ..config import ExperimentConfig, config_to_dict
from ..data.build import build_datasets
from ..errors import ConfigError, DataError
from ..models.supernet import build_supernet
from ..space import SearchSpace
from ..threads import set_torch_threads
from ..train.checkpoint import image_name_hashes, images_record, load_checkpoint, load_model_weights, refuse_other_classes, unfinished_at
from ..train.resume import model_drift
from ..train.trained import run_without_start_weights
from ..workdir import WorkDir
from .scoring import cached_scorer, score_arch


@dataclasses.dataclass
class TrainedSupernet:
    """What scoring candidates needs: the supernet with its trained weights, its space, the search split,
    the BN calibration set (the supernet's training split, no augmentation), the device, and ``scorer``
    (``arch -> metrics``, exactly as ``nasdet search`` scores: BN recalibrated, COCO metrics, cached);
    ``checkpoint`` and its loaded ``state`` (None when a zero-cost proxy scores at scratch init)."""

    model: Any
    space: SearchSpace
    search_set: Any
    calib_set: Any
    device: Any
    scorer: Callable[[Mapping], dict]
    checkpoint: Path | None = None
    state: dict | None = None
    untrained: Any = None  # the same supernet freshly initialised: scratch inits come from it (diagnose sets it)
    supernet_sha256: str | None = None  # the checkpoint's content hash (diagnose keys its plan and summary on it)


def load_trained_supernet(cfg: ExperimentConfig, work_dir: str | Path | WorkDir | None = None,
                          console: Console | None = None) -> TrainedSupernet:
    """The trained supernet of ``work_dir/supernet`` (refused if written for another space) and its scorer;
    warns on ``console`` when its pretraining stopped before its planned steps."""
    import torch

    from ..train.loop import resolve_device

    s = cfg.search
    w = work_dir if isinstance(work_dir, WorkDir) else WorkDir.of(cfg, work_dir)
    ckpt = w.supernet.require_checkpoint()
    torch.manual_seed(cfg.seed)
    set_torch_threads(cfg.train.threads)
    data = build_datasets(cfg, need=("search", "val") if s.score_on == "val" else ("search",))
    search_set = data["val"] if s.score_on == "val" else data["search"]
    if len(search_set) == 0:
        raise ConfigError("the search split is empty: set data.search_fraction > 0 (and pretrain with it)")
    search_set = search_set.first(s.max_images)
    calib_set = data["supernet_train"].with_transforms(None)
    # every weight comes from the checkpoint: the backbone's ImageNet file is not read again
    model, space = build_supernet(run_without_start_weights(cfg), search_set.num_classes)
    state = load_checkpoint(ckpt, space_id=space.space_id)
    refuse_other_classes(ckpt, state, search_set.classes, "the supernet", "search the data it was pretrained on "
                         "(its classes in that order), or pretrain on this data")
    if s.score_on != "val":
        refuse_moved_split(ckpt, state, data["supernet_train"], data["search"], w.supernet.root)
    load_model_weights(model, state, source=str(ckpt))
    warn_model_drift(state, cfg, f"the supernet {ckpt}", "scores", console)
    unfinished = unfinished_at(state)
    if unfinished is not None:
        (console or Console()).print(Text(
            f"warning: the supernet {ckpt} stopped at step {unfinished[0]} of {unfinished[1]}: its pretraining did "
            "not finish, so its scores rank archs less reliably; rerun `nasdet pretrain` to finish it",
            style="yellow"), soft_wrap=True)
    device = resolve_device(cfg.train.device)
    model.to(device).eval()
    scorer = cached_scorer(functools.partial(
        score_arch, model, space, search_set=search_set, calib_set=calib_set, device=device,
        recalib_batches=s.recalib_batches, batch_size=s.batch_size, num_workers=cfg.data.num_workers, seed=cfg.seed))
    return TrainedSupernet(model, space, search_set, calib_set, device, scorer, ckpt, state)


def refuse_moved_split(ckpt: Path, state: Mapping, supernet_train, search_split, stage_dir: Path) -> None:
    """DataError when the supernet trained on other images than the training split now gives it (its record, from
    checkpoints that keep one): the split is by position, so images added to or removed from train since pretraining
    put images the supernet trained on into the "held-out" search split (8 of 11 after adding 3 images to a YOLO
    folder), and candidates were ranked on data the shared weights fit."""
    import torch

    then, now = state.get("train_images"), images_record(supernet_train)
    if not then or not now or then == now:
        return
    trained = state.get("train_image_hashes")
    if trained is not None:  # only an image it trained on matters (a lowered data.search_fraction holds out fewer)
        overlap = int(torch.isin(image_name_hashes(search_split), trained).sum())
        if not overlap:
            return
        held = f"{overlap} of the {len(search_split)} images of the search split"
    else:
        held = "images"
    raise DataError(
        f"the supernet {ckpt} was pretrained on {then['count']} training images, and the training set now splits "
        f"into {now['count']} other ones (images added, removed or renamed since, or another data.search_fraction / "
        f"data.split_seed: the split is by position), so {held} the supernet trained on would score candidates: "
        f"restore the training set and split as they were, or pretrain again on these (delete {stage_dir})")


def warn_model_drift(state: Mapping, cfg: ExperimentConfig, what: str, use: str, console: Console | None) -> None:
    """Warn when the model settings ``state`` (a checkpoint) was trained with differ from ``cfg``'s
    (``resume.model_drift``): ``what`` (e.g. the supernet X) then ``use``s (scores, tunes) another model."""
    drift = model_drift(state.get("config"), config_to_dict(cfg))
    if drift:
        (console or Console()).print(Text(
            f"warning: {what} was trained with other model settings than this config's ({'; '.join(drift[:4])}"
            f"{'; ...' if len(drift) > 4 else ''}): it {use} with weights trained for those; use the pretrain "
            "config's model section", style="yellow"), soft_wrap=True)


def proxy_scorer_context(cfg: ExperimentConfig) -> TrainedSupernet:
    """For ``search.scorer: <proxy>``: the config's supernet, untrained (only its subnets' shapes and
    costs are used; each candidate is scored at its own scratch init), and ``scorer`` = ``{proxy: score}``."""
    import torch

    from .proxies import proxy_batch, proxy_score

    name = cfg.search.scorer
    torch.manual_seed(cfg.seed)
    set_torch_threads(cfg.train.threads)
    data = build_datasets(cfg, need=("search",))
    model, space = build_supernet(cfg, data["search"].num_classes)
    model.eval()
    batch = proxy_batch(data["supernet_train"].with_transforms(None), cfg.diagnose.proxy_batch_size, cfg.seed) \
        if name == "grad_norm" else ([], [])
    scorer = cached_scorer(lambda arch: {name: proxy_score(name, model, space, arch, batch[0], batch[1], seed=cfg.seed)})
    return TrainedSupernet(model, space, data["search"], None, torch.device("cpu"), scorer)
