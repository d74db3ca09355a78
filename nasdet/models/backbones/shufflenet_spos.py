"""``ShuffleNetSPOS``: DetNAS's ShuffleNetV2 single-path one-shot supernet as a detection backbone.

Layout (megvii-model/DetNAS ``detnasnet.py`` / ``shuffle_blocks.py``, SinglePathOneShot ``network.py``)::

    first_conv  3 -> stem, 3x3 s2, BN, ReLU (no max-pool)              stride 2
    stage1  blocks[0] choice blocks, the first with stride 2  -> c2    stride 4
    stage2  blocks[1]                                         -> c3    stride 8
    stage3  blocks[2]                                         -> c4    stride 16
    stage4  blocks[3]                                         -> c5    stride 32

    size   stem  stage widths           blocks     choice blocks  (ImageNet form: last 1x1 conv)
    300M   16    64, 160, 320, 640      4, 4, 8, 4    20          1024
    1.3G   48    96, 240, 480, 960      8, 8, 16, 8   40          1024
    3.8G   72    172, 432, 864, 1728    8, 8, 16, 8   40          1728
    tiny   16    48, 96, 192, 384       2, 2, 4, 2    10          512   (ours, for CPU demos and tests)

Every choice block has four candidates, index order fixed as DetNAS's ``blocks_key``:
0 = ShuffleNet 3x3, 1 = ShuffleNet 5x5, 2 = ShuffleNet 7x7, 3 = Xception (three depthwise 3x3 +
pointwise pairs). Each candidate is a whole ShuffleNetV2 unit with its own weights (no sharing
between candidates, as in both Megvii code bases); mid channels = out / 2. Megvii's block layout:

- stride 1 (in = out = C): channel split by shuffle, ``proj = x[:, 0::2]``, ``main = x[:, 1::2]``
  (Megvii's ``channel_shuffle2``), output ``cat(proj, branch(main))``, branch C/2 -> C/2;
- stride 2 (in -> out): ``proj`` = depthwise k x k stride 2 + BN, 1x1 in -> in + BN + ReLU
  (k = the candidate's kernel, 3 for Xception); the branch maps in -> out - in (so the halves are
  NOT equal: 16 + 48 in the first 300M block); output ``cat(proj, branch(x))``;
- ShuffleNet k x k branch: 1x1 -> mid, BN, ReLU; depthwise k x k (stride), BN; 1x1 -> out, BN, ReLU;
- Xception branch: [depthwise 3x3 (stride in the first), BN, 1x1, BN, ReLU] x 3 (-> mid, mid, out).

``layout`` (``model.backbone.layout``) picks whose unit, so that each reference's released supernet
weights load function-preserving (``shufflenet_checkpoints.py``):

- ``spos`` (default; the layout above): SinglePathOneShot's supernet and Megvii's retrained nets;
- ``detnas``: DetNAS's supernets (``Supernet-ImageNet`` and the COCO ``*-search`` body) split a
  stride-1 input with ``channel_shuffle1``: interleave the halves (2i <- i, 2i+1 <- C/2+i), then pass
  the first half through;
- ``mmrazor``: MMRazor's ``ShuffleBlock`` / ``ShuffleXception``: stride-2 halves are equal (proj
  in -> out/2, branch in -> out/2), a stride-1 unit passes its first half through (``chunk``), and every
  unit ends with ``channel_shuffle(out, 2)``. Sizes differ from Megvii's by ~0.1 %.

Differences from the references, none of which changes a size or what a loaded checkpoint computes
(the mappings fold them): the stem conv has no bias (as SinglePathOneShot; DetNAS's bias before the BN
becomes the BN's running mean), weights start with kaiming fan-out init
(``he_fout_init``, as the other nasdet backbones), and BN is always affine (DetNAS's supernets; SPOS's
ImageNet supernet uses ``affine=False``: loaded as weight 1, bias 0).

An arch is ``{"stage1.block0.op": 0..3, ...}``, also accepted and printed as DetNAS's flat list
(``arch_from_list`` / ``arch_to_list``, block order stage by stage). Supernet protocol:
``search_space()``, ``set_arch(arch)``, ``active_arch``, ``export(arch=None)`` (a static
``ShuffleNetV2Backbone`` holding copies of the chosen candidates only, same outputs).
``arch_macs(arch, input_size)`` sums a per-candidate lookup table (SPOS's ``op_flops_dict``).
"""
from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ...errors import CheckpointError, ConfigError
from ...space import ArchError, SearchSpace
from ...space.elastic import he_fout_init, make_divisible

