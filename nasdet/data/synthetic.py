"""The embedded default data set: cluttered images of shapes in COCO format, generated locally.

``make_synthetic(out_dir, n_train, n_val, size, seed)`` writes::

    out_dir/train/images/000001.jpg ...   out_dir/train/annotations.json
    out_dir/val/images/000001.jpg ...     out_dir/val/annotations.json

so every stage of the toolkit runs on a fresh machine with no download.

Content. Each image (width ``size``, height ``size * U(0.75, 1)``) has a cluttered background (a
colour gradient, low-frequency blotches, sometimes a faint stripe/checker texture, pixel noise) with
distractors that are not classes (lines, curves, partial arcs, irregular blobs), and 1..8 objects
(mean about 3.6) from ``SHAPE_CLASSES``. The class is given by the shape only: colours and textures
(solid, stripes at a random angle, checkerboard, noise, gradient) are drawn independently of it.
Object sizes are log-uniform from about 6 % to 60 % of the image side, with a random rotation and a
slightly varied aspect ratio. Objects may overlap: a placement that would hide more than half of an
object already placed is rejected (visible masks are tracked per object), and objects may be cut by
the image border by up to 40 %. Each annotation is the full (amodal) box of the object, clipped to
the image, in integer pixels; ``area`` is the object's pixel count inside the image.

Determinism. Every image has its own random stream, seeded from ``(seed, split, index)``, so the
output (json bytes and image bytes) depends on the arguments only, not on ``workers``; train and val
use different streams. Annotation files are written last, atomically, once every image is on disk,
and stale ones are removed first: a killed run never leaves a complete-looking set.

Output folder. Never one holding another data set, lying inside one, or holding images it did not write:
the images it writes are recorded in ``out_dir/.nasdet_make_synthetic.json`` before the first one (a killed
run can be rerun), and a rerun replaces them and removes those it does not write again.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError, DataError
from ..files import atomic_path
from ..user_data import (drop_earlier_files, record_written, refuse_output_in_data, refuse_unrecorded_files,
                         written_by_nasdet_yaml, written_files)

__all__ = ["SHAPE_CLASSES", "existing_matches", "make_synthetic"]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "crescent")

# Bumped whenever the generated content changes (recorded in the json ``info``).
GENERATOR_VERSION = 3
DESCRIPTION = "nasdet synthetic shapes"  # info.description of the files written here (others are not overwritten)
# The record of the images written into an output folder (both formats): a rerun replaces and removes those only.
RECORD = ".nasdet_make_synthetic.json"
COMMAND = "nasdet data make-synthetic"
OUTPUT = "make-synthetic output folder"
_SPLITS = ("train", "val")
MIN_SIZE = 32
JPEG_QUALITY = 90

# Object size (the shape's nominal diameter) as a fraction of the image width, log-uniform.
SIZE_RANGE = (0.06, 0.55)
MAX_OBJECTS = 8
# A placement may leave at least this fraction of every earlier object visible ...
MIN_VISIBLE = 0.65
# ... and must keep at least this fraction of itself inside the image.
MIN_INSIDE = 0.85
PLACEMENT_TRIES = 12
# Minimum distance (RGB, 0..255) between an object's mean colour and the background under it.
MIN_CONTRAST = 60.0


# --------------------------------------------------------------------------------------------- shapes
def _polygon_sd(u: np.ndarray, v: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (normalised units, approximate outside) to a star-shaped polygon centred at
    the origin whose vertex ``k`` is at angle ``2 pi k / m - pi / 2`` and radius ``radii[k]``.

    A ray from the origin crosses exactly one edge, the one of its angular sector, so the point is
    inside iff it lies on the inner side of that edge's line: exact inside test, local distance."""
    m = len(radii)
    ang = 2 * np.pi * np.arange(m) / m - np.pi / 2
    vx, vy = radii * np.cos(ang), radii * np.sin(ang)
    ex, ey = np.roll(vx, -1) - vx, np.roll(vy, -1) - vy
    norm = np.hypot(ex, ey)
    nx, ny = ey / norm, -ex / norm
    d = nx * vx + ny * vy
    flip = d < 0  # orient every normal outwards (away from the origin)
    nx, ny, d = np.where(flip, -nx, nx), np.where(flip, -ny, ny), np.abs(d)
    sector = (np.floor(((np.arctan2(v, u) + np.pi / 2) % (2 * np.pi)) / (2 * np.pi / m))).astype(np.intp) % m
    return u * nx[sector] + v * ny[sector] - d[sector]


