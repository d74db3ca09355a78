"""YOLO-format data (Ultralytics / Roboflow / darknet exports) parsed into a ``DetectionDataset``.

A data set is a ``data.yaml`` plus image folders with one label file per image::

    data.yaml            names: [cat, dog]          (or {0: cat, 1: dog}); optional nc, path, train, val
    images/train/a.jpg   labels/train/a.txt         one object per line: "cls cx cy w h", normalised to [0, 1]

Classes come from ``names`` (class index ``i`` in a label file is label ``i + 1``; ``category_ids``
are ``1..K``). A split (``train``, ``val``) is an image folder (searched recursively), a text file
listing image paths (relative ones from the list's folder), or a list of those; ``data.yaml``'s own
entries resolve against its ``path`` (relative to the yaml's folder, else to the working directory as
Ultralytics reads it; the yaml's folder when absent) and, as Ultralytics does for Roboflow exports, a
missing ``../x`` entry is retried as ``x``. An
image's label file replaces the last ``images`` folder of its path with ``labels`` and the suffix
with ``.txt`` (Ultralytics' rule); a path without an ``images`` folder keeps the label next to the
image (darknet), and an explicit ``labels`` folder mirrors the image folder.

Checks, each a ``DataError`` naming the file (and line): data.yaml unreadable, names missing, empty,
duplicated or disagreeing with ``nc``; a split entry or listed image that does not exist; no images;
an image that cannot be opened; a label line that is not ``cls cx cy w h`` (or a polygon ``cls x1 y1
x2 y2 ...``, reduced to its box as Ultralytics does); a class index outside ``0..K-1``; a value or box
edge outside [0, 1] by more than ``NORM_TOLERANCE`` (Ultralytics' 1 %). A missing label file is an
image without objects; a label file in a split's label folder without an image is a warning. Boxes inside the tolerance are clipped to the image; zero-size boxes are
dropped (one warning with the count), as in the COCO and VOC loaders. Image sizes are not in the
labels, so every image header is read when the set is opened (``check_files`` does not apply).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import os_reason, relative_hint, write_text_atomic
from ..user_data import (IMAGE_SUFFIXES, WRITTEN_BY_NASDET, drop_earlier_files, record_written,
                         refuse_output_in_data, refuse_unrecorded_files, written_by_nasdet_yaml, written_files)
from .coco import MAX_LISTED, fit_box, warn_degenerate
from .dataset import DetectionDataset, ImageRecord

__all__ = ["IMAGE_SUFFIXES", "NORM_TOLERANCE", "YoloDataYaml", "hard_linked_images", "label_file_for", "load_yolo",
           "read_data_yaml", "write_yolo"]

# How far (a fraction of the image side) a normalised value or box edge may leave [0, 1] before it is an
# error rather than clipped: Ultralytics' verify_image_label accepts coordinates in [-0.01, 1.01].
NORM_TOLERANCE = 0.01
_EXIF_ORIENTATION = 0x0112


# ------------------------------------------------------------------------------------------ data.yaml
class YoloDataYaml:
    """A parsed ``data.yaml``: class ``names`` and the split entries resolved to paths."""

    def __init__(self, file: Path, names: list[str], splits: dict[str, list[Path]]) -> None:
        self.file = file
        self.names = names
        self.splits = splits  # "train" / "val" / "test" -> image folders or list files


def _class_names(raw, src: str) -> list[str]:
    if raw is None:
        raise DataError(f"{src}: no 'names' (the class names, a list or an {{index: name}} mapping)")
    if isinstance(raw, dict):
        keys = []
        for k in raw:
            if isinstance(k, bool) or not (isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit())):
                raise DataError(f"{src}: names key {k!r} is not a class index (0, 1, ...)")
            keys.append(int(k))
        if sorted(keys) != list(range(len(keys))):
            raise DataError(f"{src}: names indices must be 0..{len(keys) - 1} without gaps, got {sorted(keys)}")
        values = [v for _, v in sorted(zip(keys, raw.values()))]
    elif isinstance(raw, list):
        values = raw
    else:
        raise DataError(f"{src}: 'names' must be a list or an {{index: name}} mapping, got {type(raw).__name__}")
    if not values:
        raise DataError(f"{src}: 'names' is empty (no classes)")
    names = []
    for i, v in enumerate(values):
        # YAML reads a class named 1 or 3.5 as a number; Ultralytics keeps str(v) as the name.
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip():
            raise DataError(f"{src}: class {i} has no name (got {v!r})")
        names.append(str(v).strip())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{src}: duplicate class names {dup}")
    return names


def _split_entry(value, root: Path, key: str, src: str) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    paths = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{src}: '{key}' must be a path or a list of paths, got {item!r}")
        p = root / item
        # Roboflow writes "../train/images" next to a data.yaml that sits in the data set's root.
        if not p.exists() and item.startswith("../") and (root / item[3:]).exists():
            p = root / item[3:]
        paths.append(p)
    return paths


def read_data_yaml(file: str | Path) -> YoloDataYaml:
    """Parse and check ``data.yaml`` (``yaml.safe_load``); split entries are resolved, not yet listed."""
    file = Path(file)
    src = str(file)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{src}: data.yaml does not exist{relative_hint(file)}") from e
    except IsADirectoryError:
        raise DataError(f"{src}: is a folder; data.data_yaml names the data.yaml file in it") from None
    except yaml.YAMLError as e:
        raise DataError(f"{src}: not valid YAML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{src}: cannot read data.yaml: {os_reason(e)}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{src}: the top level must be a mapping with 'names', got {type(raw).__name__}")
    names = _class_names(raw.get("names"), src)
    nc = raw.get("nc")
    if isinstance(nc, str) and nc.strip().isdigit():  # `nc: '8'`, as some exporters quote it: the number meant
        nc = int(nc)
    if nc is not None and nc != len(names):
        raise DataError(f"{src}: nc is {nc!r} but 'names' lists {len(names)} classes")
    root = file.parent
    if raw.get("path") not in (None, ""):
        if not isinstance(raw["path"], str):
            raise DataError(f"{src}: 'path' must be a folder, got {raw['path']!r}")
        # Relative to the yaml's folder; else, as Ultralytics reads it, to the working directory.
        root = file.parent / raw["path"]
        if not root.is_dir() and Path(raw["path"]).is_dir():
            root = Path(raw["path"])
    splits = {}
    for key, alias in (("train", None), ("val", "validation"), ("test", None)):
        value = raw.get(key, raw.get(alias) if alias else None)
        if value not in (None, "", []):
            splits[key] = _split_entry(value, root, key, src)
    return YoloDataYaml(file, names, splits)


# -------------------------------------------------------------------------------------------- images
def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` as Ultralytics' recursive glob finds them: through symlinked folders,
    without hidden files and folders (macOS ``._x.jpg``, ``.ipynb_checkpoints/``); a link loop is walked once."""
    found, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES and (Path(root) / n).is_file()]
    return found


