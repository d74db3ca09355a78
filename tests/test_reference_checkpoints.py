"""Released supernets of the references load function-preserving (issue 22 item 2).

The fixtures under tests/fixtures/reference_layouts/ were generated once by ``make_fixtures.py`` from
the references' own code: each reference's state_dict keys and shapes, and what its network computes
(c2..c5 and ImageNet logits, float64, eval mode) for a handful of subnets when filled with
deterministic weights derived from those keys. Here nasdet is filled with the same weights through
its mappings and must compute the same, to 1e-5 (nasdet in float32 against the reference in float64:
float64 depthwise convolutions are ~30x slower on CPU, and the float32 error is ~3e-7 here).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from nasdet.config import BackboneConfig
from nasdet.errors import CheckpointError
from nasdet.models.backbones import build_backbone
from nasdet.models.backbones.checkpoint_formats import MAPPINGS, detect_format, load_backbone_state, unwrap
from nasdet.models.backbones.ofa_checkpoints import load_ofa_supernet
from nasdet.models.backbones.ofa_mobilenet import OFAMobileNetV3, imagenet_form as ofa_imagenet_form
from nasdet.models.backbones.shufflenet_checkpoints import load_detnas_supernet
from nasdet.models.backbones.shufflenet_spos import ShuffleNetSPOS, imagenet_form as shuffle_imagenet_form

_spec = importlib.util.spec_from_file_location(
    "reference_layouts_deterministic", Path(__file__).parent / "fixtures" / "reference_layouts" / "deterministic.py")
det = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(det)


def reference_state(name: str) -> dict[str, torch.Tensor]:
    return det.deterministic_state_dict(det.read_json(f"{name}.keys.json.gz")["shapes"])


def assert_matches(got: torch.Tensor, expected: dict, what: str) -> None:
    s = det.summarize(got)
    assert s["shape"] == expected["shape"], what
    ours = torch.tensor([s["mean"], s["abs_mean"], s["std"], *s["sample"]], dtype=torch.float64)
    theirs = torch.tensor([expected["mean"], expected["abs_mean"], expected["std"], *expected["sample"]],
                          dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def run_with_features(form: torch.nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(backbone outputs c2..c5, logits) of an ImageNet form in one forward pass."""
    feats: dict = {}
    hook = form.backbone.register_forward_hook(lambda module, args, out: feats.update(out))
    try:
        logits = form(x)
    finally:
        hook.remove()
    return feats, logits


def ofa_arch(ks: list[int], e: list[int], d: list[int]) -> dict[str, int]:
    """OFA's ``set_active_subnet(ks, e, d)`` lists (20 blocks, 5 stages) as a nasdet arch."""
    arch = {f"stage{s + 1}.depth": d[s] for s in range(5)}
    for i in range(20):
        s, j = divmod(i, 4)
        arch[f"stage{s + 1}.block{j}.kernel"] = ks[i]
        arch[f"stage{s + 1}.block{j}.expand"] = e[i]
    return arch


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_ofa_released_supernet_layout_every_subnet_as_ofa_computes_it(width):
    name = f"ofa_mbv3_d234_e346_k357_w{width}"
    fixture = det.read_json(f"{name}.outputs.json")
    backbone = OFAMobileNetV3(width_mult=width)
    form = ofa_imagenet_form(backbone, width)
    form.load_state_dict(load_ofa_supernet(reference_state(name), with_head=True), strict=True)
    form.eval()
    x = det.fixed_input(fixture["input"]).float()
    assert len(fixture["subnets"]) >= 5
    with torch.no_grad():
        for sub in fixture["subnets"]:
            backbone.set_arch(ofa_arch(sub["ks"], sub["e"], sub["d"]))
            feats, logits = run_with_features(form, x)
            for level in ("c2", "c3", "c4", "c5"):
                assert_matches(feats[level], sub["outputs"][level], f"{name} {sub['name']} {level}")
            assert_matches(logits, sub["outputs"]["logits"], f"{name} {sub['name']} logits")
            if sub["name"] == "mixed0":  # the exported static subnet computes the same
                assert_matches(backbone.export()(x)["c5"], sub["outputs"]["c5"], f"{name} {sub['name']} export c5")


