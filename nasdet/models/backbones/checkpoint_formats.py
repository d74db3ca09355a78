"""Which layout a backbone checkpoint is in, and loading it into a nasdet backbone through its mapping.

``model.backbone.checkpoint_format`` (default ``auto``: recognised from the keys):

- ``nasdet``: the backbone's own state_dict (a classify run, ``export``, ...);
- ``ofa``: once-for-all's ``OFAMobileNetV3`` (model zoo ``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``)
  into ``ofa_mbv3`` (``ofa_checkpoints.py``);
- ``detnas`` / ``spos`` / ``mmrazor``: the ShuffleNetV2 one-shot supernets of megvii-model/DetNAS,
  megvii-model/SinglePathOneShot and open-mmlab/mmrazor into ``detnas_*`` built with the same
  ``model.backbone.layout`` (``shufflenet_checkpoints.py``).

Wrapping is undone first: a ``model`` / ``state_dict`` entry (done by the caller), and any key prefix
before the layout's own keys (``module.`` of DataParallel, ``backbone.`` / ``backbone.body.`` of a
detector, ``architecture.backbone.`` of an MMRazor algorithm).
"""
from __future__ import annotations

import re
import warnings
from typing import Mapping

import torch
from torch import nn

from ...errors import CheckpointError
from .ofa_checkpoints import load_ofa_supernet, ofa_key_of
from .ofa_mobilenet import OFAMobileNetV3
from .shufflenet_checkpoints import load_detnas_supernet, load_mmrazor_supernet, load_spos_supernet
from .shufflenet_spos import ShuffleNetSPOS, sizes_of

FORMATS = ("auto", "nasdet", "ofa", "detnas", "spos", "mmrazor")
NAMES = {"nasdet": "nasdet", "ofa": "once-for-all OFAMobileNetV3", "detnas": "DetNAS supernet",
         "spos": "SinglePathOneShot supernet", "mmrazor": "MMRazor SearchableShuffleNetV2"}
# format -> (a key its state_dict always has, another that must sit under the same prefix)
ANCHORS = {
    "ofa": ("blocks.0.conv.depth_conv.conv.weight", "first_conv.conv.weight"),
    "detnas": ("first_conv.conv.bias", "features.0.0.proj_conv.interstellar1a_proj_s.weight"),
    "spos": ("features.0.0.branch_proj.0.weight", "first_conv.0.weight"),
    "mmrazor": ("conv1.conv.weight", "layers.0.0._candidates.shuffle_3x3.branch1.0.conv.weight"),
    "mmrazor_0x": ("conv1.conv.weight", "layers.0.0.choices.shuffle_3x3.branch1.0.conv.weight"),
}
FILE_KEYS = {"ofa": ofa_key_of}  # format -> its key of a nasdet key, for the keys a file misses
MAPPINGS = {"ofa": load_ofa_supernet, "detnas": load_detnas_supernet, "spos": load_spos_supernet,
            "mmrazor": load_mmrazor_supernet}


def reference_format(backbone: nn.Module) -> str | None:
    """The reference layout whose released supernet maps onto ``backbone`` (None: nasdet's own only)."""
    if isinstance(backbone, OFAMobileNetV3):
        return "ofa"
    if isinstance(backbone, ShuffleNetSPOS):
        return backbone.layout
    return None


