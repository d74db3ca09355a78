"""Released ShuffleNetV2 one-shot supernets -> nasdet's ``ShuffleNetSPOS`` state_dict.

Three reference layouts, each loaded into the nasdet ``layout`` that computes the same function
(``shufflenet_spos.py``):

- ``detnas`` (layout ``detnas``): megvii-model/DetNAS ``Supernet-ImageNet/detnasnet.py`` (train.py saves
  ``{"state_dict"}`` of the DataParallel model) and the COCO ``*-search`` body
  (``maskrcnn_benchmark/modeling/backbone/detnasnet.py``). Keys ``first_conv.{conv,bn}``,
  ``features.B.OP.conv.U.<name>``, ``features.B.OP.proj_conv.<name>`` with Megvii's generated names
  (``interstellar1a_shufflenet_3x3_branch2b_s`` = depthwise conv, ``..._s_bn`` its BN,
  ``interstellar1a_..._branch2b`` = 1x1 conv, ``bn1a_..._branch2b`` its BN), ``last_conv.{conv,bn}``,
  ``fc.fc``. The stem and last convs have a bias before their BN: folded into the BN's running mean.
- ``spos`` (layout ``spos``): megvii-model/SinglePathOneShot ``src/Supernet/network.py``:
  ``first_conv.{0,1}``, ``features.B.OP.branch_main.I``, ``features.B.OP.branch_proj.I`` (nasdet's own
  indices), ``conv_last.{0,1}``, ``classifier.0`` (no bias). BN ``affine=False``: weight 1, bias 0.
- ``mmrazor`` (layout ``mmrazor``): open-mmlab/mmrazor ``SearchableShuffleNetV2`` with
  ``OneShotMutableOP`` candidates (``layers.S.J._candidates.<op>.``; 0.x: ``.choices.<op>.``),
  ``ShuffleBlock`` ``branch1.{0,1}`` / ``branch2.{0,1,2}`` ``ConvModule``s, ``ShuffleXception``
  ``branch2.U.{depthwise,pointwise}_conv``; ``conv1``, ``layers.4`` (the last 1x1 of the ImageNet
  form), ``head.fc`` (``LinearClsHead``).

Candidates are in DetNAS's index order 0..3 = 3x3, 5x5, 7x7, Xception in all three.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from ...errors import CheckpointError
from .shufflenet_spos import OPS, SIZES, ShuffleNetSPOS, arch_from_list, sizes_of

MMRAZOR_OPS = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# nasdet (conv index, BN index) pairs of a candidate, in order of computation
PROJ_PAIRS = ((0, 1), (2, 3))
BRANCH_PAIRS = {"shufflenet": ((0, 1), (3, 4), (5, 6)), "xception": ((0, 1), (2, 3), (5, 6), (7, 8), (10, 11), (12, 13))}


def _kind(op: int) -> str:
    return "xception" if OPS[op].startswith("xception") else "shufflenet"


def _stage_of(num_blocks: int) -> Callable[[int], tuple[int, int]]:
    """Block index of a flat list (DetNAS / SPOS ``features.B``) -> (stage, block in stage)."""
    per_stage = next((s.blocks for s in SIZES.values() if s.num_blocks == num_blocks), None)
    if per_stage is None:
        raise CheckpointError(f"a supernet with {num_blocks} choice blocks fits no DetNAS size "
                              f"({', '.join(f'{n}: {s.num_blocks}' for n, s in SIZES.items())})")
    starts = [sum(per_stage[:i]) for i in range(len(per_stage))]

    def where(b: int) -> tuple[int, int]:
        s = max(i for i, start in enumerate(starts) if start <= b)
        return s, b - starts[s]

    return where


def _num_blocks(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if not found or found != set(range(len(found))):
        raise CheckpointError(f"choice blocks {sorted(found)[:5]}.. are not numbered 0..N-1")
    return len(found)


class _Mapper:
    """Collects nasdet key -> tensor, each reference tensor taken once; unused reference keys are an error."""

    def __init__(self, state: Mapping[str, torch.Tensor], layout: str, with_head: bool, affine: bool = True):
        # affine: the layout's BNs have weight and bias (DetNAS, MMRazor): a missing one is an error, not an
        # identity BN (SPOS's BNs are affine=False: weight 1, bias 0)
        self.state, self.layout, self.with_head, self.affine = state, layout, with_head, affine
        self.prefix = "backbone." if with_head else ""
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.layout} supernet state_dict has no {key!r}")
        self.used.add(key)
        return self.state[key]

    def conv(self, dst: str, src: str, head: bool = False) -> None:
        self.out[("" if head else self.prefix) + f"{dst}.weight"] = self.take(f"{src}.weight")

    def bn(self, dst: str, src: str, head: bool = False, conv_bias: str | None = None) -> None:
        """BN ``src`` into ``dst``; ``conv_bias``: the bias of the conv before it, folded into the mean."""
        dst = ("" if head else self.prefix) + dst
        mean = self.take(f"{src}.running_mean")
        if conv_bias is not None:
            mean = mean - self.take(conv_bias)  # BN(conv(x) + b) == BN'(conv(x)) with mean' = mean - b
        self.out[f"{dst}.running_mean"] = mean
        self.out[f"{dst}.running_var"] = self.take(f"{src}.running_var")
        self.out[f"{dst}.weight"] = self.take(f"{src}.weight") if self.affine else torch.ones_like(mean)
        self.out[f"{dst}.bias"] = self.take(f"{src}.bias") if self.affine else torch.zeros_like(mean)
        if f"{src}.num_batches_tracked" in self.state:
            self.out[f"{dst}.num_batches_tracked"] = self.take(f"{src}.num_batches_tracked")

    def pairs(self, dst: str, nasdet_pairs, ref_pairs) -> None:
        """(conv, BN) of a branch: nasdet ``dst.{i}`` <- the reference's prefixes, in order."""
        for (ci, bi), (rc, rb) in zip(nasdet_pairs, ref_pairs, strict=True):
            self.conv(f"{dst}.{ci}", rc)
            self.bn(f"{dst}.{bi}", rb)

    def linear(self, dst: str, src: str) -> None:
        if not self.with_head:
            return
        self.out[f"{dst}.weight"] = w = self.take(f"{src}.weight")
        self.out[f"{dst}.bias"] = self.take(f"{src}.bias") if f"{src}.bias" in self.state else w.new_zeros(w.shape[0])

    def result(self) -> dict[str, torch.Tensor]:
        head = ("last_conv", "conv_last", "fc.", "classifier", "layers.4.", "head.")
        unused = sorted(k for k in set(self.state) - self.used if self.with_head or not k.startswith(head))
        if unused:
            raise CheckpointError(f"{self.layout} supernet keys fit no nasdet module: {len(unused)} "
                                  f"(e.g. {unused[:3]})")
        return self.out


