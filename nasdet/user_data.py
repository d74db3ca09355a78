"""The user's data is never written: an output folder (a work dir, to-yolo's or make-synthetic's OUT) that
lies in a data set's folders, holds them, or holds another data set that nasdet did not write is refused
before anything is written, with one line naming the folder and why.

A work dir that merely *contains* the config's data is refused too, though its stage folders rarely collide
with a data set's files: refusing is the safe default, and ``--work-dir`` elsewhere costs nothing.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ConfigError

# The first line of a data.yaml nasdet writes: a folder holding one is nasdet's to rewrite.
WRITTEN_BY_NASDET = "# YOLO data set written by nasdet"


def _forms(path: str | Path) -> tuple[Path, Path]:
    """The path as written (absolute, normalised) and with its links resolved: a folder reached through a
    link is still the one it links to."""
    return Path(os.path.normpath(Path(path).absolute())), Path(path).resolve()


def _dataset_marks(folder: Path) -> Iterable[Path]:
    """The files and folders that show ``folder`` holds a data set: a YOLO data.yaml or labels folder, a COCO
    annotations file, a VOC year folder; at its top or one level down (``train/``, ``VOCdevkit/``)."""
    levels = [folder] + ([p for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else [])
    for level in levels:
        for name in ("data.yaml", "data.yml", "annotations.json"):
            if (level / name).is_file():
                yield level / name
        if (level / "labels").is_dir() and any((level / "labels").glob("*.txt")):
            yield level / "labels"
        if (level / "annotations").is_dir() and any((level / "annotations").glob("*.json")):
            yield level / "annotations"
        if (level / "Annotations").is_dir() and (level / "JPEGImages").is_dir():
            yield level / "Annotations"


def written_by_nasdet_yaml(path: Path) -> bool:
    """True for a data.yaml nasdet wrote (its first line says so)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(WRITTEN_BY_NASDET)
    except (OSError, UnicodeDecodeError):
        return False


def refuse_output_in_data(out: str | Path, data_folders: Iterable[tuple[str, str | Path]], what: str,
                          ours: Callable[[Path], bool] | None = None) -> None:
    """Raise ConfigError when ``out`` is, lies inside or holds one of ``data_folders`` ((config key, folder)
    pairs), or holds a data set whose marks (``_dataset_marks``) ``ours`` does not claim (default: a data.yaml
    nasdet wrote). ``what`` names the output in the message (``work dir``, ``YOLO output folder``)."""
    ours = ours or written_by_nasdet_yaml
    targets = _forms(out)
    for key, data in data_folders:
        pairs = list(zip(targets, _forms(data)))
        folder = pairs[0][1]
        if any(t == f or f in t.parents for t, f in pairs):
            raise ConfigError(f"{what} {out} is inside the data set folder {folder} ({key}): nasdet never writes "
                              "into a data set; choose a folder outside it")
        if any(t in f.parents for t, f in pairs):
            raise ConfigError(f"{what} {out} holds the data set folder {folder} ({key}): choose a folder that "
                              "holds no data set")
    for mark in _dataset_marks(targets[0]):
        if not ours(mark):
            raise ConfigError(f"{what} {out} holds a data set that is not its own earlier output ({mark}): nasdet "
                              "never overwrites it; choose an empty or new folder")
