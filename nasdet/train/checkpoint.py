"""Checkpoints: plain tensors and containers only, written atomically, read with weights_only=True."""
from __future__ import annotations

import copy
import hashlib
import random
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError, unreadable_reason
from ..files import atomic_path, why_not_a_file


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file then rename: a kill mid-write never leaves a broken last.pt."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # a Python file: a full disk is OSError ENOSPC, not torch's "file write failed"


# what to do with a detector trained elsewhere, which nasdet's own checkpoint loading does not read
IMPORT_HINT = ("a detector trained by torchvision's references, MMDetection or plain torch is imported first: "
               "nasdet train CONFIG --set pipeline.baseline_checkpoint=FILE, then use baseline/ckpt/last.pt")


# Stages read the same files again and again (a pipeline's report and controls read the supernet's and each tune's
# checkpoint: 45 reads of 5 files in one test), and weights_only unpickling is Python work: 0.12 s for a 7 MB
# checkpoint against 5 ms to copy what it holds. The files read last stay in memory (a few, up to a size), keyed by
# the file's CRC-32s (a torch checkpoint is a zip that records one per entry: 5 ms to read 1500) beside its stat
# (a rename hands the freed inode back, and a filesystem of 1 s timestamps gives two writes the same times); each read
# gets its own copy.
_RECENT: OrderedDict[tuple, dict] = OrderedDict()
_RECENT_LOCK = threading.Lock()
RECENT_MAX_FILES, RECENT_MAX_BYTES = 4, 512 << 20


def _file_key(path: Path) -> tuple | None:
    """What tells this file's content from another's; None for a file that is not a zip (not kept)."""
    st = path.stat()
    try:
        with zipfile.ZipFile(path) as z:
            crcs = hash(tuple((i.filename, i.CRC, i.file_size) for i in z.infolist()))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, crcs


