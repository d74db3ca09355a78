"""The in-memory form every data format is parsed into, and the torch Dataset over it.

Parsers (coco.py, voc.py) validate everything that can be checked without decoding pixels when the
data set is opened, so a bad file fails at start-up with its name and id, not deep in a collate
function. Pixels are decoded lazily in ``__getitem__``; a corrupt image raises ``DataError`` naming it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from ..errors import DataError
from ..files import os_reason

def unreadable_image(what: str, e: BaseException) -> DataError:
    """``<what> cannot be decoded: <reason>`` (``read``, for a file the process may not open)."""
    return DataError(f"{what} cannot be {'read' if isinstance(e, PermissionError) else 'decoded'}: {os_reason(e)}")


EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a stored image is rotated / mirrored


@dataclasses.dataclass
class ImageRecord:
    """One image and its boxes. Boxes are absolute pixel XYXY; labels are contiguous 1..K."""

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4]
    labels: np.ndarray  # int64 [N], 1..K (0 is background)
    iscrowd: np.ndarray  # int64 [N]; 1 = crowd (COCO) or difficult (VOC): ignored by training and eval
    # float32 [N] object areas from the annotations (COCO's segmentation area, which decides
    # APs/APm/APl); None = box areas.
    areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=np.int64).reshape(-1)
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float32).reshape(-1)


class DecodedImages:
    """Decoded images kept in this process's memory up to a byte budget (``data.cache_mb``), first come first
    kept. On a data set that fits, every epoch after the first, every evaluation and each search candidate's
    BatchNorm recalibration skip decoding (0.5 ms per 256 px JPEG here; several ms at 640 px): with the data
    loaded in the training process (``data.num_workers: auto`` on a CPU) that time is the step's. Only the
    main process adds: a loader worker's additions would die with it at the end of the epoch (workers forked
    later read what the main process holds). Keyed by file, size and modification time: a file replaced on
    disk is decoded again, so a corrupt replacement still fails with its name. A training image whose first
    transforms are not random is kept as they leave it instead (``DetectionDataset.fixed_item``)."""

    def __init__(self) -> None:
        self.budget = 0  # bytes; 0 = off (datasets built without build_datasets decode every time)
        self.used = 0
        self.images: dict[tuple, object] = {}  # a tensor, or a fixed item: (image, target)

    def configure(self, megabytes: int) -> None:
        self.budget = int(megabytes) << 20

    def key(self, path: Path, tag: tuple = ()) -> tuple | None:
        """The key of ``path``'s decoded image, or with ``tag`` of what a fixed transform made of it."""
        if not self.budget:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # decoding says what is wrong with it
        return (str(path), st.st_size, st.st_mtime_ns, *tag)

    def get(self, key: tuple | None):
        """A copy of what ``key`` holds (nothing downstream can change the cached one), or None."""
        hit = self.images.get(key) if key is not None else None
        return _copy(hit) if hit is not None else None

    def put(self, key: tuple | None, value) -> None:
        """Keep ``value`` (a tensor, or tuples and dicts of tensors and plain values) under ``key`` if it fits."""
        size = sum(t.numel() * t.element_size() for t in _tensors(value))
        if key is None or self.used + size > self.budget or torch.utils.data.get_worker_info() is not None:
            return
        self.images[key] = _copy(value)
        self.used += size


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, (tuple, dict)):
        return [t for v in (value.values() if isinstance(value, dict) else value) for t in _tensors(v)]
    return [value] if isinstance(value, torch.Tensor) else []


def _copy(value):
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value.clone() if isinstance(value, torch.Tensor) else value  # a tv_tensor's clone keeps its type


DECODED = DecodedImages()


