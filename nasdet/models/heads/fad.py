"""FAD (Zhong et al., ECCV 2020): searched box and cls towers for FCOS and RetinaNet.

Search space, one mixed op per edge, alpha columns in this order (FAD's released set, ``PRIMSTACK``)::

    0 std_conv_3x3      1 std_conv_3x3+dil_conv_3x3      2 std_conv_3x3_x2      3 std_conv_3x3_x2+dil_conv_3x3
    4 std_conv_3x3_x3   5..9 the same five with sinSep_conv_3x3                10 none

``std`` is a 3x3 conv, ``sinSep`` a depthwise 3x3 + pointwise conv, ``dil_conv_3x3`` a depthwise 3x3
dilation 2 + pointwise conv; every conv is followed by GroupNorm(32) + ReLU (post-activation).

Representation sharing: the five ops of one kind are one trunk of three convs with a dilated branch
taken off the first two trunk outputs (``SharedOps``), not five stacks, so an edge runs 6 trunk convs
and 4 branches instead of 18 + 4 convs. While searching, FAD puts a 1x1 conv (``decouple``) on the
trunk's shallow outputs; the trained network builds each chosen op as a plain stack.

A cell has two inputs (s0, s1), ``n`` nodes; node i sums edges from s0, s1 and nodes < i; each edge is
1x1 to C -> op -> 1x1 back; the cell concatenates its nodes. The box tower runs on the FPN level
(s0 = s1), the cls tower on (box feature, FPN level); 1x1 convs reduce both back to the FPN width and
torchvision's FCOS / RetinaNet predictors, losses and post-processing follow. One head serves all levels.
"""
from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead

from ...errors import ConfigError, GenotypeError
from ...files import write_text_atomic
from ...workdir import GENOTYPE_JSON, GENOTYPE_LOG

KINDS = ("std", "sinSep")
_SHAPES = ((1, False), (1, True), (2, False), (2, True), (3, False))  # (trunk depth, dilated branch) per op
OP_NAMES = tuple(f"{k}_conv_3x3{f'_x{d}' if d > 1 else ''}{'+dil_conv_3x3' if dil else ''}"
                 for k in KINDS for d, dil in _SHAPES)
NONE = "none"
ALPHA_COLUMNS = OP_NAMES + (NONE,)  # one alpha per column; 'none' is last
GN_GROUPS = 32


# ------------------------------------------------------------------------------------------------ ops
def conv_block(kind: str, channels: int) -> nn.Sequential:
    """One conv of the space + GroupNorm(32) + ReLU, C -> C: ``std`` 3x3, ``sinSep`` depthwise 3x3 +
    pointwise, ``dil`` depthwise 3x3 dilation 2 (bias, as FAD) + pointwise."""
    c = channels
    if c % GN_GROUPS:
        raise ConfigError(f"FAD cell channels must be a multiple of {GN_GROUPS} (GroupNorm), got {c}")
    if kind == "std":
        convs = [nn.Conv2d(c, c, 3, padding=1)]
    elif kind == "sinSep":
        convs = [nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1)]
    elif kind == "dil":
        convs = [nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=c), nn.Conv2d(c, c, 1)]
    else:
        raise ConfigError(f"conv kind {kind!r} is not one of std, sinSep, dil")
    return nn.Sequential(*convs, nn.GroupNorm(GN_GROUPS, c), nn.ReLU(inplace=True))