OPS = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")  # index = choice value
OP_KERNEL = (3, 5, 7, 3)
OP_NAMES = ("ShuffleNet 3x3", "ShuffleNet 5x5", "ShuffleNet 7x7", "Xception")
LEVELS = ("c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class SpaceSize:
    """Widths and depths of one DetNAS size."""

    stem: int
    widths: tuple[int, int, int, int]
    blocks: tuple[int, int, int, int]
    last: int  # the ImageNet form's last 1x1 conv (not part of the detection backbone)

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks)


SIZES: dict[str, SpaceSize] = {
    "300M": SpaceSize(16, (64, 160, 320, 640), (4, 4, 8, 4), 1024),
    "1.3G": SpaceSize(48, (96, 240, 480, 960), (8, 8, 16, 8), 1024),
    "3.8G": SpaceSize(72, (172, 432, 864, 1728), (8, 8, 16, 8), 1728),
    "tiny": SpaceSize(16, (48, 96, 192, 384), (2, 2, 4, 2), 512),
}
BACKBONE_NAMES = {f"detnas_{s}": s for s in SIZES}  # registry name -> size


def choice_names(blocks: Sequence[int]) -> list[str]:
    """``stage{s}.block{j}.op`` in DetNAS's flat order (stage by stage, block by block)."""
    return [f"stage{s}.block{j}.op" for s, n in enumerate(blocks, start=1) for j in range(n)]


def sizes_of(num_blocks: int, stem: int | None) -> list[str]:
    """The DetNAS sizes of ``num_blocks`` choice blocks and a ``stem``-channel first conv (a released file's)."""
    return [n for n, s in SIZES.items() if s.num_blocks == num_blocks and s.stem == stem]


def _layout_of(length: int) -> tuple[str, tuple[int, ...]]:
    """(size label, blocks per stage) of the sizes with ``length`` choice blocks."""
    names = [n for n, size in SIZES.items() if size.num_blocks == length]
    if names:
        return "/".join(names), SIZES[names[0]].blocks
    known = ", ".join(sorted({f"{s.num_blocks} ({', '.join(n for n in SIZES if SIZES[n].num_blocks == s.num_blocks)})"
                              for s in SIZES.values()}))
    raise ArchError(f"a DetNAS arch list has one choice per block: expected {known} entries, got {length}")


def _allowed() -> str:
    return ", ".join(f"{i} ({n})" for i, n in enumerate(OP_NAMES))


def arch_from_list(choices: Sequence[int], size: str | None = None) -> dict[str, int]:
    """DetNAS's flat list (``[2, 1, 2, 0, ...]``) -> an arch dict. ``size`` ("300M", "1.3G", "3.8G",
    "tiny") fixes the expected length; without it the length picks the layout (20, 40 or 10 blocks).

    ``ArchError`` names every bad block (position and choice name) and the allowed values.
    """
    if isinstance(choices, (str, bytes, Mapping)) or not isinstance(choices, Sequence):
        raise ArchError(f"a DetNAS arch list is a sequence of ints 0..3, got {type(choices).__name__}")
    if size is None:
        size, blocks = _layout_of(len(choices))
    else:
        if size not in SIZES:
            raise ArchError(f"unknown DetNAS size {size!r}; sizes: {list(SIZES)}")
        blocks = SIZES[size].blocks
        if len(choices) != sum(blocks):
            raise ArchError(f"a DetNAS {size} arch list has {sum(blocks)} entries (blocks per stage {list(blocks)}), "
                            f"got {len(choices)}")
    names = choice_names(blocks)
    bad = [f"block {i} ({names[i]}) = {v!r}" for i, v in enumerate(choices)
           if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < len(OPS)]
    if bad:
        raise ArchError(f"invalid DetNAS {size} arch list: {'; '.join(bad)}; allowed values per block: {_allowed()}")
    return {n: int(v) for n, v in zip(names, choices)}