def load_detnas_supernet(state: Mapping[str, torch.Tensor], with_head: bool = False) -> dict[str, torch.Tensor]:
    """DetNAS supernet state_dict (ImageNet ``ShuffleNetV2DetNAS`` or the COCO search body, no
    ``module.`` prefix) -> nasdet ``ShuffleNetSPOS`` (layout ``detnas``); ``with_head``: the keys of
    ``shufflenet_spos.ImageNetForm``."""
    m = _Mapper(state, "DetNAS", with_head)
    m.conv("first_conv.0", "first_conv.conv")
    m.bn("first_conv.1", "first_conv.bn", conv_bias="first_conv.conv.bias")
    n = _num_blocks(state, r"features\.(\d+)\.")
    where = _stage_of(n)
    for b in range(n):
        s, j = where(b)
        for op in range(len(OPS)):
            _detnas_unit(m, f"features.{b}.{op}", f"stages.{s}.{j}.candidates.{op}", s, j, op)
    _detnas_head(m, with_head)
    return m.result()


def _detnas_unit(m: _Mapper, src: str, dst: str, s: int, j: int, op: int) -> None:
    """One Megvii ShuffleNetV2 unit (``ShuffleNetV2BlockSearched`` / a supernet candidate) at ``src`` into ``dst``."""
    name = f"{s + 1}{chr(ord('a') + j)}"  # detnasnet.py: prefix = str(id_stage) + chr(ord('a') + id_repeat)
    units = [f"{name}_{OPS[op]}_branch2{u}" for u in "abc"]
    dw = lambda p, u: (f"{src}.conv.{u}.interstellar{p}_s", f"{src}.conv.{u}.interstellar{p}_s_bn")  # noqa: E731
    pw = lambda p, u: (f"{src}.conv.{u}.interstellar{p}", f"{src}.conv.{u}.bn{p}")  # noqa: E731
    if _kind(op) == "shufflenet":
        ref = [pw(units[0], 0), dw(units[1], 1), pw(units[1], 1)]
    else:
        ref = [f(units[u], u) for u in range(3) for f in (dw, pw)]
    m.pairs(f"{dst}.branch", BRANCH_PAIRS[_kind(op)], ref)
    if j == 0:
        p = f"{name}_proj"
        m.pairs(f"{dst}.proj", PROJ_PAIRS, [(f"{src}.proj_conv.interstellar{p}_s", f"{src}.proj_conv.interstellar{p}_s_bn"),
                                             (f"{src}.proj_conv.interstellar{p}", f"{src}.proj_conv.bn{p}")])