@contextlib.contextmanager
def item_draws(seed: int | None):
    """An item's random draws (its augmentation) from torch's generator seeded with ``seed`` (None: as they come).
    In a loader's worker process the generator is the worker's own; in the main process (``data.num_workers`` 0)
    its state is kept around the item, so the training's other draws go on as without it."""
    if seed is None:
        yield
        return
    if torch.utils.data.get_worker_info() is not None:
        torch.manual_seed(seed)
        yield
        return
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class DetectionDataset(torch.utils.data.Dataset):
    """Images with boxes, parsed and validated; ``__getitem__`` returns ``(image, target)``.

    ``image`` is a ``tv_tensors.Image`` (uint8, CxHxW) and ``target`` a dict with ``boxes``
    (``tv_tensors.BoundingBoxes``, XYXY), ``labels`` (int64, 1..K), ``iscrowd`` (int64) and
    ``image_id`` (int), after ``transforms`` (a transforms.v2 callable on ``(image, target)``).
    Class ``k`` (1-based) is ``classes[k - 1]`` and has id ``category_ids[k - 1]`` in the source
    annotations, so predictions map back to the data set's own category ids for COCO evaluation.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        category_ids: Sequence[int] | None = None,
        source: str = "",
        transforms: Callable | None = None,
    ) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
        if len(self.category_ids) != len(self.classes):
            raise DataError(f"{source}: {len(self.classes)} class names but {len(self.category_ids)} category ids")
        self.source = source  # annotation file or data set root, for error messages
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        """Object classes, background excluded."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: Sequence[int]) -> "DetectionDataset":
        """The same data set restricted to ``indices`` (records shared, not copied)."""
        return DetectionDataset(
            [self.records[i] for i in indices], self.classes, self.category_ids, self.source, self.transforms
        )

    def first(self, n: int | None) -> "DetectionDataset":
        """The first ``n`` images (all when ``n`` is None or 0): what ``eval.max_images`` / ``search.max_images``
        score."""
        return self.subset(range(min(n, len(self)))) if n else self

    def with_transforms(self, transforms: Callable | None) -> "DetectionDataset":
        return DetectionDataset(self.records, self.classes, self.category_ids, self.source, transforms)

    def check_images_open(self, count: int | None = None) -> None:
        """Open the header of each of the first ``count`` images (all by default; no pixels decoded, some 0.1-0.5
        ms each): a file that is not an image fails here, naming it, rather than when first read (a val image
        at the evaluation after the last training step). A file cut short after its header is found on load."""
        for rec in self.records[:count]:
            check_image_opens(f"{self.source}: image file {rec.file} (image id {rec.image_id})", rec.file)

    def check_unopened_images(self) -> None:
        """DataError naming the first of this set's images whose header did not open when the set was opened
        (``check_image_sizes``, with data.check_files; each opened again here: a file fixed since passes), and how
        many others: a trainer's training set, before its first step (a text file named .jpg was found when an
        epoch drew it, possibly hours in)."""
        suspects = [rec for rec in self.records if str(rec.file) in _UNOPENED]
        for n, rec in enumerate(suspects):
            try:
                check_image_opens(f"{self.source}: image file {rec.file} (image id {rec.image_id})", rec.file)
            except DataError as e:
                others = len(suspects) - n - 1
                raise DataError(f"{e}" + (f" (and up to {others} more image(s) whose header did not open)"
                                          if others else "")) from None
            _UNOPENED.discard(str(rec.file))

    def load_image(self, index: int, keep: bool = True) -> tv_tensors.Image:
        """The decoded image (from the decode cache if there, kept there if ``keep`` and it fits)."""
        rec = self.records[index]
        key = DECODED.key(rec.file)
        cached = DECODED.get(key)
        if cached is not None:
            return tv_tensors.Image(cached)
        what = f"{self.source}: image file {rec.file} (image id {rec.image_id})"
        with read_errors(what), Image.open(rec.file) as im:
            arr, rotated = decode_upright_rgb(im)
        if arr.shape[0] != rec.height or arr.shape[1] != rec.width:
            raise DataError(size_mismatch(what, arr.shape[1], arr.shape[0], rotated, rec))
        image = torch.from_numpy(arr).permute(2, 0, 1)
        if keep:
            DECODED.put(key, image)
        return tv_tensors.Image(image)

    def target(self, index: int) -> dict:
        rec = self.records[index]
        return {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(rec.boxes.copy()), format="XYXY", canvas_size=(rec.height, rec.width)
            ),
            "labels": torch.from_numpy(rec.labels.copy()),
            "iscrowd": torch.from_numpy(rec.iscrowd.copy()),
            "image_id": rec.image_id,
        }

    def __getitem__(self, index: int | tuple):
        """Item ``index``; ``(index, size)``: with the training transforms at image size ``size`` (a
        multi-resolution loader's batches, ``SizedBatchSampler``; None: the transforms' own); ``(index, size,
        seed)``: the transforms draw from torch's generator seeded with ``seed`` (``item_draws``: each item's draws
        follow from its step, not from how many items a worker has made)."""
        tf, seed = self.transforms, None
        if isinstance(index, tuple):
            index, size, *seeds = index
            if size is not None:
                tf = tf.at_size(size)
            seed = seeds[0] if seeds else None
        with item_draws(seed):
            if getattr(tf, "fixed", None) is not None:  # training transforms whose first steps give the same result
                return tf.random(*self.fixed_item(index, tf))  # every epoch (TrainTransforms)
            image, target = self.load_image(index), self.target(index)
            if tf is not None:
                image, target = tf(image, target)
            return image, target

    def fixed_item(self, index: int, tf=None) -> tuple[tv_tensors.Image, dict]:
        """The fixed part of the training transforms ``tf`` (default: the data set's) on item ``index``, computed
        once and then taken from the decode cache under ``tf.fixed_tag`` and the image's annotations (the same
        file annotated otherwise, in another data set, has its own entry). The decoded image is not kept as
        well: this result is what the epochs read."""
        rec, tf = self.records[index], tf if tf is not None else self.transforms
        key = DECODED.key(rec.file, (tf.fixed_tag, rec.image_id, rec.width, rec.height, rec.boxes.tobytes(),
                                     rec.labels.tobytes(), rec.iscrowd.tobytes()))
        hit = DECODED.get(key)
        if hit is not None:
            return hit
        image, target = tf.fixed(self.load_image(index, keep=False), self.target(index))
        DECODED.put(key, (image, target))
        return image, target