def detect_format(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> tuple[str | None, str]:
    """(format, key prefix) of ``state``; format None when no known layout fits."""
    if set(backbone.state_dict()) <= set(state):
        return "nasdet", ""
    for key in state:
        for fmt, (anchor, other) in ANCHORS.items():
            if key.endswith(anchor) and key[: len(key) - len(anchor)] + other in state:
                return fmt.replace("_0x", ""), key[: len(key) - len(anchor)]
    return None, ""


def _examples(keys, n: int = 3) -> str:
    return ", ".join(list(keys)[:n])


def _expected(backbone: nn.Module) -> str:
    ref = reference_format(backbone)
    own = f"nasdet's own state_dict (e.g. {_examples(backbone.state_dict())})"
    return own if ref is None else f"{own} or a {NAMES[ref]} one (e.g. {', '.join(ANCHORS[ref])})"


def _found(state: Mapping[str, torch.Tensor], found: str | None, prefix: str, backbone: nn.Module, name: str) -> str:
    if found is None and any(k.startswith("backbone.body.") for k in state):
        return ("a nasdet detector's state (backbone.body.*), not a backbone's: a trained supernet starts `nasdet "
                "tune` as tune.supernet_checkpoint, a trained detector the pipeline as pipeline.baseline_checkpoint")
    own = set(backbone.state_dict())
    if found is None and own & set(state):  # nasdet's keys, but not all of this backbone's
        extra, missing = sorted(set(state) - own), sorted(own - set(state))
        return (f"nasdet's own layout of another backbone or size ({len(missing)} of {name}'s keys missing, e.g. "
                f"{_examples(missing, 2)}; {len(extra)} not {name}'s, e.g. {_examples(extra, 2)})")
    if found is None:
        return f"no known layout (e.g. {_examples(state)})"
    if found == "nasdet":
        return "nasdet's own state_dict"
    anchors = ANCHORS[found] if prefix + ANCHORS[found][1] in state else ANCHORS[found + "_0x"]
    return f"a {NAMES[found]} state_dict (e.g. {', '.join(prefix + a for a in anchors)})"


def unwrap(state: Mapping[str, torch.Tensor], prefix: str, fmt: str) -> dict[str, torch.Tensor]:
    """The layout's own keys: ``prefix`` removed, other keys dropped (an MMRazor algorithm's
    ``head.fc`` kept beside ``backbone``)."""
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if fmt == "mmrazor" and prefix.endswith("backbone."):
        head = prefix[: -len("backbone.")] + "head.fc."
        out.update({"head.fc." + k[len(head):]: v for k, v in state.items() if k.startswith(head)})
    return out


def _ofa_full_net_kernel_transforms(mapped: dict, missing: list[str], own: Mapping[str, torch.Tensor],
                                    source: str) -> list[str]:
    """OFA's full network (``ofa_D4_E6_K7``, kernel 7 only: ``train_ofa_net.py``'s start for the elastic-kernel phase)
    has no kernel transform matrices; OFA's phase loads it over its supernet's identity-initialised ones. The same
    here, said once; ``missing`` without them."""
    transforms = [k for k in missing if ".kernel_transforms." in k]
    if not transforms:
        return missing
    for k in transforms:
        mapped[k] = torch.eye(own[k].shape[0], dtype=own[k].dtype)
    warnings.warn(f"{source}: an OFA network without kernel transforms (kernel 7 only: OFA's full net, "
                  f"ofa_D4_E6_K7): its {len(transforms)} transform matrices start at identity, as OFA's elastic-kernel "
                  "phase starts them; kernels 5 and 3 are the 7x7 kernel's centre until trained")
    return [k for k in missing if k not in transforms]


def _detnas_size_hint(found: str, layout: Mapping[str, torch.Tensor], backbone: nn.Module) -> str:
    """"; it is a DetNAS 1.3G supernet (...): set model.backbone.name: detnas_1.3G" for a released ShuffleNetV2
    supernet of another size than ``backbone``'s (its choice blocks and stem width tell), else ""."""
    if not isinstance(backbone, ShuffleNetSPOS) or found not in ("detnas", "spos", "mmrazor"):
        return ""
    if found == "mmrazor":
        blocks = {m.groups() for k in layout if (m := re.match(r"layers\.(\d+)\.(\d+)\.", k))}
        stem = layout.get("conv1.conv.weight")
    else:
        blocks = {m.group(1) for k in layout if (m := re.match(r"features\.(\d+)\.", k))}
        stem = layout.get("first_conv.conv.weight", layout.get("first_conv.0.weight"))  # DetNAS's, SPOS's
    width = int(stem.shape[0]) if torch.is_tensor(stem) and stem.dim() == 4 else None
    sizes = [n for n in sizes_of(len(blocks), width) if n != backbone.size]
    if len(sizes) != 1:
        return ""
    return (f"; the file is of the {sizes[0]} size ({len(blocks)} choice blocks, a {width}-channel stem), the backbone "
            f"of the {backbone.size}: set model.backbone.name: detnas_{sizes[0]}")


def load_backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str, name: str,
                        fmt: str = "auto") -> None:
    """Load ``state`` (any supported layout) into ``backbone``; ``source`` names the file in errors.

    A layout that does not fit the backbone is one ``CheckpointError`` line: the layout expected, the
    layout found, and a few keys of each.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"model.backbone.checkpoint_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    found, prefix = detect_format(state, backbone)
    expected = reference_format(backbone)
    if found is None or (found != "nasdet" and found != expected) or fmt not in ("auto", found):
        hint = ""
        if isinstance(backbone, ShuffleNetSPOS) and found in ("detnas", "spos", "mmrazor"):
            hint = f"; set model.backbone.layout: {found}"
        elif fmt != "auto" and found and fmt != found:
            hint = f"; model.backbone.checkpoint_format says {fmt}"
        raise CheckpointError(f"{source}: {name} takes {_expected(backbone)}; found {_found(state, found, prefix, backbone, name)}{hint}")
    try:
        mapped = dict(state) if found == "nasdet" else MAPPINGS[found](unwrap(state, prefix, found))
    except CheckpointError as e:  # the mapping's own words: which file (a pipeline reads several), keys as stored
        read = f" (its keys read without their prefix {prefix!r})" if prefix else ""
        raise CheckpointError(f"{source}: {e}{read}") from None
    own = backbone.state_dict()
    if found != "nasdet":  # FrozenBatchNorm2d has no num_batches_tracked
        mapped = {k: v for k, v in mapped.items() if k in own or not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in mapped]
    if found == "ofa" and not any(k.endswith("_matrix") for k in unwrap(state, prefix, found)):
        missing = _ofa_full_net_kernel_transforms(mapped, missing, own, source)
    if found in FILE_KEYS:  # as the file names them (qa_released: "stages.1.blocks.2.project_bn.bn.running_var")
        layout = unwrap(state, prefix, found)
        missing = [f"{prefix}{theirs} ({k})" if (theirs := FILE_KEYS[found](k, layout)) else k for k in missing]
    unexpected = [k for k in mapped if k not in own]
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in mapped and mapped[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: a {NAMES[found]} state_dict that does not fit {name}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shapes)} of another "
            f"shape (e.g. {shapes[:2]}; checkpoint vs backbone: another width_mult or size?)"
            f"{_detnas_size_hint(found, unwrap(state, prefix, found), backbone)}")
    backbone.load_state_dict(mapped, strict=True)