def test_ofa_model_zoo_file_through_model_backbone_checkpoint(tmp_path):
    name = "ofa_mbv3_d234_e346_k357_w1.0"
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": reference_state(name)}, path)  # OFA's model zoo file: {"state_dict": ...}
    backbone = build_backbone(BackboneConfig(name="ofa_mbv3", checkpoint=str(path))).eval()
    sub = next(s for s in det.read_json(f"{name}.outputs.json")["subnets"] if s["name"] == "mixed0")
    backbone.set_arch(ofa_arch(sub["ks"], sub["e"], sub["d"]))
    with torch.no_grad():
        feats = backbone(det.fixed_input([2, 3, 64, 64]).float())
    for level in ("c2", "c3", "c4", "c5"):
        assert_matches(feats[level], sub["outputs"][level], f"{name} via checkpoint {level}")
    # a file missing a key names it as the file does, nasdet's name beside (qa_released: nasdet's alone)
    import re

    state = reference_state(name)
    for gone in ("blocks.7.conv.point_linear.bn.bn.running_var", "blocks.2.conv.depth_conv.conv.5to3_matrix",
                 "final_expand_layer.bn.weight"):
        cut = {k: v for k, v in state.items() if k != gone}
        torch.save({"state_dict": cut}, path)
        with pytest.raises(CheckpointError, match=re.escape(f"'{gone} (")):
            build_backbone(BackboneConfig(name="ofa_mbv3", checkpoint=str(path)))
    # OFA's full net (ofa_D4_E6_K7), where its elastic-kernel phase starts: no transform matrix at all; they start
    # at identity as OFA's phase starts them, and the largest subnet computes what the released network does
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.endswith("_matrix")}}, path)
    with pytest.warns(UserWarning, match=r"without kernel transforms .* its 40 transform matrices start at identity"):
        backbone = build_backbone(BackboneConfig(name="ofa_mbv3", checkpoint=str(path))).eval()
    assert all(torch.equal(v, torch.eye(len(v))) for k, v in backbone.state_dict().items() if "kernel_transforms" in k)
    largest = next(s for s in det.read_json(f"{name}.outputs.json")["subnets"] if s["name"] == "largest")
    backbone.set_arch(ofa_arch(largest["ks"], largest["e"], largest["d"]))
    with torch.no_grad():
        feats = backbone(det.fixed_input([2, 3, 64, 64]).float())
    assert_matches(feats["c5"], largest["outputs"]["c5"], f"{name} full net c5")


SHUFFLE_CASES = [  # fixture, the nasdet layout it loads into, size, subnets checked
    ("detnas_300M_supernet", "detnas", "300M", None),
    ("spos_300M_supernet", "spos", "300M", None),
    ("mmrazor_spos_300M_supernet", "mmrazor", "300M", None),
    ("detnas_1.3G_supernet", "detnas", "1.3G", ("published", "random")),
]


@pytest.mark.parametrize("name,layout,size,subnets", SHUFFLE_CASES, ids=[c[0] for c in SHUFFLE_CASES])
def test_shufflenet_released_supernet_layouts_every_subnet_as_the_reference_computes_it(name, layout, size, subnets):
    fixture = det.read_json(f"{name}.outputs.json")
    state = reference_state(name)
    backbone = ShuffleNetSPOS(size, layout=layout)
    fmt, prefix = detect_format(state, backbone)
    assert fmt == layout and prefix in ("module.", "architecture.backbone.")
    form = shuffle_imagenet_form(backbone, size)
    form.load_state_dict(MAPPINGS[fmt](unwrap(state, prefix, fmt), with_head=True), strict=True)
    del state
    form.eval()
    x = det.fixed_input(fixture["input"]).float()
    checked = 0
    with torch.no_grad():
        for sub in fixture["subnets"]:
            if subnets and sub["name"] not in subnets:
                continue
            backbone.set_arch(sub["choices"])
            feats, logits = run_with_features(form, x)
            for level in ("c2", "c3", "c4", "c5"):
                assert_matches(feats[level], sub["outputs"][level], f"{name} {sub['name']} {level}")
            assert_matches(logits, sub["outputs"]["logits"], f"{name} {sub['name']} logits")
            checked += 1
    assert checked == len(subnets or fixture["subnets"])


