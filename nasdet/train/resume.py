"""A resume is onto the same run: the part of a run's config that decides what the weights become is kept in
every checkpoint (the whole resolved config is), and a rerun whose part differs is refused, with the keys that
differ, before anything is written. The rest may change between runs: where and how often to log and
checkpoint, devices and threads, evaluation and post-processing, and ``train.max_steps`` (a longer run of the
same recipe is a resume)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ResumeMismatch

# what the weights of every trainer depend on
TRAINING_SECTIONS = ("seed", "data", "model", "train")
# keys inside those sections that do not change the weights
NOT_TRAINING = frozenset({
    "data.val", "data.num_workers", "data.cache_mb", "data.check_files", "data.search_fraction", "data.split_seed",
    "model.score_thresh", "model.nms_thresh", "model.detections_per_img", "model.topk_candidates",
    "train.device", "train.threads", "train.amp", "train.channels_last", "train.ckpt_every_steps", "train.keep_epoch_ckpts",
    "train.eval_every_epochs", "train.log_every_steps", "train.max_steps",
})


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
                     ignored: Iterable[str] = NOT_TRAINING) -> list[str]:
    """``key: old -> new`` for each key under ``sections`` (top-level or dotted: ``search.darts``) and not under
    ``ignored`` whose value differs. A key the saved config does not have (written before the key existed) is
    not compared."""
    def within(key: str, prefixes: Iterable[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    sections, ignored = tuple(sections), tuple(ignored)
    old, new = flatten(saved), flatten(current)
    changes = []
    for key in sorted(new):
        if not within(key, sections) or within(key, ignored):
            continue
        if key in old and old[key] != new[key]:
            changes.append(f"{key}: {old[key]} -> {new[key]}")
    return changes


def refuse_changed_run(checkpoint: Path, saved: Mapping[str, Any] | None, current: Mapping[str, Any],
                       sections: Iterable[str], ignored: Iterable[str] = NOT_TRAINING) -> None:
    """Raise ResumeMismatch when ``current`` would not continue the run ``checkpoint`` was trained with."""
    if not saved or not current:  # a checkpoint from before configs were kept, or a trainer without a config
        return
    changes = training_changes(saved, current, tuple(sections), ignored)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ResumeMismatch(
            f"{checkpoint} was trained with another config ({shown}): rerun with the config it was trained "
            f"with to continue, or delete {checkpoint.parent.parent} (or choose another --work-dir) to start over")