def _detnas_head(m: _Mapper, with_head: bool) -> None:
    if with_head:
        m.conv("last_conv.0", "last_conv.conv", head=True)
        m.bn("last_conv.1", "last_conv.bn", head=True, conv_bias="last_conv.conv.bias")
        m.linear("classifier", "fc.fc")


_SEARCHED_UNIT = re.compile(r"features\.(\d+)\.conv\.0\.(?:interstellar|bn)\d[a-z]_(" + "|".join(OPS) + r")_branch2a")


def detnas_network_arch(state: Mapping[str, torch.Tensor]) -> list[int]:
    """The op of each unit of a searched DetNAS network (ShuffleNet-Series ``DetNAS/network.py``), read from its key
    names (``features.5.conv.0.interstellar2b_xception_3x3_branch2a...``): DetNAS's flat list."""
    ops = {int(m.group(1)): OPS.index(m.group(2)) for k in state if (m := _SEARCHED_UNIT.match(k))}
    n = _num_blocks(state, r"features\.(\d+)\.")
    if set(ops) != set(range(n)):
        raise CheckpointError(f"a searched DetNAS network names an op in {len(ops)} of its {n} units")
    return [ops[b] for b in range(n)]


def load_detnas_network(state: Mapping[str, torch.Tensor], with_head: bool = False) -> dict[str, torch.Tensor]:
    """A searched DetNAS network (ShuffleNet-Series ``DetNAS/network.py`` ``ShuffleNetV2DetNAS``: one unit a block,
    what DetNAS retrains on ImageNet before COCO, no ``module.`` prefix) -> the keys of its ops' candidates in nasdet's
    ``ShuffleNetSPOS`` (layout ``spos``: its units split channels by ``channel_shuffle2``); the other candidates
    are not in it."""
    m = _Mapper(state, "DetNAS searched network", with_head)
    m.conv("first_conv.0", "first_conv.conv")
    m.bn("first_conv.1", "first_conv.bn", conv_bias="first_conv.conv.bias")
    choices = detnas_network_arch(state)
    where = _stage_of(len(choices))
    for b, op in enumerate(choices):
        s, j = where(b)
        _detnas_unit(m, f"features.{b}", f"stages.{s}.{j}.candidates.{op}", s, j, op)
    _detnas_head(m, with_head)
    return m.result()


def load_spos_supernet(state: Mapping[str, torch.Tensor], with_head: bool = False) -> dict[str, torch.Tensor]:
    """SinglePathOneShot ``ShuffleNetV2_OneShot`` state_dict (no ``module.`` prefix) -> nasdet
    ``ShuffleNetSPOS`` (layout ``spos``); ``with_head``: the keys of ``shufflenet_spos.ImageNetForm``."""
    m = _Mapper(state, "SPOS", with_head, affine=False)
    m.conv("first_conv.0", "first_conv.0")
    m.bn("first_conv.1", "first_conv.1")
    n = _num_blocks(state, r"features\.(\d+)\.")
    where = _stage_of(n)
    for b in range(n):
        s, j = where(b)
        for op in range(len(OPS)):
            src, dst = f"features.{b}.{op}", f"stages.{s}.{j}.candidates.{op}"
            pairs = BRANCH_PAIRS[_kind(op)]
            m.pairs(f"{dst}.branch", pairs, [(f"{src}.branch_main.{c}", f"{src}.branch_main.{n_}") for c, n_ in pairs])
            if j == 0:
                m.pairs(f"{dst}.proj", PROJ_PAIRS, [(f"{src}.branch_proj.{c}", f"{src}.branch_proj.{n_}")
                                                    for c, n_ in PROJ_PAIRS])
    if with_head:
        m.conv("last_conv.0", "conv_last.0", head=True)
        m.bn("last_conv.1", "conv_last.1", head=True)
        m.linear("classifier", "classifier.0")
    return m.result()