def _list_images(entry: Path, src: str) -> tuple[list[Path], Path | None]:
    """Image files of one split entry and the folder they were found under (None for a list file)."""
    if entry.is_dir():
        files = sorted(_image_files(entry))
        if not files:
            raise DataError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {entry}")
        return files, entry
    if entry.is_file():
        try:
            lines = entry.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{entry}: cannot read the image list: {os_reason(e)}") from e
        files = [entry.parent / line.strip() for line in lines if line.strip()]
        if not files:
            raise DataError(f"{entry}: no images (the image list is empty)")
        missing = [(f, i + 1) for i, f in enumerate(files) if not f.is_file()]
        if missing:
            shown = ", ".join(f"{p} (line {n})" for p, n in missing[:MAX_LISTED])
            more = f", and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise DataError(f"{entry}: {len(missing)} of {len(files)} listed images are missing: {shown}{more}")
        return files, None
    raise DataError(f"{src}: image folder or list {entry} does not exist{relative_hint(entry)}")


def listed_folders(entry: Path) -> list[Path]:
    """The distinct folders of the images an image list file names, and of their label files: the data set's
    folders, which no output may go into (``DataConfig.folders``). Empty when the list cannot be read (the
    stage that reads the data says why)."""
    try:
        lines = entry.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    images = [entry.parent / line.strip() for line in lines if line.strip()]
    return list(dict.fromkeys([f.parent for f in images] + [label_file_for(f).parent for f in images]))


