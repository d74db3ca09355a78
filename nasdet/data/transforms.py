"""transforms.v2 pipelines on ``(tv_tensors.Image, target)`` pairs.

Images stay uint8 through the loader (cheap to batch and to move to a GPU); the detector itself normalises
and resizes to ``model.input_size`` (see nasdet.models.detectors), so evaluation feeds native images to
every candidate resolution of a search and to the deployed model's graph. Training images are resized in
the loader to the size the trainer trains at (``TrainTransforms``), which the model's resize then keeps.
"""
from __future__ import annotations

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# ImageNet mean in 0-255: what SSD fills zoomed-out borders with.
_FILL = {tv_tensors.Image: (124, 116, 104), "others": 0}


class DropCrowd(torch.nn.Module):
    """Training ignores crowd / difficult boxes (COCO, VOC); remove them before geometric transforms."""

    def forward(self, image, target):
        keep = target["iscrowd"] == 0
        out = {k: v for k, v in target.items() if k != "iscrowd"}
        if not bool(keep.all()):
            out["boxes"] = tv_tensors.wrap(target["boxes"][keep], like=target["boxes"])
            out["labels"] = target["labels"][keep]
        return image, out


# For each hue sector i = floor(6 h) (7: a hue that rounds to 1.0), which of (v, p, q, t) each of R, G, B takes:
# torchvision's _hsv_to_rgb table, as rows of a flat lookup (row c at offset 7 c).
_RGB_FROM_VPQT = torch.tensor([[0, 2, 1, 1, 3, 0, 0], [3, 0, 0, 2, 1, 1, 3], [1, 1, 3, 0, 0, 2, 1]])
_ROW_OFFSETS = torch.tensor([0, 7, 14]).view(3, 1, 1)


