"""The embedded classification set: images of one shape each, in ImageNet's folder layout, generated locally.

``make_synthetic_imagefolder(out_dir, n_train, n_val, size, seed)`` writes::

    out_dir/train/<class>/000001.jpg ...   out_dir/val/<class>/000001.jpg ...

with the classes of the shapes detection set (``SHAPE_CLASSES``), in equal numbers (image ``i`` is of
class ``i mod 8``). Each image is ``size`` x ``size`` and shows one shape drawn as the detection set
draws its objects (same signed-distance shapes, random texture and colours independent of the class,
random rotation and aspect) over the same cluttered background, at 35-85 % of the image side, so a
backbone that learns these classes has learned features the detection set needs (nasdet's DetNAS
step 1 on CPU). Every image has its own random stream seeded by ``(seed, split, index)``; the output
depends on the arguments only. Images are written atomically; a rerun rewrites the set.

Output folder: the checks of ``make_synthetic``'s (no data set in, around or above it), and its split folders
hold only the class folders, and those only the images, that its record (``RECORD``, written before the first
image) lists: a rerun replaces and removes its own images, never another's or another class.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..files import atomic_path
from ..user_data import (drop_earlier_files, record_written, recorded_mark, refuse_output_in_data,
                         refuse_unrecorded_files, written_files)
from .synthetic import (COMMAND, GENERATOR_VERSION, JPEG_QUALITY, MIN_CONTRAST, OUTPUT, RECORD, SHAPE_CLASSES,
                        _background, _distractors, _shape_sd, _texture)

__all__ = ["make_synthetic_imagefolder"]

SIZE_RANGE = (0.35, 0.85)  # the shape's diameter as a fraction of the image side
_STREAM = 7  # keeps these images' random streams apart from the detection set's


def class_of(index: int) -> int:
    """The class of image ``index``: the classes in turn, so every class has as many images (one more at most)."""
    return index % len(SHAPE_CLASSES)


def render_shape_image(seed: int, split: int, index: int, size: int) -> tuple[np.ndarray, int]:
    """One image: ``(uint8 array (size, size, 3), class index)``."""
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, _STREAM, seed, split, index]))
    cls = class_of(index)
    pil = Image.fromarray(np.clip(_background(rng, size, size), 0, 255).astype(np.uint8))
    _distractors(rng, pil, int(rng.integers(0, 3)))
    canvas = np.asarray(pil, dtype=np.float32).copy()
    radius = size * math.exp(rng.uniform(*np.log(SIZE_RANGE))) / 2
    asp = math.exp(rng.uniform(-0.12, 0.12))
    ax, ay = asp, 1.0 / asp
    theta = rng.uniform(0.0, 2 * np.pi)
    cs, sn = math.cos(theta), math.sin(theta)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    xs = np.arange(size, dtype=np.float32) + 0.5
    dx, dy = xs[None, :] - cx, xs[:, None] - cy
    u = (dx * cs + dy * sn) / (radius * ax)
    v = (-dx * sn + dy * cs) / (radius * ay)
    sd = _shape_sd(SHAPE_CLASSES[cls], u, v, float(rng.random())) * (radius * min(ax, ay))
    alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]
    inside = sd <= 0
    under_mean = canvas[inside].mean(axis=0)
    for _ in range(4):  # keep the shape visible against what is under it
        tex = _texture(rng, xs, xs, cx, cy, radius)
        if np.linalg.norm(tex[inside].mean(axis=0) - under_mean) >= MIN_CONTRAST:
            break
    canvas += (tex - canvas) * alpha
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 6.0))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), cls


def make_synthetic_imagefolder(out_dir: str | Path, n_train: int = 800, n_val: int = 200, size: int = 48,
                               seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Writes ``out_dir/{train,val}/<class>/NNNNNN.jpg``; returns ``{"train": folder, "val": folder}``."""
    for name, val in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(val, int) or val < len(SHAPE_CLASSES):
            raise ConfigError(f"{name} must be an integer >= {len(SHAPE_CLASSES)} (one image per class at least), "
                              f"got {val!r}")
    if not isinstance(size, int) or size < 16:
        raise ConfigError(f"size must be an integer >= 16, got {size!r}")
    out_dir = Path(out_dir)
    splits = {"train": n_train, "val": n_val}
    record = out_dir / RECORD
    earlier = written_files(record)
    refuse_output_in_data(out_dir, (), OUTPUT, ours=recorded_mark(out_dir, earlier), inside=True)
    names = {split: [f"{SHAPE_CLASSES[class_of(i)]}/{i + 1:0{max(6, len(str(n)))}d}.jpg" for i in range(n)]
             for split, n in splits.items()}
    now = {f"{split}/{name}" for split in splits for name in names[split]}
    class_dirs = [out_dir / split / c for split in splits for c in SHAPE_CLASSES]
    refuse_unrecorded_files(out_dir, [out_dir / split for split in splits] + class_dirs,
                            earlier | {d.relative_to(out_dir).as_posix() for d in class_dirs}, OUTPUT, COMMAND)
    record_written(record, earlier | now, command=COMMAND)  # before the first image: a killed run can be rerun
    total, done = n_train + n_val, 0
    for split_id, split in enumerate(splits):
        for c in SHAPE_CLASSES:
            (out_dir / split / c).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names[split]):
            arr, _ = render_shape_image(seed, split_id, i, size)
            with atomic_path(out_dir / split / name) as tmp:
                Image.fromarray(arr).save(tmp, "JPEG", quality=JPEG_QUALITY)
            done += 1
            if progress is not None:
                progress(done, total)
    record_written(record, drop_earlier_files(out_dir, earlier, now, class_dirs), command=COMMAND)
    return {"train": out_dir / "train", "val": out_dir / "val"}