def test_detnas_3_8G_search_body_maps_onto_detnas_3_8G_key_for_key():
    """DetNAS has no ImageNet 3.8G supernet; its COCO search body (maskrcnn_benchmark detnasnet.py) does."""
    shapes = det.read_json("detnas_3.8G_search_body.keys.json.gz")["shapes"]
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        backbone = ShuffleNetSPOS("3.8G", layout="detnas")
    fmt, prefix = detect_format(state, backbone)
    assert (fmt, prefix) == ("detnas", "backbone.")
    mapped = load_detnas_supernet(unwrap(state, prefix, fmt))
    own = backbone.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


def test_a_checkpoint_of_another_layout_says_which_it_expected_and_found():
    ofa_state = reference_state("ofa_mbv3_d234_e346_k357_w1.0")
    detnas_state = reference_state("detnas_300M_supernet")
    source = "model.backbone.checkpoint x.pth"

    def error(backbone, state, fmt="auto") -> str:
        with pytest.raises(CheckpointError) as e:
            load_backbone_state(backbone, state, source, "the backbone", fmt)
        line = str(e.value)
        assert "\n" not in line and line.startswith(source)
        return line

    spos = ShuffleNetSPOS("300M")
    line = error(spos, ofa_state)
    assert "SinglePathOneShot supernet" in line and "found a once-for-all OFAMobileNetV3" in line
    assert "first_conv.0.weight" in line and "blocks.0.conv.depth_conv.conv.weight" in line  # keys of each
    line = error(spos, detnas_state)
    assert "found a DetNAS supernet" in line and "set model.backbone.layout: detnas" in line
    # a supernet of another size: its 1,500 keys listed, never the size (qa_detnas #3)
    line = error(ShuffleNetSPOS("300M", layout="detnas"), reference_state("detnas_1.3G_supernet"))
    assert line.endswith("the file is of the 1.3G size (40 choice blocks, a 48-channel stem), the backbone of the "
                         "300M: set model.backbone.name: detnas_1.3G")
    line = error(OFAMobileNetV3(width_mult=1.2), ofa_state)  # w1.0 file, w1.2 net
    assert "of another shape" in line and "first_conv.0.weight (16, 3, 3, 3) vs (24, 3, 3, 3)" in line
    line = error(OFAMobileNetV3(), ofa_state, fmt="spos")
    assert "checkpoint_format says spos" in line
    line = error(OFAMobileNetV3(), {"head.weight": torch.zeros(2)})
    assert "found no known layout (e.g. head.weight)" in line
    # the right layout loads (also into frozen BN, which has no num_batches_tracked); nasdet's own still loads
    load_backbone_state(ShuffleNetSPOS("300M", layout="detnas"), detnas_state, source, "detnas_300M")
    load_backbone_state(ShuffleNetSPOS("300M", norm="frozen_bn", layout="detnas"), detnas_state, source, "detnas_300M")
    frozen = OFAMobileNetV3(norm="frozen_bn")
    load_backbone_state(frozen, ofa_state, source, "ofa_mbv3")
    torch.testing.assert_close(frozen.first_conv[1].running_var, ofa_state["first_conv.bn.running_var"])
    load_backbone_state(spos, ShuffleNetSPOS("300M").state_dict(), source, "detnas_300M")