def adjust_hue_uint8(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """torchvision's ``adjust_hue`` of a uint8 RGB image (3, H, W), the same output bits, in half the time.

    The same float operations in the same order (RGB -> HSV -> RGB in float32, Pillow's formulas); what
    costs there and not here are the selections: bool masks (``where``, ``aminmax``, a mask times a float
    tensor, ``fmod``, ``remainder``: 20-90 us each at 128 px against 3-6 for float arithmetic) and a long
    index table built per pixel. Here, for uint8 input (channel values k / 255, so a nonzero difference is
    over 1e-3): max / min of three tensors; ``clamp_min(1e-3)`` for torchvision's "replace a zero divisor by
    1" (0 / 1e-3 and 0 / 1 are both 0); 0 / 1 float masks from ``(x * 512).clamp(max=1)`` of values that are 0
    or >= 1 / 255; ``x - floor(x)`` for fmod and remainder by 1 (exact here: Sterbenz, or the same one
    addition remainder does for a negative x). Checked bit for bit against torchvision on all 2^24 colours
    (tests/test_train_transforms.py). 0.40 against 0.75 ms at 128 px on the 2-core Xeon."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise TypeError(f"adjust_hue_uint8 takes a uint8 RGB image (3, H, W), got {image.dtype} {tuple(image.shape)}")
    img = image.to(torch.float32).mul_(1.0 / 255)
    r, g, b = img.unbind(-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    s = chroma / maxc.clamp_min(1e-3)
    divisor = chroma.clamp_min(1e-3)
    rc, gc, bc = (maxc - r).div_(divisor), (maxc - g).div_(divisor), (maxc - b).div_(divisor)
    max_not_r = (rc * 512).clamp_(max=1.0)  # rc is 0 where maxc == r (and where all three are equal)
    max_not_g = (gc * 512).clamp_(max=1.0)
    hg = rc.add(2.0).sub_(bc).mul_(max_not_r * (1.0 - max_not_g))
    hr = bc.sub_(gc).mul_(1.0 - max_not_r)
    hb = gc.add_(4.0).sub_(rc).mul_(max_not_r * max_not_g)
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0)
    h = h.sub_(torch.floor(h)).add_(hue_factor)
    h6 = h.sub_(torch.floor(h)).mul_(6)
    sector = torch.floor(h6)
    f = h6.sub_(sector)
    v, s_f, one_minus_s = maxc, s * f, 1.0 - s
    q = (1.0 - s_f).mul_(v).clamp_(0.0, 1.0)
    t = s_f.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    pick = _RGB_FROM_VPQT.to(image.device).take(sector.long().unsqueeze(0) + _ROW_OFFSETS.to(image.device))
    return torch.stack((v, p, q, t)).gather(0, pick).mul_(256.0 - 1e-3).to(torch.uint8)


class PhotometricDistort(v2.RandomPhotometricDistort):
    """torchvision's ``RandomPhotometricDistort``, the same draws and output, with the hue shift of a uint8 RGB
    image done by ``adjust_hue_uint8`` (torchvision's was a third of the demo tune stage's loading time). Called on
    ``(image, target)`` whose target is a flat dict of no images (boxes, masks, labels: what passes through
    unchanged), it distorts the image alone: leaving the target out of torchvision's flattening of the sample
    saves 25 us of the 300 per image."""

    def forward(self, *inputs):
        if (len(inputs) == 2 and type(inputs[0]) is tv_tensors.Image and isinstance(inputs[1], dict)
                and not any(isinstance(v, (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image, dict, list, tuple))
                            for v in inputs[1].values())):
            return super().forward(inputs[0]), inputs[1]
        return super().forward(*inputs)

    def _call_kernel(self, functional, inpt, *args, **kwargs):
        if (functional is F.adjust_hue and type(inpt) in (torch.Tensor, tv_tensors.Image) and inpt.device.type == "cpu"
                and inpt.dtype == torch.uint8 and inpt.ndim == 3 and inpt.shape[0] == 3 and inpt.numel()):
            out = adjust_hue_uint8(inpt.as_subclass(torch.Tensor), *args, **kwargs)
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        return super()._call_kernel(functional, inpt, *args, **kwargs)


class IoUCropIfBoxes(torch.nn.Module):
    """SSD's RandomIoUCrop, skipped on images without boxes (it needs boxes to measure IoU)."""

    def __init__(self):
        super().__init__()
        self.crop = v2.RandomIoUCrop()

    def forward(self, image, target):
        if target["boxes"].shape[0] == 0:
            return image, target
        return self.crop(image, target)


class TrainTransforms(v2.Compose):
    """The detection training pipeline of ``data.augment``, at ``size`` (the training resolution) or native size.

    With ``augment.at_train_size`` and a size, the image is resized to ``size x size`` (what every detector's
    ``GeneralizedRCNNTransform`` with ``fixed_size`` does; bilinear, no antialias, as it does) after the ops
    that change the canvas (zoom out, IoU crop) and before the colour ops: those then touch only the pixels the
    model sees (2-3.5x fewer on the demo's 256 px images at 128-160 px; the hue shift alone was ~3 ms per
    native image, a quarter of a CPU training step), and the model's own resize is the identity. The random
    draws keep their order (photometric, then flip) when there is no zoom out or crop, so a seed augments
    the same way; colour ops after a zoom out also tint its mean-colour border. Trainers call ``at_size``
    with their resolution (``Trainer.train_resolution``).

    Without zoom out and crop, nothing before the colour ops is random: the first ``len(fixed)`` steps (drop
    crowd boxes, resize, drop boxes the resize left under a pixel) give the same image and boxes every epoch,
    and ``DetectionDataset`` keeps their output in the decode cache (``fixed_tag`` names it) and runs only
    ``random`` on it (the resize and the box sanitizing were 0.3 ms of the 0.7 ms per demo image)."""

    def __init__(self, augment, size: int | None = None):
        self.augment, self.size = augment, size
        colour = [PhotometricDistort(p=augment.photometric)] if augment.photometric > 0 else []
        flip = [v2.RandomHorizontalFlip(p=augment.hflip)] if augment.hflip > 0 else []
        canvas = []
        if augment.zoom_out > 0:
            canvas.append(v2.RandomZoomOut(fill=_FILL, side_range=(1.0, augment.zoom_out_max), p=augment.zoom_out))
        if augment.iou_crop:
            canvas.append(IoUCropIfBoxes())
        # Crops and flips can leave slivers, a resize boxes under a pixel; the detectors assert on degenerate boxes.
        sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)
        fixed: list = []
        if size is not None and augment.at_train_size:
            resize = v2.Resize((size, size), antialias=False)
            if canvas:
                steps: list = [DropCrowd(), *canvas, resize, *colour, *flip, sanitize]
            else:  # a flip keeps every box's size and colour ops move no box: sanitizing after the resize suffices
                fixed = [DropCrowd(), resize, sanitize]
                steps = [*fixed, *colour, *flip]
        else:  # SSD's order: colour on the decoded image, then the canvas ops; the model resizes
            steps = [DropCrowd(), *colour, *canvas, *flip, sanitize]
        super().__init__(steps)
        self.fixed = v2.Compose(fixed) if fixed else None  # the same output for an image every time
        rest = steps[len(fixed):]
        self.random = v2.Compose(rest) if rest else v2.Identity()
        self.fixed_tag = ("train_fixed", size) if fixed else None  # its decode-cache key, beside the file's
        self._at_sizes: dict[int, TrainTransforms] = {}

    def at_size(self, size: int) -> "TrainTransforms":
        if size == self.size:
            return self
        if size not in self._at_sizes:  # (a multi-resolution loader asks per item)
            self._at_sizes[size] = TrainTransforms(self.augment, size)
        return self._at_sizes[size]


def build_train_transforms(augment, size: int | None = None) -> TrainTransforms:
    """``augment``: nasdet.config.AugmentConfig. Output image uint8, boxes sanitized (no degenerate)."""
    return TrainTransforms(augment, size)


def at_train_size(dataset, size: int):
    """``dataset`` with its detection training transforms at ``size`` (other transforms: unchanged)."""
    tf = dataset.transforms
    return dataset.with_transforms(tf.at_size(size)) if isinstance(tf, TrainTransforms) else dataset


def build_eval_transforms() -> None:
    """Evaluation feeds images as they are: the model resizes, and boxes come back in image coordinates."""
    return None


def to_model_input(images, device: torch.device) -> list[torch.Tensor]:
    """uint8 CHW images -> float [0, 1] on ``device`` (converted after the copy: 4x less to move)."""
    return [img.to(device, non_blocking=True).float().div_(255.0) for img in images]


def targets_to(targets, device: torch.device) -> list[dict]:
    return [
        {"boxes": t["boxes"].as_subclass(torch.Tensor).to(device, non_blocking=True).float(),
         "labels": t["labels"].to(device, non_blocking=True)}
        for t in targets
    ]