def size_mismatch(what: str, width: int, height: int, rotated: bool, rec: ImageRecord) -> str:
    """The message for an image whose upright size is not the one its annotations give."""
    upright = (" after the rotation its EXIF orientation asks for (annotations are taken in the upright "
               "frame, as COCO tools do)") if rotated else ""
    return f"{what} is {width}x{height}{upright} but the annotations say {rec.width}x{rec.height}"


def _exif_orientation(im: Image.Image) -> int:
    """The image's EXIF orientation, as ``decode_upright_rgb`` reads it."""
    return im.getexif().get(EXIF_ORIENTATION, 1)


def _upright_header_size(file: Path, full: bool) -> tuple[int, int, bool] | None:
    """``(width, height, rotated)`` of ``file`` as ``decode_upright_rgb`` gives its pixels, from the header alone
    (no pixels decoded), or None when it does not open (the read path names that). A PNG's EXIF may follow its
    pixels, and PIL decodes them to find it: without ``full`` such a PNG is taken as stored upright."""
    try:
        with Image.open(file) as im:
            width, height = im.size
            late_exif = im.format == "PNG" and "exif" not in im.info
            orientation = _exif_orientation(im) if full or not late_exif else 1
    except Exception:  # unreadable, not an image, over PIL's pixel limit: the read path says which, naming it
        return None
    rotated = orientation not in (0, 1)  # decode_upright_rgb's rule; exif_transpose swaps the sides for 5-8
    return (height, width, rotated) if orientation in (5, 6, 7, 8) else (width, height, rotated)


# hash of (file, size, modification time) -> upright header size, packed (``_pack``: some 170 bytes an image, 20 MiB
# for COCO train2017): every stage of a run opens the sets again (a reopen costs a stat per image); a file replaced
# on disk is read again
_HEADER_SIZES: dict[int, int] = {}
# Header reads wait on the disk (about 0.1-0.2 ms each on a local SSD, several ms on a network file system):
# this many unread headers or more are read by a pool of threads, and a set of NOTE_FROM or more says so first
# (COCO train2017's 118k take some 10-30 s here)
POOL_FROM = 256
POOL_THREADS = 8
NOTE_FROM = 20000


@contextlib.contextmanager
def read_errors(what: str):
    """An image file's open or decode errors as one DataError line naming ``what``."""
    try:
        yield
    except FileNotFoundError as e:
        raise DataError(f"{what} is missing") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{what} has more pixels than PIL opens safely ({e}); resize it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise unreadable_image(what, e) from e


def check_image_opens(what: str, file: Path) -> None:
    """DataError naming ``what`` when ``file``'s header does not open as an image: the read path's message."""
    with read_errors(what), Image.open(file):
        pass


# files whose header did not open when a set was opened (check_image_sizes): a trainer names them before its first
# step rather than when an epoch draws them
_UNOPENED: set[str] = set()