def _own_copy(obj):
    """``obj`` with every tensor and container copied (what a checkpoint holds: tensors, containers, scalars)."""
    if isinstance(obj, torch.Tensor):
        out = obj.detach().clone()
        return torch.nn.Parameter(out, obj.requires_grad) if isinstance(obj, torch.nn.Parameter) else out
    if isinstance(obj, dict):
        out = copy.copy(obj)  # the same type (a state_dict's OrderedDict)
        for k, v in obj.items():
            out[k] = _own_copy(v)
        for k, v in getattr(obj, "__dict__", {}).items():  # each its own: load_state_dict(assign=True) writes into
            setattr(out, k, _own_copy(v))  # _metadata, and every later read of the file then loaded by assignment
        return out
    if isinstance(obj, list):
        return type(obj)(_own_copy(v) for v in obj)
    if isinstance(obj, tuple):
        items = [_own_copy(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj  # numbers, strings, None, dtypes: immutable


def _read(path: Path) -> dict:
    key = _file_key(path)
    with _RECENT_LOCK:
        if key is not None and key in _RECENT:
            _RECENT.move_to_end(key)
            return _own_copy(_RECENT[key])
    state = torch.load(path, map_location="cpu", weights_only=True)
    # kept when the file read is the one keyed (not replaced meanwhile) and not too large
    if key is not None and key[3] <= RECENT_MAX_BYTES // 2 and _file_key(path) == key:
        with _RECENT_LOCK:
            for older in [k for k in _RECENT if k[0] == key[0]]:  # the same path's earlier content
                del _RECENT[older]
            _RECENT[key] = state
            while len(_RECENT) > RECENT_MAX_FILES or sum(k[3] for k in _RECENT) > RECENT_MAX_BYTES:
                _RECENT.popitem(last=False)
        state = _own_copy(state)
    return state


def load_checkpoint(path: str | Path, space_id: str | None = None) -> dict:
    """Load with ``weights_only=True``; refuse one from another search space when ``space_id`` is given. The
    caller owns what it gets (a file read lately comes from memory, copied)."""
    path = Path(path)
    if why := why_not_a_file(path):
        raise CheckpointError(f"checkpoint {path} {why}")
    try:
        state = _read(path)
    except Exception as e:  # unpickling errors come in many types
        why = unreadable_reason(e, path)
        if "other than tensors" in why:  # torchvision's references pickle their argparse Namespace beside the weights
            why += f"; {IMPORT_HINT}"
        raise CheckpointError(f"checkpoint {path} cannot be read: {why}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry: not a nasdet checkpoint ({IMPORT_HINT})")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"checkpoint {path}: its 'model' entry is of type {type(state['model']).__name__}, not a "
                              "state_dict (a dict of tensors): not a nasdet checkpoint")
    if space_id is not None and state.get("space_id") not in (None, space_id):
        raise CheckpointError(
            f"checkpoint {path} is from search space {state.get('space_id')}, but this model's space is {space_id}"
            f"{_layouts_of(state)}"
        )
    return state


def is_supernet_checkpoint(state: dict) -> bool:
    """A supernet's checkpoint (``nasdet pretrain``): it records its search space and no single arch."""
    return state.get("space_id") is not None and not (state.get("extra") or {}).get("arch")


def nasdet_checkpoint_kind(state) -> str | None:
    """What a nasdet checkpoint (``load_checkpoint``'s dict) holds and what it is for, in words, or None for
    another file: for errors where a checkpoint of the wrong kind was given (a supernet as the baseline, a
    tuned subnet as the supernet, ...)."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "config" not in state:
        return None
    config = state["config"] if isinstance(state["config"], dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    backbone = model.get("backbone") if isinstance(model.get("backbone"), dict) else {}
    made = f"model.detector {model.get('detector', '?')}, model.backbone.name {backbone.get('name', '?')}"
    arch = (state.get("extra") or {}).get("arch") if isinstance(state.get("extra"), dict) else None
    space = state.get("space_id")
    if arch is not None:  # (diagnose's and older tunes' records keep no space)
        return (f"a subnet tuned by `nasdet tune` (search space {space or 'not recorded'}; {made}): `nasdet eval` / "
                "`nasdet export` read it with the config it was tuned with")
    if space is not None:
        return (f"a supernet trained by `nasdet pretrain` (search space {space}; {made}): it starts `nasdet tune` "
                "as tune.supernet_checkpoint and is what `nasdet search` scores")
    return f"a detector trained by `nasdet train` ({made})"


def _layouts_of(state: dict) -> str:
    """The layouts a checkpoint's stored config set (they are part of the space id), for a space mismatch."""
    model = (state.get("config") or {}).get("model") if isinstance(state.get("config"), dict) else None
    if not isinstance(model, dict):
        return ""
    backbone = model.get("backbone") if isinstance(model.get("backbone"), dict) else {}
    return (f" (its config: model.layout {model.get('layout') or 'default'}, model.backbone.layout "
            f"{backbone.get('layout') or 'default'}; a layout is part of the space)")


def planned_steps(state: dict, max_steps_key: tuple[str, ...] = ("train", "max_steps")) -> int | None:
    """The step a training run of this checkpoint ends at (its recorded config's ``max_steps_key``, e.g.
    ``search.darts.max_steps`` for a darts search, or all epochs), if recorded."""
    total = state.get("total_steps")
    if total is None:
        return None
    node = state.get("config") or {}
    for key in max_steps_key:
        node = node.get(key) if isinstance(node, dict) else None
    return min(total, node) if node else total


def unfinished_at(state: dict, max_steps_key: tuple[str, ...] = ("train", "max_steps")) -> tuple[int, int] | None:
    """``(step, planned step)`` of a checkpoint whose training stopped before its end (killed, or still
    running), else None (finished, or its plan not recorded)."""
    planned = planned_steps(state, max_steps_key)
    step = state.get("step", 0)
    return (step, planned) if planned is not None and step < planned else None


def refuse_other_classes(path: str | Path, state: dict, names, key: str, hint: str) -> None:
    """Refuse (CheckpointError) a checkpoint whose recorded classes (``class_record``) are not ``names``, the
    data's in label order: its label k would be read as the data's k-th class (mislabelled, silently) or its
    class layers would not fit. ``key`` names the checkpoint (a config key or "the supernet"), ``hint`` what to do.
    A checkpoint without the record (older) is taken as it is."""
    from ..models.imports import recorded_class_names

    recorded = recorded_class_names(state)
    if recorded is not None and recorded != list(names):
        raise CheckpointError(f"{key} {path} was trained on the classes {recorded}, this data has {list(names)}: "
                              f"its labels would name other classes; {hint}")


def file_sha256(path: str | Path) -> str:
    """Content hash of a checkpoint: tells one set of weights from another whatever its path or mtime."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


BACKBONE_FILE_KEY = "model.backbone.checkpoint"


def files_by_content(named: dict) -> dict:
    """``{config key: {path (resolved), sha256}}`` of the files ``named`` ({config key: path or None}) that exist
    (a start file that is gone, which a resumed run needs no more, is left out)."""
    return {key: {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
            for key, path in named.items() if path and Path(path).is_file()}


def backbone_start(cfg) -> dict:
    """``files_by_content`` of the backbone's start file, ``model.backbone.checkpoint`` (an ExperimentConfig's)."""
    return files_by_content({BACKBONE_FILE_KEY: cfg.model.backbone.checkpoint})


def load_model_weights(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strict load with a readable error instead of torch's wall of key names."""
    weights = state["model"] if "model" in state else state
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source} does not fit this model: its weights are of type {type(weights).__name__}, not a "
                              "state_dict (a dict of tensors)")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source} does not fit this model: {str(e).splitlines()[-1].strip()}"
                              f"{_written_with(state)}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
            f"Was it written for another detector, backbone or config?{_written_with(state)}"
        )


