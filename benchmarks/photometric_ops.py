"""Cost of each op of the recipes' photometric distortion (torchvision's ``RandomPhotometricDistort``: brightness,
contrast, saturation, hue, channel permutation) on one uint8 image at the demo's training size, and the hue shift's
parts (issue 27: the recipe's augmentation is most of the trainer's gap to its bare step). One torch thread, as a
loader item runs; microseconds per call, median of ``--repeats`` blocks.

    python benchmarks/photometric_ops.py --size 128
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import _color
from torchvision.transforms.v2.functional._misc import to_dtype_image


def per_call_us(fn, calls: int, repeats: int) -> float:
    fn()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    img = (torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    x = to_dtype_image(img, torch.float32, scale=True)
    hsv = _color._rgb_to_hsv(x)
    ops = {
        "brightness": lambda: F.adjust_brightness(img, 1.1),
        "contrast": lambda: F.adjust_contrast(img, 1.1),
        "saturation": lambda: F.adjust_saturation(img, 1.1),
        "hue": lambda: F.adjust_hue(img, 0.03),
        "channel permutation": lambda: F.permute_channels(img, [2, 0, 1]),
        "  hue: uint8 -> float": lambda: to_dtype_image(img, torch.float32, scale=True),
        "  hue: rgb -> hsv": lambda: _color._rgb_to_hsv(x),
        "  hue: hsv -> rgb": lambda: _color._hsv_to_rgb(hsv),
        "  hue: its aminmax": lambda: torch.aminmax(x, dim=-3),
    }
    print(f"{args.size} px uint8 image, 1 thread, us per call (median of {args.repeats} x {args.calls})")
    for name, fn in ops.items():
        print(f"{name:24s} {per_call_us(fn, args.calls, args.repeats):9.1f}")


if __name__ == "__main__":
    main()