def load_mmrazor_supernet(state: Mapping[str, torch.Tensor], with_head: bool = False) -> dict[str, torch.Tensor]:
    """MMRazor ``SearchableShuffleNetV2`` state_dict (keys from ``conv1.``; an algorithm's
    ``head.fc.`` beside ``layers`` for the ImageNet head) -> nasdet ``ShuffleNetSPOS`` (layout ``mmrazor``)."""
    m = _Mapper(state, "MMRazor", with_head)
    m.conv("first_conv.0", "conv1.conv")
    m.bn("first_conv.1", "conv1.bn")
    stages = sorted({int(x.group(1)) for k in state if (x := re.match(r"layers\.(\d+)\.\d+\.", k))})
    for s in stages:
        for j in range(_num_blocks(state, rf"layers\.{s}\.(\d+)\.")):
            block = f"layers.{s}.{j}"
            holder = "_candidates" if f"{block}._candidates.shuffle_3x3.branch2.0.conv.weight" in state else "choices"
            for op in range(len(OPS)):
                src, dst = f"{block}.{holder}.{MMRAZOR_OPS[op]}", f"stages.{s}.{j}.candidates.{op}"
                cm = lambda p: (f"{p}.conv", f"{p}.bn")  # noqa: E731 (mmcv ConvModule)
                if _kind(op) == "shufflenet":
                    ref = [cm(f"{src}.branch2.{u}") for u in range(3)]
                else:
                    ref = [cm(f"{src}.branch2.{u}.{part}_conv") for u in range(3) for part in ("depthwise", "pointwise")]
                m.pairs(f"{dst}.branch", BRANCH_PAIRS[_kind(op)], ref)
                if j == 0:
                    m.pairs(f"{dst}.proj", PROJ_PAIRS, [cm(f"{src}.branch1.0"), cm(f"{src}.branch1.1")])
    if with_head:
        m.conv("last_conv.0", f"layers.{len(stages)}.conv", head=True)
        m.bn("last_conv.1", f"layers.{len(stages)}.bn", head=True)
        m.linear("classifier", "head.fc")
    return m.result()


def detnas_network_subnet(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]] | None:
    """(nasdet's static backbone state_dict, arch) of a searched DetNAS network's tensors (its ``{"state_dict"}``
    read, DataParallel's ``module.`` prefix or none), else None: DetNAS step 5 starts its COCO training from this
    ImageNet-trained network (``tune.init: scratch`` with it as ``model.backbone.checkpoint``). Its size follows from
    its units and stem; its units are ``layout: spos``'s (``channel_shuffle2``)."""
    anchor, other = "first_conv.conv.bias", "features.0.proj_conv.interstellar1a_proj_s.weight"
    prefix = next((k[: -len(anchor)] for k in state if k.endswith(anchor) and k[: -len(anchor)] + other in state), None)
    if prefix is None:
        return None
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    choices = detnas_network_arch(own)
    stem = int(own["first_conv.conv.weight"].shape[0])
    size = next(iter(sizes_of(len(choices), stem)), None)
    if size is None:
        raise CheckpointError(f"a searched DetNAS network of {len(choices)} units and a {stem}-channel stem fits no "
                              f"DetNAS size ({', '.join(f'{n}: {s.num_blocks} units, stem {s.stem}' for n, s in SIZES.items())})")
    with torch.device("meta"):
        supernet = ShuffleNetSPOS(size, layout="spos")
    mapped, expected = load_detnas_network(own), supernet.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items()
              if k in expected and v.shape != expected[k].shape]
    if shapes:
        raise CheckpointError(f"a searched DetNAS network whose tensors are not DetNAS {size}'s: {shapes[:2]}")
    supernet.load_state_dict(mapped, strict=False, assign=True)  # the chosen candidates; the others stay on meta
    arch = arch_from_list(choices, size)
    static = supernet.export(arch).state_dict()
    static = {k: torch.zeros((), dtype=torch.long) if v.is_meta and k.endswith("num_batches_tracked") else v
              for k, v in static.items()}
    unfilled = [k for k, v in static.items() if v.is_meta]
    if unfilled:
        raise CheckpointError(f"a searched DetNAS network without {len(unfilled)} of its tensors (e.g. {unfilled[:3]})")
    return static, arch
