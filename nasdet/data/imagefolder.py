"""Classification data in ImageNet's layout, ``<root>/<class>/<image>``, read with torchvision's ``ImageFolder``.

torchvision finds the classes (sub-folder names, sorted) and the images (its extensions); nasdet turns
its complaints into one ``DataError`` naming the folder (no class folder, a class folder without an
image), decodes pixels as the detection sets do (EXIF orientation, 16-bit PNGs) and names the file of
an image that cannot be decoded. Items are ``(uint8 3 x H x W image, class index)`` after the transforms
(SPOS's ImageNet recipe: RandomResizedCrop, horizontal flip, ColorJitter 0.4; evaluation: resize to
input / 0.875, centre crop).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from ..errors import DataError
from .dataset import decode_upright_rgb, item_draws, unreadable_image

EVAL_CROP = 0.875  # ImageNet evaluation: resize to 256, centre crop 224


class ImageFolderSet(torch.utils.data.Dataset):
    """``samples`` = [(file, class index)]; class ``i`` is ``classes[i]``."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], source: str,
                 transforms: Callable | None = None):
        self.samples = list(samples)
        self.classes = list(classes)
        self.source = source  # the folder, for messages
        self.transforms = transforms

    @classmethod
    def open(cls, root: str | Path) -> "ImageFolderSet":
        """Every image under ``root/<class>/``; a missing folder, no class folder or an empty class folder is a
        ``DataError`` naming it."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist (expected <class>/<image> folders under it, "
                            "as ImageNet's train/ and val/)")
        try:
            found = ImageFolder(str(root), loader=lambda p: p)
        except FileNotFoundError as e:
            raise DataError(f"image folder {root}: {_empty_class_message(root, str(e))}") from None
        if len(found.classes) < 2:  # one folder holding the class folders one level down: a 1-class "classifier"
            (only,) = found.classes
            deeper = sorted(p.name for p in (root / only).iterdir() if p.is_dir())
            hint = f"; its folder {only}/ holds folders ({', '.join(deeper[:3])}...): is the set under {root / only}?" \
                if deeper else ""
            raise DataError(f"image folder {root} has one class folder ({only}); classification needs two or "
                            f"more{hint}")
        return cls(found.samples, found.classes, str(root))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> "ImageFolderSet":
        return ImageFolderSet([self.samples[i] for i in indices], self.classes, self.source, self.transforms)

    def with_transforms(self, transforms: Callable | None) -> "ImageFolderSet":
        return ImageFolderSet(self.samples, self.classes, self.source, transforms)

    def load_image(self, index: int) -> torch.Tensor:
        path = self.samples[index][0]
        try:
            with Image.open(path) as im:
                arr, _ = decode_upright_rgb(im)
        except FileNotFoundError as e:
            raise DataError(f"{self.source}: image file {path} is missing") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise unreadable_image(f"{self.source}: image file {path}", e) from None
        return torch.from_numpy(arr).permute(2, 0, 1)

    def __getitem__(self, index: int | tuple) -> tuple[torch.Tensor, int]:
        """Item ``index``; ``(index, size, seed)`` (``SizedBatchSampler``): the transforms draw from torch's generator
        seeded with ``seed`` (``item_draws``), so a run resumed mid-epoch draws what the uninterrupted one did (each
        worker's stream ran on from its own start); ``size`` is the detection sets'."""
        seed = None
        if isinstance(index, tuple):
            index, _, *seeds = index
            seed = seeds[0] if seeds else None
        image = self.load_image(index)
        if self.transforms is not None:
            with item_draws(seed):
                image = self.transforms(image)
        return image, self.samples[index][1]


def _empty_class_message(root: Path, torch_message: str) -> str:
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not any(
        f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS) for f in p.rglob("*")))
    if empty:
        return (f"class folder(s) {', '.join(str(root / n) for n in empty[:5])} hold no image "
                f"({', '.join(IMG_EXTENSIONS)}); remove them or add images")
    return f"no <class>/<image> folders found ({torch_message})"


def open_classification_splits(root: str | Path, train: str, val: str) -> dict[str, ImageFolderSet]:
    """``root/train`` and ``root/val`` (the folder names given), with the same classes."""
    root = Path(root)
    sets = {"train": ImageFolderSet.open(root / train), "val": ImageFolderSet.open(root / val)}
    if sets["train"].classes != sets["val"].classes:
        only_train = sorted(set(sets["train"].classes) - set(sets["val"].classes))
        only_val = sorted(set(sets["val"].classes) - set(sets["train"].classes))
        raise DataError(f"{root}: {train}/ and {val}/ have different class folders (only in {train}: "
                        f"{only_train[:5]}, only in {val}: {only_val[:5]})")
    return sets


def classification_train_transforms(size: int, min_scale: float = 0.08, hflip: float = 0.5,
                                    color_jitter: float = 0.4) -> v2.Compose:
    """SPOS / torchvision ImageNet training: random-resized crop, flip, colour jitter (uint8 in and out)."""
    steps: list = [v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(steps)


def classification_eval_transforms(size: int) -> v2.Compose:
    """Resize the short side to ``size / 0.875``, centre crop ``size`` (ImageNet's 256 -> 224)."""
    return v2.Compose([v2.Resize(int(round(size / EVAL_CROP)), antialias=True), v2.CenterCrop(size)])


def collate_classification(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-size crops stack into one uint8 batch; labels into one tensor."""
    images, labels = zip(*batch)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long)