@pytest.mark.parametrize("name, layout", [("detnas_300M_supernet", "detnas"), ("mmrazor_spos_300M_supernet", "mmrazor")])
def test_a_released_file_missing_bn_affine_tensors_is_refused_naming_the_file(name, layout):
    """DetNAS's and MMRazor's BNs are affine: a file without a BN's weight and bias (a truncated export, a filtered
    state_dict) loaded those BNs as weight 1, bias 0 without a word (the rule for SPOS's affine=False BNs); and the
    mappings' errors did not name the file (a pipeline reads several)."""
    state = reference_state(name)
    bn = next(k[: -len(".running_mean")] for k in state if k.endswith("running_mean") and ".features.8." in k
              or k.endswith("running_mean") and ".layers.2." in k)
    cut = {k: v for k, v in state.items() if k not in (f"{bn}.weight", f"{bn}.bias")}
    source = "model.backbone.checkpoint x.pth"
    with pytest.raises(CheckpointError) as e:
        load_backbone_state(ShuffleNetSPOS("300M", layout=layout), cut, source, "detnas_300M")
    line = str(e.value)
    assert line.startswith(source) and ".".join(bn.split(".")[-3:]) + ".weight" in line and "prefix" in line, line
    load_backbone_state(ShuffleNetSPOS("300M", layout=layout), state, source, "detnas_300M")  # the whole file loads


def test_layout_is_only_for_detnas_backbones_and_keeps_the_published_sizes():
    from nasdet.errors import ConfigError

    with pytest.raises(ConfigError, match="model.backbone.layout is for the detnas_"):
        build_backbone(BackboneConfig(name="ofa_mbv3", layout="detnas"))
    built = build_backbone(BackboneConfig(name="detnas_tiny", layout="mmrazor"))
    assert built.layout == "mmrazor" and all(c.layout == "mmrazor" for c in built.stages[0][0].candidates)
    assert all(c.layout == "spos" for c in build_backbone(BackboneConfig(name="detnas_tiny")).stages[0][0].candidates)
    sizes = {layout: sum(p.numel() for p in shuffle_imagenet_form(
        ShuffleNetSPOS("300M", layout=layout).export([2, 1, 2, 0, 2, 1, 1, 2, 3, 3, 1, 3, 0, 0, 3, 1, 3, 1, 3, 2]),
        "300M").parameters()) for layout in ("spos", "detnas", "mmrazor")}
    assert sizes["spos"] == sizes["detnas"]  # only where channels go differs
    assert abs(sizes["mmrazor"] - sizes["spos"]) / sizes["spos"] < 0.002  # equal stride-2 halves: ~0.1 %


def test_mmrazor_0x_supernet_keys_map_as_main():
    """MMRazor 0.x held the candidates as ``choices`` (``OneShotOP``) under ``architecture.model.backbone.``."""
    state = reference_state("mmrazor_spos_300M_supernet")
    old = {k.replace("architecture.backbone.", "architecture.model.backbone.").replace("._candidates.", ".choices."): v
           for k, v in state.items() if ".backbone." in k}
    backbone = ShuffleNetSPOS("300M", layout="mmrazor")
    fmt, prefix = detect_format(old, backbone)
    assert (fmt, prefix) == ("mmrazor", "architecture.model.backbone.")
    mapped_old = MAPPINGS[fmt](unwrap(old, prefix, fmt))
    mapped = MAPPINGS["mmrazor"](unwrap(state, "architecture.backbone.", "mmrazor"))
    assert mapped_old.keys() == mapped.keys() == backbone.state_dict().keys()
    assert all(mapped_old[k] is mapped[k] for k in mapped)


@pytest.mark.parametrize("name, backbone, head_layers", [
    ("ofa_mbv3_d234_e346_k357_w1.0", {"name": "ofa_mbv3"}, {"feature_mix.0": "feature_mix_layer.conv"}),
    ("detnas_300M_supernet", {"name": "detnas_300M", "layout": "detnas"}, {"conv_last.1": "last_conv.bn"})])