def arch_to_list(arch: Mapping[str, Any]) -> list[int]:
    """An arch dict (names ``stage{s}.block{j}.op``, optionally prefixed, e.g. ``backbone.``) -> DetNAS's flat list."""
    keyed = []
    for name, v in arch.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[-1] != "op" or not parts[-3].startswith("stage") or not parts[-2].startswith("block"):
            continue
        keyed.append(((int(parts[-3][5:]), int(parts[-2][5:])), int(v)))
    if not keyed:
        raise ArchError(f"arch has no 'stageS.blockJ.op' choices: {sorted(arch)[:5]}")
    return [v for _, v in sorted(keyed)]


# ------------------------------------------------------------------------------------ static modules
def _bn(c: int, norm: str) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm2d(c)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(c)
    raise ConfigError(f"backbone.norm must be 'bn' or 'frozen_bn', got {norm!r}")


def _dw(c: int, k: int, stride: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), _bn(c, norm)]


def _pw(cin: int, cout: int, norm: str, relu: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), _bn(cout, norm)] + ([nn.ReLU(inplace=True)] if relu else [])


def _branch(op: int, cin: int, mid: int, cout: int, stride: int, norm: str) -> nn.Sequential:
    if OPS[op].startswith("shufflenet"):
        return nn.Sequential(*_pw(cin, mid, norm), *_dw(mid, OP_KERNEL[op], stride, norm), *_pw(mid, cout, norm))
    return nn.Sequential(*_dw(cin, 3, stride, norm), *_pw(cin, mid, norm),
                         *_dw(mid, 3, 1, norm), *_pw(mid, mid, norm),
                         *_dw(mid, 3, 1, norm), *_pw(mid, cout, norm))


LAYOUTS = ("spos", "detnas", "mmrazor")  # model.backbone.layout: whose ShuffleNetV2 unit (see the module doc)


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"model.backbone.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def interleave_halves(x: torch.Tensor) -> torch.Tensor:
    """ShuffleNet's channel shuffle with 2 groups: channel 2i <- i, 2i + 1 <- C/2 + i (mmcls
    ``channel_shuffle(x, 2)``, the first step of DetNAS's ``channel_shuffle1``)."""
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """One candidate: a ShuffleNetV2 unit, x (N, in, H, W) -> (N, out, H/stride, W/stride).

    ``layout`` (``LAYOUTS``) fixes the two things the reference code bases do differently:
    which channels a stride-1 unit passes through and how wide the stride-2 halves are.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, op: int, norm: str = "bn", layout: str = "spos"):
        super().__init__()
        if stride not in (1, 2) or (stride == 1) != (in_ch == out_ch) or in_ch % 2 or out_ch % 2 or out_ch < in_ch:
            raise ValueError(f"ShuffleBlock: bad shape in={in_ch}, out={out_ch}, stride={stride}")
        self.in_ch, self.out_ch, self.stride, self.op = in_ch, out_ch, stride, op
        self.layout = _check_layout(layout)
        mid = out_ch // 2
        if stride == 2:
            k = OP_KERNEL[op]
            proj_out = out_ch // 2 if layout == "mmrazor" else in_ch  # MMRazor: equal halves; Megvii: in + (out - in)
            self.proj = nn.Sequential(*_dw(in_ch, k, 2, norm), *_pw(in_ch, proj_out, norm))
            self.branch = _branch(op, in_ch, mid, out_ch - proj_out, 2, norm)
        else:
            self.proj = None
            self.branch = _branch(op, in_ch // 2, mid, out_ch // 2, 1, norm)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(passed through, into the branch) of a stride-1 unit."""
        if self.layout == "spos":  # SinglePathOneShot channel_shuffle / DetNAS channel_shuffle2
            return x[:, 0::2], x[:, 1::2]
        if self.layout == "detnas":  # DetNAS channel_shuffle1 (its supernets)
            x = interleave_halves(x)
        return x.chunk(2, 1)  # mmrazor: the shuffle ran at the end of the previous unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            keep, x = self._split(x)
            y = torch.cat((keep, self.branch(x)), 1)
        else:
            y = torch.cat((self.proj(x), self.branch(x)), 1)
        return interleave_halves(y) if self.layout == "mmrazor" else y

    def extra_repr(self) -> str:
        return f"{OPS[self.op]}, {self.in_ch} -> {self.out_ch}, stride {self.stride}, {self.layout} layout"