def build_op(name: str, channels: int) -> nn.Sequential:
    """The standalone op ``name`` (one of ``OP_NAMES``) as a plain stack of conv blocks."""
    if name not in OP_NAMES:
        raise GenotypeError(f"unknown op {name!r}; known ops: {', '.join(OP_NAMES)}")
    kind, (depth, dilated) = KINDS[OP_NAMES.index(name) // 5], _SHAPES[OP_NAMES.index(name) % 5]
    return nn.Sequential(*[conv_block(kind, channels) for _ in range(depth)],
                         *([conv_block("dil", channels)] if dilated else []))


class SharedOps(nn.Module):
    """The five ops of one kind from one trunk: ``[x1, x1+dil, x2, x2+dil, x3]``, each [N, C, H, W].

    ``trunk[d]`` is the (d+1)-th conv of every op at least d+1 deep; ``dilated[d]`` branches off trunk
    output d. ``decouple`` (FAD's search-time default) passes the x1 and x2 outputs through a 1x1 conv.
    """

    def __init__(self, kind: str, channels: int, decouple: bool = True):
        super().__init__()
        self.trunk = nn.ModuleList(conv_block(kind, channels) for _ in range(3))
        self.dilated = nn.ModuleList(conv_block("dil", channels) for _ in range(2))
        self.decouple = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in range(2)) if decouple else None

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for depth, conv in enumerate(self.trunk):
            x = conv(x)
            if depth < 2:
                outs.append(self.decouple[depth](x) if self.decouple is not None else x)
                outs.append(self.dilated[depth](x))
            else:
                outs.append(x)
        return outs


class MixedOp(nn.Module):
    """Every op of an edge, summed with weights softmax(alpha) of shape [11]. ``none`` adds zero, so it
    is never computed (its alpha still takes part in the softmax). ``shared=False``: ten separate stacks
    (the same space without representation sharing, for comparison)."""

    def __init__(self, channels: int, shared: bool = True, decouple: bool = True):
        super().__init__()
        self.shared = shared
        if shared:
            self.ops = nn.ModuleList(SharedOps(k, channels, decouple) for k in KINDS)
        else:
            self.ops = nn.ModuleList(build_op(name, channels) for name in OP_NAMES)

    def candidates(self, x: Tensor) -> list[Tensor]:
        """The outputs of the ten ops, in ``OP_NAMES`` order."""
        if self.shared:
            return [y for ops in self.ops for y in ops(x)]
        return [op(x) for op in self.ops]

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = None
        for w, y in zip(weights, self.candidates(x)):
            out = y * w if out is None else torch.addcmul(out, y, w)
        return out


def _sum(xs) -> Tensor:
    """Sum of an iterable of tensors, one at a time (no leading ``0 +``, no list of them all)."""
    out = None
    for x in xs:
        out = x if out is None else out + x
    return out


def _preprocess(c_in: int, c_out: int) -> nn.Module:
    """A cell input of another width: 1x1 conv + GN + ReLU (FAD's preproc); else identity."""
    if c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.GroupNorm(GN_GROUPS, c_out), nn.ReLU(inplace=True))


class SearchEdge(nn.Module):
    """1x1 to C (no bias), mixed op, 1x1 back to the node width (no bias), as FAD's search cell."""

    def __init__(self, node_channels: int, channels: int, shared: bool = True, decouple: bool = True):
        super().__init__()
        self.reduce = nn.Conv2d(node_channels, channels, 1, bias=False)
        self.op = MixedOp(channels, shared, decouple)
        self.expand = nn.Conv2d(channels, node_channels, 1, bias=False)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.expand(self.op(self.reduce(x), weights))