def test_a_classifier_from_a_released_supernet_takes_its_imagenet_head(tmp_path, name, backbone, head_layers):
    """`nasdet classify` from a released ImageNet supernet re-initialised its head (OFA's feature mix, DetNAS's last
    1x1 conv and BN, the FC of 1000 classes) without a word; they come from the file where they fit, the log says
    which start afresh."""
    from nasdet.models.classifier import build_classifier

    state = reference_state(name)
    path = tmp_path / name
    torch.save({"state_dict": state}, path)
    prefix = "module." if any(k.startswith("module.") for k in state) else ""
    for classes, fresh in ((1000, False), (7, True)):
        model = build_classifier(BackboneConfig(**backbone, checkpoint=str(path)), classes, 64)
        head = model.head.state_dict()
        for ours, theirs in head_layers.items():
            suffix = "weight" if "conv" in theirs and not theirs.endswith("bn") else "running_var"
            torch.testing.assert_close(head[f"{ours}.{suffix}"], state[f"{prefix}{theirs}.{suffix}"])
        assert ("classifier afresh (7 classes, the file's 1000)" in model.head_start) == fresh, model.head_start
        assert model.head_start.startswith("head layers ")


def test_a_searched_detnas_network_starts_the_tune_of_its_arch(tmp_path, tiny_config):
    """Megvii's searched DetNAS nets (ShuffleNet-Series DetNAS/network.py, trained on ImageNet: DetNAS step 5 starts
    COCO from them) were "no known layout" (qa_detnas #6). Read as one subnet's backbone, they compute what
    network.py computes; given to a supernet they are refused naming the tune that takes them."""
    from nasdet.models.backbones.shufflenet_spos import arch_to_list
    from nasdet.models.classifier import read_subnet_file
    from nasdet.train.trained import build_static_model

    name = "detnas_network_coco_fpn_300M"
    fixture = det.read_json(f"{name}.outputs.json")["subnets"][0]
    path = tmp_path / "checkpoint-300000.pth.tar"
    torch.save({"state_dict": reference_state(name), "optimizer_state_dict": {}}, path)  # DetNAS/train.py's file
    state, arch, what = read_subnet_file(path)
    assert what == "detnas_network" and arch_to_list(arch) == fixture["choices"]
    body = ShuffleNetSPOS("300M").export(arch)
    body.load_state_dict(state)
    with torch.no_grad():
        feats = body.eval()(det.fixed_input([1, 3, 224, 224]).float())
    for level in ("c2", "c3", "c4", "c5"):
        assert_matches(feats[level], fixture["outputs"][level], f"{name} {level}")
    with pytest.raises(CheckpointError, match=r"is a searched DetNAS network .* arch \[2, 1, 2, 0, .* tune.init: "
                                              r"scratch and tune.arch that list \(DetNAS step 5\), not a supernet"):
        build_backbone(BackboneConfig(name="detnas_300M", checkpoint=str(path)))
    # a tune of its arch from it (tune.init: scratch); under layout detnas (another channel split) refused
    model = {"backbone": {"name": "detnas_300M", "checkpoint": str(path)}, "input_size": 64}
    static, _ = build_static_model(tiny_config("retinanet", model=model), 3, {**prefix_backbone(arch), "input_size": 64})
    got = static.backbone.body.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in state.items())
    other = {**model, "backbone": {**model["backbone"], "layout": "detnas"}}
    with pytest.raises(CheckpointError, match="units split channels as model.backbone.layout spos does"):
        build_static_model(tiny_config("retinanet", model=other), 3, {**prefix_backbone(arch), "input_size": 64})
    with pytest.raises(CheckpointError, match=r"differs from the arch to build in 1 choice\(s\).*tune.arch must be the file's"):
        build_static_model(tiny_config("retinanet", model=model), 3,
                           {**prefix_backbone({**arch, "stage1.block0.op": 0}), "input_size": 64})


def prefix_backbone(arch):
    return {f"backbone.{k}": v for k, v in arch.items()}