def _shape_sd(kind: str, u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    """Signed distance (in units of the shape radius) for class ``kind``; ``p`` is a per-object
    shape parameter in [0, 1) (ring thickness, star depth, arm width, crescent bite)."""
    if kind == "circle":
        return np.hypot(u, v) - 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if kind == "triangle":
        return _polygon_sd(u, v, np.ones(3))
    if kind == "hexagon":
        return _polygon_sd(u, v, np.ones(6))
    if kind == "star":
        inner = 0.36 + 0.14 * p
        return _polygon_sd(u, v, np.array([1.0, inner] * 5))
    if kind == "cross":
        w = 0.24 + 0.12 * p
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - w), np.maximum(au - w, av - 1.0))
    if kind == "ring":
        inner = 0.45 + 0.2 * p
        r = np.hypot(u, v)
        return np.abs(r - (1.0 + inner) / 2) - (1.0 - inner) / 2
    if kind == "crescent":
        off, rad = 0.35 + 0.2 * p, 0.85
        return np.maximum(np.hypot(u, v) - 1.0, rad - np.hypot(u - off, v))
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------- colours
def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, 3).astype(np.float32)


def _texture(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float,
             radius: float) -> np.ndarray:
    """An (h, w, 3) float32 fill for pixel centres ``xs`` (w,) x ``ys`` (h,); kind and colours are
    random and independent of the class."""
    kind = rng.choice(5, p=[0.5, 0.15, 0.1, 0.1, 0.15])
    c1, c2 = _colour(rng), _colour(rng)
    h, w = len(ys), len(xs)
    if kind == 0:  # solid
        return np.broadcast_to(c1, (h, w, 3)).copy()
    phi = rng.uniform(0.0, 2 * np.pi)
    cs, sn = math.cos(phi), math.sin(phi)
    a = (xs[None, :] - cx) * cs + (ys[:, None] - cy) * sn
    if kind == 1:  # stripes at a random angle
        period = rng.uniform(3.0, max(4.0, radius * 0.8))
        t = np.clip(np.sin(a * (2 * np.pi / period)) * 3.0 + 0.5, 0.0, 1.0)
    elif kind == 2:  # checkerboard at a random angle
        cell = rng.uniform(2.5, max(3.0, radius * 0.5))
        b = -(xs[None, :] - cx) * sn + (ys[:, None] - cy) * cs
        t = ((np.floor(a / cell) + np.floor(b / cell)) % 2).astype(np.float32)
    elif kind == 3:  # noise between two nearby colours
        c2 = c1 + (c2 - c1) * np.float32(rng.uniform(0.3, 0.7))
        t = rng.random((h, w), dtype=np.float32)
    else:  # linear gradient across the object
        t = np.clip(a / (2 * radius) + 0.5, 0.0, 1.0)
    t = np.asarray(t, dtype=np.float32)
    return c1 + (c2 - c1) * t[..., None]


# ---------------------------------------------------------------------------------------- background
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = _colour(rng), _colour(rng)
    phi = rng.uniform(0.0, 2 * np.pi)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    a = xs[None, :] * np.float32(math.cos(phi)) + ys[:, None] * np.float32(math.sin(phi))
    a = (a - a.min()) / max(float(a.max() - a.min()), 1.0)
    img = c1 + (c2 - c1) * a[..., None]
    # Low-frequency colour blotches.
    g = int(rng.integers(3, 9))
    small = np.clip(128.0 + rng.normal(0.0, rng.uniform(10.0, 45.0), (g, g, 3)), 0, 255).astype(np.uint8)
    blot = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += blot - 128.0
    # Sometimes a faint texture over the whole image.
    if rng.random() < 0.35:
        period = rng.uniform(4.0, max(5.0, w / 8))
        phi = rng.uniform(0.0, 2 * np.pi)
        b = xs[None, :] * np.float32(math.cos(phi)) + ys[:, None] * np.float32(math.sin(phi))
        if rng.random() < 0.5:
            t = np.sin(b * np.float32(2 * np.pi / period))
        else:
            b2 = -xs[None, :] * np.float32(math.sin(phi)) + ys[:, None] * np.float32(math.cos(phi))
            t = ((np.floor(b / period) + np.floor(b2 / period)) % 2) * 2.0 - 1.0
        img += (np.float32(rng.uniform(6.0, 25.0)) * t)[..., None] * _colour(rng) / 255.0
    return img