def _header_key(file: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None  # check_files' stat or the read path names it
    return (str(file), st.st_size, st.st_mtime_ns)


def _pack(size: tuple[int, int, bool]) -> int:
    return size[0] << 32 | size[1] << 1 | size[2]


def _known_header(key: tuple[str, int, int] | None) -> tuple[int, int, bool] | None:
    packed = _HEADER_SIZES.get(hash(key)) if key is not None else None
    return None if packed is None else (packed >> 32, (packed & 0xFFFFFFFF) >> 1, bool(packed & 1))


def _read_header(key: tuple[str, int, int]) -> tuple[int, int, bool] | None:
    size = _upright_header_size(Path(key[0]), full=False)
    if size is not None:
        _HEADER_SIZES[hash(key)] = _pack(size)
    return size


def check_image_sizes(source: str, records: Sequence[ImageRecord]) -> None:
    """DataError when an image's size (its header, EXIF orientation applied as when it is read) is not the one its
    annotations give: the message the read path gives for the first such image (the count of the others with
    it), when the set is opened rather than when the image is first read, possibly hours into an epoch. A file
    whose header does not open is noted (``unopened_images``: a trainer refuses its training set's before the first
    step; an image a val set does not score stops nothing) and left to the read path, as before."""
    keys = [_header_key(rec.file) for rec in records]
    sizes = [_known_header(k) for k in keys]
    unread = [i for i, (k, size) in enumerate(zip(keys, sizes)) if k is not None and size is None]
    if len(unread) >= NOTE_FROM and int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per process
        print(f"{source}: reading the headers of {len(unread)} images to check their sizes (data.check_files: false "
              "skips it)", file=sys.stderr, flush=True)
    with warnings.catch_warnings():  # PIL's large-image warning: the read path gives it, once
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if len(unread) >= POOL_FROM:
            with ThreadPoolExecutor(POOL_THREADS) as pool:
                read = list(pool.map(_read_header, [keys[i] for i in unread]))
        else:
            read = [_read_header(keys[i]) for i in unread]
    for i, size in zip(unread, read):
        sizes[i] = size
    _UNOPENED.update(str(records[i].file) for i, size in zip(unread, read) if size is None)
    bad = []
    for rec, size in zip(records, sizes):
        if size is not None and (size[0], size[1]) != (rec.width, rec.height):
            full = _upright_header_size(rec.file, full=True)  # a PNG whose EXIF follows its pixels: read it all
            if full is not None and (full[0], full[1]) != (rec.width, rec.height):
                bad.append((rec, full))
    if bad:
        rec, (width, height, rotated) = bad[0]
        more = f" (and {len(bad) - 1} more image(s) whose size is not the annotated one)" if len(bad) > 1 else ""
        raise DataError(size_mismatch(f"{source}: image file {rec.file} (image id {rec.image_id})", width, height,
                                      rotated, rec) + more)


def decode_upright_rgb(im: Image.Image) -> tuple[np.ndarray, bool]:
    """HxWx3 uint8 pixels as a viewer shows them, and whether the EXIF orientation rotated them.

    The EXIF orientation is applied (phone photos are stored sideways with a rotation tag) so boxes drawn
    on the upright image match the pixels. 16-bit images (PNG ``I;16`` / ``I``) are scaled from 0..65535
    to 0..255; PIL's own ``convert("RGB")`` would clip them to 255.
    """
    rotated = _exif_orientation(im) not in (0, 1)  # 1 = stored upright
    upright = ImageOps.exif_transpose(im) if rotated else im
    if upright.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        wide = np.asarray(upright.convert("I"), dtype=np.float64)
        gray = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), rotated
    return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy(), rotated


def to_coco_gt(dataset: DetectionDataset) -> dict:
    """COCO-format ground truth (the dict ``COCO.dataset`` holds) for evaluating on ``dataset``.

    Crowd / difficult boxes are kept with ``iscrowd=1``: COCOeval then ignores detections on them,
    as VOC's devkit ignores ``difficult`` objects.
    """
    images, annotations = [], []
    ann_id = 1
    for rec in dataset.records:
        images.append({"id": int(rec.image_id), "width": int(rec.width), "height": int(rec.height),
                       "file_name": str(rec.file)})
        for j, (box, label, crowd) in enumerate(zip(rec.boxes, rec.labels, rec.iscrowd)):
            x1, y1, x2, y2 = (float(v) for v in box)
            area = float(rec.areas[j]) if rec.areas is not None else (x2 - x1) * (y2 - y1)
            annotations.append({
                "id": ann_id, "image_id": int(rec.image_id),
                "category_id": int(dataset.category_ids[int(label) - 1]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(crowd),
            })
            ann_id += 1
    categories = [{"id": int(c), "name": n} for c, n in zip(dataset.category_ids, dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def collate_detection(batch):
    """Detection batches are lists: images differ in size and box count."""
    return tuple(zip(*batch))