class SearchCell(nn.Module):
    """Every edge of ``num_nodes`` nodes mixed; output: the nodes concatenated, [N, num_nodes * node_channels, H, W]."""

    def __init__(self, c_pp: int, c_p: int, node_channels: int, channels: int, num_nodes: int = 3,
                 shared: bool = True, decouple: bool = True):
        super().__init__()
        self.preproc0, self.preproc1 = _preprocess(c_pp, node_channels), _preprocess(c_p, node_channels)
        self.edges = nn.ModuleList(
            nn.ModuleList(SearchEdge(node_channels, channels, shared, decouple) for _ in range(i + 2))
            for i in range(num_nodes))
        self.out_channels = num_nodes * node_channels

    def forward(self, s0: Tensor, s1: Tensor, weights: Sequence[Tensor]) -> Tensor:
        """``weights[i]``: [i + 2, 11], softmax(alpha) of node i's edges."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, w in zip(self.edges, weights):
            states.append(_sum(edge(s, w_e) for edge, s, w_e in zip(edges, states, w)))
        return torch.cat(states[2:], dim=1)


class AugmentCell(nn.Module):
    """The cell of a genotype: node i sums its chosen edges (1x1 -> op -> 1x1, with biases, as FAD's
    augment cell); output: the ``normal_concat`` states concatenated."""

    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, node_channels: int, channels: int):
        super().__init__()
        validate_genotype(genotype)
        self.preproc0, self.preproc1 = _preprocess(c_pp, node_channels), _preprocess(c_p, node_channels)
        self.inputs = [[j for _, j in node] for node in genotype.normal]
        self.edges = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.Conv2d(node_channels, channels, 1), build_op(op, channels),
                                        nn.Conv2d(channels, node_channels, 1)) for op, _ in node)
            for node in genotype.normal)
        self.concat = list(genotype.normal_concat)
        self.out_channels = len(self.concat) * node_channels

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, inputs in zip(self.edges, self.inputs):
            states.append(_sum(edge(states[j]) for edge, j in zip(edges, inputs)))
        return torch.cat([states[i] for i in self.concat], dim=1)


class Tower(nn.Module):
    """Stacked cells: cell k takes (output of cell k-2, output of cell k-1); the first takes (s0, s1)."""

    def __init__(self, cells: Sequence[nn.Module]):
        super().__init__()
        self.cells = nn.ModuleList(cells)
        self.out_channels = cells[-1].out_channels

    def forward(self, s0: Tensor, s1: Tensor, weights: Sequence[Tensor] | None = None) -> Tensor:
        for cell in self.cells:
            s0, s1 = s1, (cell(s0, s1) if weights is None else cell(s0, s1, weights))
        return s1


def search_tower(in_channels: int, channels: int, num_cells: int = 1, num_nodes: int = 3, shared: bool = True,
                 decouple: bool = True) -> Tower:
    cells, c_pp, c_p = [], in_channels, in_channels
    for _ in range(num_cells):
        cells.append(SearchCell(c_pp, c_p, in_channels, channels, num_nodes, shared, decouple))
        c_pp, c_p = c_p, cells[-1].out_channels
    return Tower(cells)


def augment_tower(genotype: Genotype, in_channels: int, channels: int, num_cells: int = 2) -> Tower:
    cells, c_pp, c_p = [], in_channels, in_channels
    for _ in range(num_cells):
        cells.append(AugmentCell(genotype, c_pp, c_p, in_channels, channels))
        c_pp, c_p = c_p, cells[-1].out_channels
    return Tower(cells)


# ----------------------------------------------------------------------------------------- genotypes
class Genotype(NamedTuple):
    """FAD's genotype: per node, its (op, input index) edges (0 = s0, 1 = s1, 2.. = earlier nodes), and
    the states the cell concatenates. There are no reduction cells in a head."""

    normal: list
    normal_concat: list


def validate_genotype(g: Genotype, what: str = "genotype") -> Genotype:
    """``g`` with plain lists, or a ``GenotypeError`` naming the unknown op or out-of-range input."""
    if not isinstance(g.normal, (list, tuple)) or not g.normal:
        raise GenotypeError(f"{what}: 'normal' must be a non-empty list of nodes, got {g.normal!r}")
    normal = []
    for i, node in enumerate(g.normal):
        if not isinstance(node, (list, tuple)) or not node:
            raise GenotypeError(f"{what}: node {i} must be a non-empty list of (op, input) pairs, got {node!r}")
        edges = []
        for edge in node:
            if not (isinstance(edge, (list, tuple)) and len(edge) == 2 and isinstance(edge[0], str)
                    and isinstance(edge[1], int) and not isinstance(edge[1], bool)):
                raise GenotypeError(f"{what}: node {i}: an edge must be an (op name, input index) pair, got {edge!r}")
            op, j = edge
            if op not in OP_NAMES:
                why = "'none' is dropped when a genotype is derived, not built" if op == NONE else "unknown op"
                raise GenotypeError(f"{what}: node {i}: {why} {op!r}; known ops: {', '.join(OP_NAMES)}")
            if not 0 <= j < i + 2:
                raise GenotypeError(f"{what}: node {i}: input index {j} (op {op!r}) is out of range: node {i} takes "
                                    f"inputs 0..{i + 1} (0, 1 = the cell inputs, 2.. = earlier nodes)")
            edges.append((op, j))
        normal.append(edges)
    concat = list(g.normal_concat)
    n_states = len(normal) + 2
    bad = [i for i in concat if not isinstance(i, int) or not 0 <= i < n_states]
    if not concat or bad or len(set(concat)) != len(concat):
        raise GenotypeError(f"{what}: normal_concat {concat!r} must list distinct states in 0..{n_states - 1}"
                            + (f" (bad: {bad})" if bad else ""))
    return Genotype(normal, concat)


def format_genotype(g: Genotype) -> str:
    """FAD's text form: ``Genotype(normal=[[('op', 0), ('op', 1)], ...], normal_concat=range(2, 5))``."""
    normal = [[(op, j) for op, j in node] for node in g.normal]
    c = list(g.normal_concat)
    contiguous = c == list(range(c[0], c[0] + len(c))) if c else False
    concat = f"range({c[0]}, {c[0] + len(c)})" if contiguous else repr(c)
    return f"Genotype(normal={normal!r}, normal_concat={concat})"