def _distractors(rng: np.random.Generator, img: Image.Image, n: int, thin: bool = False) -> None:
    """Draw ``n`` non-class clutter items (lines, curves, partial arcs, irregular blobs)."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    for _ in range(n):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = 0 if thin else int(rng.integers(0, 3)) if rng.random() < 0.8 else 3
        width = 1 if thin else int(rng.integers(1, max(2, side // 48) + 2))
        if kind == 0:  # straight line
            x0, y0 = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
            ln, ang = rng.uniform(0.1, 0.6) * side, rng.uniform(0, 2 * np.pi)
            draw.line([(x0, y0), (x0 + ln * math.cos(ang), y0 + ln * math.sin(ang))], fill=colour, width=width)
        elif kind == 1:  # smooth curve (quadratic Bezier)
            p = rng.uniform(-0.1, 1.1, (3, 2)) * (w, h)
            t = np.linspace(0.0, 1.0, 24)[:, None]
            pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
            draw.line([tuple(q) for q in pts.tolist()], fill=colour, width=width, joint="curve")
        elif kind == 2:  # partial arc (never a full ring)
            r = rng.uniform(0.04, 0.25) * side
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(40, 200), fill=colour, width=width)
        else:  # irregular blob
            r = rng.uniform(0.02, 0.07) * side
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            k = int(rng.integers(8, 15))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = r * rng.uniform(0.45, 1.25, k)
            draw.polygon([(cx + a * math.cos(b), cy + a * math.sin(b)) for a, b in zip(rad, ang)], fill=colour)


# -------------------------------------------------------------------------------------------- images
def _render(seed: int, split: int, index: int, size: int):
    """One image: ``(uint8 array (h, w, 3), [(category_id, x, y, w, h, area), ...])``."""
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, seed, split, index]))
    width = size
    height = int(round(size * rng.uniform(0.75, 1.0)))
    bg = _background(rng, height, width)
    pil = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _distractors(rng, pil, int(rng.integers(1, 6)))
    canvas = np.asarray(pil, dtype=np.float32).copy()

    n_obj = 1 + int(rng.binomial(MAX_OBJECTS - 1, 0.38))
    visible: list[np.ndarray] = []  # per placed object: its visible mask over the whole image
    vis_count: list[int] = []
    areas: list[int] = []
    anns = []
    lo, hi = math.log(SIZE_RANGE[0] * size), math.log(SIZE_RANGE[1] * size)
    for _ in range(n_obj):
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        kind = SHAPE_CLASSES[cls]
        param = float(rng.random())
        radius = math.exp(rng.uniform(lo, hi)) / 2
        asp = math.exp(rng.uniform(-0.12, 0.12))
        ax, ay = asp, 1.0 / asp
        theta = rng.uniform(0.0, 2 * np.pi)
        cs, sn = math.cos(theta), math.sin(theta)
        half = int(math.ceil(radius * max(ax, ay) * 1.45)) + 2
        for _try in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            px0, py0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
            xs = np.arange(px0, px0 + 2 * half + 1, dtype=np.float32) + 0.5
            ys = np.arange(py0, py0 + 2 * half + 1, dtype=np.float32) + 0.5
            dx, dy = xs[None, :] - cx, ys[:, None] - cy
            u = (dx * cs + dy * sn) / (radius * ax)
            v = (-dx * sn + dy * cs) / (radius * ay)
            sd = _shape_sd(kind, u, v, param) * (radius * min(ax, ay))
            full = sd <= 0.0
            full_area = int(full.sum())
            ix0, iy0 = max(px0, 0), max(py0, 0)
            ix1, iy1 = min(px0 + len(xs), width), min(py0 + len(ys), height)
            if ix1 <= ix0 or iy1 <= iy0 or full_area < 6:
                continue
            crop = (slice(iy0 - py0, iy1 - py0), slice(ix0 - px0, ix1 - px0))
            m = full[crop]
            area = int(m.sum())
            if area < MIN_INSIDE * full_area or area < 6:
                continue
            region = (slice(iy0, iy1), slice(ix0, ix1))
            if any(vc - int((vis[region] & m).sum()) < MIN_VISIBLE * a
                   for vis, vc, a in zip(visible, vis_count, areas)):
                continue
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            bx, by = ix0 + int(cols[0]), iy0 + int(rows[0])
            bw, bh = int(cols[-1]) + 1 - int(cols[0]), int(rows[-1]) + 1 - int(rows[0])
            if bw < 2 or bh < 2:
                continue
            # Placement accepted: paint it (anti-aliased edge), keeping some contrast with what is under it.
            alpha = np.clip(0.5 - sd[crop], 0.0, 1.0)[..., None]
            under = canvas[region]
            under_mean = under[m].mean(axis=0)
            for _c in range(4):
                tex = _texture(rng, xs[crop[1]], ys[crop[0]], cx, cy, radius)
                if np.linalg.norm(tex[m].mean(axis=0) - under_mean) >= MIN_CONTRAST:
                    break
            canvas[region] = under + (tex - under) * alpha
            for i, vis in enumerate(visible):
                before = vis[region]
                after = before & ~m
                vis_count[i] -= int(before.sum()) - int(after.sum())
                vis[region] = after
            vis_new = np.zeros((height, width), dtype=bool)
            vis_new[region] = m
            visible.append(vis_new)
            vis_count.append(area)
            areas.append(area)
            anns.append((cls + 1, bx, by, bw, bh, area))
            break

    # Sensor-like pixel noise over background and objects alike.
    noise = rng.standard_normal(canvas.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(2.0, 6.0))
    canvas += noise
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:  # a few thin lines over everything
        _distractors(rng, out, int(rng.integers(1, 3)), thin=True)
    return np.asarray(out), anns


def _work(job):
    seed, split, index, size, path = job
    arr, anns = _render(seed, split, index, size)
    # a new file renamed over the old one: a rerun's image truncated the old file in place, and a to-yolo set
    # hard-linked to it got the new pixels under its old labels (qa_docs #1)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, "JPEG", quality=JPEG_QUALITY)
    return arr.shape[1], arr.shape[0], anns


# ----------------------------------------------------------------------------------------------- api
def _mp_context():
    # fork where there is one: workers inherit this module as loaded (numpy + PIL only; they never
    # touch torch), where spawn would re-import the package (and torch) in every worker, seconds each.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _coco(split: str, names: list[str], results: list, seed: int, size: int) -> dict:
    images, annotations = [], []
    for i, (name, (w, h, anns)) in enumerate(zip(names, results), start=1):
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for cat, x, y, bw, bh, area in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat,
                                "bbox": [x, y, bw, bh], "area": area, "iscrowd": 0})
    return {
        "info": {"description": DESCRIPTION, "version": GENERATOR_VERSION, "split": split,
                 "seed": seed, "size": size},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SHAPE_CLASSES)],
    }


def existing_matches(out_dir: str | Path, n_train: int, n_val: int, size: int, seed: int) -> bool:
    """True when ``out_dir`` already holds the set these arguments (and this generator version) make."""
    out_dir = Path(out_dir)
    for split, n in (("train", n_train), ("val", n_val)):
        try:
            data = json.loads((out_dir / split / "annotations.json").read_text())
        except (OSError, ValueError):
            return False
        info = data.get("info", {})
        if (info.get("version"), info.get("seed"), info.get("size"), len(data.get("images", []))) != \
                (GENERATOR_VERSION, seed, size, n):
            return False
    return True


def _refuse_foreign(ann_path: Path) -> None:
    """An annotations file this generator did not write is someone's data: never overwrite it."""
    if ann_path.exists() and not _generated(ann_path):
        raise DataError(f"{ann_path} exists and was not written by `nasdet data make-synthetic`: not overwriting "
                        "it; choose another output folder, or delete the file")


