"""mbv3_width: ENOT's per-block hidden-width space on torchvision's MobileNetV3-Large, the supernet of an
imported ssdlite320_mobilenet_v3_large (model.layout: torchvision)."""
import random

import pytest
import torch
from torchvision.models.mobilenetv3 import InvertedResidual

from conftest import randomize
from test_imports import set_torchvision_size, torchvision_ssdlite, trained_like
from test_mbv2_elastic import max_diff, one_thread  # noqa: F401 (autouse fixture)

from nasdet.config import make_model_config
from nasdet.models import build_detector
from nasdet.models.backbones import BACKBONES
from nasdet.models.backbones.mbv3_width import WidthMobileNetV3, hidden_width
from nasdet.models.supernet import build_supernet, export_detector, set_detector_arch
from nasdet.space import ArchError

WM = 0.5


def trained_pair(seed: int = 1):
    """A 'trained' static torchvision MobileNetV3-Large backbone (reduced tail) and the width space from it."""
    torch.manual_seed(seed)
    tv = randomize(BACKBONES["mobilenet_v3_large"](width_mult=WM, norm="bn", reduced_tail=True), seed=seed).eval()
    net = WidthMobileNetV3(width_mult=WM, reduced_tail=True).eval()
    net.load_standard_state_dict(tv.state_dict())
    return tv, net


def test_space_leaves_the_first_block_and_the_ssdlite_tap_fixed():
    net = WidthMobileNetV3(reduced_tail=True)
    space = net.search_space()
    # torchvision's 15 blocks: block 1 has no expand conv, block 13 holds ssdlite320's first map
    assert [int(n[5:-6]) for n in space.names] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15]
    assert space["block2.width"] == (0.08, 0.17, 0.33, 0.5, 1.0)  # stride 2: no skip
    assert space["block3.width"] == (0.0, 0.08, 0.17, 0.33, 0.5, 1.0)  # residual
    assert space["block11.width"][0] == 0.08  # 80 -> 112: not residual
    assert isinstance(net.features[13], InvertedResidual) and net.stage_ends["c4"] == 12
    assert hidden_width(72, 0.17) == 16 and hidden_width(72, 0.08) == 8 and hidden_width(64, 0.0) == 0
    with pytest.raises(ArchError, match="block2.width. = 0.0 is not allowed"):
        net.set_arch({**space.default(), "block2.width": 0.0})


def test_default_arch_is_torchvisions_network_and_exports_its_layout():
    tv, net = trained_pair()
    static = net.export(net.search_space().default()).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(tv(x), net(x)) < 1e-5
        assert max_diff(tv(x), static(x)) < 1e-5
    assert all(type(a) is type(b) for a, b in zip(static.features, tv.features))
    assert {k: v.shape for k, v in static.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    # sorted hidden channels: the most important first (OFA's reorganisation), the network unchanged
    block = net.features[9]
    norms = block.project_conv.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(norms[:-1] >= norms[1:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_subnet_export_is_the_same_function(seed):
    _, net = trained_pair()
    space = net.search_space()
    rng = random.Random(seed)
    arch = {n: rng.choice(space[n]) for n in space.names}
    arch["block3.width"] = 0.0  # one skipped block, always
    net.set_arch(arch)
    static = net.export().eval()
    assert isinstance(static.features[3], torch.nn.Identity) and len(static.features) == len(net.features)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(net(x), static(x)) < 1e-5
    exported = static.features[9]
    assert exported.block[0].out_channels == hidden_width(net.features[9].full, arch["block9.width"])
    assert net.active_arch == space.validate(arch)


def test_imported_torchvision_ssdlite320_initialises_the_supernet(tiny_config, tmp_path):
    """ENOT's start on ssdlite320: torchvision's trained detector imported as the baseline (static
    mobilenet_v3_large, layout torchvision), the mbv3_width supernet initialised from it; its default
    subnet gives torchvision's raw head outputs, and an exported subnet the supernet's detections."""
    from nasdet.errors import CheckpointError
    from nasdet.stages.baseline import run_baseline
    from nasdet.train.supernet import init_from_checkpoint
    from nasdet.workdir import WorkDir

    reference = trained_like(torchvision_ssdlite(9))  # 8 classes of the shapes set + background
    set_torchvision_size(reference, 96)
    torch.save({"model": reference.state_dict()}, tmp_path / "checkpoint.pth")
    model = {"detector": "ssdlite", "layout": "torchvision", "extra_channels": [512, 256, 256, 128],
             "backbone": {"name": "mbv3_width", "width_mult": 1.0, "reduced_tail": True}}
    cfg = tiny_config("ssdlite", model=model,
                      pipeline={"baseline_backbone": "mobilenet_v3_large", "init_supernet_from_baseline": True,
                                "baseline_checkpoint": str(tmp_path / "checkpoint.pth")})
    # without pipeline.baseline_backbone the error named model.backbone: {name: mobilenet_v3_large, ...}, which then
    # imported and stopped at pretrain ("not a supernet"): it names pipeline.baseline_backbone now
    no_bb = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"baseline_backbone": None})})
    with pytest.raises(CheckpointError, match=r"model.backbone mbv3_width is a supernet.*pipeline.baseline_backbone "
                                              r"names the standard network .*mobilenet_v3_large for torchvision's"):
        run_baseline(no_bb, work_dir=tmp_path / "no_baseline_backbone")
    run_baseline(cfg)
    supernet, space = build_supernet(cfg, 8)
    init_from_checkpoint(supernet, str(WorkDir.of(cfg).baseline.checkpoint))
    set_detector_arch(supernet, space.default(), space)
    supernet.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        want = reference.head(list(reference.backbone(x).values()))
        got = supernet.head(list(supernet.backbone(x).values()))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    arch = {**space.default(), "backbone.block3.width": 0.0, "backbone.block9.width": 0.33}
    set_detector_arch(supernet, arch, space)
    static = export_detector(supernet, arch, space).eval()
    images = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        a, b = supernet(images)[0], static(images)[0]
    assert len(a["boxes"]) > 0 and torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4, rtol=0)


def test_reduced_tail_is_accepted_and_the_torchvision_layout_builds():
    cfg = make_model_config(detector="ssdlite", layout="torchvision", input_size=96,
                            backbone={"name": "mbv3_width", "width_mult": WM, "reduced_tail": True})
    model = build_detector(cfg, num_classes=3)
    assert model.backbone.c4_pos == 13