def _written_with(state: dict) -> str:
    """The model settings a nasdet checkpoint was written with (its record of the config), for a load that failed:
    e.g. a supernet pretrained at model.backbone.width_mult 1.2 read by a config that builds 1.0."""
    model = (state.get("config") or {}).get("model") if isinstance(state.get("config"), dict) else None
    if not isinstance(model, dict):
        return ""
    backbone = model.get("backbone") or {}
    said = [f"model.detector {model.get('detector')}", f"model.backbone.name {backbone.get('name')}",
            f"model.backbone.width_mult {backbone.get('width_mult')}"]
    return f" (it was written with {', '.join(said)}: set them as it had)"


def class_record(dataset) -> list[list] | None:
    """``[[category id, name], ...]`` in label order: the classes a detector's class layers predict, kept in
    each checkpoint so that importing it elsewhere can tell other classes of the same count (None for a set
    without category ids)."""
    ids = getattr(dataset, "category_ids", None)
    return [[int(i), str(n)] for i, n in zip(ids, dataset.classes)] if ids is not None else None


def images_record(dataset) -> dict | None:
    """``{"count", "digest"}`` of the images a trainer trains on (their file names in order; None for a set without
    image records): the supernet's, against which the search split is checked (the split is by position: images
    added to or removed from train since pretraining moved it onto images the supernet trained on)."""
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    names = "\n".join(Path(r.file).name for r in records)
    return {"count": len(records), "digest": hashlib.sha256(names.encode()).hexdigest()[:16]}


def image_name_hashes(dataset) -> torch.Tensor:
    """int64 hashes of the file names of ``dataset``'s images (a supernet checkpoint keeps its training images'):
    whether a search split holds an image the supernet trained on, checked without the names."""
    digests = b"".join(hashlib.blake2b(Path(r.file).name.encode(), digest_size=8).digest() for r in dataset.records)
    return torch.frombuffer(bytearray(digests), dtype=torch.int64).clone() if digests else torch.zeros(0, dtype=torch.int64)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