def label_file_for(image: Path, image_dir: Path | None = None, label_dir: Path | None = None) -> Path:
    """The label file of ``image``: under ``label_dir`` mirroring ``image_dir`` when given, else the last
    ``images`` folder of its path replaced by ``labels``, else next to the image."""
    if label_dir is not None and image_dir is not None:
        return (label_dir / image.relative_to(image_dir)).with_suffix(".txt")
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def upright_size(file: Path, src: str) -> tuple[int, int, bool]:
    """``(width, height, rotated)``: the upright size (as the loader reads the pixels, EXIF orientation
    applied, and as Ultralytics normalises labels) and whether EXIF asks for a 90-degree rotation."""
    try:
        with Image.open(file) as im:
            width, height = im.size
            rotated = im.format in ("JPEG", "MPO") and im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
    except FileNotFoundError as e:
        raise DataError(f"{src}: image file {file} is missing") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{src}: image file {file} cannot be opened: {os_reason(e)}") from e
    return (height, width, rotated) if rotated else (width, height, rotated)


# -------------------------------------------------------------------------------------------- labels
def _parse_labels(label_file: Path, width: int, height: int, names: Sequence[str]):
    """``(boxes, labels, degenerate_count, duplicate_count)`` of one label file; a missing file is an image
    without objects. A line repeating an earlier one is dropped (Ultralytics drops duplicate labels too)."""
    try:
        text = label_file.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the class
    except FileNotFoundError:
        return [], [], 0, 0
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{label_file}: cannot read the label file: {os_reason(e)}") from e
    boxes, labels, degenerate, duplicates, seen = [], [], 0, 0, set()
    lo, hi = -NORM_TOLERANCE, 1.0 + NORM_TOLERANCE
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{n}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise DataError(f"{where}: malformed line {line.strip()!r} (need 'class cx cy w h', "
                            f"or a polygon 'class x1 y1 x2 y2 ...'; got {len(fields)} fields)")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise DataError(f"{where}: malformed line {line.strip()!r} (not all fields are numbers)") from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{where}: malformed line {line.strip()!r} (a field is not finite)")
        if tuple(values) in seen:
            duplicates += 1
            continue
        seen.add(tuple(values))
        cls = values[0]
        if not cls.is_integer() or not 0 <= cls < len(names):
            raise DataError(f"{where}: class index {fields[0]} is not among the {len(names)} classes "
                            f"(0..{len(names) - 1}: {list(names)})")
        coords = values[1:]
        if min(coords) < lo or max(coords) > hi:
            raise DataError(f"{where}: values {fields[1:]} are not normalised: outside [0, 1] "
                            f"by more than {NORM_TOLERANCE:g}")
        if len(coords) == 4:
            cx, cy, w, h = coords
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:  # a segmentation polygon: its box, as Ultralytics' segments2boxes
            xs, ys = coords[0::2], coords[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        if x2 <= x1 or y2 <= y1:
            degenerate += 1
            continue
        if x1 < lo or y1 < lo or x2 > hi or y2 > hi:
            raise DataError(f"{where}: box (x1, y1, x2, y2) = ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g}) lies outside "
                            f"the image ([0, 1]) by more than {NORM_TOLERANCE:g}")
        # within the tolerance: clipped to the image, as Ultralytics clips (fit_box's own tolerance is a pixel, and
        # 0.01 of a 640 px image is 6.4: boxes 1-6 px past the border were dropped as degenerate)
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        status, box = fit_box(x1 * width, y1 * height, x2 * width, y2 * height, width, height)
        if status != "ok":  # only a box that clipping left without area can get here
            degenerate += 1
            continue
        boxes.append(box)
        labels.append(int(cls) + 1)
    return boxes, labels, degenerate, duplicates


def _orphan_labels(image_dir: Path, label_dir: Path, label_files: Sequence[Path]) -> list[Path]:
    """Label files under a split's own label folder that belong to no image (a deleted or renamed image)."""
    if label_dir == image_dir or not label_dir.is_dir():  # darknet: labels among the images, with other .txt
        return []
    # classes.txt: the class list darknet / LabelImg exports write beside the labels, not a label file
    return sorted(p for p in set(label_dir.rglob("*.txt")) - set(label_files) if p.name != "classes.txt")


# ---------------------------------------------------------------------------------------------- load
def load_yolo(
    data_yaml: str | Path,
    split: str = "train",
    *,
    images: str | Path | Sequence[str | Path] | None = None,
    labels: str | Path | None = None,
) -> DetectionDataset:
    """Parse and validate one split: class names from ``data_yaml``, images from ``images`` (a folder,
    a list file, or several) or else from the yaml's ``split`` entry; ``labels`` mirrors one image folder."""
    spec = read_data_yaml(data_yaml)
    if images is not None:
        entries = [Path(p) for p in (images if isinstance(images, (list, tuple)) else [images])]
        source = " + ".join(str(p) for p in entries)
    elif split in spec.splits:
        entries = spec.splits[split]
        source = f"{spec.file} [{split}]"
    else:
        raise DataError(f"{spec.file}: no {split!r} entry, and no image folder given for the {split} split")
    if labels is not None and (len(entries) != 1 or not entries[0].is_dir()):
        raise DataError(f"{source}: a labels folder ({labels}) needs exactly one image folder to mirror")

    records: list[ImageRecord] = []
    seen: dict[Path, Path] = {}
    degenerate, rotated, orphans, duplicated, shared = 0, [], [], (0, None), {}
    first_degenerate = None
    for entry in entries:
        files, image_dir = _list_images(entry, source)
        label_dir = Path(labels) if labels is not None else None
        if label_dir is not None and not label_dir.is_dir():
            raise DataError(f"{source}: labels folder {label_dir} does not exist")
        label_files = [label_file_for(f, image_dir, label_dir) for f in files]
        if image_dir is not None:
            orphans += _orphan_labels(image_dir, label_dir or label_file_for(image_dir / "x.jpg").parent, label_files)
        for file, label_file in zip(files, label_files):
            key = file.resolve()
            if key in seen:
                raise DataError(f"{entry}: image {file} is listed twice (also from {seen[key]})")
            seen[key] = entry
            shared.setdefault(label_file, []).append(file)
            width, height, turned = upright_size(file, source)
            if turned:
                rotated.append(file)
            boxes, cls, n_degenerate, n_duplicates = _parse_labels(label_file, width, height, spec.names)
            degenerate += n_degenerate
            first_degenerate = first_degenerate or (str(label_file) if n_degenerate else None)
            if n_duplicates:  # (count, first file with one)
                duplicated = (duplicated[0] + n_duplicates, duplicated[1] or label_file)
            records.append(ImageRecord(image_id=len(records) + 1, file=file, width=width, height=height,
                                       boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                       labels=np.asarray(cls, dtype=np.int64),
                                       iscrowd=np.zeros(len(cls), dtype=np.int64)))
    if orphans:
        shown = ", ".join(str(p) for p in orphans[:MAX_LISTED])
        warnings.warn(f"{source}: {len(orphans)} label file(s) have no image and are not loaded: {shown}"
                      f"{', ...' if len(orphans) > MAX_LISTED else ''}", UserWarning, stacklevel=2)
    if rotated:  # labels and pixels both in the upright frame (the loader applies the EXIF rotation)
        warnings.warn(f"{source}: {len(rotated)} JPEG(s) carry an EXIF rotation (e.g. {rotated[0]}); their labels "
                      "are read in the upright (rotated) frame, as Ultralytics reads them", UserWarning, stacklevel=2)
    shared = {label: files for label, files in shared.items() if len(files) > 1}
    if shared:  # Ultralytics reads the one file for each: the boxes of one image are likely wrong on the other
        label, files = next(iter(shared.items()))
        warnings.warn(f"{source}: {len(shared)} label file(s) serve more than one image (e.g. {label} for "
                      f"{', '.join(f.name for f in files)}): each of those images gets its boxes; rename the "
                      "images apart", UserWarning, stacklevel=2)
    if duplicated[0]:
        warnings.warn(f"{source}: dropped {duplicated[0]} duplicate label line(s) (a line repeating an earlier one "
                      f"of its file, e.g. in {duplicated[1]}), as Ultralytics does", UserWarning, stacklevel=2)
    warn_degenerate(source, degenerate, first_degenerate)
    return DetectionDataset(records, spec.names, list(range(1, len(spec.names) + 1)), source=source)


# --------------------------------------------------------------------------------------------- write
# What `data to-yolo` wrote into its OUT: a rerun replaces and removes those files, and no other.
RECORD = ".nasdet_to_yolo.json"
COMMAND = "nasdet data to-yolo"


def _place_image(src: Path, dst: Path, hard_link: bool) -> bool:
    """A hard link when asked and the file system allows one (no copy of a large set), else a copy; True for a
    link. ``dst``, when there, is an earlier run's (the record vouches for it); a link is replaced, not followed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dst):
        dst.unlink()
    if hard_link:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return False


def hard_linked_images(out_dir: str | Path) -> int:
    """How many images the last ``write_yolo`` into ``out_dir`` hard-linked to the originals (editing one in place
    edits the original), as its record says."""
    try:
        return int(json.loads((Path(out_dir) / RECORD).read_text(encoding="utf-8")).get("hard_linked", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _label_lines(rec: ImageRecord) -> tuple[list[str], int]:
    lines, crowd = [], 0
    for box, label, is_crowd in zip(rec.boxes, rec.labels, rec.iscrowd):
        if is_crowd:  # YOLO labels cannot mark a box as ignored
            crowd += 1
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy = (x1 + x2) / 2 / rec.width, (y1 + y2) / 2 / rec.height
        w, h = (x2 - x1) / rec.width, (y2 - y1) / rec.height
        lines.append(f"{int(label) - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines, crowd


def _refuse_out_dir(splits: dict[str, DetectionDataset], out_dir: Path, earlier: set[str]) -> list[Path]:
    """Refuse, before anything is written, an ``out_dir`` that lies in, holds or sits inside a data set, or whose
    ``<split>/images`` / ``labels`` hold files the record of an earlier run does not list; returns those folders."""
    sources = [(f"images of {ds.source}", folder) for ds in splits.values()
               for folder in sorted({rec.file.parent for rec in ds.records})]
    sources += [(ds.source, Path(ds.source)) for ds in splits.values() if ds.source and Path(ds.source).exists()]
    # its own earlier output is data.yaml and <split>/labels, file by file as its record says (below, naming a
    # file it did not write): a make-synthetic folder's COCO files (annotations.json beside the images) are a data
    # set it would overwrite
    refuse_output_in_data(out_dir, sources, "YOLO output folder", inside=True,
                          ours=lambda mark: written_by_nasdet_yaml(mark) if mark.name in ("data.yaml", "data.yml")
                          else mark.name == "labels" and mark.parent.name in splits and bool(earlier))
    folders = [out_dir / split / sub for split in splits for sub in ("images", "labels")]
    refuse_unrecorded_files(out_dir, folders, earlier, "YOLO output folder", COMMAND)
    return folders


def write_yolo(splits: dict[str, DetectionDataset], out_dir: str | Path, *, copy_images: bool = True,
               hard_link: bool = True) -> Path:
    """Write data sets as YOLO: ``out_dir/data.yaml`` and per split ``<split>/images`` + ``<split>/labels``
    (Roboflow's layout). ``copy_images=False`` leaves each image where it is and writes its label by the
    images -> labels rule (the images must then already sit in an ``images`` folder under ``out_dir``).
    ``hard_link``: place the images as hard links to the originals where the file system allows (no copy of a
    large set; ``hard_linked_images`` says how many), else as independent copies.

    Crowd / difficult boxes are left out (YOLO has no ignore flag; one warning with the count).
    Returns the data.yaml path. With ``copy_images``, ``out_dir`` must not lie in, hold or sit inside a data set
    (refused before anything is written), and a rerun replaces or removes only the files its record
    (``RECORD``) lists: any other file in a split's images or labels folder is refused."""
    out_dir = Path(out_dir)
    record = out_dir / RECORD
    earlier = written_files(record) if copy_images else set()
    folders = _refuse_out_dir(splits, out_dir, earlier) if copy_images else []
    for ds in splits.values():  # labels are normalised by the annotated size: it must be the image's
        for rec in ds.records:
            width, height, rotated = upright_size(rec.file, ds.source)
            if (width, height) != (rec.width, rec.height):
                upright = " upright (its EXIF orientation applied)" if rotated else ""
                raise DataError(f"{ds.source}: image file {rec.file} (image id {rec.image_id}) is {width}x{height}"
                                f"{upright} but the annotations say {rec.width}x{rec.height}: its YOLO labels would "
                                "be normalised by the wrong size; nothing written")
    classes = None
    plan: dict[str, list[tuple[ImageRecord, Path | None, Path]]] = {}  # split -> (record, image to place, label)
    for split, ds in splits.items():
        if classes is not None and ds.classes != classes:
            raise DataError(f"{ds.source}: classes {ds.classes} differ from the other split's {classes}")
        classes = ds.classes
        stems: dict[str, Path] = {}
        plan[split] = []
        for rec in ds.records:
            if copy_images:
                if rec.file.stem in stems:
                    raise DataError(f"{ds.source}: two images named {rec.file.stem}.* ({stems[rec.file.stem]} and "
                                    f"{rec.file}); their YOLO label files would be the same")
                stems[rec.file.stem] = rec.file
                plan[split].append((rec, out_dir / split / "images" / rec.file.name,
                                    out_dir / split / "labels" / f"{rec.file.stem}.txt"))
            else:
                label_file = label_file_for(rec.file)
                if label_file == rec.file.with_suffix(".txt"):
                    raise DataError(f"{rec.file}: not in an 'images' folder; write with copy_images=True")
                plan[split].append((rec, None, label_file))
    now = {p.relative_to(out_dir).as_posix() for items in plan.values() for _, image, label in items
           for p in (image, label) if p is not None} if copy_images else set()
    if copy_images:  # before the first file: a killed run's files are still its own on a rerun
        record_written(record, earlier | now, command=COMMAND)
    entries, linked = {}, 0
    for split, ds in splits.items():
        crowd = 0
        for rec, image, label_file in plan[split]:
            if image is not None:
                linked += _place_image(rec.file, image, hard_link)
            lines, n_crowd = _label_lines(rec)
            crowd += n_crowd
            write_text_atomic(label_file, "".join(line + "\n" for line in lines))  # a cut line could still parse
        if crowd:
            warnings.warn(f"{ds.source}: left out {crowd} crowd/difficult box{'es' if crowd != 1 else ''} "
                          "(YOLO labels cannot mark a box as ignored)", UserWarning, stacklevel=2)
        entries[split] = (f"{split}/images" if copy_images
                          else os.path.relpath(ds.records[0].file.parent, out_dir) if ds.records else None)
    if copy_images:  # a rerun into its own folder: an earlier run's images and labels are not this set's
        record_written(record, drop_earlier_files(out_dir, earlier, now, folders), command=COMMAND,
                       hard_linked=linked)
    # No 'path' key: Ultralytics then resolves the entries from the yaml's folder, as nasdet does.
    data = {**{k: v for k, v in entries.items() if v is not None},
            "nc": len(classes or []), "names": list(classes or [])}
    yaml_file = out_dir / "data.yaml"
    write_text_atomic(yaml_file, f"{WRITTEN_BY_NASDET} (a rerun may rewrite this folder)\n"
                      + yaml.safe_dump(data, sort_keys=False))
    return yaml_file
