"""A resume is onto the same run: the part of a run's config that decides what the weights become is kept in
every checkpoint (the whole resolved config is), and a rerun whose part differs is refused, with the keys that
differ, before anything is written. The rest may change between runs: where and how often to log and
checkpoint, devices and threads, evaluation and post-processing, and ``train.max_steps`` (a longer run of the
same recipe is a resume). Data paths and the backbone's checkpoint are compared as the files they name
(``resolved_paths``): the same file through a symlink or another relative path is the same run; the same
relative path from another folder is when it holds the same data (a work dir copied with its data to another
clone or machine), or the recorded one is gone. ImageNet weights are compared as the torchvision weights their name
means (``imagenet`` is ``IMAGENET1K_V2`` for MobileNetV3-Large)."""
from __future__ import annotations

import filecmp
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ResumeMismatch

# what the weights of every trainer depend on
TRAINING_SECTIONS = ("seed", "data", "model", "train")
# keys inside those sections that do not change the weights
NOT_TRAINING = frozenset({
    "data.val", "data.num_workers", "data.cache_mb", "data.check_files", "data.search_fraction", "data.split_seed",
    "model.score_thresh", "model.nms_thresh", "model.detections_per_img", "model.topk_candidates",
    "train.device", "train.threads", "train.amp", "train.channels_last", "train.ckpt_every_steps", "train.keep_epoch_ckpts",
    "train.eval_every_epochs", "train.log_every_steps", "train.max_steps",
})


# config keys naming files and folders the weights come from (the val set does not change them)
PATH_KEYS = ("data.train.annotations", "data.train.images", "data.train.root", "data.train.labels",
             "data.data_yaml", "model.backbone.checkpoint")
PRETRAINED_KEY = "model.backbone.pretrained"