def _stem(c: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), _bn(c, norm), nn.ReLU(inplace=True))


def _stages_forward(first_conv: nn.Module, stages: nn.ModuleList, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    x = first_conv(x)
    for level, stage in zip(LEVELS, stages):
        x = stage(x)
        out[level] = x
    return out


class ShuffleNetV2Backbone(nn.Module):
    """A static subnet (``ShuffleNetSPOS.export``): first_conv, stages of ``ShuffleBlock`` -> OrderedDict(c2..c5)."""

    def __init__(self, first_conv: nn.Module, stages: list[nn.Sequential], out_channels: dict[str, int],
                 arch: Sequence[int] = ()):
        super().__init__()
        self.first_conv = first_conv
        self.stages = nn.ModuleList(stages)
        self.out_channels = dict(out_channels)
        self.arch_list = list(arch)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return _stages_forward(self.first_conv, self.stages, x)

    def extra_repr(self) -> str:
        return f"arch={self.arch_list}"


class ImageNetForm(nn.Module):
    """Classification form (DetNAS/SPOS): c5 -> 1x1 conv ``last`` + BN + ReLU -> global pool -> FC.
    Used to compare params/MACs with the published ImageNet figures and for classification pretraining."""

    def __init__(self, backbone: nn.Module, last: int, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.last_conv = nn.Sequential(*_pw(backbone.out_channels["c5"], last, "bn"))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.last_conv(self.backbone(x)["c5"]))
        return self.classifier(torch.flatten(y, 1))


def imagenet_form(backbone: nn.Module, size: str, num_classes: int = 1000) -> ImageNetForm:
    """``backbone`` (a supernet or an exported subnet of ``size``) with the ImageNet head of that size."""
    return ImageNetForm(backbone, SIZES[size].last, num_classes)


def _widths(size: SpaceSize, width_mult: float) -> tuple[int, tuple[int, ...]]:
    if width_mult == 1.0:
        return size.stem, size.widths
    scale = lambda c: make_divisible(c * width_mult, 4)
    return scale(size.stem), tuple(scale(c) for c in size.widths)


def build_subnet(size: str, arch: Mapping[str, Any] | Sequence[int], width_mult: float = 1.0,
                 norm: str = "bn", layout: str = "spos") -> ShuffleNetV2Backbone:
    """A freshly initialised static subnet of ``arch`` (dict or flat list) without building the supernet
    (use it on the meta device for sizes of the big spaces)."""
    if size not in SIZES:
        raise ArchError(f"unknown DetNAS size {size!r}; sizes: {list(SIZES)}")
    spec = SIZES[size]
    if isinstance(arch, Mapping):
        choices = arch_to_list(SearchSpace({n: tuple(range(len(OPS))) for n in choice_names(spec.blocks)}).validate(arch))
    else:
        choices = arch_to_list(arch_from_list(arch, size))
    stem, widths = _widths(spec, width_mult)
    stages, c_in, i = [], stem, 0
    for w, n in zip(widths, spec.blocks):
        blocks = []
        for j in range(n):
            blocks.append(ShuffleBlock(c_in, w, 2 if j == 0 else 1, choices[i], norm, layout))
            c_in, i = w, i + 1
        stages.append(nn.Sequential(*blocks))
    net = ShuffleNetV2Backbone(_stem(stem, norm), stages, dict(zip(LEVELS, widths)), choices)
    he_fout_init(net)
    return net


# ---------------------------------------------------------------------------------------- supernet
class ChoiceBlock(nn.Module):
    """The four candidates of one block; ``active`` (0..3) is the one that runs."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, layout: str = "spos"):
        super().__init__()
        self.candidates = nn.ModuleList(ShuffleBlock(in_ch, out_ch, stride, op, norm, layout) for op in range(len(OPS)))
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.active](x)

    def extra_repr(self) -> str:
        return f"active: {self.active} ({OPS[self.active]})"


class ShuffleNetSPOS(nn.Module):
    """DetNAS supernet backbone of one size: x (N, 3, H, W) -> OrderedDict(c2..c5) at strides 4..32.

    After construction the default arch (all ShuffleNet 3x3: the plain ShuffleNetV2 shape, and the
    smallest subnet) is active.
    """

    def __init__(self, size: str = "300M", width_mult: float = 1.0, norm: str = "bn", layout: str = "spos"):
        super().__init__()
        if size not in SIZES:
            raise ConfigError(f"unknown DetNAS size {size!r}; sizes: {list(SIZES)}")
        self.size, self.width_mult, self.norm, self.layout = size, width_mult, norm, _check_layout(layout)
        spec = SIZES[size]
        stem, widths = _widths(spec, width_mult)
        self.first_conv = _stem(stem, norm)
        stages, c_in = [], stem
        for w, n in zip(widths, spec.blocks):
            stages.append(nn.Sequential(*(ChoiceBlock(c_in if j == 0 else w, w, 2 if j == 0 else 1, norm, layout)
                                          for j in range(n))))
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = dict(zip(LEVELS, widths))
        self._names = choice_names(spec.blocks)
        # the unit's layout is not in the weights' names: spos (the default) keeps the space id it always had
        self._space = SearchSpace({n: tuple(range(len(OPS))) for n in self._names},
                                  unit=None if self.layout == "spos" else f"model.backbone.layout {self.layout}")
        self._macs_tables: dict[tuple[int, int], tuple[int, list[list[int]]]] = {}
        he_fout_init(self)
        self.set_arch(self._space.default())

    # ------------------------------------------------------------------------------------ protocol
    def search_space(self) -> SearchSpace:
        return self._space

    @property
    def active_arch(self) -> dict[str, int]:
        return dict(self._arch)

    @property
    def active_list(self) -> list[int]:
        """The active arch as DetNAS's flat list."""
        return arch_to_list(self._arch)

    def _blocks(self) -> list[ChoiceBlock]:
        return [b for stage in self.stages for b in stage]

    def arch_from_list(self, choices: Sequence[int]) -> dict[str, int]:
        return arch_from_list(choices, self.size)

    def _as_arch(self, arch: Mapping[str, Any] | Sequence[int]) -> dict[str, int]:
        if not isinstance(arch, Mapping):
            arch = self.arch_from_list(arch)
        return self._space.validate(arch)

    def set_arch(self, arch: Mapping[str, Any] | Sequence[int]) -> None:
        """Activate ``arch`` (a dict or DetNAS's flat list) in place; ``ArchError`` names a bad block and the allowed values."""
        arch = self._as_arch(arch)
        for block, name in zip(self._blocks(), self._names):
            block.active = arch[name]
        self._arch = arch

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return _stages_forward(self.first_conv, self.stages, x)

    def export(self, arch: Mapping[str, Any] | Sequence[int] | None = None) -> ShuffleNetV2Backbone:
        """A standalone static backbone of ``arch`` (default: the active one): copies of the stem and of the
        chosen candidates, in this module's mode. The active arch is left as it was."""
        arch = self._arch if arch is None else self._as_arch(arch)
        stages = [nn.Sequential(*(copy.deepcopy(b.candidates[arch[n]]) for b, n in zip(stage, names)))
                  for stage, names in zip(self.stages, self._stage_names())]
        net = ShuffleNetV2Backbone(copy.deepcopy(self.first_conv), stages, self.out_channels, arch_to_list(arch))
        return net.train(self.training)

    def _stage_names(self) -> list[list[str]]:
        out, i = [], 0
        for stage in self.stages:
            out.append(self._names[i:i + len(stage)])
            i += len(stage)
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, width_mult={self.width_mult}, layout={self.layout}, active={self.active_list}"

    # --------------------------------------------------------------------------------------- costs
    def macs_table(self, input_size: int | tuple[int, int] = 224) -> tuple[int, list[list[int]]]:
        """(stem MACs, per block per candidate MACs) at ``input_size`` (conv MACs, counted on the meta device)."""
        from torch.utils.flop_counter import FlopCounterMode

        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        key = (int(h), int(w))
        if key not in self._macs_tables:
            def macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    y = module(x)
                return int(counter.get_total_flops()) // 2, y

            x = torch.empty(1, 3, h, w, device="meta")
            stem, x = macs(copy.deepcopy(self.first_conv).to("meta"), x)
            table = []
            for block in self._blocks():
                row = []
                for cand in block.candidates:
                    m, y = macs(copy.deepcopy(cand).to("meta"), x)
                    row.append(m)
                table.append(row)
                x = y
            self._macs_tables[key] = (stem, table)
        return self._macs_tables[key]

    def arch_macs(self, arch: Mapping[str, Any] | Sequence[int], input_size: int | tuple[int, int] = 224) -> int:
        """MACs of the detection backbone of ``arch`` at ``input_size`` from the lookup table (SPOS's
        ``get_cand_flops``): equal to counting the exported subnet, in microseconds."""
        arch = self._as_arch(arch)
        stem, table = self.macs_table(input_size)
        return stem + sum(row[arch[n]] for row, n in zip(table, self._names))

    # ------------------------------------------------------------------------------------ weights
    def subnet_key_map(self, arch: Mapping[str, Any] | Sequence[int]) -> dict[str, str]:
        """State-dict key of ``export(arch)`` -> key of this supernet (``stages.S.J.x`` -> ``stages.S.J.candidates.OP.x``)."""
        arch = self._as_arch(arch)
        ops = {(s, j): arch[n] for s, names in enumerate(self._stage_names()) for j, n in enumerate(names)}
        out = {}
        for key in self.export(arch).state_dict():
            parts = key.split(".")
            if parts[0] == "stages":
                s, j = int(parts[1]), int(parts[2])
                out[key] = ".".join(["stages", parts[1], parts[2], "candidates", str(ops[(s, j)]), *parts[3:]])
            else:
                out[key] = key
        return out

    def load_subnet_state_dict(self, state: Mapping[str, torch.Tensor], arch: Mapping[str, Any] | Sequence[int]) -> None:
        """Load a static subnet's state_dict (``export(arch)`` / ``build_subnet`` keys, e.g. an ImageNet-retrained
        subnet) into the candidates ``arch`` chooses; the other candidates keep their weights."""
        key_map = self.subnet_key_map(arch)
        own = self.state_dict()
        missing = sorted(set(key_map) - set(state))
        unexpected = sorted(set(state) - set(key_map))
        shapes = sorted(k for k in set(key_map) & set(state) if tuple(state[k].shape) != tuple(own[key_map[k]].shape))
        if missing or unexpected or shapes:
            raise CheckpointError(f"subnet state_dict does not fit arch {arch_to_list(self._as_arch(arch))} of DetNAS "
                             f"{self.size}: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                             f"(e.g. {unexpected[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]})")
        with torch.no_grad():
            for k, target in key_map.items():
                own[target].copy_(state[k])


def num_archs(size: str) -> int:
    return len(OPS) ** SIZES[size].num_blocks


def _builder(size: str):
    def build(width_mult: float = 1.0, norm: str = "bn", layout: str = "spos") -> ShuffleNetSPOS:
        return ShuffleNetSPOS(size, width_mult=width_mult, norm=norm, layout=layout)

    build.__name__ = f"build_detnas_{size.replace('.', 'd')}"
    build.__doc__ = f"Registry entry ``detnas_{size}``: the DetNAS {size} supernet, all-ShuffleNet-3x3 arch active."
    return build


BUILDERS = {name: _builder(size) for name, size in BACKBONE_NAMES.items()}
