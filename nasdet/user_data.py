"""The user's data is never written: an output folder (a work dir, to-yolo's or make-synthetic's OUT) that
lies in a data set's folders, holds them, or holds another data set that nasdet did not write is refused
before anything is written, with one line naming the folder and why.

A work dir that merely *contains* the config's data is refused too, though its stage folders rarely collide
with a data set's files: refusing is the safe default, and ``--work-dir`` elsewhere costs nothing.

to-yolo's and make-synthetic's OUT, which no config's data folders bound, is also refused inside a data set found
from its ancestors (``inside``); both keep a record of the files they write in OUT (``written_files``): a rerun
replaces and removes only those, and a file in their folders that the record does not list stops the run
(``refuse_unrecorded_files``).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ConfigError
from .files import write_json_atomic

# The first line of a data.yaml nasdet writes: a folder holding one is nasdet's to rewrite.
WRITTEN_BY_NASDET = "# YOLO data set written by nasdet"
# The image suffixes Ultralytics lists that PIL decodes; the YOLO loader's too (here, not in data.yolo: that
# imports torch, which make-synthetic does without).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
# Folders whose image files make them a data set's image folder whatever else they hold (darknet keeps the
# labels beside the images).
IMAGE_FOLDER_NAMES = ("images", "JPEGImages")
# How many existing ancestors of an output folder are searched for a data set split's marks (a COCO split
# folder, an ImageFolder split); a folder of images is refused at any depth, since image folders are globbed
# recursively.
ANCESTOR_LEVELS = 3
# The names of a data set's split folders (train/, val2017/, valid/, VOC2012/): two or more of them side by side,
# each holding a split, make their folder a data set's root
SPLIT_NAME = re.compile(r"(train|val|valid|validation|test|trainval|dev|test-dev)[-_]?\d*|voc\d{4}", re.IGNORECASE)


def _forms(path: str | Path) -> tuple[Path, Path]:
    """The path as written (absolute, normalised) and with its links resolved: a folder reached through a
    link is still the one it links to."""
    return Path(os.path.normpath(Path(path).absolute())), Path(path).resolve()


def _image_folder(folder: Path) -> bool:
    """True for a folder of images: image files (with their label ``.txt`` files, darknet's layout) are most of
    its non-hidden files and folders, or it is an ``images`` / ``JPEGImages`` folder holding an image file. A
    project or home folder with a picture among its files and folders is not one."""
    try:
        with os.scandir(folder) as scan:
            entries = [(Path(e.name).suffix.lower(), e.is_file()) for e in scan if not e.name.startswith(".")]
    except OSError:
        return False
    images = sum(is_file and suffix in IMAGE_SUFFIXES for suffix, is_file in entries)
    labels = sum(is_file and suffix == ".txt" for suffix, is_file in entries)
    return images > 0 and (folder.name in IMAGE_FOLDER_NAMES or 2 * (images + labels) > len(entries))


def _first_class_folder(folder: Path) -> Path | None:
    """The first class folder when ``folder`` is a split of an ImageFolder (ImageNet) tree, ``<split>/<class>/*.jpg``
    (two or more class folders, and every non-empty, non-hidden subfolder a folder of images), else None."""
    classes = []
    try:
        for sub in sorted(folder.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir() or not any(sub.iterdir()):
                continue
            if not _image_folder(sub):
                return None
            classes.append(sub)
    except OSError:
        return None
    return classes[0] if len(classes) >= 2 else None


def _parallel_trees(level: Path) -> bool:
    """``level`` holds Ultralytics' layout: ``labels/<split>`` of label .txt files beside ``images/<split>``."""
    labels, images = level / "labels", level / "images"
    if not (labels.is_dir() and images.is_dir()):
        return False
    try:
        return any(split.is_dir() and (images / split.name).is_dir() and any(split.glob("*.txt"))
                   for split in labels.iterdir())
    except OSError:
        return False


def _marks_at(level: Path, classes: bool = True) -> Iterable[Path]:
    """The data set marks of one folder: a YOLO data.yaml or labels folder, a COCO annotations file or folder, a
    VOC year folder, or (``classes``) a class folder of an ImageFolder split."""
    for name in ("data.yaml", "data.yml", "annotations.json"):
        if (level / name).is_file():
            yield level / name
    if (level / "labels").is_dir() and any((level / "labels").glob("*.txt")):
        yield level / "labels"
    elif _parallel_trees(level):  # Ultralytics' images/<split> beside labels/<split>
        yield level / "labels"
    if (level / "annotations").is_dir() and any((level / "annotations").glob("*.json")):
        yield level / "annotations"
    if (level / "Annotations").is_dir() and (level / "JPEGImages").is_dir():
        yield level / "Annotations"
    first_class = _first_class_folder(level) if classes else None
    if first_class is not None:
        yield first_class


def _dataset_marks(folder: Path) -> Iterable[Path]:
    """The files and folders that show ``folder`` holds a data set (``_marks_at``), at its top or one level down
    (``train/``, ``VOCdevkit/``)."""
    levels = [folder] + ([p for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else [])
    for level in levels:
        yield from _marks_at(level)


def written_by_nasdet_yaml(path: Path) -> bool:
    """True for a data.yaml nasdet wrote (its first line says so)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(WRITTEN_BY_NASDET)
    except (OSError, UnicodeDecodeError):
        return False


def refuse_output_in_data(out: str | Path, data_folders: Iterable[tuple[str, str | Path]], what: str,
                          ours: Callable[[Path], bool] | None = None, inside: bool = False) -> None:
    """Raise ConfigError when ``out`` is, lies inside or holds one of ``data_folders`` ((config key, folder)
    pairs), holds a data set whose marks (``_dataset_marks``) ``ours`` does not claim (default: a data.yaml
    nasdet wrote), or is or lies inside a folder of images (``_refuse_in_image_folder``). ``what`` names the
    output in the message (``work dir``, ``YOLO output folder``). ``inside``: also refuse an ``out`` that lies
    inside a data set found by looking at its existing ancestors (``_refuse_inside_data_set``), for the commands
    that have no config naming the data."""
    ours = ours or written_by_nasdet_yaml
    targets = _forms(out)
    for key, data in data_folders:
        pairs = list(zip(targets, _forms(data)))
        folder = pairs[0][1]
        if any(t == f for t, f in pairs):
            raise ConfigError(f"{what} {out} is {folder} ({key}), the data set's own: nasdet never writes into a "
                              "data set; choose a path outside it")
        if any(f in t.parents for t, f in pairs):
            raise ConfigError(f"{what} {out} is inside the data set folder {folder} ({key}): nasdet never writes "
                              "into a data set; choose a folder outside it")
        if any(t in f.parents for t, f in pairs):
            raise ConfigError(f"{what} {out} holds the data set folder {folder} ({key}): choose a folder that "
                              "holds no data set")
    for mark in _dataset_marks(targets[0]):
        if not ours(mark):
            raise ConfigError(f"{what} {out} holds a data set that is not its own earlier output ({mark}): nasdet "
                              "never overwrites it; choose an empty or new folder")
    _refuse_in_image_folder(out, targets, what)
    if inside:
        _refuse_inside_data_set(out, targets, what)


def _refuse_in_image_folder(out: str | Path, targets: Iterable[Path], what: str) -> None:
    """Raise ConfigError when ``out`` (as written or resolved: ``targets``) is a folder of images or lies inside
    one, at any depth: a YOLO or ImageFolder loader globs image folders recursively, so what is written there
    joins the set (a config's own image folders are in its data folders; this is anyone's)."""
    for target in dict.fromkeys(targets):
        for folder in [p for p in (target, *target.parents) if p.is_dir()]:
            if _image_folder(folder):
                where = "is a folder of images" if folder == target else f"is inside the folder of images {folder}"
                raise ConfigError(f"{what} {out} {where}: a loader that searches it for images would take what "
                                  "nasdet writes for part of that data; choose a folder outside it")


def _split_marks(folder: Path) -> list[Path]:
    """The marks of a data set split directly in ``folder`` (a COCO annotations file, a labels folder, a VOC year
    folder's annotations; not a data.yaml or a class folder)."""
    try:
        return [m for m in _marks_at(folder, classes=False) if m.name not in ("data.yaml", "data.yml")]
    except OSError:
        return []


def _refuse_inside_data_set(out: str | Path, targets: Iterable[Path], what: str) -> None:
    """Raise ConfigError when one of the nearest ``ANCESTOR_LEVELS`` existing ancestors of ``out`` (as written or
    resolved: ``targets``) holds a data set split's marks, or is a data set's root: it holds two or more split
    folders side by side (``shapes/`` holding ``train/`` and ``val/``, each with its annotations.json), named as
    splits are (``SPLIT_NAME``: a scratch folder holding several unrelated sets is none). A data.yaml
    is no mark here: it often sits at a project's root, and a folder beside it is not in the image folders it
    names."""
    for target in dict.fromkeys(targets):
        ancestors = [p for p in target.parents if p.is_dir()][:ANCESTOR_LEVELS]
        for folder in ancestors:
            for mark in _marks_at(folder):
                if mark.name not in ("data.yaml", "data.yml"):
                    raise ConfigError(f"{what} {out} is inside the data set folder {folder} ({mark}): nasdet never "
                                      "writes into a data set; choose a folder outside it")
            try:
                subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
            except OSError:
                continue
            splits = [sub for sub in subs if SPLIT_NAME.fullmatch(sub.name) and sub not in (target, *target.parents)
                      and _split_marks(sub)]
            if len(splits) >= 2:
                beside = " and ".join(f"{sub.name}/" for sub in splits[:2]) + (" ..." if len(splits) > 2 else "")
                raise ConfigError(f"{what} {out} is inside the data set folder {folder} (a data set's root, holding "
                                  f"the splits {beside}): nasdet never writes into a data set; choose a folder "
                                  "outside it")


# ------------------------------------------------------------------------------ a command's record of its files
def written_files(record: Path) -> set[str]:
    """The files a command recorded writing into the record's folder (paths relative to it, ``/``-separated);
    empty when there is no record. Entries that would lead out of the folder are dropped: a rerun removes
    what the record lists, so it must never name anything elsewhere."""
    try:
        files = json.loads(record.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and _inside_relative(f)}


def _inside_relative(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def record_written(record: Path, files: Iterable[str], **facts) -> None:
    """Write a command's record of its files (atomically: a rerun after a kill reads the old or the new one).
    Written before the first file (listing the earlier and the coming files) and again when the run ends."""
    write_json_atomic(record, {**facts, "files": sorted(files)}, indent=None)


def recorded_mark(out: str | Path, files: set[str]) -> Callable[[Path], bool]:
    """An ``ours`` for ``refuse_output_in_data``: a data set mark that is a file the record lists, or a folder
    every (non-hidden) file under which it lists."""
    base = Path(os.path.normpath(Path(out).absolute()))

    def ours(mark: Path) -> bool:
        under = [mark] if mark.is_file() else [p for p in mark.rglob("*") if p.is_file()
                                                and not any(q.startswith(".") for q in p.relative_to(mark).parts)]
        try:
            return all(p.relative_to(base).as_posix() in files for p in under)
        except ValueError:  # not under out
            return False

    return ours


def refuse_unrecorded_files(out: Path, folders: Iterable[Path], ours: set[str], what: str, command: str) -> None:
    """Raise ConfigError, before anything is written, when one of ``folders`` (under ``out``, where ``command``
    writes) is a link or lies elsewhere than under ``out`` (what is written through it would land in someone's
    folder), is a file, or holds a (non-hidden) file or folder that ``ours`` (paths relative to ``out``) does
    not list: nasdet never overwrites or deletes a file it did not write."""
    real_out = out.resolve()
    for folder in folders:
        if not (folder.exists() or folder.is_symlink()):
            continue
        if folder.resolve() != real_out / folder.relative_to(out):
            raise ConfigError(f"{what} {out}: {folder} is a link (to {folder.resolve()}): {command} writes only into "
                              f"real folders under {out}; remove the link or choose another folder")
        if not folder.is_dir():
            raise ConfigError(f"{what} {out}: {folder} is a file, not a folder: {command} writes a folder there; "
                              "move the file away or choose another folder")
        foreign = sorted(p for p in folder.iterdir()
                         if not p.name.startswith(".") and p.relative_to(out).as_posix() not in ours)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise ConfigError(f"{what} {out}: {foreign[0]}{more} was not written by {command}: nasdet never "
                              "overwrites or deletes it; move it away or choose an empty or new folder")


def drop_earlier_files(out: Path, earlier: set[str], now: set[str], folders: Iterable[Path]) -> set[str]:
    """Remove the files an earlier run recorded in ``folders`` (checked by ``refuse_unrecorded_files``) that this
    run did not write again; returns what the record keeps: this run's files and the earlier ones elsewhere,
    left as they are."""
    checked = {folder.relative_to(out).as_posix() for folder in folders}
    kept = set(now)
    for rel in earlier - now:
        if Path(rel).parent.as_posix() in checked:
            (out / rel).unlink(missing_ok=True)
        else:
            kept.add(rel)
    return kept