def _listed_images(ann_paths: dict[str, Path]) -> set[str]:
    """The images (paths relative to the output folder) that annotation files this generator wrote list: its
    own, also in a folder written before it kept a record."""
    listed = set()
    for split, path in ann_paths.items():
        if _generated(path):
            try:
                listed |= {f"{split}/images/{im['file_name']}" for im in json.loads(path.read_text())["images"]}
            except (OSError, ValueError, KeyError, TypeError):
                pass
    return listed


def _ours(mark: Path) -> bool:
    """A data set mark of the output folder that this generator wrote (its annotations, or the YOLO labels and
    data.yaml ``--format yolo`` adds over them): a rerun may rewrite it."""
    if mark.name in ("data.yaml", "data.yml"):
        return written_by_nasdet_yaml(mark)
    return _generated(mark if mark.name == "annotations.json" else mark.parent / "annotations.json")


def _generated(ann_path: Path) -> bool:
    """True for an annotations file this generator wrote."""
    try:
        return json.loads(ann_path.read_text()).get("info", {}).get("description") == DESCRIPTION
    except (OSError, ValueError, AttributeError):
        return False


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def make_synthetic(out_dir: str | Path, n_train: int = 2000, n_val: int = 500, size: int = 256, seed: int = 0,
                   workers: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Writes out_dir/train/images/*.jpg + out_dir/train/annotations.json and the same under out_dir/val/.

    Returns {"train": ann_path, "val": ann_path}. progress(done, total) is called as images are written.
    The output depends only on (n_train, n_val, size, seed), never on ``workers`` (default
    ``min(2, os.cpu_count())`` processes).
    """
    for name, val in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(val, int) or val < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {val!r}")
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")

    out_dir = Path(out_dir)
    counts = {"train": n_train, "val": n_val}
    ann_paths = {s: out_dir / s / "annotations.json" for s in _SPLITS}
    for path in ann_paths.values():
        _refuse_foreign(path)
    refuse_output_in_data(out_dir, (), OUTPUT, ours=_ours, inside=True)
    names = {split: [f"{i + 1:0{max(6, len(str(counts[split])))}d}.jpg" for i in range(counts[split])]
             for split in _SPLITS}
    record = out_dir / RECORD
    earlier = written_files(record) | _listed_images(ann_paths)
    now = {f"{split}/images/{name}" for split in _SPLITS for name in names[split]}
    img_dirs = [out_dir / split / "images" for split in _SPLITS]
    # a split folder holds what this command writes there (--format yolo: labels/ too), and nothing else
    folders_ours = {f"{split}/{name}" for split in _SPLITS for name in ("images", "labels", "annotations.json")}
    refuse_unrecorded_files(out_dir, [out_dir / s for s in _SPLITS] + img_dirs, earlier | folders_ours, OUTPUT,
                            COMMAND)
    record_written(record, earlier | now, command=COMMAND)  # before the first image: a killed run can be rerun
    jobs = []
    for split_id, (split, img_dir) in enumerate(zip(_SPLITS, img_dirs)):
        img_dir.mkdir(parents=True, exist_ok=True)
        # Stale annotations would make a half-rewritten folder look complete.
        ann_paths[split].unlink(missing_ok=True)
        jobs += [(seed, split_id, i, size, str(img_dir / n)) for i, n in enumerate(names[split])]

    total = len(jobs)
    results = []
    if progress is not None:
        progress(0, total)
    workers = min(workers, max(total, 1))
    if workers == 1 or total < 8:
        for job in jobs:
            results.append(_work(job))
            if progress is not None:
                progress(len(results), total)
    else:
        chunk = max(1, min(16, total // (workers * 8)))
        pool = _mp_context().Pool(workers)
        try:
            for r in pool.imap(_work, jobs, chunksize=chunk):
                results.append(r)
                if progress is not None:
                    progress(len(results), total)
            # the workers end on the pool's sentinel: `with Pool()` ends them by SIGTERM (terminate), which printed
            # a KeyboardInterrupt traceback per worker under the CLI's handler, or hung when one came as a worker
            # started
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()

    # Annotation files last, atomically: only a finished run leaves them.
    for split in _SPLITS:
        part, results = results[:counts[split]], results[counts[split]:]
        coco = _coco(split, names[split], part, seed, size)
        _write_atomic(ann_paths[split], json.dumps(coco, separators=(",", ":")) + "\n")
    record_written(record, drop_earlier_files(out_dir, earlier, now, img_dirs), command=COMMAND)
    return dict(ann_paths)