def _concat_literal(node: ast.AST) -> list[int]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords:
        return list(range(*[ast.literal_eval(a) for a in node.args]))
    return list(ast.literal_eval(node))


def parse_genotype(text: str, what: str = "genotype") -> Genotype:
    """Parse FAD's text form (written by ``format_genotype`` or FAD's ``genotype.log``) without ``eval``."""
    src = text.strip()
    try:
        call = ast.parse(src, mode="eval").body
    except SyntaxError as e:
        raise GenotypeError(f"{what}: not a genotype ({e.msg}): {src[:100]!r}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise GenotypeError(f"{what}: expected Genotype(normal=[...], normal_concat=...), got {src[:100]!r}")
    fields = dict(zip(Genotype._fields, call.args))
    fields.update({kw.arg: kw.value for kw in call.keywords})
    if set(fields) != set(Genotype._fields):
        raise GenotypeError(f"{what}: needs exactly the fields normal and normal_concat (a head has no reduction "
                            f"cells), got {sorted(map(str, fields))}")
    try:
        normal = ast.literal_eval(fields["normal"])
        concat = _concat_literal(fields["normal_concat"])
    except (ValueError, TypeError, SyntaxError) as e:
        raise GenotypeError(f"{what}: only literal lists, strings, ints and range(a, b) are allowed ({e})") from None
    return validate_genotype(Genotype(normal, concat), what)


def genotype_to_json(g: Genotype) -> dict:
    return {"normal": [[[op, j] for op, j in node] for node in g.normal], "normal_concat": list(g.normal_concat)}


def genotype_from_json(obj: dict, what: str = "genotype") -> Genotype:
    if not isinstance(obj, dict) or set(obj) != set(Genotype._fields):
        raise GenotypeError(f"{what}: expected an object with keys normal and normal_concat, got {obj!r}"[:300])
    return validate_genotype(Genotype(obj["normal"], obj["normal_concat"]), what)


def derive_genotype(alphas: Sequence[Tensor], k: int = 2) -> Genotype:
    """FAD / pt.darts rule on the raw alphas (one [i + 2, 11] tensor per node): drop ``none``, keep the
    top-1 op per edge, then the ``k`` edges per node whose top op has the largest alpha. Ties go to the
    lower index; edges are listed strongest first."""
    normal = []
    for i, a in enumerate(alphas):
        a = a.detach().float().cpu()
        if a.shape != (i + 2, len(ALPHA_COLUMNS)):
            raise ValueError(f"alphas of node {i} must have shape ({i + 2}, {len(ALPHA_COLUMNS)}), got {tuple(a.shape)}")
        best = []
        for j, row in enumerate(a[:, : len(OP_NAMES)].tolist()):
            op = max(range(len(row)), key=lambda c: (row[c], -c))
            best.append((row[op], -j, OP_NAMES[op], j))
        normal.append([(op, j) for _, _, op, j in sorted(best, reverse=True)[:k]])
    return Genotype(normal, list(range(2, 2 + len(alphas))))


# FAD's README, "Explored architectures": the genotypes of the paper (box, cls), and two other good ones.
_PAPER_BOX = ("Genotype(normal=[[('sinSep_conv_3x3_x3', 0), ('std_conv_3x3_x3', 1)], [('std_conv_3x3', 2), "
              "('sinSep_conv_3x3+dil_conv_3x3', 1)], [('sinSep_conv_3x3_x2', 2), ('std_conv_3x3_x2', 3)]], "
              "normal_concat=range(2, 5))")
_PAPER_CLS = ("Genotype(normal=[[('sinSep_conv_3x3_x2+dil_conv_3x3', 1), ('std_conv_3x3_x3', 0)], "
              "[('sinSep_conv_3x3_x2+dil_conv_3x3', 0), ('sinSep_conv_3x3', 2)], [('sinSep_conv_3x3_x2', 2), "
              "('std_conv_3x3', 3)]], normal_concat=range(2, 5))")
PUBLISHED_GENOTYPES = {"fad_paper": (parse_genotype(_PAPER_BOX, "fad_paper box"), parse_genotype(_PAPER_CLS, "fad_paper cls"))}
_OTHER_1 = ("Genotype(normal=[[('std_conv_3x3_x3', 0), ('std_conv_3x3_x2', 1)], [('std_conv_3x3', 0), "
            "('std_conv_3x3+dil_conv_3x3', 2)], [('std_conv_3x3_x2+dil_conv_3x3', 3), ('std_conv_3x3+dil_conv_3x3', 2)]], "
            "normal_concat=range(2, 5))")
_OTHER_2 = ("Genotype(normal=[[('std_conv_3x3_x3', 1), ('sinSep_conv_3x3+dil_conv_3x3', 0)], [('sinSep_conv_3x3', 0), "
            "('sinSep_conv_3x3+dil_conv_3x3', 2)], [('std_conv_3x3', 1), ('std_conv_3x3_x3', 0)]], normal_concat=range(2, 5))")
OTHER_GOOD_GENOTYPES = (parse_genotype(_OTHER_1, "FAD README"), parse_genotype(_OTHER_2, "FAD README"))


def _genotypes_from_obj(obj, what: str) -> tuple[Genotype, Genotype]:
    if not isinstance(obj, dict) or not {"box", "cls"} <= set(obj):
        raise GenotypeError(f"{what}: expected an object with 'box' and 'cls' genotypes")
    towers = {name: genotype_from_json(obj[name], f"{what} {name}") for name in ("box", "cls")}
    for name, g in towers.items():  # genotype.json's FAD-format lines: a user may edit either form
        text = obj.get(f"{name}_text")
        if text is not None and parse_genotype(str(text), f"{what} {name}_text") != g:
            raise GenotypeError(f"{what}: '{name}_text' and '{name}' give two different {name} genotypes "
                                f"({text} against {format_genotype(g)}): make them the same, or remove '{name}_text'")
    return towers["box"], towers["cls"]


def read_genotypes(source: str | Path | Mapping, what: str = "model.head.genotype (inline)") -> tuple[Genotype, Genotype]:
    """(box, cls) from a published name (``fad_paper``), a ``genotype.json`` ({"box": .., "cls": ..}), a
    ``genotype.log`` (FAD's: the box genotype on the first line, the cls genotype on the second), or the
    json's mapping itself (how ``nasdet tune`` stores it in a checkpoint's config)."""
    if isinstance(source, Mapping):
        return _genotypes_from_obj(dict(source), what)
    if str(source) in PUBLISHED_GENOTYPES:
        return PUBLISHED_GENOTYPES[str(source)]
    path = Path(source)
    if not path.is_file():
        raise GenotypeError(f"genotype file {path} does not exist (nor is it a published genotype: "
                            f"{', '.join(PUBLISHED_GENOTYPES)})")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{path} is not valid JSON: {e}") from None
        return _genotypes_from_obj(obj, str(path))
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 2:
        raise GenotypeError(f"{path}: expected 2 genotype lines (box, then cls), got {len(lines)}")
    return parse_genotype(lines[0], f"{path} line 1 (box)"), parse_genotype(lines[1], f"{path} line 2 (cls)")


GENOTYPE_KEY = "head.genotype"  # the one choice of a FAD arch: the box and cls genotypes of the head


def genotype_arch(source: str | Path | Mapping, what: str = "model.head.genotype (inline)") -> dict:
    """FAD genotypes as an arch, ``{"head.genotype": {"box": .., "cls": ..}}``: what a darts search finds
    and what the tune stage trains, stores in its checkpoints and hands to export, as it does a subnet's."""
    box, cls = read_genotypes(source, what)  # ``what`` names an inline mapping in errors
    return {GENOTYPE_KEY: {"box": genotype_to_json(box), "cls": genotype_to_json(cls)}}


def is_genotype_arch(arch: Mapping) -> bool:
    return GENOTYPE_KEY in arch


def with_genotype(model_cfg, arch: Mapping):
    """``model_cfg`` (an FCOS / RetinaNet model config) with its head's genotype set to the arch's."""
    head = model_cfg.head.model_copy(update={"genotype": dict(arch[GENOTYPE_KEY])})
    return model_cfg.model_copy(update={"head": head})


def write_genotypes(out_dir: str | Path, box: Genotype, cls: Genotype) -> dict[str, Path]:
    """``genotype.log`` (FAD's two lines: box, cls) and ``genotype.json``, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {GENOTYPE_LOG: f"{format_genotype(box)}\n{format_genotype(cls)}\n",
             GENOTYPE_JSON: json.dumps({"box": genotype_to_json(box), "cls": genotype_to_json(cls),
                                          "box_text": format_genotype(box), "cls_text": format_genotype(cls)},
                                         indent=2) + "\n"}
    for name, text in files.items():
        write_text_atomic(out_dir / name, text)
    return {name: out_dir / name for name in files}


# -------------------------------------------------------------------------------------------- heads
class FADTowers(nn.Module):
    """Box and cls towers of one head, shared by all FPN levels.

    ``genotypes=None``: the search version, with alphas ``alpha_box`` / ``alpha_cls`` (one [i + 2, 11]
    parameter per node, FAD's 1e-3 * randn init). Else the (box, cls) genotypes are built as plain cells.
    """

    def __init__(self, in_channels: int, channels: int, num_cells: int, genotypes: tuple[Genotype, Genotype] | None = None,
                 num_nodes: int = 3, decouple: bool = True, shared: bool = True):
        super().__init__()
        if genotypes is None:
            self.box_tower = search_tower(in_channels, channels, num_cells, num_nodes, shared, decouple)
            self.cls_tower = search_tower(in_channels, channels, num_cells, num_nodes, shared, decouple)
            self.alpha_box = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(i + 2, len(ALPHA_COLUMNS))) for i in range(num_nodes))
            self.alpha_cls = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(i + 2, len(ALPHA_COLUMNS))) for i in range(num_nodes))
        else:
            box, cls = genotypes
            self.box_tower = augment_tower(validate_genotype(box, "box genotype"), in_channels, channels, num_cells)
            self.cls_tower = augment_tower(validate_genotype(cls, "cls genotype"), in_channels, channels, num_cells)
            self.alpha_box = self.alpha_cls = None
        self.box_reduce = nn.Conv2d(self.box_tower.out_channels, in_channels, 1)
        self.cls_reduce = nn.Conv2d(self.cls_tower.out_channels, in_channels, 1)
        nn.init.normal_(self.cls_reduce.weight, std=0.01)
        nn.init.zeros_(self.cls_reduce.bias)

    @property
    def searching(self) -> bool:
        return self.alpha_box is not None

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.alpha_box, *self.alpha_cls] if self.searching else []

    def arch_weights(self) -> tuple[list[Tensor], list[Tensor]] | None:
        if not self.searching:
            return None
        return [a.softmax(-1) for a in self.alpha_box], [a.softmax(-1) for a in self.alpha_cls]

    def genotypes(self) -> tuple[Genotype, Genotype]:
        """(box, cls) derived from the current alphas."""
        if not self.searching:
            raise RuntimeError("these towers were built from a genotype; there are no alphas to derive one from")
        return derive_genotype(list(self.alpha_box)), derive_genotype(list(self.alpha_cls))

    def forward(self, feature: Tensor, weights=None) -> tuple[Tensor, Tensor]:
        """One FPN level [N, C_in, H, W] -> (box feature, cls feature), both [N, C_in, H, W]."""
        wb, wc = weights if weights is not None else (None, None)
        box = self.box_reduce(self.box_tower(feature, feature, wb))
        cls = self.cls_reduce(self.cls_tower(box, feature, wc))
        return box, cls


class _FADHead(nn.Module):
    """What the FAD heads share: searched towers in front of a torchvision predictor (``self.predictor``)."""

    towers: "FADTowers"
    predictor: nn.Module

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.towers.arch_parameters()

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        return self.predictor.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def tower_features(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(box features, cls features) per FPN level, the alphas' softmax computed once."""
        weights = self.towers.arch_weights()
        box, cls = zip(*(self.towers(f, weights) for f in x))
        return list(box), list(cls)


class FADFCOSHead(_FADHead):
    """FCOS head with FAD towers; predictors, losses and outputs are torchvision's ``FCOSHead`` (its
    conv towers empty): cls logits from the cls feature, box regression and centerness from the box feature."""

    def __init__(self, towers: FADTowers, in_channels: int, num_classes: int):
        super().__init__()
        self.towers = towers
        self.predictor = FCOSHead(in_channels, 1, num_classes, num_convs=0)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        box, cls = self.tower_features(x)
        bbox_regression, bbox_ctrness = self.predictor.regression_head(box)
        return {"cls_logits": self.predictor.classification_head(cls), "bbox_regression": bbox_regression,
                "bbox_ctrness": bbox_ctrness}


class FADRetinaNetHead(_FADHead):
    """RetinaNet head with FAD towers; predictors and losses are torchvision's ``RetinaNetHead`` with its
    conv towers removed. FAD initialises the box reduction like the predictors (normal, std 0.01)."""

    def __init__(self, towers: FADTowers, in_channels: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.towers = towers
        self.predictor = RetinaNetHead(in_channels, num_anchors, num_classes)
        self.predictor.classification_head.conv = nn.Sequential()
        self.predictor.regression_head.conv = nn.Sequential()
        nn.init.normal_(towers.box_reduce.weight, std=0.01)
        nn.init.zeros_(towers.box_reduce.bias)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        box, cls = self.tower_features(x)
        return {"cls_logits": self.predictor.classification_head(cls),
                "bbox_regression": self.predictor.regression_head(box)}


def fad_towers(in_channels: int, head_cfg, search: bool = False) -> FADTowers:
    """FAD's box and cls towers for ``head_cfg`` (nasdet.models.config.HeadConfig): the search version
    (alphas, ``search_cells`` cells of ``search_nodes`` nodes) when ``search``, else ``num_cells`` cells
    per tower built from ``head_cfg.genotype``. The FCOS / RetinaNet family wraps them in its head."""
    if search:
        return FADTowers(in_channels, head_cfg.cell_channels, head_cfg.search_cells, None, head_cfg.search_nodes,
                         head_cfg.decouple)
    if head_cfg.genotype is None:
        raise GenotypeError("model.head.genotype is not set: give a genotype.log / genotype.json of a FAD search "
                            f"or a published name ({', '.join(PUBLISHED_GENOTYPES)})")
    return FADTowers(in_channels, head_cfg.cell_channels, head_cfg.num_cells, read_genotypes(head_cfg.genotype))


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The alphas of every FAD search head inside ``model`` (empty for a model without one)."""
    out = []
    for m in model.modules():
        if isinstance(m, FADTowers):
            out.extend(m.arch_parameters())
    return out