def _resolve(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.realpath(os.path.expanduser(value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [_resolve(v) for v in value]
    return value


def resolved_paths(record: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: absolute path, links resolved}`` of the paths (``PATH_KEYS``) in a run's config: kept with each
    checkpoint (as ``paths``), so a resume compares the files, whatever folder it is started from."""
    flat = flatten(record)
    return {key: _resolve(flat[key]) for key in PATH_KEYS if flat.get(key) is not None}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def training_changes(saved: Mapping[str, Any], current: Mapping[str, Any], sections: Iterable[str],
                     ignored: Iterable[str] = NOT_TRAINING, saved_paths: Mapping[str, Any] | None = None) -> list[str]:
    """``key: old -> new`` for each key under ``sections`` (top-level or dotted: ``search.darts``) and not under
    ``ignored`` whose value differs. A key the saved config does not have (written before the key existed) is
    not compared. Paths (``PATH_KEYS``) differ when the files they name do: as ``saved_paths``
    (``resolved_paths`` of the saved run) recorded them, or, for a checkpoint without them, as both strings
    resolve from the current folder."""
    def within(key: str, prefixes: Iterable[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    sections, ignored = tuple(sections), tuple(ignored)
    old, new = flatten(saved), flatten(current)
    changes, filled = [], None
    for key in sorted(new):
        if not within(key, sections) or within(key, ignored):
            continue
        if key not in old:  # written before the key existed: it ran as the key's default does (new keys keep the
            # old behaviour by default); set otherwise now, the run would change mid-way (frozen_stages: 1 on an
            # old R-50 run froze its stem from the resumed step on, without a word)
            filled = filled if filled is not None else _with_defaults(saved)
            if key in filled and filled[key] != new[key]:
                changes.append(f"{key}: {filled[key]} (not recorded: the default) -> {new[key]}")
            continue
        if key in PATH_KEYS and new[key] is not None:
            was = saved_paths[key] if saved_paths and key in saved_paths else _resolve(old[key])
            now = _resolve(new[key])
            if was != now:
                if old[key] == new[key] and _same_data(was, now):  # the run and its data copied or moved together
                    continue
                moved = "" if old[key] != new[key] else " (the same relative path, from another folder, other data)"
                changes.append(f"{key}: {was} -> {now}{moved}")
        elif key == PRETRAINED_KEY and old[key] and new[key] and old[key] != new[key]:
            if _weights_of(old.get("model.backbone.name"), old[key]) != _weights_of(new.get("model.backbone.name"), new[key]):
                changes.append(f"{key}: {old[key]} -> {new[key]}")
        elif _entries_without_new_keys(new[key], old[key]) != old[key]:
            changes.append(f"{key}: {old[key]} -> {new[key]}")
    return changes


def _with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The flat record ``saved`` as the config schema fills it now (its family's defaults, nested sections' own,
    what validators derive): the values a key the record lacks ran with, a new key keeping the old behaviour by
    default. {} when the record does not validate now (a key since removed): its missing keys are not compared."""
    from pydantic import ValidationError

    from ..config import ExperimentConfig

    try:
        return flatten(ExperimentConfig.model_validate(dict(saved)).model_dump(mode="json"))
    except (ValidationError, ValueError, TypeError):
        return {}


def _entries_without_new_keys(new: Any, old: Any) -> Any:
    """``new`` as a config written before its list entries' newest keys would hold it (``supernet.schedule``'s
    phases before ``lr``): such a key is dropped while it is unset (None, 0, False, empty), so a run resumed after
    an upgrade is not refused for keys it never knew; a key set is kept, and compared."""
    if not (isinstance(new, list) and isinstance(old, list) and len(new) == len(old)):
        return new
    out = []
    for n, o in zip(new, old):
        if isinstance(n, Mapping) and isinstance(o, Mapping):
            n = {k: v for k, v in n.items() if k in o or (v not in (None, 0, False) and v != [] and v != {})}
        out.append(n)
    return out


def _same_data(was: Any, now: Any) -> bool:
    """Whether the data a run recorded at ``was`` (resolved then) is what ``now`` holds, for a relative path
    met again from another folder (a work dir copied to another clone or machine with its data): yes when
    ``was`` is gone (the run moved; nothing is left to tell them apart), a file of the same bytes, or a folder
    of the same file names and sizes. Lists (several image folders) pair by position."""
    if isinstance(was, list) or isinstance(now, list):
        return isinstance(was, list) and isinstance(now, list) and len(was) == len(now) and \
            all(_same_data(a, b) for a, b in zip(was, now))
    if not isinstance(was, str) or not isinstance(now, str):
        return False
    if not os.path.exists(was):
        return True
    if os.path.isfile(was) and os.path.isfile(now):
        return filecmp.cmp(was, now, shallow=False)
    if os.path.isdir(was) and os.path.isdir(now):
        return _listing(was) == _listing(now)
    return False


def _listing(folder: str) -> set[tuple[str, int]]:
    """(path under ``folder``, size) of every file below it."""
    out = set()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                out.add((os.path.relpath(path, folder), os.path.getsize(path)))
            except OSError:  # a broken link
                out.add((os.path.relpath(path, folder), -1))
    return out


def _weights_of(backbone: str | None, name: str) -> str:
    """The torchvision weights a ``model.backbone.pretrained`` name means (``imagenet`` = the network's DEFAULT),
    as ``Enum.MEMBER``; the name itself when it means none."""
    from ..models.backbones.pretrained import torchvision_weights  # torchvision: only where a run resumes

    try:
        return str(torchvision_weights(backbone or "", name))
    except ConfigError:  # not a weights name of that backbone: compared as written
        return name


def refuse_changed_run(checkpoint: Path, saved: Mapping[str, Any] | None, current: Mapping[str, Any],
                       sections: Iterable[str], ignored: Iterable[str] = NOT_TRAINING,
                       saved_paths: Mapping[str, Any] | None = None, recipe: str = "train") -> None:
    """Raise ResumeMismatch when ``current`` would not continue the run ``checkpoint`` was trained with
    (``saved_paths``: the checkpoint's ``paths``). ``recipe``: the config key the run's ``train`` section came
    from (``supernet.train``, ``tune.train``), named in the message instead."""
    if not saved or not current:  # a checkpoint from before configs were kept, or a trainer without a config
        return
    changes = training_changes(saved, current, tuple(sections), ignored, saved_paths)
    if recipe != "train":  # a stage's own recipe, put in place of train: the key the user changed is its
        changes = list(dict.fromkeys(recipe + c[len("train"):] if c.startswith("train.") else c for c in changes))
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ResumeMismatch(
            f"{checkpoint} was trained with another config ({shown}): rerun with the config it was trained "
            f"with to continue, or delete {checkpoint.parent.parent} (or choose another --work-dir) to start over")


def model_drift(saved_config: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """``model.key: old -> new`` for the model settings a (supernet) checkpoint was trained with that a run's
    config (``config_to_dict``) changed: its space id covers the choices only, so a search or tune config that
    drifted from the pretrain config (other anchors, levels) used its weights for what they were not trained
    for. The backbone's start files and the input size (the space's resolutions decide) are not compared."""
    ignored = NOT_TRAINING | {"model.backbone.checkpoint", PRETRAINED_KEY, "model.input_size"}
    return training_changes(saved_config or {}, current, ("model",), ignored)
